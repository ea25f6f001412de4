"""A split group whose member corrupts activations, audited on a real grid (issue 17, spec/split.md §6).

Node processes on 127.0.0.1: a coordinator in audit mode; a head and a member that multiplies every
activation it returns by ``1 + 0.3 N(0, 1)`` (started through ``python -m opengrid.testing.corrupt_member``,
the product's ``SplitMember(rpc_stream=...)`` hook); two plain workers holding the same GGUF under another
name (``tiny-b``), so that the group alone serves ``tiny`` and the plain workers audit it (audits work
across numerical classes: same weights, any class). The client asks for ``tiny``: the group's claim fails
its audit, the job runs again on a plain worker (another class of the same weights) and the other audits
it; the client gets one llama.cpp process's tokens. Neither the head nor the member earns anything, and
the coordinator's ledger records both invalid (its EVIDENCE entry), as `opengrid ledger balance` shows.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from collections.abc import Iterator

import pytest
from opengrid_sdk import Client

from opengrid.cli.demo import DemoNetwork, DemoNode, wait_for_workers
from opengrid.cli.main import main
from opengrid.core.split_plan import ModelFootprint
from opengrid.engines.footprint import model_footprint
from opengrid.engines.ggml_rpc import rpc_available
from opengrid.node.config import DEFAULT_MAX_CONTEXT
from opengrid.node.context import short
from tests.e2e.test_network import direct_llama
from tests.e2e.test_split_grid import SLACK, account, balances, group_line, head_cap

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not rpc_available(), reason="llama-cpp-python was built without ggml-rpc"),
]

NETWORK = "opengrid-split-audit"
PROMPT = "The quick brown fox"


@pytest.fixture
def grid_net(tmp_path: pathlib.Path, tiny_model_path: pathlib.Path) -> Iterator[DemoNetwork]:
    net = DemoNetwork(tmp_path / "nodes", model=str(tiny_model_path), network=NETWORK)
    try:
        yield net
    finally:
        net.stop()


def ledger_of(node: DemoNode, key: bytes, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    """`opengrid ledger balance` of ``key`` in ``node``'s store, read next to the running node."""
    args = ["ledger", "balance", "--data-dir", str(node.data_dir), "--account", key.hex(), "--json"]
    assert main([*args, "--network", NETWORK]) == 0
    report: dict[str, object] = json.loads(capsys.readouterr().out)
    return report


def test_a_member_that_corrupts_activations_fails_the_groups_audit_and_earns_nothing(
    grid_net: DemoNetwork,
    tiny_model_path: pathlib.Path,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fp: ModelFootprint = model_footprint(tiny_model_path, n_ctx=DEFAULT_MAX_CONTEXT)
    same_weights = tmp_path / "tiny-b.gguf"  # the same GGUF (same sha256) served under another name
    shutil.copyfile(tiny_model_path, same_weights)
    coordinator = grid_net.start("coordinator", "coordinator", extra_args=["--verify", "audit"])
    grid_net.wait_ready(coordinator)
    address = coordinator.addrs[0]
    plain = [
        grid_net.start(
            f"plain-{i}",
            "worker",
            bootstrap=address,
            extra_args=["--model", str(same_weights), "--skip-speed-test"],
        )
        for i in range(2)
    ]
    both_layers = sum(fp.layer_bytes) + fp.overhead_bytes + SLACK
    member = grid_net.start(
        "member",
        "worker",
        bootstrap=address,
        extra_args=[
            "--split-member",
            "--max-memory",
            str(both_layers),
            "--skip-speed-test",
            "--corrupt-sigma",
            "0.3",
        ],
        module="opengrid.testing.corrupt_member",
    )
    for node in (*plain, member):
        grid_net.wait_ready(node)
    head = grid_net.start(
        "head",
        "worker",
        bootstrap=address,
        extra_args=["--max-memory", str(head_cap(fp)), "--skip-speed-test"],
    )
    grid_net.wait_ready(head)
    assert "corrupting activations at sigma=0.3" in member.log_path.read_text()
    _, expected = direct_llama(tiny_model_path, PROMPT, 16)

    with Client([address], network=NETWORK, timeout=120) as client:
        wait_for_workers(client, 3, timeout=180)  # the two plain workers and the group (its head)
        (group,) = [w for w in client.status().workers if w.peer_id == head.peer_id]
        assert group.split_members == [member.peer_id]
        done = client.complete(PROMPT, model="tiny", max_tokens=16, replicas=1, sealed=False)
        ledger = balances(client)

    assert f"{member.peer_id[-8:]} layers 0..1" in group_line(head), head.log_tail(40)
    assert done.tokens == expected  # the plain worker's re-run, audited by the other: one process's tokens
    prover, auditor = done.workers
    assert {prover, auditor} == {p.peer_id for p in plain}
    assert head.peer_id in done.failed  # the group's claim failed its audit:
    (why,) = [
        line
        for line in coordinator.log_path.read_text().splitlines()
        if "penalised" in line and short_id(head) in line
    ]
    assert "failed the audit" in why, why
    with capsys.disabled():  # the auditor's largest gap, for the record (with -s)
        print(f"\ngroup penalised: {why.split('penalised: ', 1)[1]}")
    assert set(done.receipt.credits) == {account(p) for p in plain}
    # the head and the corrupting member earn nothing for the job; the plain workers are paid
    assert ledger.get(account(head), 0) == 0 and ledger.get(account(member), 0) == 0
    assert ledger[account(prover_node(plain, prover))] == 16
    # The coordinator's ledger records the member's (and head's) invalid outcome: (valid, invalid, timeout)
    for node in (member, head):
        report = ledger_of(coordinator, account(node), capsys)
        assert report["reputation"] == [0, 1, 0], report
        assert report["balance"] == 0


def short_id(node: DemoNode) -> str:
    """How a node's log names a peer (``opengrid.node.context.short``)."""
    return short(node.peer_id)


def prover_node(nodes: list[DemoNode], peer_id: str) -> DemoNode:
    return next(n for n in nodes if n.peer_id == peer_id)
