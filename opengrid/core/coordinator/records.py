"""What the coordinator remembers: one record per registered worker, per job in flight, per verified
answer kept for canaries and per canary in flight. Plain data; the parts of ``Coordinator`` change them."""

from __future__ import annotations

from dataclasses import dataclass, field

from opengrid_ledger import Attestation

from opengrid.core.audit_policy import AuditPlan
from opengrid.core.coordinator.state import JobState
from opengrid.wire.contract import DecodingContract
from opengrid.wire.messages import (
    AuditJob,
    AuditReport,
    ModelOffer,
    PromptFormat,
    ReplicaResult,
    SealedProgress,
    SubmitJob,
)


@dataclass
class WorkerRecord:
    """What the coordinator knows of one registered worker."""

    peer: str
    key: bytes
    offers: tuple[ModelOffer, ...]
    last_seen: float
    online: bool = True
    operator: str = ""
    """From the latest registration (``WorkerRegistered.operator``)."""
    rtt_s: float = 0.0
    """From the latest registration (``WorkerRegistered.rtt_s``)."""
    tokens_per_s: float = 0.0
    """Moving average of the speed measured on its verified results (dispatch to answer); 0 unmeasured."""
    slots: int = 1
    """From the latest registration (``WorkerRegistered.slots``): replicas it may run at once."""
    probed_tokens_per_s: float = 0.0
    """From the latest registration: the worker's own start-up measurement, a prior until measured here."""
    max_job_tokens: int = 0
    """From the latest registration: the longest job it takes (edge nodes); 0: no limit."""
    members: tuple[bytes, ...] = ()
    """From the latest registration: a split group's members' accounts (``RegisterWorker.split_members``);
    the group ranks as its weakest participant (``CoordinatorParts._standing``, spec/split.md §6)."""


@dataclass
class ReplicaStream:
    """One running replica's progress as its frames told it (streaming jobs, ``streaming.py``)."""

    tokens: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    """One text piece per token (``ReplicaProgress.pieces``)."""
    agrees: bool = True
    """False once its tokens or pieces left the verified prefix: it never counts towards it again."""


@dataclass
class ChunkedClaim:
    """Audit mode, streaming job: the claim of the prover now streaming, cut into chunks for its auditors
    as it arrives (``streaming.py``, spec/verification.md §14.2). Its tokens and pieces are the prover's
    ``JobRecord.streams`` entry."""

    prover: str
    ends: list[int] = field(default_factory=list)
    """Where each chunk cut so far ends (claim positions, increasing): every auditor gets these chunks."""
    pieced: int = 0
    """Chunks ending at or before this position carry the prover's text pieces (it streamed them); the
    rest of a result longer than its frames goes out without, and is never forwarded chunk by chunk."""
    passed: dict[str, int] = field(default_factory=dict)
    """Auditor -> positions it passed so far (the end of its last passing ChunkVerdict)."""
    first_options: dict[str, frozenset[tuple[int, str]]] = field(default_factory=dict)
    """Auditor -> the (token, piece) pairs it said in advance it would pass at position 0
    (FirstPositionVerdict): a one-token first chunk among them counts as passed by it."""
    final: bool = False
    """The prover's result came and the last chunk went out: its auditors answer with AuditReports."""
    sealed: list[SealedProgress] = field(default_factory=list)
    """A sealed job's claim (spec/verification.md §14.3): the prover's sealed chunks, in order, one per
    entry of ``ends`` (the prover cut them; the coordinator holds ciphertexts and commitments only)."""
    sealed_bytes: int = 0
    """The ciphertext bytes of ``sealed`` (bounded by ``streaming.MAX_SEALED_STREAM_BYTES``)."""


@dataclass
class JobRecord:
    """What the coordinator knows of one client job in flight (from its submission to its end)."""

    request: SubmitJob
    client: str
    wall_ms: int
    contract: DecodingContract
    model_name: str
    deadline: float
    target: int
    replicas: int
    """Replicas the quorum is counted against: the client's, or 1 for a trusted single result."""
    single: bool = False
    """True while the job runs as a trusted single result (reverts to full replication on a failure)."""
    pending: dict[str, float] = field(default_factory=dict)
    """peer -> replica deadline"""
    results: dict[str, tuple[ReplicaResult, Attestation]] = field(default_factory=dict)
    elapsed: dict[str, float] = field(default_factory=dict)
    """peer -> seconds from dispatch to its answer"""
    failed: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    invalid_members: list[bytes] = field(default_factory=list)
    """Accounts of the split-group members that co-signed a result of this job which failed its
    verification (its audit failed, or it was outvoted): invalid with their head (spec/split.md §6), in the
    job's EVIDENCE entry (an outvoted group's members are the receipt's dissenters instead)."""
    refused: dict[str, str] = field(default_factory=dict)
    """peer -> why it refused the job's input as the client's fault (context overflow, a sealed prompt
    that does not open): not blamed, not tried again (spec/job-protocol.md §6.4)."""
    failovers: int = 0
    sealed: dict[str, bytes] = field(default_factory=dict)
    """Sealed mode: peer -> the prompt encrypted to it; only these peers may run the job."""
    hold: bytes = b""
    """Paid jobs: the EntryId of the client's HOLD, settled on acceptance and refunded on failure."""
    hold_amount: int = 0
    weight: int = 1
    """Points per generated token of the job's model (``Coordinator.weight``), fixed at submission."""
    audit: bool = False
    """Audit mode (``CoordinatorConfig.verify``): one prover, its claim re-scored by auditors."""
    prover: str = ""
    """Audit mode: the peer whose returned claim (in ``results``) is being audited; "" before it answers,
    except for a streaming prover, whose claim is audited in chunks from its dispatch (``chunked``)."""
    audits: dict[str, float] = field(default_factory=dict)
    """Audit mode: auditor peer -> deadline of its pending audit."""
    audited: dict[str, Attestation] = field(default_factory=dict)
    """Audit mode: auditors that passed the current claim -> their attestation of it."""
    plan: AuditPlan | None = None
    """Audit mode: how the current claim is audited (auditors, window), drawn once it is committed."""
    audit_fails: dict[str, AuditReport] = field(default_factory=dict)
    """Audit mode: auditors that failed the current claim -> their report (kept until every auditor of the
    claim has answered: a pass beside a fail is a split, settled by a tie-break audit)."""
    tiebreak: bool = False
    """Audit mode: the current claim's auditors split, and one more auditor was (or is being) drawn to
    settle it (spec/verification.md §13.2)."""
    readers: dict[str, tuple[bytes, ...]] = field(default_factory=dict)
    """Sealed audits: prover peer -> the keys it was asked to seal its claim to (``RunJob.readers``)."""
    rejected: list[tuple[str, str, bytes]] = field(default_factory=list)
    """Audit mode: (prover, auditor that failed it, output commitment) of each claim rejected so far: a
    later prover of the same class that reproduces a rejected claim exactly settles the dispute
    (spec/verification.md §13.7)."""
    rejected_members: dict[str, tuple[bytes, ...]] = field(default_factory=dict)
    """Audit mode: prover -> the split-group members that co-signed its rejected claim, cleared with it if
    the claim is vindicated (``_vindicate``)."""
    sealed_copies: dict[str, bytes] = field(default_factory=dict)
    """Sealed audits: auditor that passed the current claim -> the claim it sealed to the client."""
    state: JobState = JobState.QUEUED
    """Where the job is in its lifecycle; changed only by ``state.move`` (its table says how)."""
    streams: dict[str, ReplicaStream] = field(default_factory=dict)
    """Streaming jobs (open, replicated): peer -> its progress so far (each bounded by ``max_tokens``)."""
    verified_tokens: list[int] = field(default_factory=list)
    """Streaming jobs: the verified prefix, token by token (a quorum's progress agreed on it)."""
    verified_pieces: list[str] = field(default_factory=list)
    """Streaming jobs: the verified prefix's text pieces; their text went to the client as verified."""
    chunked: ChunkedClaim | None = None
    """Audit mode, streaming job: the streaming prover's claim as chunked for its auditors (None before
    its first progress, after its claim was dropped, and for other jobs)."""
    sealed_verified: list[tuple[int, int, bytes]] = field(default_factory=list)
    """Sealed streaming jobs: (offset, end, commitment) of each chunk forwarded to the client as verified;
    a re-run's chunks must repeat them (same cuts, same salted commitments: the same tokens and text)."""

    @property
    def job_id(self) -> bytes:
        """The client's id of the job."""
        return self.request.job_id

    def tried(self) -> set[str]:
        """Every peer the job was ever given to (replica or audit): never asked again."""
        return (
            set(self.pending)
            | set(self.results)
            | set(self.failed)
            | set(self.invalid)
            | set(self.refused)
            | set(self.audits)
            | set(self.audited)
            | set(self.audit_fails)
        )


@dataclass
class KnownAnswer:
    """A verified answer kept for canaries."""

    prompt: str
    contract: DecodingContract
    max_tokens: int
    commitment: bytes
    seen: set[bytes]
    format: PromptFormat = "text"
    """Keys of the workers that were ever sent this prompt: never canaried with it."""
    tokens: tuple[int, ...] = ()
    """The verified output's tokens, text and finish reason (empty when unknown): what a canary audit
    sends as its claim (spec/verification.md §13.6)."""
    text: str = ""
    finish_reason: str = ""


@dataclass
class Canary:
    """A canary in flight."""

    peer: str
    key: bytes
    answer: KnownAnswer
    sent_at: float
    deadline: float
    audit: AuditJob | None = None
    """A canary audit (spec/verification.md §13.6): the claim sent; None for a canary generation."""
    expect_pass: bool = True
    """A canary audit: the verdict an honest auditor gives (a verified answer passes; another verified
    answer's output under this prompt fails)."""
    wall_ms: int = 0
    """A canary audit: the wall-clock time of the client job whose audits it went with (its receipt's
    ``issued_at_ms``, so the receipt looks like that job's)."""


def audit_job_for(
    job: JobRecord,
    *,
    tolerance: float,
    tokens: list[int],
    text: str,
    finish_reason: str,
    score_end: int = 0,
    chunked: bool = False,
) -> AuditJob:
    """The AuditJob for ``job``'s claim (the given tokens, text and finish reason; empty for a chunked
    audit, whose claim follows in AuditChunks) under the job's contract and its sampler: greedy values for
    a greedy contract, the contract's own otherwise (an auditor refuses a sampler that is not its
    contract's)."""
    contract = job.contract
    greedy = contract.greedy
    return AuditJob(
        job_id=job.request.job_id,
        contract=contract,
        prompt=job.request.prompt,
        tokens=tokens,
        text=text,
        finish_reason=finish_reason,
        format=job.request.format,
        temperature=0.0 if greedy else contract.temperature,
        top_k=0 if greedy else max(0, contract.top_k),
        top_p=1.0 if greedy else contract.top_p_value,
        seed=0 if greedy else contract.seed,
        tolerance=tolerance,
        score_end=score_end,
        chunked=chunked,
    )
