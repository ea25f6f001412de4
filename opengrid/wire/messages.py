"""Messages of the job protocol ``/opengrid/job/1`` (normative description: spec/job-protocol.md).

Every message is a frozen msgspec Struct with a ``type`` tag; a frame carries exactly one message. One
decoder (``decode_message``) turns bytes into one of these or raises ``MalformedMessageError``. New fields
get defaults and go last; a field's type never changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Final, Literal, NewType, TypeVar

import msgspec

from opengrid.wire.contract import MAX_TEMPERATURE, DecodingContract, Seed, Temperature, TopK, TopP

JobId = NewType("JobId", bytes)
"""16 random bytes chosen by the client; unique per job."""

PROTOCOL_VERSION: Final = "opengrid/1"

JOB_ID_BYTES: Final = 16
KEY_BYTES: Final = 32
MAX_PROMPT_CHARS: Final = 256 * 1024
MAX_TOKENS_LIMIT: Final = 8192
MAX_REPLICAS: Final = 8
MAX_LISTEN_ADDRS: Final = 16
MAX_MODELS_PER_WORKER: Final = 32
MAX_HISTORY: Final = 1024

MAX_SHORT_TEXT: Final = 256
"""Characters of any name-like text field: model names, peer ids, multiaddrs, roles, tiers, versions."""
MAX_OUTPUT_CHARS: Final = 1024 * 1024
"""Characters of a job's output text: 8192 tokens at 128 characters each, far above what a tokenizer's
longest token decodes to (the frame's 4 MiB bounds the bytes anyway)."""
MAX_PROGRESS_CHARS: Final = 65536
"""Characters of preview text in one progress frame."""
MAX_PROGRESS_TOKENS: Final = 1024
"""Tokens one progress frame carries (a worker sends what was generated since its last frame; one that
falls this far behind sends several frames)."""
MAX_PIECE_CHARS: Final = 1024
"""Characters of one token's text piece in a progress frame (a token decodes to a few bytes; a piece may
also complete a character held back from earlier tokens)."""
MAX_ENTRY_BYTES: Final = 64 * 1024
"""An encoded ledger entry (``opengrid_ledger.entries.MAX_ENTRY_SIZE``, spec/ledger.md §3)."""
MAX_ATTESTATION_BYTES: Final = 1024
"""An encoded ``opengrid_ledger.Attestation``: three 32-byte keys and digests, a 16-byte job id, a count and
a 64-byte signature take ~230 bytes; the rest is room for a later version's fields."""
MAX_JOB_WORKERS: Final = 64
"""Peer ids one JobAccepted may list as agreeing, dissenting or failed: a job runs at most ``replicas`` (8)
+ extra replicas + failovers workers (14 with the default policy)."""
MAX_ERROR_CHARS: Final = 4096
MAX_STATUS_ADDRS: Final = 64
"""Addresses a NodeStatus lists: the node's listen addresses and relayed ones."""
MAX_STATUS_WORKERS: Final = 256
"""Registered workers a coordinator's NodeStatus lists (online ones first, then by peer id)."""
MAX_STATUS_PEERS: Final = 256
"""Gossip peers a NodeStatus lists (online ones first, then by peer id)."""
MAX_STATUS_BALANCES: Final = 4096
"""Accounts a coordinator's NodeStatus lists in ``balances`` (the largest balances)."""
MAX_STATUS_BYTES: Final = 2 * 1024 * 1024
"""The most a NodeStatus encodes to (``bounded_status`` drops list entries until it fits): every field has
a limit, but their product with 4-byte UTF-8 characters could still pass the 4 MiB frame."""
MAX_ANNOUNCED_ROLES: Final = 8
MAX_ANNOUNCED_MODELS: Final = 16
"""What a gossip Announcement may carry (opengrid/net/announce.py), so a PeerSummary holds the same."""
HEX_KEY_CHARS: Final = 2 * KEY_BYTES

JobIdBytes = Annotated[bytes, msgspec.Meta(min_length=JOB_ID_BYTES, max_length=JOB_ID_BYTES)]
KeyBytes = Annotated[bytes, msgspec.Meta(min_length=KEY_BYTES, max_length=KEY_BYTES)]
MaybeKeyBytes = Annotated[bytes, msgspec.Meta(max_length=KEY_BYTES)]
Prompt = Annotated[str, msgspec.Meta(max_length=MAX_PROMPT_CHARS)]
TokenCount = Annotated[int, msgspec.Meta(ge=1, le=MAX_TOKENS_LIMIT)]
ShortText = Annotated[str, msgspec.Meta(max_length=MAX_SHORT_TEXT)]
OutputText = Annotated[str, msgspec.Meta(max_length=MAX_OUTPUT_CHARS)]
ProgressText = Annotated[str, msgspec.Meta(max_length=MAX_PROGRESS_CHARS)]
EntryBytes = Annotated[bytes, msgspec.Meta(max_length=MAX_ENTRY_BYTES)]
TokenId = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
PeerIds = Annotated[list[ShortText], msgspec.Meta(max_length=MAX_JOB_WORKERS)]

Priority = Literal["interactive", "batch"]
"""A job's queueing class on a coordinator: waiting ``interactive`` jobs are dispatched before any
``batch`` job of the same standing (paid and volunteers' jobs go first; spec/job-protocol.md §8.1)."""

PromptFormat = Literal["text", "chat"]
"""``text``: a raw prompt, tokenized with the model's BOS; ``chat``: a prompt rendered from the model's chat
template, which carries its own special tokens (tokenized without adding BOS, as llama.cpp does)."""


PARAMS_PER_POINT: Final = 1_000_000_000
"""A model earns (and costs) one point per generated token per started billion parameters (spec/ledger.md
§7): so a token's price follows the compute it takes."""
MAX_WEIGHT: Final = 1000
"""The most points one token can be worth (a 1000B model); bounds a job's price."""
MAX_PARAMS: Final = 10**15
"""The largest parameter count a worker may announce (``ModelOffer.n_params``)."""


def model_weight(n_params: int) -> int:
    """A model's weight: points per generated token, ``ceil(n_params / 1e9)``, at least 1 (a model of
    unknown size, or a small one: the tiny test model and SmolLM2-135M weigh 1) and at most
    ``MAX_WEIGHT``. A 7.24B model weighs 8."""
    return min(MAX_WEIGHT, max(1, -(-n_params // PARAMS_PER_POINT)))


def job_cost(max_tokens: int, replicas: int, weight: int = 1) -> int:
    """Points a paid job must hold: the most its workers can be paid (``weight`` points per token per
    replica; the weight is what the coordinator's ``Quote`` says, spec/ledger.md §7)."""
    return max_tokens * replicas * weight


ErrorCode = Literal[
    "malformed",  # the request did not decode or broke a limit
    "unknown_model",  # no worker on this coordinator serves the model
    "no_capacity",  # fewer live workers than replicas
    "verification_failed",  # replicas never reached quorum
    "engine_error",  # the worker's engine failed
    "not_coordinator",  # the request needs a coordinator and this node is not one
    "busy",  # no work taken for now: paused, queue full, no worker slot freed in time, grants rate-limited
    "internal",  # a bug on the answering side
    "payment_required",  # this coordinator runs only paid jobs (a HOLD from an identity)
    "grant_refused",  # no starting grant for this account: none on this network, or already claimed
    "admission_pending",  # this coordinator's operator has not approved the candidate (yet): ask later
    "admission_refused",  # no co-signature now (wrong epoch, already a coordinator, voted for another)
    "unknown_job",  # ReceiptRequest: no receipt for this job id here (never ran here, failed, still running)
    "insufficient_balance",  # a transfer above the sender's spendable points here (the message says both)
    "unknown_account",  # a transfer to an account this ledger has never seen, not confirmed as new
]


class _Message(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type"):
    """Base of every message: a tagged, frozen struct."""


MAX_SEALED_BYTES: Final = 1024 * 1024
SealedBytes = Annotated[bytes, msgspec.Meta(max_length=MAX_SEALED_BYTES)]
MAX_EXPOSURE: Final = 16


class Sealed(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A ciphertext for (or from) one worker, in sealed mode (opengrid/wire/sealed.py)."""

    peer_id: ShortText
    ciphertext: SealedBytes


class SealedClaim(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A sealed job's claimed output encrypted by its prover to one possible auditor, named by its Ed25519
    key (``opengrid.wire.sealed.seal_claim``, spec/sealed-mode.md §11)."""

    reader: KeyBytes
    ciphertext: SealedBytes


class ModelOffer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One model a worker serves, with the exact numerical class it runs it in."""

    name: ShortText
    """The model's name as the worker announces it (clients name it in ``SubmitJob.model``)."""
    contract: DecodingContract
    chat_template: Annotated[str, msgspec.Meta(max_length=65536)] = ""
    """The model's Jinja chat template (from its GGUF), so API nodes can format chat requests."""
    bos_token: ShortText = ""
    eos_token: ShortText = ""
    n_params: Annotated[int, msgspec.Meta(ge=0, le=MAX_PARAMS)] = 0
    """Parameters in the model file, as the worker's engine counts them (0: unknown). Sets the model's
    weight (``model_weight``) unless the coordinator's catalog pins it for this sha256."""


MAX_CLAIMED_TOKENS_PER_S: Final = 1e6
"""The largest start-up speed a registration may claim; senders clamp to it (a fake or cheating engine can
measure itself at any speed)."""


class RegisterWorker(_Message, tag="register", frozen=True):
    """Worker → coordinator: 'I serve these models; send me jobs'. Repeated as a heartbeat."""

    network: ShortText
    public_key: KeyBytes
    """The worker's Ed25519 key; must match the key behind the connection's peer id."""
    listen_addrs: Annotated[list[ShortText], msgspec.Meta(max_length=MAX_LISTEN_ADDRS)]
    models: Annotated[list[ModelOffer], msgspec.Meta(min_length=1, max_length=MAX_MODELS_PER_WORKER)]
    slots: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    software: ShortText = ""
    tokens_per_s: Annotated[float, msgspec.Meta(ge=0.0, le=MAX_CLAIMED_TOKENS_PER_S)] = 0.0
    """Its speed measured at start-up on its first model (an unchecked claim: a prior for scheduling until
    the coordinator measures verified results)."""
    tier: ShortText = ""
    """Platinum, Gold, Silver or Bronze, from its start-up probe (spec/discovery.md §5.2)."""
    max_job_tokens: Annotated[int, msgspec.Meta(ge=0)] = 0
    """The longest job (``max_tokens``) it takes; 0: no limit. Edge nodes take short jobs only."""
    split_members: Annotated[list[ShortText], msgspec.Meta(max_length=16)] | msgspec.UnsetType = msgspec.UNSET
    """A worker heading a split group: its members' peer ids, in layer order (spec/split.md §7), for the
    coordinator's status; informational (members are credited from each result's attestations). Absent
    from the bytes when unset."""


class Registered(_Message, tag="registered", frozen=True):
    """Coordinator → worker: registration accepted; beat again within ``heartbeat_s``."""

    coordinator_key: KeyBytes
    heartbeat_s: Annotated[float, msgspec.Meta(gt=0)]


class SubmitJob(_Message, tag="submit", frozen=True):
    """Client → coordinator: run a completion with ``replicas`` independent workers."""

    job_id: JobIdBytes
    model: ShortText
    """A model name (as workers announce it) or a GGUF sha256 in hex."""
    prompt: Prompt
    max_tokens: TokenCount
    replicas: Annotated[int, msgspec.Meta(ge=1, le=MAX_REPLICAS)] = 2
    client_key: MaybeKeyBytes = b""
    format: PromptFormat = "text"
    stream: bool = False
    """Send JobProgress frames before the answer: verified text as a quorum of replicas agrees on it, and
    unverified previews from the first replica (spec/job-protocol.md §6.3)."""
    sealed: Annotated[list[Sealed], msgspec.Meta(max_length=MAX_EXPOSURE)] = []
    """Sealed mode: the prompt encrypted to each worker allowed to see it (``prompt`` is then empty);
    only these workers may run the job."""
    client_box_key: MaybeKeyBytes = b""
    """Sealed mode: the client's ephemeral X25519 key for this job."""
    hold: Annotated[bytes, msgspec.Meta(max_length=64 * 1024)] = b""
    """Paid jobs: an encoded ledger HOLD entry, signed by the client, reserving at least
    ``job_cost(max_tokens, replicas)`` points for this job with this coordinator (spec/ledger.md)."""
    priority: Priority = "interactive"
    """Queueing class while every worker that could run the job is busy: ``interactive`` jobs go first,
    ``batch`` jobs use what capacity is left (spec/job-protocol.md §8.1)."""
    grant: Annotated[bytes, msgspec.Meta(max_length=4 * 1024)] = b""
    """Paid jobs of a new account: its encoded GRANT entry (seq 1, with a coordinator's voucher, see
    GrantRequest), applied before ``hold`` (which is then the account's entry seq 2)."""
    temperature: Temperature = 0.0
    """Sampling (spec/verification.md §11): 0.0 is greedy (the default); > 0 samples by Gumbel-max with
    noise fixed by ``job_id`` and ``seed``, at most ``MAX_TEMPERATURE``."""
    top_k: TopK = 0
    """Sampling: keep the ``top_k`` most likely tokens before choosing; 0 keeps all."""
    top_p: TopP = 1.0
    """Sampling: then keep the smallest set of them whose probability reaches ``top_p``; 1.0 keeps all."""
    seed: Seed = 0
    """Sampling: the client's seed, 0..2**64-1. With the client-chosen ``job_id`` it fixes the noise, so
    no worker can choose it and every replica and auditor recomputes it."""

    def job_contract(self, offer: DecodingContract) -> DecodingContract:
        """The contract this job runs under on a worker of class ``offer``: the class with this job's
        sampling settings (``DecodingContract.sampled``)."""
        return offer.sampled(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=self.seed)


class RunJob(_Message, tag="run", frozen=True):
    """Coordinator → worker: run this job under this exact contract and return a signed result."""

    job_id: JobIdBytes
    contract: DecodingContract
    prompt: Prompt
    max_tokens: TokenCount
    format: PromptFormat = "text"
    stream: bool = False
    """Send ReplicaProgress frames as text is generated, before the ReplicaResult."""
    sealed_prompt: SealedBytes = b""
    """Sealed mode: the prompt encrypted to this worker (``prompt`` is then empty)."""
    client_box_key: MaybeKeyBytes = b""
    readers: Annotated[list[KeyBytes], msgspec.Meta(max_length=MAX_EXPOSURE)] = []
    """Sealed audits (spec/sealed-mode.md §11): the Ed25519 keys of the other workers this job was sealed
    to, each a possible auditor; the worker seals its claimed output to each of them (only to keys the
    client named in the sealed prompt). Empty: the job is not audited, seal nothing more."""
    chunk_first: Annotated[int, msgspec.Meta(ge=0, le=MAX_PROGRESS_TOKENS)] = 0
    """Sealed chunked streaming (spec/verification.md §14.3): the first chunk's size in tokens; the prover
    cuts its output into chunks of ``chunk_first`` tokens, each later one twice the one before up to
    ``chunk_max``, and seals each to the client and to ``readers`` (``SealedProgress``). 0: no chunks."""
    chunk_max: Annotated[int, msgspec.Meta(ge=0, le=MAX_PROGRESS_TOKENS)] = 0
    """Sealed chunked streaming: the largest chunk, in tokens (0 with ``chunk_first`` 0)."""


class ReplicaProgress(_Message, tag="progress", frozen=True):
    """Worker → coordinator, on a RunJob stream with ``stream``: what was generated since the last frame
    (spec/job-protocol.md §5.6)."""

    job_id: JobIdBytes
    text: ProgressText
    """The new text: ``"".join(pieces)`` when ``tokens`` is given."""
    tokens: Annotated[list[TokenId], msgspec.Meta(max_length=MAX_PROGRESS_TOKENS)] = []
    """The token ids generated since the last frame, in order (empty: a text-only preview, which the
    coordinator never verifies)."""
    pieces: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=MAX_PIECE_CHARS)]],
        msgspec.Meta(max_length=MAX_PROGRESS_TOKENS),
    ] = []
    """One text piece per token: the characters that token completed (empty while it ends inside a
    multi-byte character, which a later piece then carries whole)."""


class SealedProgress(_Message, tag="sealed_progress", frozen=True):
    """Worker → coordinator, on a sealed, audited RunJob stream with ``chunk_first`` (spec/verification.md
    §14.3): the next chunk of its output, sealed to the client and to each reader, with a salted
    commitment the coordinator holds. Chunks are contiguous and cut as the RunJob says; the coordinator
    sees counts, ciphertexts and the commitment, never the tokens or their text."""

    job_id: JobIdBytes
    offset: ClaimPosition
    """Output position of the chunk's first token: the tokens sent in earlier chunks."""
    n_tokens: Annotated[int, msgspec.Meta(ge=1, le=MAX_PROGRESS_TOKENS)]
    """Tokens in the chunk (the plaintexts must hold exactly this many)."""
    commitment: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    """``commit_chunk(job_id, salt, offset, tokens, pieces)`` (opengrid/wire/sealed.py)."""
    to_client: Annotated[bytes, msgspec.Meta(min_length=1, max_length=MAX_SEALED_BYTES)]
    """The chunk (a ``SealedChunk``) sealed to the client's ephemeral key."""
    to_readers: Annotated[list[SealedClaim], msgspec.Meta(max_length=MAX_EXPOSURE)] = []
    """The same chunk sealed to each of ``RunJob.readers`` (one per key), for the auditors."""


class JobProgress(_Message, tag="job_progress", frozen=True):
    """Coordinator → client, on a SubmitJob stream with ``stream``: more text of the answer.

    ``verified``: the text extends the verified prefix, on which a quorum of replicas agreed token by
    token; the closing JobAccepted's text starts with everything sent so (spec/verification.md §14).
    Not verified: a preview from the first replica to produce it, which the answer may contradict."""

    job_id: JobIdBytes
    text: ProgressText
    verified: bool = False
    sealed_chunk: Sealed | None = None
    """Sealed chunked streaming (spec/verification.md §14.3), with ``verified`` and an empty ``text``: the
    next chunk of the answer, sealed by its prover (``peer_id``) to the client; every auditor passed it."""
    chunk_commitment: Annotated[bytes, msgspec.Meta(max_length=32)] = b""
    """With ``sealed_chunk``: the chunk's salted commitment that every auditor's verdict named; the client
    checks the chunk it opens against it (it holds the salt)."""


MAX_GROUP_MEMBERS: Final = 16
"""Members one split group's result may name (llama.cpp's limit on RPC servers, spec/split.md §3)."""


class GroupShare(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One split-group member's part of a job: its attestation and the layers it ran (spec/split.md §8)."""

    attestation: Annotated[bytes, msgspec.Meta(max_length=MAX_ATTESTATION_BYTES)]
    """An encoded ``opengrid_ledger.Attestation`` signed by the member over the head's output."""
    layers: Annotated[int, msgspec.Meta(ge=1, le=4096)]


class SplitShares(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Who ran a split group's job: the head's layers and each member's share (spec/split.md §8)."""

    head_layers: Annotated[int, msgspec.Meta(ge=0, le=4096)]
    members: Annotated[list[GroupShare], msgspec.Meta(min_length=1, max_length=MAX_GROUP_MEMBERS)]


class ReplicaResult(_Message, tag="result", frozen=True):
    """Worker → coordinator: the tokens, and an attestation (the worker's co-signature) over them."""

    job_id: JobIdBytes
    tokens: Annotated[list[TokenId], msgspec.Meta(max_length=MAX_TOKENS_LIMIT)]
    text: OutputText
    finish_reason: ShortText
    attestation: Annotated[bytes, msgspec.Meta(max_length=MAX_ATTESTATION_BYTES)]
    """An encoded ``opengrid_ledger.Attestation`` signed by the worker."""
    sealed_output: SealedBytes = b""
    """Sealed mode: tokens, text and finish reason encrypted to the client (the fields above are then
    empty); the attestation commits to the salted output."""
    sealed_claims: Annotated[list[SealedClaim], msgspec.Meta(max_length=MAX_EXPOSURE)] = []
    """Sealed audits: the same output encrypted to each of ``RunJob.readers`` (one per key)."""
    group: SplitShares | msgspec.UnsetType = msgspec.UNSET
    """A split group's head: the members that ran the job with it, credited by layers (spec/split.md §8).
    Unset (absent from the bytes) for every other worker, so their results keep their bytes and older
    coordinators still read them."""


class JobAccepted(_Message, tag="accepted", frozen=True):
    """Coordinator → client: the verified answer and the signed receipt that proves it."""

    job_id: JobIdBytes
    text: OutputText
    tokens: Annotated[list[TokenId], msgspec.Meta(max_length=MAX_TOKENS_LIMIT)]
    finish_reason: ShortText
    receipt: EntryBytes
    """An encoded ``opengrid_ledger.Entry`` whose payload is the job's Receipt."""
    workers: PeerIds
    """Peer ids of the workers whose outputs agreed (credited in the receipt)."""
    dissenters: PeerIds = []
    """Peer ids of workers whose outputs disagreed (credited nothing)."""
    failed: PeerIds = []
    """Peer ids of workers that failed or vanished while running the job (replaced)."""
    sealed_outputs: Annotated[list[Sealed], msgspec.Meta(max_length=MAX_EXPOSURE)] = []
    """Sealed mode: each agreeing worker's encrypted output; the client opens one and checks it against
    the receipt's commitment."""


class QuoteRequest(_Message, tag="quote_request", frozen=True):
    """Client → coordinator, before a sealed or paid job: which workers would run this, with which keys,
    and at what price?"""

    model: ShortText
    replicas: Annotated[int, msgspec.Meta(ge=1, le=MAX_REPLICAS)] = 2
    exposure: Annotated[int, msgspec.Meta(ge=1, le=MAX_EXPOSURE)] = 4
    """At most this many workers will be able to read the prompt (replicas plus spares for failover)."""
    trusted: Annotated[list[ShortText], msgspec.Meta(max_length=64)] = []
    """If not empty, only these peer ids may be offered."""
    max_tokens: Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS_LIMIT)] = 0
    """The job's ``max_tokens``, so only workers that take jobs that long are offered and priced (edge
    nodes take short jobs only, and may be of another numerical class); 0: any length."""


class QuotedWorker(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    peer_id: ShortText
    public_key: KeyBytes
    box_key: KeyBytes
    """X25519 key derived from ``public_key``; the client re-derives it and refuses a mismatch."""


class Quote(_Message, tag="quote", frozen=True):
    """Coordinator → client: candidate workers for a sealed job, all of one numerical class, and the price
    of a token of this model (clients ask before every paid job, sealed or not)."""

    model: ShortText
    workers: Annotated[list[QuotedWorker], msgspec.Meta(max_length=MAX_EXPOSURE)]
    weight: Annotated[int, msgspec.Meta(ge=1, le=MAX_WEIGHT)] = 1
    """Points per generated token per replica for this model here: a paid job holds
    ``job_cost(max_tokens, replicas, weight)``; each agreeing worker earns ``max(1, n_tokens) * weight``."""


class ReceiptNotice(_Message, tag="receipt", frozen=True):
    """Coordinator → worker: a receipt that credits you, preceded by the coordinator's entries you
    have not been sent yet (so the hash chain has no gap); store them in your ledger.

    Full ledger sync (``/opengrid/ledger-sync/1``) is specified separately; this push keeps a worker's
    own ledger complete for the coordinators it works for.
    """

    entries: Annotated[list[EntryBytes], msgspec.Meta(max_length=1024)]


class StatusRequest(_Message, tag="status_request", frozen=True):
    """Anyone → node: describe yourself."""


class WorkerSummary(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a coordinator knows of one registered worker."""

    peer_id: ShortText
    public_key: MaybeKeyBytes
    models: Annotated[list[ShortText], msgspec.Meta(max_length=MAX_MODELS_PER_WORKER)]
    online: bool
    split_members: Annotated[list[ShortText], msgspec.Meta(max_length=16)] | msgspec.UnsetType = msgspec.UNSET
    """The members of the split group this worker heads, as its registration says; absent otherwise."""


class PeerSummary(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One peer a node has heard announce itself on gossip (``opengrid peers``; SDKs find coordinators)."""

    peer_id: ShortText
    roles: Annotated[list[ShortText], msgspec.Meta(max_length=MAX_ANNOUNCED_ROLES)]
    models: Annotated[list[ShortText], msgspec.Meta(max_length=MAX_ANNOUNCED_MODELS)]
    addrs: Annotated[list[ShortText], msgspec.Meta(max_length=MAX_LISTEN_ADDRS)]
    last_seen_s: float
    """Seconds since its last announcement (a heartbeat)."""
    online: bool
    """False once it missed its heartbeats; it gets no work until it announces again."""
    tier: ShortText = ""
    rtt_ms: float | None = None
    """Round-trip time this node measured to it, when it did (coordinators measure their workers)."""
    software: ShortText = ""
    reachability: ShortText = ""
    """What the peer announced of its own reachability (spec/discovery.md §9): public, private, relayed,
    unknown; empty from nodes that do not say."""
    free_memory: Annotated[int, msgspec.Meta(ge=1, le=2**62)] | msgspec.UnsetType = msgspec.UNSET
    """Bytes the peer announced it can lend to split groups (spec/split.md §7); absent (unset) for peers
    that lend none, so statuses without split members keep their bytes."""


class SplitMemberStatus(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One member of a split group, as its head's status shows it."""

    peer_id: ShortText
    first_layer: Annotated[int, msgspec.Meta(ge=0, le=4096)]
    layers: Annotated[int, msgspec.Meta(ge=1, le=4096)]


class SplitGroupStatus(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The split group a worker heads (spec/split.md §7): who runs which layers of its model."""

    model: ShortText
    n_layers: Annotated[int, msgspec.Meta(ge=1, le=4096)]
    head_layers: Annotated[int, msgspec.Meta(ge=0, le=4096)]
    """Layers ``0 .. head_layers - 1`` run on the head (which also holds the input and output layers)."""
    members: Annotated[list[SplitMemberStatus], msgspec.Meta(max_length=MAX_GROUP_MEMBERS)]
    formed: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Groups formed so far: 1, plus one per re-formation after a member left."""


class NodeStatus(_Message, tag="status", frozen=True):
    """Node → anyone: identity, role, and the points and jobs its own ledger shows.

    Bounded by construction: build it with ``bounded_status``, which keeps each list within its limit and
    the whole under ``MAX_STATUS_BYTES``."""

    peer_id: ShortText
    public_key: MaybeKeyBytes
    role: ShortText
    addrs: Annotated[list[ShortText], msgspec.Meta(max_length=MAX_STATUS_ADDRS)]
    points: int
    jobs_done: int
    models: Annotated[list[ShortText], msgspec.Meta(max_length=MAX_MODELS_PER_WORKER)] = []
    workers: Annotated[list[WorkerSummary], msgspec.Meta(max_length=MAX_STATUS_WORKERS)] = []
    """Coordinator only: registered workers by peer id (at most ``MAX_STATUS_WORKERS``, online ones kept)."""
    balances: Annotated[
        dict[Annotated[str, msgspec.Meta(max_length=HEX_KEY_CHARS)], int],
        msgspec.Meta(max_length=MAX_STATUS_BALANCES),
    ] = {}
    """Coordinator only: points per account (hex key) in its ledger; the ``MAX_STATUS_BALANCES`` largest."""
    ledger_entries: int = 0
    paused: bool = False
    """True while the owner has paused the node: it takes no new work."""
    peers: Annotated[list[PeerSummary], msgspec.Meta(max_length=MAX_STATUS_PEERS)] = []
    """Peers this node has heard on gossip, by peer id (at most ``MAX_STATUS_PEERS``, online ones kept)."""
    network: ShortText = ""
    candidate: bool = False
    """A coordinator not (yet) in its network's coordinator set (genesis + ADMIT): it asks the others to
    admit it and takes no jobs until then (spec/ledger.md §7.1)."""
    reachability: ShortText = ""
    """Whether peers could dial this node on a fresh connection (spec/discovery.md §9): public, private,
    relayed or unknown."""
    split_group: SplitGroupStatus | msgspec.UnsetType = msgspec.UNSET
    """A worker heading a split group: the group (``opengrid status``); absent (unset) otherwise."""


_Summary = TypeVar("_Summary", WorkerSummary, PeerSummary)


def listed_balance(status: NodeStatus, account: bytes) -> int | None:
    """``account``'s spendable points as a coordinator's ``status`` lists them, or None when the list
    cannot say. Only nonzero balances are listed, so a missing account has none — unless the list was
    cut: to ``MAX_STATUS_BALANCES`` (the largest kept), or by ``bounded_status``, which cuts balances only
    once the workers and peers are all cut away."""
    if account.hex() in status.balances:
        return status.balances[account.hex()]
    complete = len(status.balances) < MAX_STATUS_BALANCES and bool(status.workers or status.peers)
    return 0 if complete else None


def bounded_status(status: NodeStatus) -> NodeStatus:
    """``status`` within its limits, whatever a node knows: each list cut to its limit, and the whole cut
    further until it encodes to at most ``MAX_STATUS_BYTES`` (long names in 4-byte characters could still
    pass the frame limit otherwise): halving the larger of peers and workers, then balances (spec/limits.md).

    What stays: online workers and peers before offline ones (coordinators first among peers: clients look
    for them here), then by peer id; the largest balances. Lists keep their order by peer id (balances by
    key). Without this, two fake workers with 3.8 MB model names made every status request fail (issue 15).
    """

    def kept(items: list[_Summary], rank: Callable[[_Summary], tuple[bool, ...]], cap: int) -> list[_Summary]:
        chosen = sorted(items, key=lambda item: (*rank(item), item.peer_id))[:cap]
        return sorted(chosen, key=lambda item: item.peer_id)

    def largest(balances: dict[str, int], cap: int) -> dict[str, int]:
        return dict(sorted(sorted(balances.items(), key=lambda kv: (-kv[1], kv[0]))[:cap]))

    bounded = msgspec.structs.replace(
        status,
        addrs=status.addrs[:MAX_STATUS_ADDRS],
        models=status.models[:MAX_MODELS_PER_WORKER],
        workers=kept(status.workers, _worker_rank, MAX_STATUS_WORKERS),
        peers=kept(status.peers, _peer_rank, MAX_STATUS_PEERS),
        balances=largest(status.balances, MAX_STATUS_BALANCES),
    )
    while len(msgspec.msgpack.encode(bounded)) > MAX_STATUS_BYTES:
        peers_bytes = len(msgspec.msgpack.encode(bounded.peers))
        workers_bytes = len(msgspec.msgpack.encode(bounded.workers))
        if bounded.peers and peers_bytes >= workers_bytes:
            half = len(bounded.peers) // 2
            bounded = msgspec.structs.replace(bounded, peers=kept(bounded.peers, _peer_rank, half))
        elif bounded.workers:
            half = len(bounded.workers) // 2
            bounded = msgspec.structs.replace(bounded, workers=kept(bounded.workers, _worker_rank, half))
        elif bounded.balances:
            half = len(bounded.balances) // 2
            bounded = msgspec.structs.replace(bounded, balances=largest(bounded.balances, half))
        else:  # every list is empty: the fixed fields alone are far below the limit
            break
    return bounded


def _worker_rank(worker: WorkerSummary) -> tuple[bool, ...]:
    return (not worker.online,)


def _peer_rank(peer: PeerSummary) -> tuple[bool, ...]:
    return (not peer.online, "coordinator" not in peer.roles)


class HistoryRequest(_Message, tag="history_request", frozen=True):
    """Anyone → node: the ledger entries that concern an account (credits, outvotes), newest last."""

    account: MaybeKeyBytes = b""
    """32-byte key; empty means the answering node's own account."""
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_HISTORY)] = 100


class History(_Message, tag="history", frozen=True):
    """Node → anyone: signed ledger entries, exactly as stored; the receiver verifies them itself."""

    entries: Annotated[list[EntryBytes], msgspec.Meta(max_length=MAX_HISTORY)]


MAX_MODELS_LISTED: Final = 64
"""Entries (model name and file) a ModelList carries at most."""
MAX_MODEL_LIST_BYTES: Final = 2 * 1024 * 1024
"""The most a ModelList encodes to: chat templates are left out of entries past it (``bounded_models``)."""
MAX_CHAT_TEMPLATE_CHARS: Final = 65536


class ModelsRequest(_Message, tag="models_request", frozen=True):
    """Client → coordinator: which models run here, on how many workers, at what price per token?"""

    model: ShortText = ""
    """Empty: every model served here, without chat templates. A name or sha256: that model's entries
    only, with the chat template its workers announced (a client renders chat prompts itself)."""


class ModelInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One model file served on a coordinator, as its online workers announce it."""

    name: ShortText
    sha256: ShortText
    """The GGUF file's sha256 in hex (``DecodingContract.model_sha256``)."""
    workers: Annotated[int, msgspec.Meta(ge=0, le=2**32)]
    """Online workers serving it here now."""
    weight: Annotated[int, msgspec.Meta(ge=1, le=MAX_WEIGHT)] = 1
    """Points per generated token per replica (the most of its numerical classes here): a paid job holds
    ``job_cost(max_tokens, replicas, weight)``."""
    chat_template: Annotated[str, msgspec.Meta(max_length=MAX_CHAT_TEMPLATE_CHARS)] = ""
    """Only when the request named the model: the Jinja chat template a worker announced (untrusted)."""
    bos_token: ShortText = ""
    eos_token: ShortText = ""


class ModelList(_Message, tag="models", frozen=True):
    """Coordinator → client: the models its online workers serve, by name then sha256."""

    models: Annotated[list[ModelInfo], msgspec.Meta(max_length=MAX_MODELS_LISTED)]


def bounded_models(models: list[ModelInfo]) -> ModelList:
    """``models`` as a ModelList within its limits: at most ``MAX_MODELS_LISTED`` entries (most workers
    first, then by name and sha256), and chat templates dropped from the last entries until the whole
    encodes to at most ``MAX_MODEL_LIST_BYTES`` (64 templates of 65,536 4-byte characters would pass the
    4 MiB frame)."""
    kept = sorted(models, key=lambda m: (-m.workers, m.name, m.sha256))[:MAX_MODELS_LISTED]
    kept.sort(key=lambda m: (m.name, m.sha256))
    listed = ModelList(models=kept)
    index = len(kept) - 1
    while len(msgspec.msgpack.encode(listed)) > MAX_MODEL_LIST_BYTES and index >= 0:
        kept[index] = msgspec.structs.replace(kept[index], chat_template="")
        listed = ModelList(models=kept)
        index -= 1
    return listed


class ReceiptRequest(_Message, tag="receipt_request", frozen=True):
    """Client → node: the signed receipt of job ``job_id`` (and its answer, for the job's own client while
    the coordinator keeps it)."""

    job_id: JobIdBytes


class JobReceipt(_Message, tag="job_receipt", frozen=True):
    """Node → client: a job's receipt, exactly as stored in the node's ledger; the receiver verifies it.

    ``answered`` is true when the output travels with it: only to the peer that submitted the job, from
    the coordinator's job store (24 h), and only for an open job (a sealed job's output is ciphertext)."""

    job_id: JobIdBytes
    receipt: EntryBytes
    """An encoded ``opengrid_ledger.Entry`` whose payload is the job's Receipt."""
    answered: bool = False
    text: OutputText = ""
    tokens: Annotated[list[TokenId], msgspec.Meta(max_length=MAX_TOKENS_LIMIT)] = []
    finish_reason: ShortText = ""


class ControlRequest(_Message, tag="control", frozen=True):
    """Owner → own node: pause or resume work; answered with NodeStatus.

    Signed by the node's own identity key over ``control_signing_bytes`` (opengrid/wire/control.py), so
    only whoever holds the node's data dir can steer it.
    """

    action: Literal["pause", "resume"]
    issued_at_ms: int
    signature: Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]


class ErrorReply(_Message, tag="error", frozen=True):
    """Any → any: the request failed. ``code`` is machine-readable; ``message`` says what to do."""

    code: ErrorCode
    message: Annotated[str, msgspec.Meta(max_length=MAX_ERROR_CHARS)]
    job_id: Annotated[bytes, msgspec.Meta(max_length=JOB_ID_BYTES)] = b""


class GrantRequest(_Message, tag="grant_request", frozen=True):
    """Client → coordinator: vouch for my account's starting grant (spec/ledger.md §5.7, §7).

    Signed by the account's own key over ``grant_request_signing_bytes`` (opengrid/wire/grant.py), so
    nobody can spend a coordinator's grant budget in another account's name.
    """

    account: KeyBytes
    issued_at_ms: int
    """Unix ms by the client's clock; refused if further than ``MAX_CLOCK_SKEW_MS`` from the coordinator's."""
    signature: Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]


class GrantVoucher(_Message, tag="grant_voucher", frozen=True):
    """Coordinator → client: its signature over ``[GRANT_DOMAIN, network, account, points]``; the client
    puts it in its GRANT entry (``opengrid_ledger.Grant``), which it sends with its first paid job."""

    account: KeyBytes
    points: Annotated[int, msgspec.Meta(ge=1)]
    """The network's genesis ``grant_points``."""
    signer: KeyBytes
    """The coordinator's key (a minter)."""
    signature: Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]


class AdmitRequest(_Message, tag="admit_request", frozen=True):
    """Candidate coordinator → minting coordinator: co-sign my admission at ``epoch`` (spec/ledger.md §7.1).

    Signed by the candidate's key over ``admit_request_signing_bytes`` (opengrid/wire/admit.py) with the
    addressee's key in it, so only the candidate can ask, and a request is good for one coordinator."""

    network: ShortText
    epoch: Annotated[int, msgspec.Meta(ge=0, le=2**32)]
    """The admission epoch: the number of ADMIT entries applied in the candidate's ledger."""
    candidate: KeyBytes
    issued_at_ms: int
    """Unix ms by the candidate's clock; refused if further than ``MAX_CLOCK_SKEW_MS`` from the voter's."""
    signature: Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]


class AdmitVote(_Message, tag="admit_vote", frozen=True):
    """Minting coordinator → candidate: its co-signature over ``admit_signing_bytes(network, epoch,
    candidate)``, which the candidate puts in its ADMIT entry once 2/3 of the set signed. A refusal is an
    ErrorReply (``admission_pending``, ``admission_refused``) saying what to do."""

    epoch: Annotated[int, msgspec.Meta(ge=0, le=2**32)]
    candidate: KeyBytes
    signer: KeyBytes
    """The voter's key (a minter)."""
    signature: Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]


class DialBackRequest(_Message, tag="dial_back", frozen=True):
    """Anyone → node: open a fresh connection to each of these addresses of mine and say whether a libp2p
    listener answered (spec/discovery.md §9). Only addresses at the IP the request came from are dialled."""

    addrs: Annotated[list[ShortText], msgspec.Meta(max_length=8)]


class DialBackResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One address of a dial-back: reached or not, and why in words (``connection failed: ...``)."""

    addr: ShortText
    reachable: bool
    reason: ShortText = ""
    dialled: bool = True
    """False when the checker refused to dial it (not at the request's IP, relayed request, not TCP)."""


class DialBackReport(_Message, tag="dial_back_report", frozen=True):
    """Node → requester: one result per address asked, in the order asked."""

    results: Annotated[list[DialBackResult], msgspec.Meta(max_length=8)]


MAX_AUDIT_REASON_CHARS: Final = 1024
"""Characters of an AuditReport's ``reason`` (one position's values in words)."""
MAX_AUDIT_TEMPERATURE: Final = MAX_TEMPERATURE
"""The sampler's largest temperature (``opengrid.core.audit.SamplingParams``)."""
MAX_AUDIT_TOLERANCE: Final = 1000.0
"""Logits: a tolerance this wide accepts anything; larger values are refused as nonsense."""
AuditGap = Annotated[float, msgspec.Meta(ge=0.0, le=1e30)]
ClaimPosition = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS_LIMIT + 1)]
"""An output position of a claim, or a count of them: 0 .. max_tokens + 1 (a stopped claim's end)."""


class AuditChunk(_Message, tag="audit_chunk", frozen=True):
    """Coordinator → auditor, after a chunked AuditJob on its stream: the next claimed tokens of a
    streaming job's prover, in order (spec/verification.md §14.2).

    The auditor appends them to its evaluation (its KV cache kept), scores each of their positions and
    checks each piece against its own tokenizer, then answers a ChunkVerdict; the ``final`` chunk is
    answered by the AuditReport over the whole claim."""

    job_id: JobIdBytes
    offset: ClaimPosition
    """The claim's position of ``tokens[0]``: the number of tokens sent before (chunks are contiguous)."""
    tokens: Annotated[list[TokenId], msgspec.Meta(max_length=MAX_PROGRESS_TOKENS)]
    """Claimed tokens at ``offset ..``; at least one unless ``final``."""
    pieces: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=MAX_PIECE_CHARS)]],
        msgspec.Meta(max_length=MAX_PROGRESS_TOKENS),
    ]
    """One per token: the text the prover reported that token completed (ReplicaProgress.pieces)."""
    final: bool = False
    """The claim ends here: ``finish_reason`` and ``text`` are the prover's result's."""
    finish_reason: ShortText = ""
    """Final only: ``stop`` adds the end-of-generation position (spec/verification.md §12.1)."""
    text: OutputText = ""
    """Final only: the whole claimed text, which must be what every claimed token decodes to."""
    sealed_chunk: SealedBytes = b""
    """Sealed chunked audits (spec/verification.md §14.3), not final: the prover's chunk sealed to this
    auditor (``tokens`` and ``pieces`` are then empty); it holds ``end - offset`` tokens."""
    commitment: Annotated[bytes, msgspec.Meta(max_length=32)] = b""
    """Sealed, not final: the chunk's salted commitment (``SealedProgress.commitment``); the opened chunk
    must match it, and the verdict names it."""
    end: ClaimPosition = 0
    """Sealed, not final: the position after the chunk's last token."""
    sealed_claim: SealedBytes = b""
    """Sealed, final: the prover's whole claim sealed to this auditor (as ``AuditJob.sealed_claim``); its
    tokens must be the chunks' tokens."""
    claim_attestation: Annotated[bytes, msgspec.Meta(max_length=MAX_ATTESTATION_BYTES)] = b""
    """Sealed, final: the prover's encoded attestation of the claim."""


class ChunkVerdict(_Message, tag="chunk_verdict", frozen=True):
    """Auditor → coordinator: the verdict on one AuditChunk (not the final one) of a chunked audit. A
    failing verdict ends the exchange; a passing one lets the coordinator forward the chunk's text to the
    client once every auditor passed it (spec/verification.md §14.2)."""

    job_id: JobIdBytes
    end: ClaimPosition
    """Positions scored so far: the chunk's ``offset + len(tokens)`` (fewer on a fail that stopped early)."""
    verdict: Literal["pass", "fail"]
    max_gap: AuditGap
    """The largest gap over the chunk's positions, in logits."""
    first_failure: Annotated[int, msgspec.Meta(ge=-1, le=MAX_TOKENS_LIMIT)] = -1
    """Claim position of the first position over the tolerance (or whose piece is wrong); -1 on a pass."""
    failure_gap: AuditGap = 0.0
    reason: Annotated[str, msgspec.Meta(max_length=MAX_AUDIT_REASON_CHARS)] = ""
    """Why it failed, in words with the values; empty on a pass."""
    commitment: Annotated[bytes, msgspec.Meta(max_length=32)] = b""
    """Sealed chunked audits: the commitment of the chunk judged (``AuditChunk.commitment``), binding the
    verdict to the ciphertexts the coordinator relayed (spec/verification.md §14.3)."""


MAX_FIRST_OPTIONS: Final = 16
"""At most this many tokens in a FirstPositionVerdict: an auditor lists those that pass among the 16 best
by score (a first token it left out waits for its ChunkVerdict as any other chunk)."""


class FirstPositionVerdict(_Message, tag="first_position_verdict", frozen=True):
    """Auditor → coordinator, on a chunked audit's stream of an open (not sealed) job, once its session
    has evaluated the prompt and before any chunk is judged: every token it would pass at claim position
    0, with the text each completes there (spec/verification.md §14.2, the first position judged in
    advance). A first chunk of one token whose (token, piece) is listed by every auditor is forwarded
    as verified when the prover's frame arrives, without waiting for the chunk's round trip to the
    auditors; each auditor still judges the chunk, and a fail there contradicts this verdict (the
    auditor's fault)."""

    job_id: JobIdBytes
    tokens: Annotated[list[TokenId], msgspec.Meta(max_length=MAX_FIRST_OPTIONS)]
    """Tokens whose gap (and mask margin) at position 0 are within the audit's tolerance, best first."""
    pieces: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=MAX_PIECE_CHARS)]],
        msgspec.Meta(max_length=MAX_FIRST_OPTIONS),
    ]
    """One per token: the text it completes as the claim's first token."""


class AuditJob(_Message, tag="audit", frozen=True):
    """Coordinator → auditor: re-score a prover's claimed output of an open job (spec/verification.md §13).

    The auditor serves the same weights (``contract.model_sha256``) under any numerical class; it runs one
    forward pass over ``prompt`` + ``tokens``, judges every position against ``tolerance``
    (``opengrid.core.audit.judge``) and answers with an AuditReport (or an ErrorReply)."""

    job_id: JobIdBytes
    contract: DecodingContract
    """The prover's contract: its ``model_sha256`` names the weights; its digest is what the auditor's
    attestation (on a pass) signs, so the receipt can credit it."""
    prompt: Prompt
    tokens: Annotated[list[TokenId], msgspec.Meta(max_length=MAX_TOKENS_LIMIT)]
    """The claimed output tokens."""
    text: OutputText
    """The claimed output text: it must be what ``tokens`` decode to."""
    finish_reason: ShortText
    """``stop``: one more position (the end-of-generation token) is scored."""
    format: PromptFormat = "text"
    temperature: Temperature = 0.0
    top_k: TopK = 0
    top_p: TopP = 1.0
    seed: Seed = 0
    """0..2**64-1 (msgpack integers stop there)."""
    tolerance: Annotated[float, msgspec.Meta(ge=0.0, le=MAX_AUDIT_TOLERANCE)] = 0.75
    """Logits: the largest gap (and mask margin) a position may show (spec/verification.md §12.2)."""
    score_end: Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS_LIMIT + 1)] = 0
    """Score output positions ``0 .. score_end - 1`` only (the coordinator's audit plan, spec/verification.md
    §13.5): the forward pass stops at the last of them, which is where a partial audit saves compute. 0, or
    a value at least the claim's positions, scores every position (what an auditor that predates the field
    does)."""
    chunked: bool = False
    """A chunked audit of a streaming job (spec/verification.md §14.2): ``tokens``, ``text`` and
    ``finish_reason`` are empty and ``score_end`` is 0; the claim follows on the same stream in AuditChunk
    frames as the prover generates it, each answered by a ChunkVerdict, the last (``final``) by the
    AuditReport over the whole claim. Auditors that predate the field refuse it (unknown field)."""
    sealed_prompt: SealedBytes = b""
    """Sealed audits (spec/sealed-mode.md §11): the client's prompt ciphertext made for this auditor
    (``prompt``, ``tokens``, ``text`` and ``finish_reason`` are then empty)."""
    client_box_key: MaybeKeyBytes = b""
    """Sealed audits: the client's ephemeral X25519 key for this job."""
    sealed_claim: SealedBytes = b""
    """Sealed audits: the prover's claimed output (tokens, text, finish reason) encrypted to this auditor."""
    claim_attestation: Annotated[bytes, msgspec.Meta(max_length=MAX_ATTESTATION_BYTES)] = b""
    """Sealed audits: the prover's encoded attestation; the opened claim must match its salted commitment
    and token count (else the claim fails), and its key opens ``sealed_claim``."""
    prover_key: MaybeKeyBytes = b""
    """Sealed chunked audits (spec/verification.md §14.3): the streaming prover's Ed25519 key, which must
    be one of the prompt's readers; its chunks (``AuditChunk.sealed_chunk``) open with it."""


class AuditReport(_Message, tag="audit_report", frozen=True):
    """Auditor → coordinator: the verdict on an AuditJob, a summary of its evidence, and a commitment to
    all of it (``opengrid.core.audit.evidence_commitment``), so a lying auditor is provable later."""

    job_id: JobIdBytes
    verdict: Literal["pass", "fail"]
    n_scored: Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS_LIMIT + 1)]
    """Positions scored: the claimed tokens, plus one when the claim stopped."""
    max_gap: AuditGap
    """The largest gap over every position, in logits."""
    evidence_commitment: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    first_failure: Annotated[int, msgspec.Meta(ge=-1, le=MAX_TOKENS_LIMIT)] = -1
    """Output position of the first position over the tolerance; -1 on a pass."""
    failure_gap: AuditGap = 0.0
    """The gap at ``first_failure`` (0 on a pass)."""
    reason: Annotated[str, msgspec.Meta(max_length=MAX_AUDIT_REASON_CHARS)] = ""
    """Why it failed, in words with the values; empty on a pass."""
    attestation: Annotated[bytes, msgspec.Meta(max_length=MAX_ATTESTATION_BYTES)] = b""
    """On a pass: the auditor's encoded ``opengrid_ledger.Attestation`` over the same job, contract digest,
    output commitment and token count as the prover's, so the receipt can credit the auditor."""
    sealed_output: SealedBytes = b""
    """Sealed audits, on a pass: the claim it checked, sealed by the auditor to the client
    (``AuditJob.client_box_key``): the client may open it when the prover's own sealed output does not
    match the receipt (a prover that seals the client something else than it attested)."""


MAX_MEMO_CHARS: Final = 256
"""Characters of a TRANSFER's memo (``opengrid_ledger.MAX_MEMO_CHARS``, spec/ledger.md §5.6)."""
MAX_POINTS: Final = 2**63 - 1
"""Points one owner transfer may move: the ledger allows up to 2**64-1 in an entry, but msgspec bounds
only fit an int64; no account holds more than this."""


class AccountRequest(_Message, tag="account_request", frozen=True):
    """Anyone → node: one account as this node's ledger holds it (to sign its next entry, or check it)."""

    account: KeyBytes


class AccountState(_Message, tag="account", frozen=True):
    """Node → anyone: an account in the answering node's ledger; also the answer to a transfer it took
    (``entry_id``: the TRANSFER just applied, the account's balance after it)."""

    account: KeyBytes
    balance: Annotated[int, msgspec.Meta(ge=0)]
    """Spendable points (points on hold for jobs in flight are in ``held``)."""
    held: Annotated[int, msgspec.Meta(ge=0)]
    seq: Annotated[int, msgspec.Meta(ge=0)]
    """The account's last applied entry's seq (0: none); its next entry is ``seq + 1``."""
    head: MaybeKeyBytes
    """The EntryId of that entry (the next entry's ``prev``); empty when ``seq`` is 0."""
    standing: bool
    """Coordinator, has an entry, or was ever credited (spec/ledger.md §6.3): not an unknown key."""
    frozen: bool
    """Caught signing two entries with one seq: its entries from the fork on are refused everywhere."""
    entry_id: MaybeKeyBytes = b""


class TransferRequest(_Message, tag="transfer_request", frozen=True):
    """Account holder → node (a coordinator): apply, store and publish my signed TRANSFER entry (spec/
    job-protocol.md §5.19). Answered with the sender's ``AccountState`` or an ``ErrorReply``."""

    entry: EntryBytes
    """The encoded TRANSFER entry, the next link of its author's chain on the answering node."""
    new_recipient: bool = False
    """The recipient is a fresh account on purpose: without it, a recipient with no standing is refused
    (``unknown_account``)."""
    grant: Annotated[bytes, msgspec.Meta(max_length=4096)] = b""
    """A new account's GRANT entry (seq 1), applied just before the TRANSFER (as ``SubmitJob.grant``)."""


class OwnerTransfer(_Message, tag="owner_transfer", frozen=True):
    """A node's owner → that node: send points from the node's own account, written by the node on its own
    chain (its one chain writer, so no fork with its receipts or proofs). Signed with the node's identity
    key over ``owner_transfer_signing_bytes``; refused if stale or not newer than the last one taken."""

    to: KeyBytes
    amount: Annotated[int, msgspec.Meta(ge=1, le=MAX_POINTS)]
    issued_at_ms: int
    """Unix ms by the owner's clock; refused if further than ``MAX_CLOCK_SKEW_MS`` from the node's."""
    signature: Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]
    memo: Annotated[str, msgspec.Meta(max_length=MAX_MEMO_CHARS)] = ""
    new_recipient: bool = False


Message = (
    RegisterWorker
    | Registered
    | SubmitJob
    | RunJob
    | ReplicaProgress
    | SealedProgress
    | JobProgress
    | ReplicaResult
    | JobAccepted
    | ReceiptNotice
    | StatusRequest
    | NodeStatus
    | HistoryRequest
    | History
    | ControlRequest
    | QuoteRequest
    | Quote
    | ErrorReply
    | GrantRequest
    | GrantVoucher
    | AdmitRequest
    | AdmitVote
    | DialBackRequest
    | DialBackReport
    | AuditJob
    | AuditReport
    | AuditChunk
    | ChunkVerdict
    | FirstPositionVerdict
    | ModelsRequest
    | ModelList
    | ReceiptRequest
    | JobReceipt
    | AccountRequest
    | AccountState
    | TransferRequest
    | OwnerTransfer
)
