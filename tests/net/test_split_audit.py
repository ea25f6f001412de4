"""A split group's output is verified like any worker's: a member that corrupts activations fails audit.

Issue 17. Real parts: a split member (a libp2p host serving ``/opengrid/split/1`` with its own ggml RPC
server child) and a head (another libp2p host, llama.cpp in a split runner child) on 127.0.0.1, the tiny
generated model; the auditor is ``LlamaEngine.score`` in one process, judged by ``opengrid.core.audit.
judge`` at the coordinator's default tolerance (``CoordinatorConfig.audit_tolerance``): the code a grid
audits with. The adversary (``opengrid.testing.split_adversary``) is a member that multiplies every float
of the hidden states it returns to its head by ``1 + noise * N(0, 1)``.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio

from opengrid.core.audit import AuditPolicy, AuditVerdict, judge
from opengrid.core.coordinator.config import CoordinatorConfig
from opengrid.core.split_plan import SplitCandidate, plan_split
from opengrid.engines.base import Generation, GenerationRequest, ModelInfo, ScoreRequest
from opengrid.engines.footprint import model_footprint
from opengrid.engines.ggml_rpc import rpc_available
from opengrid.engines.llama import LlamaEngine
from opengrid.engines.models import sha256_file
from opengrid.net.host import Host, open_host, quiet_libp2p_logging
from opengrid.net.split import SplitHead, SplitLimits, SplitMember
from opengrid.testing.split_adversary import Corruption, corrupting_member

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not rpc_available(),
        reason="llama-cpp-python was built without ggml-rpc; scripts/setup.sh builds it with -DGGML_RPC=ON",
    ),
]

MIB = 1024 * 1024
SCRATCH = 4 * MIB
N_CTX = 256
PROMPTS = ("The quick brown fox", "Once upon a time", "Water boils at")
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> ModelInfo:
    from opengrid.engines.tiny_model import write_tiny_gguf

    path = write_tiny_gguf(tmp_path_factory.mktemp("split-audit") / "tiny.gguf")
    return ModelInfo("tiny", path, sha256_file(path))


@pytest.fixture(scope="module")
def auditor(tiny: ModelInfo) -> LlamaEngine:
    return LlamaEngine(tiny, n_ctx=N_CTX, n_threads=1)


def audit(auditor: LlamaEngine, prompt: str, claim: Generation) -> AuditVerdict:
    """What an auditor of the grid concludes about ``claim``: re-score it, judge at the default tolerance."""
    scoring = auditor.score(ScoreRequest(prompt, claim.tokens, stopped=claim.finish_reason == "stop"))
    return judge(scoring.evidence, AuditPolicy(gap_tolerance=CoordinatorConfig().audit_tolerance))


@asynccontextmanager
async def host() -> AsyncIterator[Host]:
    quiet_libp2p_logging()
    async with open_host(secrets.token_bytes(32)) as h:
        yield h


MemberFactory = Callable[[Host, SplitLimits], SplitMember]


async def group_claims(tiny: ModelInfo, *member_for: MemberFactory) -> list[Generation]:
    """One split group: the head holds no layer, each member an equal run of them, in the order given;
    its greedy output for each prompt."""
    from opengrid.engines.split import SplitEngine

    fp = model_footprint(tiny.path, n_ctx=N_CTX, overhead_bytes=SCRATCH)
    head_free = fp.input_bytes + fp.output_bytes + SCRATCH
    offer = SCRATCH + fp.layer_bytes[0] * (fp.n_layers // len(member_for))  # nobody can hold more
    async with AsyncExitStack() as stack:
        head_host = await stack.enter_async_context(host())
        unordered = {h.peer_id: h for h in [await stack.enter_async_context(host()) for _ in member_for]}
        candidates = [SplitCandidate(peer, offer) for peer in unordered]
        plan = plan_split(fp, SplitCandidate("head", head_free), candidates)
        assert plan.head_layers == 0 and len(plan.members) == len(member_for)
        # The planner orders equal offers its own way (peer ids are random): the factories go to the
        # hosts in the plan's layer order, so the first factory runs the first layers.
        hosts = [unordered[m.peer] for m in plan.members]
        nursery = await stack.enter_async_context(trio.open_nursery())  # closed first, before the hosts
        for factory, member_host in zip(member_for, hosts, strict=True):
            await nursery.start(factory(member_host, SplitLimits(max_memory_bytes=offer)).run)
            await head_host.connect(member_host.addrs()[0])
        head = SplitHead(head_host)
        endpoints = []
        for share in plan.members:
            lease = await head.invite(
                share.peer, model_sha256=tiny.sha256, units=share.count, bytes_needed=share.bytes
            )
            endpoints.append(await nursery.start(head.serve_endpoint, lease))

        def generate() -> list[Generation]:
            with SplitEngine(
                tiny,
                endpoints,
                plan.tensor_split,
                plan.offloaded,
                n_ctx=N_CTX,
                n_threads=1,
                token_timeout_s=30,
            ) as engine:
                return [engine.generate(GenerationRequest(p, max_tokens=MAX_TOKENS)) for p in PROMPTS]

        claims = await trio.to_thread.run_sync(generate)
        nursery.cancel_scope.cancel()
    return claims


def corrupting(corruption: Corruption) -> MemberFactory:
    return lambda h, limits: corrupting_member(h, limits, corruption)


def honest(h: Host, limits: SplitLimits) -> SplitMember:
    return SplitMember(h, limits)


async def test_an_honest_group_passes_the_audit(tiny: ModelInfo, auditor: LlamaEngine) -> None:
    """Through the adversary's wrapper at zero noise (so the wrapper is shown to be transparent and to
    find the activations): the group's tokens are one process's, and every claim passes."""
    corruption = Corruption(relative_noise=0.0)
    claims = await group_claims(tiny, corrupting(corruption))
    assert corruption.answers_seen >= len(PROMPTS) * MAX_TOKENS  # a hidden state per evaluated batch
    assert corruption.answers_corrupted == 0
    for prompt, claim in zip(PROMPTS, claims, strict=True):
        assert claim.tokens == auditor.generate(GenerationRequest(prompt, max_tokens=MAX_TOKENS)).tokens
        verdict = audit(auditor, prompt, claim)
        assert verdict.accepted, verdict.reason
        assert verdict.positions == MAX_TOKENS and verdict.max_gap < 0.1


@pytest.mark.parametrize("where", ["alone", "first-of-two"])
async def test_a_member_that_corrupts_activations_fails_the_audit(
    tiny: ModelInfo, auditor: LlamaEngine, where: str
) -> None:
    """The group with a member returning its hidden states with 30 % noise, either its only member or the
    first of two (whose output the head relays to an honest second member): every claim the group
    produces fails the audit, at a named position, by more than the tolerance."""
    corruption = Corruption(relative_noise=0.3, seed=7)
    members = [corrupting(corruption)] if where == "alone" else [corrupting(corruption), honest]
    claims = await group_claims(tiny, *members)
    assert corruption.answers_corrupted >= len(PROMPTS) * MAX_TOKENS
    tolerance = CoordinatorConfig().audit_tolerance
    for prompt, claim in zip(PROMPTS, claims, strict=True):
        verdict = audit(auditor, prompt, claim)
        assert not verdict.accepted, f"a corrupted claim passed: {claim.tokens}"
        assert verdict.first_failure is not None and verdict.failure is not None
        assert verdict.failure.gap > tolerance
        assert "logits below the sampler's choice" in verdict.reason
