"""Canaries (spec/verification-adaptive.md): verified answers kept and now and then re-sent under a fresh
job id to one worker that never saw them; a different answer costs the worker its reputation. Canaries
never reach a client or the ledger."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from opengrid.core.coordinator.records import Canary, JobRecord, KnownAnswer
from opengrid.core.coordinator.shared import CoordinatorParts
from opengrid.core.effects import DispatchReplica, Effect, Penalize
from opengrid.core.events import ReplicaReturned
from opengrid.core.scheduler import choose_class, pick_workers
from opengrid.wire.contract import DecodingContract
from opengrid.wire.messages import PromptFormat, RunJob


class CanariesPart(CoordinatorParts):
    """Known answers kept, canaries sent, their answers compared.

    A mixin of ``Coordinator`` over ``CoordinatorParts``.
    """

    def _keep_answer(self, job: JobRecord, commitment: bytes) -> None:
        """Keep ``job``'s verified answer for canaries; the workers it went to already know the prompt."""
        self.add_known_answer(
            job.request.prompt,
            job.contract,
            job.request.max_tokens,
            commitment,
            seen={self.workers[p].key for p in job.tried() if p in self.workers},
            format=job.request.format,
        )

    def add_known_answer(
        self,
        prompt: str,
        contract: DecodingContract,
        max_tokens: int,
        commitment: bytes,
        *,
        seen: Iterable[bytes] = (),
        format: PromptFormat = "text",
    ) -> None:
        """Keep a verified answer for canaries (the coordinator does this for every job two or more
        workers agreed on; a driver may add answers a trusted node computed). ``seen``: worker keys that
        already know this prompt, never canaried with it. The pool keeps the newest answers."""
        if self.config.canary_pool_size <= 0 or not contract.greedy:
            return  # a sampled answer is fixed by its own job id: a canary (a new job id) would differ
        self._known.append(KnownAnswer(prompt, contract, max_tokens, commitment, set(seen), format))
        del self._known[: -self.config.canary_pool_size]

    def _maybe_canary(self, now: float) -> list[Effect]:
        """With probability ``canary_rate``, re-send a known answer's prompt to one worker, as a new job."""
        if self.config.canary_rate <= 0 or not self._known or self._rng.random() >= self.config.canary_rate:
            return []
        answer = self._rng.sample(self._known, 1)[0]
        busy = {canary.peer for canary in self._canaries.values()}
        pool = [
            self._candidate(r, o)
            for r in self.workers.values()
            if r.online and r.key not in answer.seen and r.peer not in busy and self._has_slot(r.peer)
            for o in r.offers
            if o.contract == answer.contract
        ]
        chosen = pick_workers(choose_class(pool), 1, exclude=(), rng=self._rng)
        if not chosen:
            return []
        worker = chosen[0]
        canary_id = self._fresh_canary_id()
        answer.seen.add(worker.key)
        self._occupy(worker.peer)
        self._canaries[canary_id] = Canary(
            peer=worker.peer,
            key=worker.key,
            answer=answer,
            sent_at=now,
            deadline=now + self.config.replica_timeout_s,
        )
        run = RunJob(
            job_id=canary_id,
            contract=answer.contract,
            prompt=answer.prompt,
            max_tokens=answer.max_tokens,
            format=answer.format,
        )
        return [DispatchReplica(peer=worker.peer, run=run)]

    def _fresh_canary_id(self) -> bytes:
        while True:
            self._canary_count += 1
            candidate = hashlib.blake2b(
                self._canary_count.to_bytes(8, "big"), key=self._canary_secret, digest_size=16
            ).digest()
            if candidate not in self._jobs and candidate not in self._canaries:
                if self.ledger.receipt_for(candidate) is None:
                    return candidate

    def _on_canary_returned(self, event: ReplicaReturned, now: float) -> list[Effect]:
        canary = self._canaries.get(event.job_id)
        if canary is None or canary.peer != event.peer:
            return []
        answer = canary.answer
        problem = self._check_result(
            event.peer, event.job_id, answer.contract, answer.max_tokens, event.result
        )
        if isinstance(problem, str):
            return self._on_canary_failed(event.job_id, event.peer, problem, penalize=True)
        del self._canaries[event.job_id]
        self._release(event.peer)
        if problem.output_commitment != answer.commitment:
            self._record(canary.key, "invalid")
            return [
                Penalize(peer=event.peer, why="canary: output differs from a verified answer to the same job")
            ]
        self._record(canary.key, "valid")
        self._measure(event.peer, len(event.result.tokens), now - canary.sent_at)
        return []

    def _on_canary_failed(self, canary_id: bytes, peer: str, reason: str, *, penalize: bool) -> list[Effect]:
        canary = self._canaries.get(canary_id)
        if canary is None or canary.peer != peer:
            return []
        del self._canaries[canary_id]
        self._release(peer)
        self._record(canary.key, "invalid" if penalize else "timeout")
        if penalize:
            return [Penalize(peer=peer, why=f"canary: {reason}")]
        record = self.workers.get(peer)
        if record is not None:
            record.online = False  # as for any failed replica: no new work until it beats again
        return []
