"""The typed state every part of the coordinator shares, and the calls the parts make on each other.

``CoordinatorParts`` declares each attribute ``Coordinator.__init__`` sets and, as abstract methods, each
method one part calls on another: the parts are mixins, and this is their contract (a missing part makes
``Coordinator`` abstract, so it cannot be built)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Container, Iterable, Sequence
from typing import Protocol

from opengrid_ledger import (
    Attestation,
    ChainWriter,
    Cosignature,
    Entry,
    LedgerState,
    Payload,
    SignatureScheme,
)

from opengrid.core.audit_policy import AuditPlanConfig
from opengrid.core.coordinator.config import CoordinatorConfig
from opengrid.core.coordinator.records import Canary, JobRecord, KnownAnswer, WorkerRecord
from opengrid.core.coordinator.state import JobEvent
from opengrid.core.effects import Effect
from opengrid.core.events import AuditReturned, JobSubmitted, ReplicaReturned
from opengrid.core.grants import GrantPolicy
from opengrid.core.queueing import FairQueue
from opengrid.core.refusal import Refusal
from opengrid.core.reputation import Outcome, Reputation
from opengrid.core.scheduler import Candidate, RandomSource
from opengrid.core.stream_chunks import ChunkPolicy
from opengrid.core.verifier import Agreement
from opengrid.wire.contract import DecodingContract
from opengrid.wire.messages import (
    AuditJob,
    AuditReport,
    ErrorCode,
    ModelOffer,
    ReceiptNotice,
    ReplicaResult,
    SubmitJob,
)


class AuditorJournal(Protocol):
    """Durable storage of the coordinator's auditor records (``opengrid.store.auditor_store``), so an
    auditor caught lying stays barred across restarts (spec/verification.md §13.6)."""

    def record(self, key: bytes, reputation: Reputation) -> None:
        """Keep ``key``'s record as an auditor (replacing the one kept before)."""


class CoordinatorParts(ABC):
    """Shared state (set by ``Coordinator.__init__``) and the cross-part calls."""

    network: str
    """The network's name (every signed entry and attestation names it)."""
    config: CoordinatorConfig
    public_key: bytes
    """This coordinator's key: it authors receipts and is a minter of ``ledger``."""
    ledger: LedgerState
    workers: dict[str, WorkerRecord]
    """peer -> what we know of it (``registry.py`` adds and changes records)."""
    reputation: dict[bytes, Reputation]
    audit_reputation: dict[bytes, Reputation]
    """Audit mode: worker key -> its record as an auditor (audits.py, canaries.py)."""
    audit_journal: AuditorJournal | None
    """Where each change of ``audit_reputation`` is written (the node's SQLite store), or None."""
    grants: GrantPolicy
    _scheme: SignatureScheme
    _rng: RandomSource
    _serving: dict[str, dict[str, None]]
    _jobs: dict[bytes, JobRecord]
    chain: ChainWriter
    _own_entries: list[bytes]
    _pushed: dict[str, int]
    _known: list[KnownAnswer]
    _canaries: dict[bytes, Canary]
    _canary_count: int
    _canary_secret: bytes
    _resumed: dict[bytes, tuple[float, JobSubmitted]]
    _resume_patience: dict[bytes, float]
    _in_flight: dict[str, int]
    _queue: FairQueue[bytes]
    _auditors: int
    _audit_plans: AuditPlanConfig
    _audit_wait: dict[bytes, None]
    _chunk_policy: ChunkPolicy
    """The meaning of each is documented where ``Coordinator.__init__`` sets it."""

    # The calls one part makes on another, by the module that implements them (see there for what each
    # does). Abstract: ``Coordinator``, which inherits every part, has them all.

    # ── registry.py: workers, candidates, prices, reputations ──────────────────────────────────────────

    @abstractmethod
    def _candidate(self, record: WorkerRecord, offer: ModelOffer) -> Candidate: ...

    @abstractmethod
    def _candidates(
        self, model: str, *, allowed: Container[str] | None = None, max_tokens: int = 0
    ) -> list[Candidate]: ...

    @abstractmethod
    def _measure(self, peer: str, n_tokens: int, elapsed: float) -> None: ...

    @abstractmethod
    def _operators(self, peers: Iterable[str]) -> set[str]: ...

    @abstractmethod
    def _record(self, key: bytes, outcome: Outcome) -> None: ...

    @abstractmethod
    def _standing(self, record: WorkerRecord) -> Reputation: ...

    @abstractmethod
    def class_weight(self, contract: DecodingContract) -> int: ...

    @abstractmethod
    def served_models(self) -> list[str]: ...

    @abstractmethod
    def _audit_capacity_problem(
        self, model: str, candidates: Sequence[Candidate] | None = None
    ) -> Refusal | None: ...

    @abstractmethod
    def weight(self, model: str, *, max_tokens: int = 0) -> int | None: ...

    # ── dispatch.py: submission, queue, slots, refills ─────────────────────────────────────────────────

    @abstractmethod
    def _drain(self, now: float) -> list[Effect]: ...

    @abstractmethod
    def _has_slot(self, peer: str) -> bool: ...

    @abstractmethod
    def _occupy(self, peer: str) -> None: ...

    @abstractmethod
    def _refill(self, job: JobRecord, now: float) -> list[Effect]: ...

    @abstractmethod
    def _release(self, peer: str) -> None: ...

    # ── results.py: replica results ────────────────────────────────────────────────────────────────────

    @abstractmethod
    def _check_result(
        self,
        peer: str,
        job_id: bytes,
        contract: DecodingContract,
        max_tokens: int,
        result: ReplicaResult,
        *,
        sealed: bool = False,
    ) -> Attestation | str: ...

    @abstractmethod
    def _on_failed(
        self, job_id: bytes, peer: str, reason: str, now: float, *, penalize: bool
    ) -> list[Effect]: ...

    # ── audits.py: audit mode ──────────────────────────────────────────────────────────────────────────

    @abstractmethod
    def _cancel_audits(self, job: JobRecord) -> list[Effect]: ...

    @abstractmethod
    def _drain_audits(self, now: float) -> list[Effect]: ...

    @abstractmethod
    def _start_audits(self, job: JobRecord, now: float) -> list[Effect]: ...

    @abstractmethod
    def _draw_auditors(
        self, pool: Sequence[Candidate], needed: int, *, exclude: set[str], prover: str
    ) -> list[Candidate]: ...

    @abstractmethod
    def _record_auditor(self, peer: str, outcome: Outcome) -> None: ...

    @abstractmethod
    def _reject_claim(
        self, job: JobRecord, auditor: str, report: AuditReport, now: float, *, blame_prover: bool = True
    ) -> list[Effect]: ...

    @abstractmethod
    def _replace_auditor(self, job: JobRecord, now: float) -> list[Effect]: ...

    @abstractmethod
    def _sealed_claims_problem(self, job: JobRecord, peer: str, result: ReplicaResult) -> str | None: ...

    # ── canaries.py: known answers and canaries ────────────────────────────────────────────────────────

    @abstractmethod
    def _maybe_canary(self, now: float) -> list[Effect]: ...

    @abstractmethod
    def _on_canary_failed(
        self, canary_id: bytes, peer: str, reason: str, *, penalize: bool
    ) -> list[Effect]: ...

    @abstractmethod
    def _on_canary_returned(self, event: ReplicaReturned, now: float) -> list[Effect]: ...

    @abstractmethod
    def _keep_answer(self, job: JobRecord, commitment: bytes) -> None: ...

    @abstractmethod
    def _maybe_canary_audit(self, job: JobRecord, now: float) -> list[Effect]: ...

    @abstractmethod
    def _on_canary_audit_returned(self, event: AuditReturned, now: float) -> list[Effect]: ...

    # ── streaming.py: verified prefixes of streaming jobs ──────────────────────────────────────────────

    @abstractmethod
    def progress_contradiction(self, job_id: bytes, peer: str, tokens: list[int]) -> str | None: ...

    @abstractmethod
    def stream_contradiction(self, job: JobRecord, agreement: Agreement) -> str | None: ...

    @abstractmethod
    def sealed_chunks_contradiction(self, job_id: bytes, peer: str, n_tokens: int) -> str | None: ...

    @abstractmethod
    def _audit_claim(self, job: JobRecord, now: float) -> list[Effect]: ...

    @abstractmethod
    def _chunked_audit_job(self, job: JobRecord) -> AuditJob | None: ...

    @abstractmethod
    def _chunks_for(self, job: JobRecord, peer: str) -> list[Effect]: ...

    @abstractmethod
    def _drop_chunked(self, job: JobRecord, peer: str) -> list[Effect]: ...

    @abstractmethod
    def _open_streamed_claim(self, job: JobRecord, peer: str, now: float) -> list[Effect]: ...

    # ── settle.py: a job's end without a receipt ───────────────────────────────────────────────────────

    @abstractmethod
    def _cancel_pending(self, job: JobRecord) -> list[Effect]: ...

    @abstractmethod
    def _fail(
        self, job_id: bytes, code: ErrorCode, message: str, *, end: JobEvent = JobEvent.FAILED
    ) -> list[Effect]: ...

    # ── payments.py: holds and grants ──────────────────────────────────────────────────────────────────

    @abstractmethod
    def _take_hold(self, request: SubmitJob, weight: int) -> tuple[bytes | Refusal, list[Effect]]: ...

    # ── chain.py: our own chain (the only signer) ──────────────────────────────────────────────────────

    @abstractmethod
    def _adopt(self, applied: Iterable[Entry]) -> None: ...

    @abstractmethod
    def _author(self, payload: Payload) -> list[Effect]: ...

    @abstractmethod
    def _evidence(self, job: JobRecord) -> list[Effect]: ...

    @abstractmethod
    def _notice_for(self, peer: str) -> ReceiptNotice: ...

    @abstractmethod
    def _sign_own(self, payload: Payload) -> Entry: ...

    @abstractmethod
    def _sign_ahead(self, payloads: Sequence[Payload]) -> list[Entry]: ...

    @abstractmethod
    def _voucher(self, account: bytes, points: int) -> Cosignature: ...
