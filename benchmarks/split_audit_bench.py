"""Issue 17: how much corruption of a split group's activations the audit catches.

One split group on loopback (head + one member, the layers split evenly as split_bench.py does), whose
member is ``opengrid.testing.split_adversary``'s: it multiplies every float of the hidden states it
returns to its head by ``1 + noise * N(0, 1)``. For each noise size, the group answers the same prompts
(greedy); each claim is audited as a grid audits: ``LlamaEngine.score`` in one process on the same model,
judged by ``opengrid.core.audit.judge`` at the coordinator's default tolerance. Reported per noise size:
the claims whose tokens differ from one process's, the claims that fail the audit, and the largest gap.
A claim whose tokens are unchanged is a correct output and rightly passes; the question is how small a
corruption still changes tokens without failing.

    .venv/bin/python benchmarks/split_audit_bench.py                       # SmolLM2-135M, 12 prompts
    .venv/bin/python benchmarks/split_audit_bench.py --model tiny --noise 0.01,0.1,1 --prompts 6
"""

from __future__ import annotations

import argparse
import json
import pathlib
import secrets
import sys
import time
from typing import Any

import trio

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cross_build_bench import PROMPTS  # noqa: E402

from opengrid.core.audit import AuditPolicy, judge  # noqa: E402
from opengrid.core.coordinator.config import CoordinatorConfig  # noqa: E402
from opengrid.core.split_plan import SplitCandidate, plan_split  # noqa: E402
from opengrid.engines.base import Generation, GenerationRequest, ModelInfo, ScoreRequest  # noqa: E402
from opengrid.engines.footprint import model_footprint  # noqa: E402
from opengrid.engines.llama import LlamaEngine  # noqa: E402
from opengrid.engines.models import resolve_model, sha256_file  # noqa: E402
from opengrid.engines.split import SplitEngine  # noqa: E402
from opengrid.net.host import open_host, quiet_libp2p_logging  # noqa: E402
from opengrid.net.split import SplitHead, SplitLimits  # noqa: E402
from opengrid.testing.split_adversary import Corruption, corrupting_member  # noqa: E402

MIB = 1024 * 1024


async def claims_by_noise(
    model: ModelInfo, prompts: list[str], noises: list[float], args: argparse.Namespace
) -> tuple[dict[float, list[Generation]], Corruption]:
    """One group; for each noise size, its claim for every prompt."""
    quiet_libp2p_logging()
    scratch = args.scratch_mib * MIB
    fp = model_footprint(model.path, n_ctx=args.n_ctx, overhead_bytes=scratch)
    # The head offers room for half the layers (so it needs the member), the member for the rest and one
    # more: the planner splits the layers about evenly.
    head_share = sum(fp.layer_bytes) // 2 + scratch
    share = sum(fp.layer_bytes) - sum(fp.layer_bytes) // 2 + max(fp.layer_bytes) + scratch
    corruption = Corruption(relative_noise=0.0, seed=args.seed)
    out: dict[float, list[Generation]] = {}
    async with (
        open_host(secrets.token_bytes(32)) as member_host,
        open_host(secrets.token_bytes(32)) as head_host,
        trio.open_nursery() as nursery,
    ):
        member = corrupting_member(member_host, SplitLimits(max_memory_bytes=share), corruption)
        await nursery.start(member.run)
        head_free = head_share + fp.input_bytes + fp.output_bytes
        plan = plan_split(fp, SplitCandidate("head", head_free), [SplitCandidate(member_host.peer_id, share)])
        (member_share,) = plan.members
        head = SplitHead(head_host)
        await head_host.connect(member_host.addrs()[0])
        lease = await head.invite(
            member_share.peer,
            model_sha256=model.sha256,
            units=member_share.count,
            bytes_needed=member_share.bytes,
        )
        endpoint = await nursery.start(head.serve_endpoint, lease)
        print(f"group: head {plan.head_layers} layers, member {member_share.count} layers", flush=True)

        def generate_all() -> None:
            with SplitEngine(
                model,
                [endpoint],
                plan.tensor_split,
                plan.offloaded,
                n_ctx=args.n_ctx,
                n_threads=args.threads,
                load_timeout_s=600,
            ) as engine:
                for noise in noises:
                    corruption.relative_noise = noise
                    out[noise] = [
                        engine.generate(GenerationRequest(p, max_tokens=args.tokens)) for p in prompts
                    ]

        await trio.to_thread.run_sync(generate_all)
        nursery.cancel_scope.cancel()
    return out, corruption


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2", help="catalog name or GGUF path (default smollm2)")
    parser.add_argument("--noise", default="0,0.001,0.003,0.01,0.03,0.1,0.3,1", help="relative noise sizes")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-ctx", type=int, default=512)
    parser.add_argument("--scratch-mib", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1, help="seed of the adversary's noise")
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()
    path = pathlib.Path(args.model)
    model = ModelInfo(path.stem, path, sha256_file(path)) if path.is_file() else resolve_model(args.model)
    prompts = PROMPTS[: args.prompts]
    noises = [float(x) for x in args.noise.split(",")]
    tolerance = CoordinatorConfig().audit_tolerance
    started = time.perf_counter()
    claims, corruption = trio.run(claims_by_noise, model, prompts, noises, args)
    report: dict[str, Any] = {"model": model.name, "tolerance": tolerance, "tokens": args.tokens, "rows": []}
    with LlamaEngine(model, n_ctx=args.n_ctx, n_threads=args.threads) as auditor:
        honest = [auditor.generate(GenerationRequest(p, max_tokens=args.tokens)).tokens for p in prompts]
        print(f"{model.name}, {len(prompts)} prompts x {args.tokens} tokens, tolerance {tolerance} logits")
        for noise in noises:
            changed = failed = changed_passed = 0
            gaps = []
            for prompt, claim, truth in zip(prompts, claims[noise], honest, strict=True):
                scoring = auditor.score(
                    ScoreRequest(prompt, claim.tokens, stopped=claim.finish_reason == "stop")
                )
                verdict = judge(scoring.evidence, AuditPolicy(gap_tolerance=tolerance))
                differs = claim.tokens != truth
                changed += differs
                failed += not verdict.accepted
                changed_passed += differs and verdict.accepted
                gaps.append(verdict.max_gap)
            row = {
                "noise": noise,
                "claims": len(prompts),
                "tokens_changed": changed,
                "audit_failed": failed,
                "changed_but_passed": changed_passed,
                "max_gap": max(gaps),
                "median_max_gap": sorted(gaps)[len(gaps) // 2],
            }
            report["rows"].append(row)
            print(
                f"noise {noise:>6}: tokens changed in {changed}/{len(prompts)} claims, audit failed "
                f"{failed}/{len(prompts)} (changed but passed: {changed_passed}); largest gap "
                f"{row['max_gap']:.2f}, median {row['median_max_gap']:.2f} logits",
                flush=True,
            )
    report["answers_corrupted"] = corruption.answers_corrupted
    report["seconds"] = time.perf_counter() - started
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
