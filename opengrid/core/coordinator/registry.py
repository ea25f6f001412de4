"""Who works for this coordinator: registrations and heartbeats, the candidate index, quotes, model
weights (prices), reputations and measured speeds. Read by every other part; the only part that adds or
changes worker records.

Two requests are decided here and only here, for the trio node and the simulator alike: a worker's
registration (``registration``: accepted as a ``WorkerRegistered`` event to feed, or a ``Refusal``) and a
client's quote (``answer_quote``: a ``Quote`` or a ``Refusal``). The driver does the I/O around them: it
derives the key behind the connection's peer id, reads its operator's approvals, sends the reply."""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence

from opengrid.core.coordinator.config import QUOTE_FRESH_BEATS
from opengrid.core.coordinator.records import WorkerRecord
from opengrid.core.coordinator.shared import CoordinatorParts
from opengrid.core.effects import Effect
from opengrid.core.events import WorkerRegistered
from opengrid.core.refusal import Refusal
from opengrid.core.reputation import Outcome, Reputation
from opengrid.core.scheduler import Candidate, choose_class, pick_workers
from opengrid.wire.contract import DecodingContract
from opengrid.wire.messages import (
    MAX_EXPOSURE,
    ModelOffer,
    Quote,
    QuotedWorker,
    QuoteRequest,
    RegisterWorker,
    model_weight,
)
from opengrid.wire.sealed import box_public_key

AWAITING_APPROVAL = Refusal(
    "busy", "this coordinator admits workers its operator approved; yours is awaiting approval"
)
"""The answer to a worker its operator has not approved (``approve_workers``): the driver notes it as
pending when it sees this refusal, so the operator can approve it."""


class RegistryPart(CoordinatorParts):
    """Registrations, the candidate index, quotes, weights, reputations and speeds.

    A mixin of ``Coordinator`` over ``CoordinatorParts``.
    """

    def _forget_silent(self, now: float) -> None:
        """Drop the workers silent for ``forget_after_s`` that no job or canary still refers to."""
        silent = [
            peer
            for peer, record in self.workers.items()
            if not record.online and now - record.last_seen >= self.config.forget_after_s
        ]
        if not silent:
            return
        in_use = {peer for job in self._jobs.values() for peer in job.tried()}
        in_use |= {canary.peer for canary in self._canaries.values()}
        for peer in silent:
            if peer in in_use:
                continue
            record = self.workers.pop(peer)
            for name in _index_names(record.offers):
                serving = self._serving.get(name)
                if serving is not None:
                    serving.pop(peer, None)
                    if not serving:
                        del self._serving[name]

    def registration(
        self,
        peer: str,
        message: RegisterWorker,
        *,
        peer_key: bytes,
        approved: bool = True,
        operator: str = "",
        rtt_s: float = 0.0,
        member_keys: Sequence[bytes] = (),
    ) -> WorkerRegistered | Refusal:
        """Decide ``peer``'s registration (or heartbeat) ``message``: the event to feed to ``handle``, or
        why it is refused (spec/job-protocol.md §6.1).

        ``peer_key``: the Ed25519 key behind the connection's peer id (the driver derives it); the worker's
        ``public_key`` must be that key, or it could register (and be credited) under another's.
        ``approved``: its operator approved it, where the coordinator admits approved workers only (else
        ``AWAITING_APPROVAL``); ``operator``, ``rtt_s``: what the driver knows of it (``WorkerRegistered``).
        ``member_keys``: a split group's members' accounts, the keys inlined in ``split_members``' peer ids.
        """
        if message.network != self.network:
            return Refusal(
                "malformed",
                f"this coordinator runs network {self.network!r}, not {message.network!r}; "
                "start the worker with the same --network",
            )
        if message.public_key != peer_key:
            return Refusal("malformed", "public_key does not match the connection's peer id")
        if not approved:
            return AWAITING_APPROVAL
        return WorkerRegistered(
            peer=peer,
            key=message.public_key,
            offers=tuple(message.models),
            operator=operator,
            rtt_s=rtt_s,
            slots=message.slots,
            probed_tokens_per_s=message.tokens_per_s,
            max_job_tokens=message.max_job_tokens,
            members=tuple(dict.fromkeys(k for k in member_keys if k != message.public_key)),
        )

    def _on_registered(self, event: WorkerRegistered, now: float) -> list[Effect]:
        earlier = self.workers.get(event.peer)
        if earlier is None:  # a registry that grows is swept as it grows, not only on timers
            self._forget_silent(now)
        # A heartbeat that changes nothing frees no capacity: only then is the queue not looked at.
        grown = (
            earlier is None
            or not earlier.online
            or earlier.offers != event.offers
            or earlier.slots < event.slots
            or earlier.operator != event.operator
            or earlier.max_job_tokens != event.max_job_tokens
        )
        if earlier is None or earlier.offers != event.offers:
            for name in _index_names(earlier.offers if earlier is not None else ()):
                peers = self._serving[name]
                del peers[event.peer]
                if not peers:
                    del self._serving[name]
            for name in _index_names(event.offers):
                self._serving.setdefault(name, {})[event.peer] = None
        self.workers[event.peer] = WorkerRecord(
            peer=event.peer,
            key=event.key,
            offers=event.offers,
            last_seen=now,
            online=True,
            operator=event.operator,
            rtt_s=event.rtt_s,
            tokens_per_s=earlier.tokens_per_s if earlier is not None and earlier.key == event.key else 0.0,
            slots=max(1, event.slots),
            probed_tokens_per_s=max(0.0, event.probed_tokens_per_s),
            max_job_tokens=max(0, event.max_job_tokens),
            members=event.members,
        )
        return self._drain(now) if grown else []

    def served_models(self) -> list[str]:
        """Names of the models some online worker serves, sorted."""
        return sorted({o.name for r in self.workers.values() if r.online for o in r.offers})

    def _candidates(
        self, model: str, *, allowed: Container[str] | None = None, max_tokens: int = 0
    ) -> list[Candidate]:
        """Online workers serving ``model`` (only those in ``allowed``, when given; only those that take
        jobs of ``max_tokens`` tokens, when given: edge nodes take short jobs only).

        O(workers serving ``model``), through the index. The order of the list is not part of any
        decision: every caller passes it through ``choose_class``, which sorts by peer (and is stable
        within one peer, whose offers keep their order here).
        """
        wanted = model.lower()
        records = (self.workers[peer] for peer in self._serving.get(wanted, ()))
        return [
            self._candidate(r, o)
            for r in records
            if r.online and (allowed is None or r.peer in allowed) and takes_job(r, max_tokens)
            for o in r.offers
            if wanted in (o.name.lower(), o.contract.model_sha256.lower())
        ]

    def _holders(self, model: str) -> set[str]:
        """The peers of ``_candidates(model)``, without building a candidate (and scoring its reputation)
        for each of their offers: the audit capacity check runs on every submission and needs only them."""
        wanted = model.lower()
        records = (self.workers[peer] for peer in self._serving.get(wanted, ()))
        return {
            r.peer
            for r in records
            if r.online and any(wanted in (o.name.lower(), o.contract.model_sha256.lower()) for o in r.offers)
        }

    def quote(
        self,
        model: str,
        *,
        exposure: int,
        trusted: Sequence[str] = (),
        max_tokens: int = 0,
        now: float | None = None,
    ) -> list[Candidate]:
        """Up to ``exposure`` workers of one numerical class for a sealed job of ``max_tokens`` (0: any
        length), chosen at random on distinct operators (only among ``trusted`` when given) from the class
        the job itself would run on. The client seals its prompt to these.

        With ``now``, workers heard from within ``QUOTE_FRESH_BEATS`` heartbeats are drawn first and the
        others only fill the places left (spec/sealed-mode.md §4): a worker that died a moment ago is still
        online here until ``3 * heartbeat_s`` of silence, and a job sealed to it can only fail over to the
        other workers it was sealed to. None: every online worker counts as fresh."""
        allowed = set(trusted) if trusted else None
        pool = choose_class(self._candidates(model, allowed=allowed, max_tokens=max_tokens))
        if now is None:
            return pick_workers(pool, exposure, exclude=(), rng=self._rng)
        fresh_s = QUOTE_FRESH_BEATS * self.config.heartbeat_s
        stale = {c.peer for c in pool if now - self.workers[c.peer].last_seen > fresh_s}
        chosen = pick_workers([c for c in pool if c.peer not in stale], exposure, exclude=(), rng=self._rng)
        if len(chosen) < exposure and stale:
            taken = {c.peer for c in chosen}
            chosen += pick_workers(
                [c for c in pool if c.peer in stale],
                exposure - len(chosen),
                exclude=taken,
                rng=self._rng,
                exclude_operators=self._operators(taken),
            )
        return chosen

    def _audit_capacity_problem(
        self, model: str, candidates: Sequence[Candidate] | None = None
    ) -> Refusal | None:
        """Why this coordinator cannot audit jobs of ``model`` at all (audit mode, spec/verification.md
        §13.1): fewer than ``1 + auditors`` online workers hold its weights. None when they do, when the
        model is not served (another refusal says so) or in replicate mode. ``candidates``:
        ``_candidates(model)`` when the caller has it already."""
        if self.config.verify != "audit":
            return None
        served = choose_class(self._candidates(model) if candidates is None else candidates)
        if not served:
            return None
        holding = self._holders(served[0].contract.model_sha256)
        needed = 1 + max(1, self.config.auditors)
        if len(holding) >= needed:
            return None
        return Refusal(
            "no_capacity",
            f"this coordinator audits every job: it needs a worker to run it and {needed - 1} other(s) "
            f"holding the same weights to audit it, but only {len(holding)} online worker(s) serve "
            f"{model!r}; add a worker serving it, or start the coordinator with --verify replicate "
            "(exact replication, for engines that cannot score)",
        )

    def answer_quote(self, request: QuoteRequest, now: float | None = None) -> Quote | Refusal:
        """The answer to a client's ``request`` for a sealed or paid job: which workers would run it, with
        their keys, and the price per token (spec/sealed-mode.md §4); or why no quote would do (a job too
        long for the workers is refused in the submission's own words: ``too_long``)."""
        model, replicas = request.model, request.replicas
        chosen = self.quote(
            model, exposure=request.exposure, trusted=request.trusted, max_tokens=request.max_tokens, now=now
        )
        if len(chosen) < replicas and request.max_tokens:
            any_length = self.quote(model, exposure=MAX_EXPOSURE, trusted=request.trusted)
            if len(any_length) >= replicas:  # as at submission: name the length that would do
                return too_long(model, max(self.workers[c.peer].max_job_tokens for c in any_length))
        unauditable = self._audit_capacity_problem(model)
        if unauditable is not None:  # no seal or payment can help: say what would
            return unauditable
        if len(chosen) < replicas:
            served = ", ".join(self.served_models()) or "none yet"
            if not chosen and not self.quote(model, exposure=MAX_EXPOSURE):
                return Refusal(  # the API's words for it (opengrid/node/api.py)
                    "unknown_model",
                    f"no worker serves model {model!r}; served: {served} (start a worker with "
                    f"--model {model}, or ask for a served model)",
                )
            return Refusal(
                "no_capacity" if chosen else "unknown_model",
                f"job asks for {replicas} replicas of {model!r} but only {len(chosen)} "
                f"worker(s) can run it sealed; lower replicas or wait for workers (served here: {served})",
            )
        return Quote(
            model=model,
            workers=[
                QuotedWorker(peer_id=c.peer, public_key=c.key, box_key=box_public_key(c.key)) for c in chosen
            ],
            weight=self.class_weight(chosen[0].contract),
        )

    def weight(self, model: str, *, max_tokens: int = 0) -> int | None:
        """Points per generated token of ``model`` here, its weight (spec/ledger.md §7): what a job of it
        costs per token per replica, and what each agreeing worker earns per token. ``max_tokens``: of the
        class a job that long runs on (the same choice as its submission). None: no online worker serves
        it."""
        candidates = choose_class(self._candidates(model, max_tokens=max_tokens))
        return self.class_weight(candidates[0].contract) if candidates else None

    def class_weight(self, contract: DecodingContract) -> int:
        """The weight of the numerical class ``contract``: ``model_weight`` of the parameter count the
        config pins for its model file (the catalog's), else of the smallest count an online worker of the
        class announces — so one worker that inflates its count cannot raise the price."""
        sha = contract.model_sha256.lower()
        pinned = self.config.model_params.get(sha)
        if pinned is not None:
            return model_weight(pinned)
        announced = [
            offer.n_params
            for peer in self._serving.get(sha, ())
            if self.workers[peer].online
            for offer in self.workers[peer].offers
            if offer.contract == contract
        ]
        return model_weight(min(announced, default=0))

    def _candidate(self, record: WorkerRecord, offer: ModelOffer) -> Candidate:
        return Candidate(
            peer=record.peer,
            key=record.key,
            model_name=offer.name,
            contract=offer.contract,
            reputation=self._standing(record).score if self.config.weighted else 0.0,
            tokens_per_s=self._speed(record) if self.config.weighted else 0.0,
            rtt_s=record.rtt_s if self.config.weighted else 0.0,
            speed_claimed=record.tokens_per_s <= 0,
            operator=record.operator,
        )

    def _speed(self, record: WorkerRecord) -> float:
        """Its speed for the draw: measured here on verified results, else its own start-up claim (the tier
        it announced), which can only lower its odds (``Candidate.speed_claimed``: a cheater would claim
        to be fast) and is replaced by the first measurement."""
        return record.tokens_per_s if record.tokens_per_s > 0 else record.probed_tokens_per_s

    def _operators(self, peers: Iterable[str]) -> set[str]:
        return {self.workers[p].operator for p in peers if p in self.workers and self.workers[p].operator}

    def _record(self, key: bytes, outcome: Outcome) -> None:
        self.reputation[key] = self.reputation.get(key, Reputation()).update(outcome)

    def _standing(self, record: WorkerRecord) -> Reputation:
        """The reputation a worker is scheduled and audited by: its own, or for a split group's head the
        weakest of its own and its registered members' (spec/split.md §6): a member caught once makes
        every group it joins rank and be audited as a caught worker, as it would alone. Weakest: one
        that was ever invalid before one that never was, then the lowest score."""
        own = self.reputation.get(record.key, Reputation())
        if not record.members:
            return own
        return min(
            (own, *(self.reputation.get(k, Reputation()) for k in record.members)),
            key=lambda r: (r.invalid == 0, r.score),
        )

    def _measure(self, peer: str, n_tokens: int, elapsed: float) -> None:
        """Fold one verified result's speed into the worker's moving average."""
        record = self.workers.get(peer)
        if record is None or elapsed <= 0 or n_tokens <= 0:
            return
        speed = n_tokens / elapsed
        record.tokens_per_s = speed if record.tokens_per_s <= 0 else 0.8 * record.tokens_per_s + 0.2 * speed


def takes_job(record: WorkerRecord, max_tokens: int) -> bool:
    """Whether the worker takes a job of ``max_tokens`` tokens (0: any length; edge nodes take short jobs
    only, ``max_job_tokens``)."""
    return not (max_tokens and record.max_job_tokens and record.max_job_tokens < max_tokens)


def too_long(model: str, longest: int) -> Refusal:
    """A job (or quote) longer than any worker serving ``model`` takes: ``longest`` tokens is the most
    they take (edge nodes). The same words for a quote and for a submission."""
    return Refusal(
        "no_capacity",
        f"the workers serving {model!r} here take jobs of at most {longest} tokens "
        f"(edge nodes); ask for max_tokens <= {longest}, or wait for a full worker",
    )


def no_sampler(model: str, temperature: float) -> Refusal:
    """A sampled job for a model that only workers without the seeded sampler serve here (HTTP engines:
    ``DecodingContract.runs_seeded_sampler``): no worker here can run it (``no_capacity``); the client can
    send temperature 0 or use another grid."""
    return Refusal(
        "no_capacity",
        f"temperature {temperature:g} needs a worker that runs the job's own seeded sampler "
        f"(spec/verification.md §11), and every worker serving {model!r} here runs an HTTP engine "
        "(llama_cpp.server or vLLM), which decodes greedily only; send temperature 0, or use a grid whose "
        "workers run the in-process llama.cpp engine",
    )


def _index_names(offers: Iterable[ModelOffer]) -> set[str]:
    """The keys ``_candidates`` looks a model up by: each offer's lowered name and model sha256."""
    return {name for o in offers for name in (o.name.lower(), o.contract.model_sha256.lower())}
