"""Verified streaming (spec/verification.md §14): a worker whose progress frames lie (it reports other
tokens than it generates, then returns the true answer) never gets a word of its lie to the client; its
result contradicts its frames, so it is rejected as invalid and replaced, and the client's verified text
is the honest replicas' prefix of the answer. llama.cpp on the tiny model; the nodes run on the in-memory
network in virtual time (``memnet``, ``memnet_clock``)."""

from __future__ import annotations

import pathlib
import random
import secrets
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

import trio
from trio.testing import MockClock

from opengrid.core.reputation import Reputation
from opengrid.engines import GenerationRequest, LlamaEngine, ModelInfo, sha256_file
from opengrid.engines.base import Generation
from opengrid.net.transport import StreamHost
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.testing.memnet import MemoryNetwork
from opengrid.wire.messages import JobAccepted, JobProgress, SubmitJob
from tests.node.workers import client_host

T = TypeVar("T")
PROMPT = "Once upon a time"
MAX_TOKENS = 24
LIE = " LIE"


class _ProgressLiar(LlamaEngine):
    """A real llama.cpp engine whose progress reports lie: every token is reported as another one with
    the text " LIE", while the returned generation (and so the attested result) is the true one."""

    def generate_streaming(
        self,
        request: GenerationRequest,
        on_text: Callable[[str], None] | None,
        on_token: Callable[[int, str], None] | None = None,
    ) -> Generation:
        def lie(token: int, _piece: str) -> None:
            if on_token is not None:
                on_token(token + 1, LIE)

        return super().generate_streaming(request, on_text, lie)


class _Preferring(random.Random):
    """Seeded, except that a draw takes the peers in ``prefer`` first: who runs the replicas."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.prefer: list[str] = []

    def sample(self, population: Sequence[T], k: int, **_: object) -> list[T]:  # type: ignore[override]
        first = [c for c in population if getattr(c, "peer", None) in self.prefer][:k]
        rest = [c for c in population if c not in first]
        return first + super().sample(rest, min(k - len(first), len(rest)))


async def test_a_worker_lying_in_its_progress_frames_is_never_streamed_and_is_rejected(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    info = ModelInfo(name="tiny", path=tiny_model_path, sha256=sha256_file(tiny_model_path))
    rng = _Preferring(3)
    # Replicated streaming: the verified prefix is what a quorum of replicas reported (audit answers whole).
    config = NodeConfig(data_dir=tmp_path / "c", role="coordinator", heartbeat_s=0.5, verify="replicate")
    coordinator = Node(config, rng=rng, transport=memnet)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None and coordinator.coordinator is not None
        engines = {
            "liar": _ProgressLiar(info, n_threads=1),
            "w1": LlamaEngine(info, n_threads=1),
            "w2": LlamaEngine(info, n_threads=1),
        }
        workers: dict[str, Node] = {}
        for name, engine in engines.items():
            config = NodeConfig(
                data_dir=tmp_path / name,
                role="worker",
                bootstrap=(coordinator.host.addrs()[0],),
                heartbeat_s=0.5,
            )
            workers[name] = Node(config, engine=engine, transport=memnet)
            await nursery.start(workers[name].run)
        with trio.fail_after(30):
            for node in workers.values():
                await node.registered.wait()
        liar = workers["liar"]
        assert liar.host is not None
        rng.prefer = [liar.host.peer_id]  # the liar runs one of the two first replicas

        client: StreamHost = await nursery.start(partial(client_host, transport=memnet))
        peer = await client.connect(coordinator.host.addrs()[0])
        job = SubmitJob(
            job_id=secrets.token_bytes(16),
            model="tiny",
            prompt=PROMPT,
            max_tokens=MAX_TOKENS,
            replicas=2,
            stream=True,
        )
        verified: list[str] = []
        previews: list[str] = []
        stream = await client.open_stream(peer)
        with trio.fail_after(90):
            await stream.send(job)
            for _ in range(2 * MAX_TOKENS + 1):
                reply = await stream.receive()
                if not isinstance(reply, JobProgress):
                    break
                (verified if reply.verified else previews).append(reply.text)
        await stream.aclose()

        assert isinstance(reply, JobAccepted), reply
        assert liar.jobs_run == 1, "the liar ran a replica"
        streamed = "".join(verified)
        assert verified and LIE not in streamed, "the lie was never forwarded as verified"
        assert reply.text.startswith(streamed), "and the verified text is a prefix of the answer"
        assert liar.host.peer_id in reply.failed and liar.host.peer_id not in reply.workers
        record = coordinator.coordinator.reputation.get(liar.public_key, Reputation())
        assert record.invalid == 1, "its result contradicted its frames: rejected as invalid"
        nursery.cancel_scope.cancel()
