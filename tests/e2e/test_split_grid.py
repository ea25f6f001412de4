"""Split groups formed on a real grid (issue 17, spec/split.md §7), node processes on 127.0.0.1.

A coordinator, a worker that holds the tiny model with a ``--max-memory`` too small for it (the head), and
``--split-member`` workers whose ``--max-memory`` is too small for it too. The head plans its group from the
members' gossip announcements, invites them over /opengrid/split/1 and registers as one worker. A job
through the SDK gets the tokens one llama.cpp process gives. With a spare member, one member killed while
a job streams: the head re-forms its group on the spare and the job still completes, same tokens.

Sizes come from the tiny model's footprint at the node's context window (``opengrid models info``'s
numbers): every cap is below the model's total, so no node can hold it alone.
"""

from __future__ import annotations

import json
import pathlib
import signal
import time
from collections.abc import Iterator

import pytest
from nacl.signing import SigningKey
from opengrid_sdk import Client, Completion, Preview

from opengrid.cli.demo import DemoNetwork, DemoNode, wait_for_workers
from opengrid.cli.main import main
from opengrid.core.split_plan import ModelFootprint
from opengrid.engines.footprint import model_footprint
from opengrid.engines.ggml_rpc import rpc_available
from opengrid.node.config import DEFAULT_MAX_CONTEXT
from opengrid.node.identity import load_or_create_seed
from tests.e2e.test_network import direct_llama

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not rpc_available(), reason="llama-cpp-python was built without ggml-rpc"),
]

NETWORK = "opengrid-split"
PROMPT = "The quick brown fox"
SLACK = 64 * 1024
"""Over what a share needs, under what one more layer needs (a tiny-model layer is ~600 KB)."""


@pytest.fixture(scope="module")
def footprint(tiny_model_path: pathlib.Path) -> ModelFootprint:
    fp = model_footprint(tiny_model_path, n_ctx=DEFAULT_MAX_CONTEXT)
    assert fp.n_layers == 2 and min(fp.layer_bytes) > 4 * SLACK
    return fp


def head_cap(fp: ModelFootprint) -> int:
    """Input, output and scratch, and less than one layer more: the head runs no layer itself."""
    return fp.input_bytes + fp.output_bytes + fp.overhead_bytes + SLACK


def start_grid(
    net: DemoNetwork, fp: ModelFootprint, member_caps: list[int]
) -> tuple[str, DemoNode, list[DemoNode]]:
    coordinator = net.start(
        "coordinator", "coordinator", extra_args=["--plain-verification", "--verify", "replicate"]
    )
    net.wait_ready(coordinator)
    address = coordinator.addrs[0]
    members = [
        net.start(
            f"member-{i}",
            "worker",
            bootstrap=address,
            extra_args=["--split-member", "--max-memory", str(cap), "--skip-speed-test"],
        )
        for i, cap in enumerate(member_caps)
    ]
    for m in members:
        net.wait_ready(m)
    head = net.start(
        "head",
        "worker",
        bootstrap=address,
        extra_args=["--max-memory", str(head_cap(fp)), "--skip-speed-test"],
    )
    net.wait_ready(head)
    assert all(cap < fp.total_bytes for cap in [*member_caps, head_cap(fp)])  # none holds it alone
    return address, head, members


def group_line(head: DemoNode) -> str:
    """The head's log line for its latest group (which members run which layers)."""
    lines = [
        line for line in head.log_path.read_text().splitlines() if "split group " in line and "head 0" in line
    ]
    return lines[-1] if lines else ""


def account(node: DemoNode) -> bytes:
    """A node's ledger account: its identity's public key (from its data dir)."""
    return bytes(SigningKey(load_or_create_seed(node.data_dir)).verify_key)


def balances(client: Client) -> dict[bytes, int]:
    return {bytes.fromhex(k): v for k, v in client.status().balances.items()}


@pytest.fixture
def grid_net(tmp_path: pathlib.Path, tiny_model_path: pathlib.Path) -> Iterator[DemoNetwork]:
    net = DemoNetwork(tmp_path, model=str(tiny_model_path), network=NETWORK)
    try:
        yield net
    finally:
        net.stop()


def test_a_two_way_group_forms_on_the_grid_and_answers_like_one_process(
    grid_net: DemoNetwork,
    footprint: ModelFootprint,
    tiny_model_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    both_layers = sum(footprint.layer_bytes) + footprint.overhead_bytes + SLACK
    address, head, (member,) = start_grid(grid_net, footprint, [both_layers])
    with Client([address], network=NETWORK, timeout=120) as client:
        wait_for_workers(client, 1, timeout=180)
        done = client.complete(PROMPT, model="tiny", max_tokens=16, replicas=1, sealed=False)
        # Sealed too: the prompt is sealed to the head, whose members co-sign the salted commitment.
        sealed = client.complete(PROMPT, model="tiny", max_tokens=16, replicas=1)
        ledger = balances(client)
    _, expected = direct_llama(tiny_model_path, PROMPT, 16)
    assert done.tokens == expected
    assert done.workers == [head.peer_id]  # the group is one worker: its head
    # 16 tokens x weight 1 = 16 points by layers run: head 0 (+1) and member 2 of 3 -> 6 and 10
    assert done.receipt.credits == sealed.receipt.credits == {account(head): 6, account(member): 10}
    assert sealed.tokens == expected
    assert ledger[account(member)] == 20 and ledger[account(head)] == 12
    line = group_line(head)
    assert f"{member.peer_id[-8:]} layers 0..1" in line, head.log_tail(40)

    # `opengrid status` on the head shows its group; `opengrid peers` the members' memory to lend
    assert main(["status", head.addrs[0], "--network", NETWORK]) == 0
    shown = capsys.readouterr().out
    assert "tiny: 2 layers over 2 nodes; this head runs no layer" in shown
    assert f"member  {member.peer_id}  layers 0..1" in shown
    assert main(["peers", head.addrs[0], "--network", NETWORK, "--json"]) == 0
    peers = {p["peer_id"]: p for p in json.loads(capsys.readouterr().out)["peers"]}
    lent = both_layers - (sum(footprint.layer_bytes) + footprint.overhead_bytes)  # what its session left
    assert peers[member.peer_id]["free_memory"] == lent
    assert "free_memory" not in peers[grid_net.nodes[0].peer_id]  # the coordinator lends none


def test_a_three_way_group_survives_a_member_killed_mid_job(
    grid_net: DemoNetwork, footprint: ModelFootprint, tiny_model_path: pathlib.Path
) -> None:
    one_layer = max(footprint.layer_bytes) + footprint.overhead_bytes + SLACK
    address, head, members = start_grid(grid_net, footprint, [one_layer] * 3)  # one spare
    by_suffix = {m.peer_id[-8:]: m for m in members}
    max_tokens = 200
    _, expected = direct_llama(tiny_model_path, PROMPT, max_tokens)
    with Client([address], network=NETWORK, timeout=120) as client:
        wait_for_workers(client, 1, timeout=180)
        first = client.complete(PROMPT, model="tiny", max_tokens=16, replicas=1, sealed=False)
        assert first.tokens == expected[:16]
        line = group_line(head)
        in_group = [m for suffix, m in by_suffix.items() if suffix in line]
        assert len(in_group) == 2, head.log_tail(40)  # the fewest members that hold it: two of three
        (summary,) = [w for w in client.status().workers if w.peer_id == head.peer_id]
        assert set(summary.split_members) == {m.peer_id for m in in_group}  # type: ignore[arg-type]
        # 16 points over weights 1 (head), 1, 1: 5 each, the remainder 1 to the head
        assert first.receipt.credits == {account(head): 6, account(in_group[0]): 5, account(in_group[1]): 5}

        victim = in_group[-1]
        completion: Completion | None = None
        for item in client.stream(PROMPT, model="tiny", max_tokens=max_tokens, replicas=1, previews=True):
            if isinstance(item, Preview) and victim.process.poll() is None:
                victim.process.send_signal(signal.SIGKILL)  # mid-job: the head has generated some tokens
                victim.process.wait(timeout=10)
            if isinstance(item, Completion):
                completion = item
        assert victim.process.returncode == -signal.SIGKILL
        assert completion is not None and completion.tokens == expected
        assert completion.workers == [head.peer_id]
        spare = next(m for m in members if m not in in_group)
        # the re-run's group is credited: the survivor and the spare, not the member that died
        assert completion.receipt.credits == {
            account(head): 68,
            account(in_group[0]): 66,
            account(spare): 66,
        }
        ledger = balances(client)
    assert ledger[account(spare)] == 66 and ledger[account(in_group[0])] == 5 + 66
    assert ledger[account(victim)] == 5  # paid for the job it finished, nothing for the one it left
    deadline = time.monotonic() + 10
    while "re-forming" not in head.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = head.log_path.read_text()
    assert "re-forming" in log, head.log_tail(40)
    assert spare.peer_id[-8:] in group_line(head), head.log_tail(40)
    assert json.loads((head.data_dir / "node.json").read_text())["peer_id"] == head.peer_id


def test_smollm2_split_two_ways_on_the_grid_answers_like_one_process(tmp_path: pathlib.Path) -> None:
    """The real default model (SmolLM2-135M, 30 layers, shipped on PyPI) as a 2-way group: every layer on
    the member, input and output on the head; tokens equal one llama.cpp process's."""
    from opengrid.engines import DEFAULT_MODEL, resolve_model

    model = resolve_model(DEFAULT_MODEL)
    fp = model_footprint(model.path, n_ctx=DEFAULT_MAX_CONTEXT)
    net = DemoNetwork(tmp_path, model=DEFAULT_MODEL, network=NETWORK)
    try:
        all_layers = sum(fp.layer_bytes) + fp.overhead_bytes + SLACK
        address, head, (member,) = start_grid(net, fp, [all_layers])
        with Client([address], network=NETWORK, timeout=120) as client:
            wait_for_workers(client, 1, timeout=240)
            started = time.monotonic()
            done = client.complete(PROMPT, model=model.name, max_tokens=32, replicas=1, sealed=False)
            took = time.monotonic() - started
    finally:
        net.stop()
    _, expected = direct_llama(model.path, PROMPT, 32)
    assert done.tokens == expected, (done.text, head.log_tail(20))
    assert f"{member.peer_id[-8:]} layers 0..{fp.n_layers - 1}" in group_line(head)
    # 32 tokens x weight 1 over weights 1 (head) and 30 (member): member 30, head 2
    assert done.receipt.credits == {account(head): 2, account(member): 30}
    print(f"SmolLM2-135M 2-way on the grid: 32 tokens in {took:.2f} s through the SDK")


def test_models_info_plans_over_the_memory_the_live_grid_lends(
    grid_net: DemoNetwork,
    footprint: ModelFootprint,
    tiny_model_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`opengrid models info NAME --grid ADDR`: how many nodes of this grid the model takes, from what the
    `--split-member` nodes announce they lend (no head started: nothing is held yet)."""
    coordinator = grid_net.start("coordinator", "coordinator")
    grid_net.wait_ready(coordinator)
    address = coordinator.addrs[0]
    one_layer = max(footprint.layer_bytes) + footprint.overhead_bytes + SLACK
    members = [
        grid_net.start(
            f"member-{i}",
            "worker",
            bootstrap=address,
            extra_args=["--split-member", "--max-memory", str(one_layer), "--skip-speed-test"],
        )
        for i in range(2)
    ]
    for m in members:
        grid_net.wait_ready(m)
    args = ["models", "info", str(tiny_model_path), "--grid", address, "--network", NETWORK, "--json"]
    grid: dict[str, object] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the coordinator heard both announce what they lend
        assert main([*args, "--max-memory", str(head_cap(footprint))]) == 0
        grid = json.loads(capsys.readouterr().out)["grid"]
        if grid["lenders"] == 2:
            break
        time.sleep(0.5)
    assert grid["lenders"] == 2 and grid["lent_bytes"] == 2 * one_layer, grid
    assert grid["nodes"] == 3 and grid["head_layers"] == 0
    assert sorted(m["peer_id"] for m in grid["members"]) == sorted(m.peer_id for m in members)  # type: ignore[attr-defined]
    # A head too small for even its own part: no group fits, and the answer says why.
    assert main([*args, "--max-memory", "1M"]) == 0
    assert "give it more --max-memory" in json.loads(capsys.readouterr().out)["grid"]["why"]
