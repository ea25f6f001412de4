"""Sealed mode against a real network: the coordinator never sees plaintext, and lies are caught.

The coordinator runs with ``--trace-frames``: every job-protocol message it receives is appended to a
file, so the test can search everything the coordinator process was given for the prompt and the answer.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import msgspec
import pytest
from opengrid_sdk import Client

from opengrid.cli.demo import DemoNetwork, wait_for_workers
from opengrid.errors import VerificationError
from tests.e2e.test_network import direct_llama

pytestmark = pytest.mark.slow
NETWORK = "opengrid-sealed"
SECRET = "The launch code is zebra-4711-omega"


class Grid:
    def __init__(self, net: DemoNetwork, client: Client, trace: pathlib.Path) -> None:
        self.net, self.client, self.trace = net, client, trace

    def peer(self, name: str) -> str:
        return next(n.peer_id for n in self.net.nodes if n.name == name)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: pathlib.Path) -> Iterator[Grid]:
    base = tmp_path_factory.mktemp("sealed")
    trace = base / "coordinator-frames.bin"
    net = DemoNetwork(base, model=str(tiny_model_path), network=NETWORK)
    try:
        coordinator = net.start(
            "coordinator",
            "coordinator",
            # Replicated: the liars below agree (sealed audits: tests/node/test_sealed_audits_on_nodes.py).
            extra_args=["--plain-verification", "--verify", "replicate", "--trace-frames", str(trace)],
        )
        net.wait_ready(coordinator)
        address = coordinator.addrs[0]
        for name, liar in (("honest-1", False), ("honest-2", False), ("liar-1", True), ("liar-2", True)):
            extra = ["--adversary", "sealed-lie"] if liar else []
            net.wait_ready(net.start(name, "worker", bootstrap=address, extra_args=extra))
        with Client([address], network=NETWORK, timeout=120) as client:
            wait_for_workers(client, 4, timeout=60)
            yield Grid(net, client, trace)
    finally:
        net.stop()


def test_the_coordinator_never_sees_the_prompt_or_the_answer(
    grid: Grid, tiny_model_path: pathlib.Path
) -> None:
    honest = [grid.peer("honest-1"), grid.peer("honest-2")]
    start = grid.trace.stat().st_size if grid.trace.exists() else 0
    done = grid.client.complete(SECRET, model="tiny", max_tokens=12, replicas=2, trusted=honest)
    assert done.sealed and (done.text, done.tokens) == direct_llama(tiny_model_path, SECRET, 12)
    done.receipt.verify(tokens=done.tokens, text=done.text, job_id=done.job_id)  # the salt is the client's
    seen = grid.trace.read_bytes()[start:]
    assert len(seen) > 1000, "the trace should hold the quote, the submission and both results"
    for plaintext in (SECRET, "zebra-4711", done.text):
        assert plaintext.encode() not in seen
    assert msgspec.msgpack.encode(done.tokens) not in seen
    assert b"".join(t.to_bytes(4, "big") for t in done.tokens) not in seen


def test_the_trace_does_capture_plaintext_in_open_mode(grid: Grid) -> None:
    """The check above can fail: the same capture does see an open-mode prompt and answer."""
    start = grid.trace.stat().st_size
    done = grid.client.complete(SECRET, model="tiny", max_tokens=12, replicas=2, sealed=False)
    seen = grid.trace.read_bytes()[start:]
    assert SECRET.encode() in seen and done.text.encode() in seen and not done.sealed


def test_a_worker_sealing_something_else_than_it_attested_is_caught(grid: Grid) -> None:
    liars = [grid.peer("liar-1"), grid.peer("liar-2")]
    with pytest.raises(VerificationError, match="does not match"):
        grid.client.complete("Tell me", model="tiny", max_tokens=8, replicas=2, trusted=liars)
    # With one honest replica among the agreeing workers, the client opens the honest output.
    mixed = [grid.peer("honest-1"), grid.peer("liar-1")]
    done = grid.client.complete("Tell me", model="tiny", max_tokens=8, replicas=2, trusted=mixed)
    assert "(forged)" not in done.text
    done.receipt.verify(tokens=done.tokens, text=done.text)
