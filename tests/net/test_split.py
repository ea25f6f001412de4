"""A model split across member processes over ``/opengrid/split/1`` (spec/split.md), on 127.0.0.1.

Real parts only: member processes are libp2p hosts serving the split protocol, each with its own ggml RPC
server child; the head (this test process) tunnels llama.cpp's RPC connections to them and runs the model
in a split runner child. Needs a llama-cpp-python built with ggml-rpc (scripts/setup.sh builds one).
"""

from __future__ import annotations

import os
import pathlib
import secrets
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import msgspec
import pytest
import trio
from opengrid_ledger import Attestation, verify_attestation

from opengrid.core.split_plan import ModelFootprint, SplitCandidate, SplitPlan, plan_split
from opengrid.engines.base import GenerationRequest, ModelInfo
from opengrid.engines.footprint import model_footprint
from opengrid.engines.ggml_rpc import rpc_available
from opengrid.engines.llama import LlamaEngine
from opengrid.engines.models import sha256_file
from opengrid.errors import EngineError, NoCapacityError
from opengrid.net.host import Host, open_host, quiet_libp2p_logging
from opengrid.net.keys import peer_id_of
from opengrid.net.split import SPLIT_PROTOCOL, MemberLease, SplitHead, SplitLimits, SplitMember
from opengrid.wire.split import SplitAttest, SplitRefuse, SplitTunnel, decode_reply, encode

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not rpc_available(),
        reason="llama-cpp-python was built without ggml-rpc; scripts/setup.sh builds it with -DGGML_RPC=ON",
    ),
]

MIB = 1024 * 1024
SCRATCH = 4 * MIB
"""Scratch per participant for the tiny model (its compute buffers are well under 1 MiB)."""
PROMPT = "The quick brown fox"


@dataclass
class MemberProc:
    process: subprocess.Popen[bytes]
    addr: str
    max_memory: int

    @property
    def peer(self) -> str:
        return self.addr.rsplit("/p2p/", 1)[1]


@contextmanager
def member_processes(offers: list[int]) -> Iterator[list[MemberProc]]:
    """Start one member process per offer (its --max-memory); stop them all at the end."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    procs: list[MemberProc] = []
    try:
        for offer in offers:
            p = subprocess.Popen(
                [sys.executable, "-m", "opengrid.net.split_member_main", "--max-memory", str(offer)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
            )
            procs.append(MemberProc(p, "", offer))
        for m in procs:
            assert m.process.stdout is not None
            line = m.process.stdout.readline().decode()  # bounded: the process prints it or exits
            assert line.startswith("addr "), f"member did not start: {line!r}"
            m.addr = line.split()[1]
        yield procs
    finally:
        for m in procs:
            if m.process.poll() is None:
                m.process.kill()
            m.process.wait(timeout=30)
            for pipe in (m.process.stdin, m.process.stdout):
                if pipe is not None:
                    pipe.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> ModelInfo:
    from opengrid.engines.tiny_model import write_tiny_gguf

    path = write_tiny_gguf(tmp_path_factory.mktemp("split") / "tiny.gguf")
    return ModelInfo("tiny", path, sha256_file(path))


@pytest.fixture(scope="module")
def single_process_tokens(tiny: ModelInfo) -> tuple[int, ...]:
    with LlamaEngine(tiny, n_ctx=256, n_threads=1) as engine:
        return engine.generate(GenerationRequest(PROMPT, max_tokens=24)).tokens


def tiny_footprint(tiny: ModelInfo) -> ModelFootprint:
    fp = model_footprint(tiny.path, n_ctx=256, overhead_bytes=SCRATCH)
    return fp


@asynccontextmanager
async def head_host() -> AsyncIterator[Host]:
    quiet_libp2p_logging()
    async with open_host(secrets.token_bytes(32)) as host:
        yield host


async def start_group(
    head: SplitHead,
    host: Host,
    plan: SplitPlan,
    members: list[MemberProc],
    tiny: ModelInfo,
    nursery: trio.Nursery,
) -> tuple[list[MemberLease], list[str]]:
    """Invite the plan's members and serve a loopback endpoint for each; (leases, endpoints)."""
    by_peer = {m.peer: m for m in members}
    leases, endpoints = [], []
    for share in plan.members:
        await host.connect(by_peer[share.peer].addr)
        lease = await head.invite(
            share.peer, model_sha256=tiny.sha256, units=share.count, bytes_needed=share.bytes
        )
        leases.append(lease)
        endpoints.append(await nursery.start(head.serve_endpoint, lease))
    return leases, endpoints


async def run_split(
    tiny: ModelInfo, plan: SplitPlan, endpoints: list[str], max_tokens: int = 24
) -> tuple[int, ...]:
    from opengrid.engines.split import SplitEngine

    def generate() -> tuple[int, ...]:
        with SplitEngine(
            tiny,
            endpoints,
            plan.tensor_split,
            plan.offloaded,
            n_ctx=256,
            n_threads=1,
            load_timeout_s=60,
            token_timeout_s=30,
        ) as engine:
            assert engine.contract.backend == "llama.cpp+rpc"
            return engine.generate(GenerationRequest(PROMPT, max_tokens=max_tokens)).tokens

    return await trio.to_thread.run_sync(generate)


@pytest.mark.parametrize("n_members", [1, 2], ids=["2-processes", "3-processes"])
async def test_split_tokens_equal_one_process(
    tiny: ModelInfo, single_process_tokens: tuple[int, ...], n_members: int
) -> None:
    fp = tiny_footprint(tiny)
    # Nobody can hold the model alone: the head offers room for its input and output layers only, each
    # member for its share of the (two) layers, so the plan must use every member.
    per_member = SCRATCH + fp.layer_bytes[0] * (fp.n_layers // n_members)
    offers = [per_member] * n_members
    head_free = fp.input_bytes + fp.output_bytes + SCRATCH
    assert all(o < fp.total_bytes for o in [*offers, head_free])
    with member_processes(offers) as members:
        plan = plan_split(
            fp, SplitCandidate("head", head_free), [SplitCandidate(m.peer, m.max_memory) for m in members]
        )
        assert len(plan.members) == n_members and plan.head_layers == 0
        async with head_host() as host, trio.open_nursery() as nursery:
            head = SplitHead(host)
            _leases, endpoints = await start_group(head, host, plan, members, tiny, nursery)
            tokens = await run_split(tiny, plan, endpoints)
            assert tokens == single_process_tokens
            for share in plan.members:  # every member's tunnel carried its layers' weights
                weights = sum(fp.unit_bytes(u) for u in range(share.first, share.first + share.count))
                kv = 2 * 256 * 64 * 2  # the tiny model's KV cache per layer at n_ctx 256 (f16)
                assert head.stats[share.peer].to_member > weights - kv * share.count
            nursery.cancel_scope.cancel()


async def test_only_the_agreed_head_can_open_the_tunnel(tiny: ModelInfo) -> None:
    """A stranger that knows the session id and even the token is refused: the member checks the peer id
    that Noise authenticated. The real head's tunnel still works afterwards."""
    fp = tiny_footprint(tiny)
    with member_processes([fp.total_bytes]) as members:
        member = members[0]
        async with head_host() as host, head_host() as stranger:
            head = SplitHead(host)
            await host.connect(member.addr)
            lease = await head.invite(
                member.peer, model_sha256=tiny.sha256, units=2, bytes_needed=fp.total_bytes
            )
            await stranger.connect(member.addr)
            with pytest.raises(NoCapacityError, match="ran nothing"):  # no tunnel byte yet: nothing to sign
                await head.attest(
                    lease, job_id=bytes(16), contract_hash=bytes(32), output_commitment=bytes(32), n_tokens=1
                )
            for token in (lease.token, secrets.token_bytes(32)):
                stream = await stranger.open_stream(member.peer, SPLIT_PROTOCOL)
                await stream.send_body(encode(SplitTunnel(lease.session, token)))
                reply = decode_reply(await stream.receive_body(), peer=member.peer)
                assert isinstance(reply, SplitRefuse) and "another head" in reply.reason
                with trio.fail_after(10):  # the member sends no RPC byte to a refused stream: it ends
                    assert await stream.read_raw(1024) == b""
            # The head's own tunnel: llama.cpp's HELLO is answered by the member's RPC server.
            stream = await host.open_stream(member.peer, SPLIT_PROTOCOL)
            await stream.send_body(encode(SplitTunnel(lease.session, lease.token)))
            assert not isinstance(decode_reply(await stream.receive_body()), SplitRefuse)
            # HELLO (command 14) with its 24-byte body (connection capabilities, none): protocol 7's
            # answer is a 28-byte body, major version first.
            await stream.write_raw(bytes([14]) + (24).to_bytes(8, "little") + bytes(24))
            answer = b""
            with trio.fail_after(10):
                while len(answer) < 9:
                    answer += await stream.read_raw(64)
            assert answer[:8] == (28).to_bytes(8, "little") and answer[8] == 7
            await stream.reset()
            # Co-signing a job (spec/split.md §8): the head's session gets the member's attestation; a
            # stranger with the stolen token does not.
            job = {
                "job_id": bytes(16),
                "contract_hash": bytes(32),
                "output_commitment": bytes(32),
                "n_tokens": 3,
            }
            signed = msgspec.msgpack.decode(await head.attest(lease, **job), type=Attestation)  # type: ignore[arg-type]
            verify_attestation(signed, "opengrid-local")
            assert peer_id_of(signed.worker) == member.peer and signed.n_tokens == 3
            stream = await stranger.open_stream(member.peer, SPLIT_PROTOCOL)
            await stream.send_body(encode(SplitAttest(lease.session, lease.token, **job)))  # type: ignore[arg-type]
            assert isinstance(decode_reply(await stream.receive_body()), SplitRefuse)
            # A stranger cannot close the session either.
            stream = await stranger.open_stream(member.peer, SPLIT_PROTOCOL)
            from opengrid.wire.split import SplitClose

            await stream.send_body(encode(SplitClose(lease.session, lease.token)))
            assert isinstance(decode_reply(await stream.receive_body()), SplitRefuse)
            assert await head.close(lease)


def _listening_addresses(port: int) -> list[str]:
    """Local addresses (hex, /proc/net/tcp{,6} format) with a socket listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        lines = pathlib.Path(table).read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.append(address)
    return found


def _non_loopback_addresses() -> list[str]:
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        return []
    return sorted({str(i[4][0]) for i in infos if not str(i[4][0]).startswith("127.")})


async def test_rpc_server_listens_on_loopback_only(tiny: ModelInfo) -> None:
    """The member's RPC server is bound to 127.0.0.1 and nothing else; a connection to any other address
    of this machine on its port is refused."""
    quiet_libp2p_logging()
    async with head_host() as member_host, head_host() as host, trio.open_nursery() as nursery:
        member = SplitMember(member_host, SplitLimits(max_memory_bytes=64 * MIB))
        await nursery.start(member.run)
        head = SplitHead(host)
        await host.connect(member_host.addrs()[0])
        await head.invite(member_host.peer_id, model_sha256=tiny.sha256, units=1, bytes_needed=8 * MIB)
        (port,) = member.rpc_ports()
        assert _listening_addresses(port) == ["0100007F"]  # 127.0.0.1, in /proc's byte order
        for address in _non_loopback_addresses():
            with pytest.raises(OSError):
                await trio.open_tcp_stream(address, port)
        # An invitation over the member's --max-memory is refused, with the numbers.
        with pytest.raises(Exception, match="free of its --max-memory"):
            await head.invite(member_host.peer_id, model_sha256=tiny.sha256, units=1, bytes_needed=64 * MIB)
        nursery.cancel_scope.cancel()


async def test_member_killed_mid_job_fails_over_to_a_new_group(
    tiny: ModelInfo, single_process_tokens: tuple[int, ...]
) -> None:
    """Killing a member while the group generates ends the head's runner (llama.cpp aborts it), not the
    node: the engine raises EngineError. The head re-plans without that member and the job's tokens come
    out the same on the new group."""
    from opengrid.core.split_plan import replan
    from opengrid.engines.split import SplitEngine

    fp = tiny_footprint(tiny)
    per_member = SCRATCH + fp.layer_bytes[0]  # one layer each: two members hold the model, one is spare
    head_free = fp.input_bytes + fp.output_bytes + SCRATCH
    with member_processes([per_member] * 3) as members:
        candidates = [SplitCandidate(m.peer, m.max_memory) for m in members]
        plan = plan_split(fp, SplitCandidate("head", head_free), candidates)
        assert len(plan.members) == 2
        victim = next(m for m in members if m.peer == plan.members[0].peer)
        async with head_host() as host, trio.open_nursery() as nursery:
            head = SplitHead(host)
            leases, endpoints = await start_group(head, host, plan, members, tiny, nursery)
            seen: list[int] = []

            def generate_and_kill() -> None:
                with SplitEngine(
                    tiny,
                    endpoints,
                    plan.tensor_split,
                    plan.offloaded,
                    n_ctx=256,
                    n_threads=1,
                    token_timeout_s=30,
                ) as engine:

                    def on_token(token: int, piece: str) -> None:
                        seen.append(token)
                        if len(seen) == 3:
                            victim.process.kill()

                    engine.generate_streaming(GenerationRequest(PROMPT, max_tokens=200), None, on_token)

            with pytest.raises(EngineError, match="split group"):
                await trio.to_thread.run_sync(generate_and_kill)
            assert 3 <= len(seen) < 200
            # The broken group's sessions end on the members that survived (their memory is free again).
            for lease in leases:
                assert await head.close(lease) == (lease.peer != victim.peer)
            again = replan(plan, fp, SplitCandidate("head", head_free), candidates, {victim.peer})
            assert victim.peer not in again.peers
            _leases2, endpoints2 = await start_group(head, host, again, members, tiny, nursery)
            assert await run_split(tiny, again, endpoints2) == single_process_tokens
            nursery.cancel_scope.cancel()


async def test_a_head_that_oversteps_its_budget_loses_the_session(tiny: ModelInfo) -> None:
    """The attack: an agreed head asks the member's RPC server for more memory than the session's budget.
    The member's guard cuts the tunnel before the request reaches ggml, ends the session and kills its
    server; the member goes on serving (a new invitation is accepted)."""
    quiet_libp2p_logging()
    async with head_host() as member_host, head_host() as host, trio.open_nursery() as nursery:
        member = SplitMember(member_host, SplitLimits(max_memory_bytes=64 * MIB))
        await nursery.start(member.run)
        head = SplitHead(host)
        await host.connect(member_host.addrs()[0])
        lease = await head.invite(member_host.peer_id, model_sha256=tiny.sha256, units=1, bytes_needed=MIB)
        (port,) = member.rpc_ports()
        stream = await host.open_stream(member_host.peer_id, SPLIT_PROTOCOL)
        await stream.send_body(encode(SplitTunnel(lease.session, lease.token)))
        assert not isinstance(decode_reply(await stream.receive_body()), SplitRefuse)
        hello = bytes([14]) + (24).to_bytes(8, "little") + bytes(24)
        alloc = (
            bytes([0])
            + (12).to_bytes(8, "little")
            + (0).to_bytes(4, "little")
            + (2 * MIB).to_bytes(8, "little")
        )
        await stream.write_raw(hello + alloc)
        received = b""
        with trio.fail_after(10):  # the HELLO answer may come back; then the tunnel ends
            while chunk := await stream.read_raw(1024):
                received += chunk
        assert len(received) <= 8 + 28
        assert member.sessions() == [] and member.free_bytes == 64 * MIB
        assert _listening_addresses(port) == []  # the session's server is gone
        again = await head.invite(member_host.peer_id, model_sha256=tiny.sha256, units=1, bytes_needed=MIB)
        assert again.session != lease.session and len(member.rpc_ports()) == 1
        nursery.cancel_scope.cancel()


async def test_split_engine_scores_like_one_process(tiny: ModelInfo) -> None:
    """An audit by a split group (LlamaEngine.score in the runner) gives the evidence of one process."""
    from opengrid.engines.base import ScoreRequest
    from opengrid.engines.split import SplitEngine

    fp = tiny_footprint(tiny)
    with LlamaEngine(tiny, n_ctx=256, n_threads=1) as engine:
        claim = engine.generate(GenerationRequest(PROMPT, max_tokens=12)).tokens
        expected = engine.score(ScoreRequest(PROMPT, claim, stopped=False))
    with member_processes([SCRATCH + 2 * fp.layer_bytes[0]]) as members:
        plan = plan_split(
            fp,
            SplitCandidate("head", fp.input_bytes + fp.output_bytes + SCRATCH),
            [SplitCandidate(m.peer, m.max_memory) for m in members],
        )
        async with head_host() as host, trio.open_nursery() as nursery:
            head = SplitHead(host)
            _leases, endpoints = await start_group(head, host, plan, members, tiny, nursery)

            def score() -> object:
                with SplitEngine(
                    tiny, endpoints, plan.tensor_split, plan.offloaded, n_ctx=256, n_threads=1
                ) as e:
                    return e.score(ScoreRequest(PROMPT, claim, stopped=False))

            assert await trio.to_thread.run_sync(score) == expected
            nursery.cancel_scope.cancel()
