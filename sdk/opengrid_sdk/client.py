"""The synchronous OpenGrid client.

``Client`` runs its own libp2p host on a private trio thread (the rest of the program need not know trio)
and speaks the job protocol to a coordinator reached from the bootstrap addresses.
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import random
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeGuard, TypeVar, overload

import msgspec
import trio
from nacl.signing import SigningKey
from opengrid_ledger import (
    ED25519,
    Cosignature,
    Entry,
    EntryBody,
    Grant,
    Hold,
    Transfer,
    decode_entry,
    encode_entry,
    grant_signing_bytes,
    latest_of,
    open_entry,
    sign_entry,
)

from opengrid.errors import (
    ConfigError,
    EngineError,
    InsufficientBalanceError,
    InvalidEntryError,
    InvalidRecipientError,
    JobError,
    NoCapacityError,
    OpenGridError,
    PaymentError,
    RemoteProtocolError,
    TemplateError,
    TransferError,
    TransportError,
    UnknownJobError,
    UnknownModelError,
    VerificationError,
)
from opengrid.net.discovery import role_key
from opengrid.net.host import derive_psk
from opengrid.net.keys import peer_id_of, public_key_of
from opengrid.net.transport import LIBP2P, Directory, StreamHost, Transport
from opengrid.node.chat_template import TemplateRenderer
from opengrid.node.config import DEFAULT_NETWORK
from opengrid.wire.contract import sampling_problem
from opengrid.wire.control import control_signing_bytes, owner_transfer_signing_bytes
from opengrid.wire.grant import grant_request_signing_bytes
from opengrid.wire.messages import (
    JOB_ID_BYTES,
    MAX_EXPOSURE,
    MAX_PROMPT_CHARS,
    AccountRequest,
    AccountState,
    ControlRequest,
    ErrorReply,
    GrantRequest,
    GrantVoucher,
    History,
    HistoryRequest,
    JobAccepted,
    JobProgress,
    JobReceipt,
    Message,
    ModelList,
    ModelsRequest,
    NodeStatus,
    OwnerTransfer,
    Priority,
    PromptFormat,
    Quote,
    QuoteRequest,
    ReceiptRequest,
    Sealed,
    StatusRequest,
    SubmitJob,
    TransferRequest,
    job_cost,
    listed_balance,
)
from opengrid.wire.receipts import verify_receipt_without_output
from opengrid.wire.sealed import commit_chunk, open_chunk_as_client
from opengrid_sdk.receipts import HistoryItem, SignedReceipt, history_item
from opengrid_sdk.sealed import SealedJob, check_quote, open_answer, seal_job
from opengrid_sdk.transfers import (
    AccountInfo,
    TransferReceipt,
    account_info,
    check_transfer,
    recipient_key,
    refused,
)

T = TypeVar("T")
DEFAULT_MODEL = "smollm2-135m-instruct"
SEALED_RETRIES = 2
"""Times ``complete`` re-quotes, re-seals and resubmits a sealed job whose workers failed (fresh job ids)."""

_ERRORS: dict[str, type[OpenGridError]] = {
    "unknown_model": UnknownModelError,
    "no_capacity": NoCapacityError,
    "verification_failed": VerificationError,
    "engine_error": EngineError,
    "malformed": RemoteProtocolError,
    "payment_required": PaymentError,
    "grant_refused": PaymentError,
}


@dataclass(frozen=True)
class Preview:
    """Unverified text from one worker, yielded by ``Client.stream(previews=True)``: the answer may
    contradict it (that worker may cheat). Never a ``str``, so it cannot be joined into verified text by
    mistake."""

    text: str


@dataclass(frozen=True)
class Completion:
    """A verified completion: the text, its tokens, and the signed receipt that proves it."""

    job_id: bytes
    text: str
    tokens: list[int]
    finish_reason: str
    receipt: SignedReceipt
    workers: list[str]
    """Peer ids of the workers whose outputs agreed (each credited in the receipt); under audit, the
    default, the worker that generated the answer, then the auditors that passed it."""
    dissenters: list[str]
    """Peer ids of workers outvoted by the majority (credited nothing)."""
    failed: list[str]
    """Peer ids of workers that failed or vanished mid-job and were replaced."""
    coordinator: str
    sealed: bool = False
    """True if the coordinator never saw the prompt or the answer (sealed mode)."""
    resealed: tuple[bytes, ...] = ()
    """Job ids of this call's earlier sealed submissions that ran out of the workers they were sealed to
    (``no_capacity``); each was followed by a fresh quote, a fresh seal and a fresh job id."""


@dataclass(frozen=True)
class ServedModel:
    """One model file a coordinator's online workers serve (``Client.models``)."""

    name: str
    sha256: str
    """The GGUF file's sha256, hex: ``complete(model=...)`` takes it as well as the name."""
    workers: int
    """Online workers serving it there now (a job needs at least ``replicas`` of them)."""
    weight: int
    """Points per generated token per replica: a paid job holds ``max_tokens x replicas x weight``."""


@dataclass(frozen=True)
class FetchedReceipt:
    """A job's signed receipt as ``Client.receipt`` fetched and verified it."""

    job_id: bytes
    receipt: SignedReceipt
    node: str
    """Peer id of the node that answered."""
    output_verified: bool
    """True when the job's answer came with it and matched the receipt's commitment (this client's own
    open job, within the coordinator's 24 h); otherwise signature, attestations and credits only."""
    text: str | None = None
    tokens: list[int] | None = None
    finish_reason: str | None = None


@dataclass(frozen=True)
class Sampling:
    """How a job's tokens are chosen (spec/verification.md §11). The default is greedy (temperature 0):
    the most likely token every time, the same answer for the same prompt on every job.

    ``temperature > 0`` samples by Gumbel-max from the model's distribution at that temperature, after
    the ``top_k`` (0 = off) and ``top_p`` (1 = off) masks. The randomness is fixed by the job's id (fresh
    per call) and ``seed``: every replica and auditor of one job recomputes the same sample, so sampled
    jobs are verified like greedy ones, but two calls with the same ``seed`` are two different samples.
    """

    temperature: float = 0.0
    """0..10; 0 = greedy."""
    top_k: int = 0
    """0..2**32-1; keep the ``top_k`` most likely tokens, 0 keeps all."""
    top_p: float = 1.0
    """In (0, 1]; then keep the smallest most-likely set whose probability reaches ``top_p``."""
    seed: int = 0
    """0..2**64-1; with the job id it fixes the sampling noise."""

    def __post_init__(self) -> None:
        problem = sampling_problem(self.temperature, self.top_k, self.top_p, self.seed)
        if problem:
            raise ConfigError(f"{problem}; pass values in range (temperature=0 decodes greedily)")


def _job(
    prompt: str,
    model: str,
    max_tokens: int,
    replicas: int,
    *,
    stream: bool,
    priority: Priority = "interactive",
    sampling: Sampling = Sampling(),
    format: PromptFormat = "text",
) -> SubmitJob:
    if max_tokens < 1 or replicas < 1:
        raise ConfigError(f"max_tokens and replicas must be >= 1 (got {max_tokens}, {replicas})")
    return SubmitJob(
        job_id=secrets.token_bytes(16),
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        replicas=replicas,
        stream=stream,
        priority=priority,
        temperature=float(sampling.temperature),
        top_k=sampling.top_k,
        top_p=float(sampling.top_p),
        seed=sampling.seed,
        format=format,
    )


class Client:
    """Submit jobs to an OpenGrid network.

    >>> client = Client(bootstrap=["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW..."])   # doctest: +SKIP
    >>> done = client.complete("Hello", max_tokens=16, replicas=2)  # doctest: +SKIP
    >>> done.receipt.verify(tokens=done.tokens, text=done.text)   # doctest: +SKIP

    Use it as a context manager, or call ``close()``. ``timeout`` bounds each call, in seconds.
    """

    def __init__(
        self,
        bootstrap: Sequence[str],
        *,
        network: str = DEFAULT_NETWORK,
        timeout: float = 300.0,
        identity_seed: bytes | None = None,
        network_key: str | None = None,
        transport: Transport = LIBP2P,
    ) -> None:
        """``bootstrap``: any node's multiaddrs; jobs go to a coordinator found through them.
        ``network_key``: the shared secret of a private network (the nodes' ``--network-key``).
        ``transport``: the network (opengrid/net/transport.py); tests pass an in-memory one, whose trio
        run then runs the client's work instead of a run of the client's own."""
        if not bootstrap:
            raise ConfigError("Client needs at least one bootstrap multiaddr (any node's address)")
        self.bootstrap = list(bootstrap)
        self.network = network
        self._psk = derive_psk(network, network_key) if network_key else None
        self._coordinator: str | None = None
        self._payer = SigningKey(identity_seed) if identity_seed is not None else None
        """With an identity (e.g. a volunteer's own node key), jobs are paid from its points: each puts
        ``job_cost`` on hold, settled to the agreeing workers (the rest returns) or refunded on failure."""
        self._paying = threading.Lock()  # one paid job at a time: each HOLD is the next link of our chain
        self._transferred: int | None = None
        """Seq of the last TRANSFER this client had applied: a coordinator that reports our chain shorter
        than that has not synced yet, and signing after its head would fork our chain."""
        self._owner_ms = 0
        """``issued_at_ms`` of our last owner request: the next is strictly newer (a node refuses replays)."""
        self._grant: Grant | None = None
        """A starting grant vouched for and not yet on the ledger: its GRANT goes with the next paid job."""
        self.timeout = timeout
        self._transport = transport
        self._host: StreamHost | None = None
        self._nursery: trio.Nursery | None = None
        self._templates: TemplateRenderer | None = None
        """Renders models' chat templates for ``chat`` (sandboxed child processes, as the API does)."""
        self._discovery: Directory | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._thread_main, name="opengrid-client", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    # ── the private trio thread ──────────────────────────────────────────────────────────────────────
    def _thread_main(self) -> None:
        try:
            if self._transport.trio_token is None:
                trio.run(self._trio_main)
            else:  # the transport's own run: this thread waits there, as it would in trio.run
                trio.from_thread.run(self._trio_main, trio_token=self._transport.trio_token)
        except BaseException as exc:  # surfaced to the caller of __init__ or the next call
            self._failure = exc
        finally:
            self._ready.set()

    async def _trio_main(self) -> None:
        seed = secrets.token_bytes(32)
        async with (
            self._transport.open_host(seed, ["/ip4/127.0.0.1/tcp/0"], psk=self._psk) as host,
            trio.open_nursery() as nursery,
        ):
            self._host = host
            self._nursery = nursery
            self._templates = TemplateRenderer()  # children start at the first chat() only
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await self._templates.aclose()
                nursery.cancel_scope.cancel()

    def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        if self._token is None or not self._thread.is_alive():
            raise TransportError("the client is closed")

        async def bounded() -> T:
            try:
                with trio.fail_after(self.timeout):
                    return await fn()
            except trio.TooSlowError as exc:
                raise TransportError(
                    f"no answer within {self.timeout:.0f} s; raise timeout= or retry"
                ) from exc

        return trio.from_thread.run(bounded, trio_token=self._token)

    def close(self) -> None:
        """Stop the client's host and thread."""
        if self._token is not None and self._stop is not None and self._thread.is_alive():
            stop = self._stop
            trio.from_thread.run_sync(stop.set, trio_token=self._token)
        self._thread.join(timeout=10)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ── requests ─────────────────────────────────────────────────────────────────────────────────────
    async def _request(self, address: str, message: Message) -> tuple[str, Message]:
        assert self._host is not None
        peer = await self._host.connect(address)
        return peer, await self._host.request(peer, message)

    def coordinator(self) -> str:
        """The address jobs go to: the first bootstrap node that coordinates, else a coordinator found in
        the DHT that answers as one (at random), else one a bootstrap node has heard of on gossip (at
        random among those online). Found once; found again after a call to it fails."""
        if self._coordinator is None:
            self._coordinator = self._call(self._find_coordinator)
        return self._coordinator

    def find_coordinators(self) -> list[str]:
        """Addresses of the coordinators that advertise themselves in the network's DHT (provider records
        of ``role:coordinator``); unchecked hints, in peer id order. The lookup enters the DHT through the
        bootstrap nodes that serve it (coordinators, relays) and the servers they list."""

        async def lookup() -> list[str]:
            entries: list[str] = []
            for address in self.bootstrap:
                try:
                    _, status = await self._request(address, StatusRequest())
                except OpenGridError:
                    continue
                if isinstance(status, NodeStatus):
                    entries += _dht_servers(status)
            return await self._coordinators_in_dht(entries)

        return self._call(lookup)

    async def _coordinators_in_dht(self, entries: Sequence[str]) -> list[str]:
        """Look ``role:coordinator`` up, entering the DHT through the bootstrap nodes and ``entries``
        (DHT servers a bootstrap node listed: workers are DHT clients, they answer no lookup)."""
        assert self._host is not None and self._nursery is not None
        if self._discovery is None:
            # Client mode: we ask, we never answer or store; the key would only sign values we never put.
            discovery = self._transport.discovery(
                self._host, network=self.network, signing_key=SigningKey.generate(), server=False
            )
            await self._nursery.start(discovery.run)
            self._discovery = discovery
        for address in dict.fromkeys([*self.bootstrap, *entries]):
            try:
                await self._discovery.add_peer(await self._host.connect(address))
            except OpenGridError:
                continue  # unreachable now: the lookup uses the others
        providers = await self._discovery.find_providers(role_key(self.network, "coordinator"))
        return [p.address() for p in providers if p.addrs]

    async def _find_coordinator(self) -> str:
        problems = []
        gossiped: list[str] = []
        entries: list[str] = []
        for address in self.bootstrap:
            try:
                _, status = await self._request(address, StatusRequest())
            except OpenGridError as exc:
                problems.append(f"{address}: {exc}")
                continue
            if not isinstance(status, NodeStatus):
                problems.append(f"{address}: answered {type(status).__name__}")
                continue
            if status.role == "coordinator":
                return address
            known = [p.addrs[0] for p in status.peers if p.online and "coordinator" in p.roles and p.addrs]
            gossiped += known
            entries += _dht_servers(status)
            if not known:
                problems.append(f"{address}: a {status.role} that knows no coordinator yet")
        if gossiped:  # heard online on gossip within the last beats: the freshest evidence there is
            return random.choice(gossiped)
        # A provider record is a claim that lives 48 h: ask a few, each briefly, before sending a job.
        try:
            in_dht = await self._coordinators_in_dht(entries)
        except OpenGridError as exc:
            in_dht = []
            problems.append(f"DHT lookup: {exc}")
        random.shuffle(in_dht)
        for address in in_dht[:_DHT_PROBES]:
            try:
                with trio.fail_after(_DHT_PROBE_TIMEOUT_S):
                    _, status = await self._request(address, StatusRequest())
            except (OpenGridError, trio.TooSlowError) as exc:
                problems.append(f"{address} (from the DHT): {str(exc) or 'no answer in time'}")
                continue
            if not isinstance(status, NodeStatus):
                continue
            if status.role == "coordinator" and status.network == self.network:
                return address
        raise TransportError(
            "no coordinator found through the bootstrap addresses ("
            + "; ".join(problems)
            + "); check the addresses and network, or retry once the network has formed"
        )

    def _to_coordinator(self, message: Message) -> tuple[str, Message]:
        """Send ``message`` to our coordinator; forget it if it cannot be reached (found anew next time)."""
        address = self.coordinator()
        try:
            return self._call(lambda: self._request(address, message))
        except TransportError:
            self._coordinator = None
            raise

    def status(self, address: str | None = None) -> NodeStatus:
        """Ask a node (default: the first bootstrap) for its status: identity, role, points, jobs."""
        _, reply = self._call(lambda: self._request(address or self.bootstrap[0], StatusRequest()))
        if not isinstance(reply, NodeStatus):
            raise RemoteProtocolError(f"expected NodeStatus, got {type(reply).__name__}")
        return reply

    def control(
        self, address: str, action: Literal["pause", "resume"], *, identity_seed: bytes
    ) -> NodeStatus:
        """Pause or resume the node at ``address``; ``identity_seed`` is that node's own 32-byte identity
        (``identity.key`` in its data dir): only its owner can steer it."""
        if action not in ("pause", "resume"):
            raise ConfigError(f"action must be 'pause' or 'resume', not {action!r}")
        key = SigningKey(identity_seed)
        peer_id = peer_id_of(bytes(key.verify_key))
        issued_at_ms = time.time_ns() // 1_000_000
        signature = key.sign(control_signing_bytes(self.network, peer_id, action, issued_at_ms)).signature
        request = ControlRequest(action=action, issued_at_ms=issued_at_ms, signature=signature)
        _, reply = self._call(lambda: self._request(address, request))
        if isinstance(reply, ErrorReply):
            raise RemoteProtocolError(reply.message)
        if not isinstance(reply, NodeStatus):
            raise RemoteProtocolError(f"expected NodeStatus, got {type(reply).__name__}")
        return reply

    def history(
        self, address: str | None = None, *, account: bytes | None = None, limit: int = 100
    ) -> list[HistoryItem]:
        """Receipts that paid or outvoted ``account`` (default: the node's own), oldest first.

        Every entry's signature is checked here; entries that fail are dropped, never shown.
        """
        target = address or self.bootstrap[0]
        if account is None:
            account = self.status(target).public_key
        request = HistoryRequest(account=account, limit=limit)
        _, reply = self._call(lambda: self._request(target, request))
        if not isinstance(reply, History):
            raise RemoteProtocolError(f"expected History, got {type(reply).__name__}")
        items = (history_item(entry, account, self.network) for entry in reply.entries)
        return [item for item in items if item is not None]

    def complete(
        self,
        prompt: str,
        *,
        model: str = DEFAULT_MODEL,
        max_tokens: int = 64,
        replicas: int = 2,
        sealed: bool = True,
        exposure: int | None = None,
        trusted: Sequence[str] = (),
        priority: Priority = "interactive",
        retries: int = SEALED_RETRIES,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> Completion:
        """Run ``prompt`` on the grid, have it verified, and return the result.

        How it is verified is the coordinator's choice (spec/verification.md §13.7): by default one worker
        generates and another holding the same model audits it (``workers``: the generator, then its
        auditors; ``replicas`` is then unused); a coordinator started with ``--verify replicate`` runs it
        on ``replicas`` workers and requires their outputs to agree.

        Sealed (the default): the prompt is encrypted to each of at most ``exposure`` workers (default
        ``replicas + 2``, spares for failover; an audited job needs at least 2: its generator and auditor
        are among them, spec/sealed-mode.md §11), restricted to ``trusted`` peer ids when given; the
        coordinator sees only ciphertext and commitments. ``sealed=False`` is open mode: the coordinator
        sees the prompt and the answer.

        A sealed job can only run on the workers it was sealed to. When they fail or go offline before
        it is verified (the coordinator answers ``no_capacity``), the job is quoted, sealed and submitted
        again under a fresh job id, at most ``retries`` times (spec/sealed-mode.md §5); the coordinator
        has taken the failed workers offline, so the new quote names others. Each new seal shows the
        prompt to the newly quoted workers too. A paid job's HOLD was refunded; the next one is the next
        link of this identity's chain. Open jobs fail over inside the coordinator and are not resubmitted.

        The receipt is verified before this returns (signature, commitment, attestations); a mismatch
        raises ``VerificationError``. Other failures raise the matching ``OpenGridError`` subclass.
        ``priority="batch"``: while the coordinator's workers are busy, the job waits behind interactive
        jobs (spec/job-protocol.md §8.1).

        Decoding is greedy by default. ``temperature`` (0..10), ``top_k`` (0 = off), ``top_p`` (1 = off)
        and ``seed`` (0..2**64-1) sample instead (see :class:`Sampling`): the sample is fixed by this
        job's fresh id and ``seed``, and verified like a greedy answer. Values out of range raise
        ``ConfigError`` before anything is sent; workers whose engine cannot sample (HTTP engines) refuse
        the job (``RemoteProtocolError``).
        """
        if retries < 0:
            raise ConfigError(f"retries must be >= 0 (got {retries})")
        sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        if self._payer is not None:
            with self._paying:
                return self._complete(
                    prompt,
                    model,
                    max_tokens,
                    replicas,
                    sealed,
                    exposure,
                    trusted,
                    priority,
                    retries,
                    sampling,
                )
        return self._complete(
            prompt, model, max_tokens, replicas, sealed, exposure, trusted, priority, retries, sampling
        )

    def chat(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        model: str = DEFAULT_MODEL,
        max_tokens: int = 256,
        replicas: int = 2,
        sealed: bool = True,
        exposure: int | None = None,
        trusted: Sequence[str] = (),
        priority: Priority = "interactive",
        retries: int = SEALED_RETRIES,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> Completion:
        """Answer a conversation, as ``/v1/chat/completions`` does: ``messages`` are OpenAI-style
        ``{"role": ..., "content": ...}`` dicts (roles ``system``, ``user``, ``assistant``, ``tool``).

        The prompt is rendered here, from the chat template the model's workers announced (asked of the
        coordinator with ``ModelsRequest``; rendered in a sandboxed child process with time and size
        limits, the API node's renderer), so a sealed chat job shows the coordinator no more than a
        sealed ``complete``. The job then runs as ``complete`` runs it (same arguments, same verified
        ``Completion``), in ``chat`` format: tokenized without an extra BOS.

        Raises ``ConfigError`` before sending anything when ``messages`` are malformed (empty, a role or
        key not allowed, content not a string, longer than the prompt limit in all) or a sampling value is
        out of range; ``UnknownModelError`` when no worker serves ``model``; ``TemplateError`` when the
        model has no usable chat template (``fault="template"``) or it refuses these messages
        (``fault="client"``).
        """
        turns = chat_messages(messages)
        if retries < 0:
            raise ConfigError(f"retries must be >= 0 (got {retries})")
        sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        if max_tokens < 1 or replicas < 1:
            raise ConfigError(f"max_tokens and replicas must be >= 1 (got {max_tokens}, {replicas})")
        prompt = self._render_chat(model, turns)
        args = (prompt, model, max_tokens, replicas, sealed, exposure, trusted, priority, retries, sampling)
        if self._payer is not None:
            with self._paying:
                return self._complete(*args, format="chat")
        return self._complete(*args, format="chat")

    def _render_chat(self, model: str, turns: list[dict[str, str]]) -> str:
        """The prompt ``model``'s chat template makes of ``turns``; tries up to ``MAX_TEMPLATES_TRIED``
        distinct templates (different files of one name may announce different ones)."""
        _, reply = self._to_coordinator(ModelsRequest(model=model))
        if isinstance(reply, ErrorReply):
            raise _ERRORS.get(reply.code, JobError)(reply.message)
        if not isinstance(reply, ModelList):
            raise RemoteProtocolError(f"expected a ModelList, got {type(reply).__name__}")
        if not reply.models:
            served = ", ".join(sorted({m.name for m in self.models()})) or "none yet"
            raise UnknownModelError(
                f"no worker serves model {model!r} on this coordinator; served: {served} (ask for a served "
                "model, or start a worker with it)"
            )
        templates = list({m.chat_template: m for m in reply.models if m.chat_template}.values())
        if not templates:
            raise TemplateError(
                f"model {model!r} has no chat template here; format the prompt yourself and call complete()",
                fault="template",
            )
        renderer = self._templates
        assert renderer is not None
        problems: list[str] = []
        for info in templates[:MAX_TEMPLATES_TRIED]:
            render = functools.partial(
                renderer.render, info.chat_template, turns, bos_token=info.bos_token, eos_token=info.eos_token
            )
            try:
                return self._call(render)
            except TemplateError as exc:
                if exc.fault != "template":
                    raise  # the messages' fault, or this machine cannot render: another template won't do
                problems.append(str(exc))
        raise TemplateError(
            f"the chat templates announced for {model!r} cannot be used ({'; '.join(problems)}); format the "
            "prompt yourself and call complete()",
            fault="template",
        )

    def models(self) -> list[ServedModel]:
        """The models our coordinator's online workers serve now, by name then file: each with its
        sha256, how many workers serve it, and its weight (points per generated token per replica)."""
        _, reply = self._to_coordinator(ModelsRequest())
        if isinstance(reply, ErrorReply):
            raise _ERRORS.get(reply.code, JobError)(reply.message)
        if not isinstance(reply, ModelList):
            raise RemoteProtocolError(f"expected a ModelList, got {type(reply).__name__}")
        return [
            ServedModel(name=m.name, sha256=m.sha256, workers=m.workers, weight=m.weight)
            for m in reply.models
        ]

    def receipt(self, job_id: bytes | str, *, address: str | None = None) -> FetchedReceipt:
        """Job ``job_id``'s signed receipt (16 bytes, or 32 hex characters as the API prints it), from
        our coordinator's ledger (or the node at ``address``), verified here before it is returned.

        The receipt's signature, job id, workers' attestations and credits are checked always; who
        signed it is ``receipt.coordinator_key`` (a receipt proves work only if that is a coordinator
        you trust: anyone can sign one with keys of their own). When this
        client submitted the job to that coordinator and its open answer is still kept (24 h), the answer
        comes with it and the receipt is checked against it too (``output_verified``; the SDK's
        ``SignedReceipt.verify``). Raises ``UnknownJobError`` when the node has no receipt for the job (it
        never ran there, failed, or is still running: the message says which and what to do),
        ``VerificationError`` when what came back does not verify.
        """
        wanted = _job_id_bytes(job_id)
        request = ReceiptRequest(job_id=wanted)
        if address is None:
            peer, reply = self._to_coordinator(request)
        else:
            peer, reply = self._call(lambda: self._request(address, request))
        if isinstance(reply, ErrorReply):
            if reply.code == "unknown_job":
                raise UnknownJobError(reply.message)
            raise _ERRORS.get(reply.code, JobError)(reply.message)
        if not isinstance(reply, JobReceipt) or reply.job_id != wanted:
            raise RemoteProtocolError("the node answered with something other than this job's receipt")
        signed = SignedReceipt(entry=reply.receipt, network=self.network)
        if reply.answered:
            signed.verify(
                tokens=reply.tokens, text=reply.text, job_id=wanted, coordinator_key=public_key_of(peer)
            )
        else:
            verify_receipt_without_output(signed.entry, signed.network, job_id=wanted)
        return FetchedReceipt(
            job_id=wanted,
            receipt=signed,
            node=peer,
            output_verified=reply.answered,
            text=reply.text if reply.answered else None,
            tokens=list(reply.tokens) if reply.answered else None,
            finish_reason=reply.finish_reason if reply.answered else None,
        )

    @property
    def account(self) -> bytes | None:
        """The 32-byte account that pays for jobs (None: jobs are unpaid)."""
        return bytes(self._payer.verify_key) if self._payer is not None else None

    def _complete(
        self,
        prompt: str,
        model: str,
        max_tokens: int,
        replicas: int,
        sealed: bool,
        exposure: int | None,
        trusted: Sequence[str],
        priority: Priority = "interactive",
        retries: int = SEALED_RETRIES,
        sampling: Sampling = Sampling(),
        format: PromptFormat = "text",
    ) -> Completion:
        if not sealed:
            request = self._paid(
                _job(
                    prompt,
                    model,
                    max_tokens,
                    replicas,
                    stream=False,
                    priority=priority,
                    sampling=sampling,
                    format=format,
                )
            )
            peer, reply = self._to_coordinator(request)
            return self._completion(request, peer, reply)
        cap = min(max(exposure or replicas + 2, replicas), MAX_EXPOSURE)
        quote_request = QuoteRequest(
            model=model, replicas=replicas, exposure=cap, trusted=list(trusted), max_tokens=max_tokens
        )
        resealed: list[bytes] = []
        while True:  # bounded: at most retries + 1 rounds of quote, seal and submission
            coordinator, quote, job = self._quote_and_seal(
                quote_request, prompt, sampling, trusted=list(trusted), format=format
            )
            job = dataclasses.replace(
                job, request=self._paid(msgspec.structs.replace(job.request, priority=priority), quote.weight)
            )
            peer, reply = self._to_coordinator(job.request)
            if peer != coordinator:
                raise RemoteProtocolError("the coordinator's address answered as another peer mid-job")
            if _sealed_to_workers_gone(reply) and len(resealed) < retries:
                # The workers it was sealed to failed or went offline (the coordinator now counts them
                # offline): seal afresh to the workers a new quote names, under a new job id.
                resealed.append(job.request.job_id)
                continue
            if _sealed_to_workers_gone(reply) and resealed:
                raise NoCapacityError(
                    f"{reply.message} (sealed afresh and resubmitted {len(resealed)} time(s) already; "
                    "wait for workers, or lower replicas)"
                )
            done = self._completion(job.request, peer, reply, sealed=job)
            return dataclasses.replace(done, resealed=tuple(resealed))

    def balance(self, account: bytes | None = None) -> int:
        """Spendable points of ``account`` (default: this client's identity) in the coordinator's ledger;
        points on hold for jobs in flight are not counted."""
        if account is None:
            account = self.account
            if account is None:
                raise ConfigError("balance() of whom? this Client has no identity_seed; pass account=")
        return self.status(self.coordinator()).balances.get(account.hex(), 0)

    def claim_grant(self) -> int:
        """Ask the coordinator to vouch for this identity's starting grant; return its points.

        The GRANT entry (this account's first ledger entry) goes to the coordinator with the next paid
        job, applied just before that job's HOLD: the points show in ``balance()`` from then on.
        ``complete`` claims the grant by itself when a new identity has too few points for a job, so
        calling this is optional. Raises ``PaymentError`` when the coordinator refuses: the network has
        no starting grant, this account already has ledger entries, or the grant budget of your address
        is spent for now (spec/ledger.md §7).
        """
        if self._payer is None:
            raise ConfigError("claim_grant() needs an identity: Client(identity_seed=...)")
        with self._paying:
            if self._grant is None:
                self._grant = self._request_grant()
            return self._grant.points

    def account_info(self, account: bytes | None = None, *, address: str | None = None) -> AccountInfo:
        """``account`` (default: this client's identity) as a node's ledger holds it (default: our
        coordinator's): spendable and held points, the length of its chain, known or frozen."""
        if account is None:
            account = self.account
            if account is None:
                raise ConfigError("account_info() of whom? this Client has no identity_seed; pass account=")
        if address is None:
            peer, reply = self._to_coordinator(AccountRequest(account=account))
        else:
            peer, reply = self._call(lambda: self._request(address, AccountRequest(account=account)))
        return account_info(_account_state(reply), peer)

    def transfer(
        self, to: str | bytes, points: int, *, memo: str = "", new_recipient: bool = False
    ) -> TransferReceipt:
        """Send ``points`` of this client's identity to account ``to`` (a 32-byte key, its 64 hex digits,
        or a node's peer id), with an optional ``memo`` (at most 256 characters, one line).

        The TRANSFER is signed here as the next entry of our chain (after our starting GRANT if
        ``claim_grant`` got one and our chain has not started) and handed to our coordinator, which
        applies it only if it applies at once there, then stores and publishes it (spec/ledger.md §5.6).
        ``new_recipient=True`` confirms that ``to`` is a fresh account: otherwise a recipient the ledger
        has never seen is refused, since points sent to a mistyped key are lost.

        Raises ``InvalidRecipientError``, ``InvalidAmountError``, ``InvalidMemoError`` before anything is
        signed; ``InsufficientBalanceError`` (with ``.balance``) when we cannot spend that much;
        ``UnknownRecipientError``; ``TransferError`` when the account is frozen or the node refuses it.
        """
        if self._payer is None:
            raise ConfigError("transfer() needs an identity: Client(identity_seed=...) (the sending account)")
        key = recipient_key(to)
        check_transfer(points, memo)
        me = bytes(self._payer.verify_key)
        if key == me:
            raise InvalidRecipientError(f"account {me.hex()} cannot send points to itself")
        with self._paying:  # one writer of our chain at a time: a HOLD and a TRANSFER never share a seq
            _, state = self._to_coordinator(AccountRequest(account=me))
            state = _account_state(state)
            if state.frozen:
                raise TransferError(
                    f"account {me.hex()} is frozen: it signed two different ledger entries with one seq "
                    "(a fork), so every node refuses its later entries"
                )
            if self._transferred is not None and state.seq < self._transferred:
                # Signing after the head it reports would reuse a seq we signed: a fork, our own.
                raise TransferError(
                    f"the coordinator holds account {me.hex()}'s chain up to seq {state.seq}, but this "
                    f"client sent seq {self._transferred} (through another coordinator that has not synced "
                    "yet); wait a few seconds for ledger sync and send again"
                )
            head: tuple[int, bytes] | None = (state.seq, state.head) if state.seq else None
            balance, grant = state.balance, b""
            if head is not None:
                self._grant = None  # our chain has started: a GRANT can no longer be applied
            elif self._grant is not None:
                signed_grant = self._grant_entry()
                grant, head = encode_entry(signed_grant), (1, bytes(signed_grant.id))
                balance += self._grant.points
            if points > balance:
                raise InsufficientBalanceError(
                    f"account {me.hex()} can spend {balance} points"
                    + (f" ({state.held} more on hold for jobs in flight)" if state.held else "")
                    + f"; the transfer is {points}",
                    balance=balance,
                    amount=points,
                    held=state.held,
                )
            body = EntryBody(
                network=self.network,
                author=me,
                seq=head[0] + 1 if head else 1,
                prev=head[1] if head else b"",
                payload=Transfer(to=key, amount=points, memo=memo),
            )
            entry = sign_entry(self._payer, body)
            request = TransferRequest(entry=encode_entry(entry), new_recipient=new_recipient, grant=grant)
            peer, reply = self._to_coordinator(request)
            if isinstance(reply, ErrorReply):
                if reply.code == "insufficient_balance":
                    now = _account_state(self._to_coordinator(AccountRequest(account=me))[1])
                    raise refused(reply, amount=points, balance=now.balance, held=now.held)
                raise refused(reply, amount=points)
            state = _account_state(reply)
            if state.entry_id != bytes(entry.id):
                raise RemoteProtocolError("the coordinator answered a transfer with another entry's id")
            self._grant = None
            self._transferred = body.seq
        return TransferReceipt(
            entry_id=bytes(entry.id),
            sender=me,
            to=key,
            points=points,
            memo=memo,
            balance=state.balance,
            node=peer,
        )

    def send_from_node(
        self,
        address: str,
        to: str | bytes,
        points: int,
        *,
        identity_seed: bytes,
        memo: str = "",
        new_recipient: bool = False,
    ) -> TransferReceipt:
        """Ask the node at ``address`` to send ``points`` from its own account to ``to``; the node writes
        the TRANSFER on its own chain (with its one chain writer, so it never forks its receipts or
        proofs). ``identity_seed`` is that node's identity (``identity.key`` in its data dir): only its
        owner can spend its points. Same arguments and errors as ``transfer``."""
        key = recipient_key(to)
        check_transfer(points, memo)
        signer = SigningKey(identity_seed)
        node_key = bytes(signer.verify_key)
        if key == node_key:
            raise InvalidRecipientError(f"the node's account {node_key.hex()} cannot send points to itself")
        peer_id = peer_id_of(node_key)
        issued_at_ms = max(time.time_ns() // 1_000_000, self._owner_ms + 1)  # strictly newer: not a replay
        self._owner_ms = issued_at_ms
        signed = owner_transfer_signing_bytes(
            self.network, peer_id, key, points, memo, new_recipient, issued_at_ms
        )
        request = OwnerTransfer(
            to=key,
            amount=points,
            memo=memo,
            new_recipient=new_recipient,
            issued_at_ms=issued_at_ms,
            signature=signer.sign(signed).signature,
        )
        peer, reply = self._call(lambda: self._request(address, request))
        if peer != peer_id:
            raise ConfigError(
                f"{address} is node {peer}, but the identity given is node {peer_id}'s; use the node's own "
                "data dir"
            )
        if isinstance(reply, ErrorReply):
            if reply.code == "insufficient_balance":
                now = self.account_info(node_key, address=address)
                raise refused(reply, amount=points, balance=now.balance, held=now.held)
            raise refused(reply, amount=points)
        state = _account_state(reply)
        return TransferReceipt(
            entry_id=state.entry_id,
            sender=node_key,
            to=key,
            points=points,
            memo=memo,
            balance=state.balance,
            node=peer,
        )

    def _request_grant(self) -> Grant:
        """A voucher from the coordinator for our starting grant, checked, as a GRANT payload."""
        assert self._payer is not None
        account = bytes(self._payer.verify_key)
        coordinator = public_key_of(self.coordinator().rsplit("/p2p/", 1)[-1])
        issued_at_ms = time.time_ns() // 1_000_000
        signed = grant_request_signing_bytes(self.network, coordinator, account, issued_at_ms)
        request = GrantRequest(
            account=account, issued_at_ms=issued_at_ms, signature=self._payer.sign(signed).signature
        )
        _, reply = self._to_coordinator(request)
        if isinstance(reply, ErrorReply):
            raise PaymentError(f"no starting grant for account {account.hex()}: {reply.message}")
        if not isinstance(reply, GrantVoucher) or reply.account != account:
            raise RemoteProtocolError("the coordinator answered a grant request with something else")
        try:
            ED25519.verify(
                reply.signer, grant_signing_bytes(self.network, account, reply.points), reply.signature
            )
        except InvalidEntryError as exc:
            raise RemoteProtocolError(f"the coordinator's grant voucher does not verify: {exc}") from exc
        return Grant(points=reply.points, voucher=Cosignature(signer=reply.signer, signature=reply.signature))

    def _grant_entry(self) -> Entry:
        """Our GRANT, signed as the first entry of our chain."""
        assert self._payer is not None and self._grant is not None
        body = EntryBody(
            network=self.network, author=bytes(self._payer.verify_key), seq=1, prev=b"", payload=self._grant
        )
        return sign_entry(self._payer, body)

    def price(self, *, model: str = DEFAULT_MODEL, max_tokens: int = 64, replicas: int = 2) -> int:
        """Points a paid job of this shape holds, as the coordinator prices it (its ``Quote``): ``max_tokens
        x replicas x`` the model's points per token (one per started billion parameters, spec/ledger.md
        §7). Each agreeing worker is paid ``max(1, tokens generated) x`` points per token out of the hold;
        the rest comes back."""
        return job_cost(max_tokens, replicas, self._weight(model, replicas, max_tokens))

    def _weight(self, model: str, replicas: int, max_tokens: int) -> int:
        """Points per token of ``model`` on our coordinator (its ``Quote``) for a job of ``max_tokens``:
        the price of the class that job would run on."""
        request = QuoteRequest(
            model=model, replicas=replicas, exposure=min(replicas, MAX_EXPOSURE), max_tokens=max_tokens
        )
        _, quote = self._to_coordinator(request)
        if isinstance(quote, ErrorReply):
            raise _ERRORS.get(quote.code, JobError)(quote.message)
        if not isinstance(quote, Quote):
            raise RemoteProtocolError(f"expected a Quote, got {type(quote).__name__}")
        return quote.weight

    def _paid(self, request: SubmitJob, weight: int | None = None) -> SubmitJob:
        """Attach a signed HOLD of the job's cost (``weight``: the model's points per token, asked for in a
        Quote when not given), as the next entry of our ledger chain; for a new account with too few
        points, first the starting grant (claimed now if it was not yet)."""
        if self._payer is None:
            return request
        coordinator = public_key_of(self.coordinator().rsplit("/p2p/", 1)[-1])
        if weight is None:
            weight = self._weight(request.model, request.replicas, request.max_tokens)
        cost = job_cost(request.max_tokens, request.replicas, weight)
        head = self._chain_head()
        balance = self._known_balance()
        grant = b""
        if head is not None:
            self._grant = None  # our chain has started: a GRANT can no longer be applied (or already was)
        elif self._grant is not None or (balance or 0) < cost:
            if self._grant is None:
                try:
                    self._grant = self._request_grant()
                except PaymentError as exc:
                    if balance is None:
                        raise
                    raise self._cannot_pay(request, weight, balance, f"; and {exc}") from exc
            entry = self._grant_entry()
            grant, head = encode_entry(entry), (1, bytes(entry.id))
            if balance is not None:
                balance += self._grant.points
        if balance is not None and balance < cost:
            # Refused here, before signing: a HOLD the account cannot cover would wait in the coordinator's
            # ledger and hold up every later entry of our chain (spec/ledger.md §6.1).
            raise self._cannot_pay(request, weight, balance, "")
        body = EntryBody(
            network=self.network,
            author=bytes(self._payer.verify_key),
            seq=head[0] + 1 if head else 1,
            prev=head[1] if head else b"",
            payload=Hold(
                job_id=request.job_id,
                amount=cost,
                coordinator=coordinator,
            ),
        )
        hold = encode_entry(sign_entry(self._payer, body))
        return msgspec.structs.replace(request, hold=hold, grant=grant)

    def _known_balance(self) -> int | None:
        """Our spendable points in the coordinator's ledger, or None when its NodeStatus cannot say."""
        assert self._payer is not None
        return listed_balance(self.status(self.coordinator()), bytes(self._payer.verify_key))

    def _cannot_pay(self, request: SubmitJob, weight: int, balance: int, more: str) -> PaymentError:
        """The typed error for a job our account cannot pay: its price and our balance, in words and as
        ``PaymentError.price`` / ``.balance``."""
        assert self._payer is not None
        cost = job_cost(request.max_tokens, request.replicas, weight)
        return PaymentError(
            f"account {bytes(self._payer.verify_key).hex()[:16]}... has {balance} points; this job costs up "
            f"to {cost} (max_tokens {request.max_tokens} x replicas {request.replicas} x {weight} points per "
            f"token of {request.model!r}){more}. Lower max_tokens or replicas, earn points by running a "
            "worker with this identity, or have another account send points to it",
            price=cost,
            balance=balance,
        )

    def _held_weight(self, request: SubmitJob) -> int | None:
        """The points per token our HOLD paid for (its amount is ``max_tokens x replicas x weight``);
        None for an unpaid job."""
        if not request.hold:
            return None
        payload = open_entry(decode_entry(request.hold), self.network).payload
        if not isinstance(payload, Hold):
            return None
        return payload.amount // (request.max_tokens * request.replicas)

    def _chain_head(self) -> tuple[int, bytes] | None:
        """Our latest ledger entry, as the coordinator holds it (seq, id); None before our first."""
        assert self._payer is not None
        me = bytes(self._payer.verify_key)
        request = HistoryRequest(account=me, limit=1024)
        _, reply = self._to_coordinator(request)
        if not isinstance(reply, History):
            raise RemoteProtocolError(f"expected History, got {type(reply).__name__}")
        return latest_of(me, reply.entries, self.network)

    @overload
    def stream(
        self,
        prompt: str,
        *,
        model: str = ...,
        max_tokens: int = ...,
        replicas: int = ...,
        temperature: float = ...,
        top_k: int = ...,
        top_p: float = ...,
        seed: int = ...,
        previews: Literal[False] = ...,
        sealed: bool = ...,
        exposure: int | None = ...,
        trusted: Sequence[str] = ...,
    ) -> Iterator[str | Completion]: ...

    @overload
    def stream(
        self,
        prompt: str,
        *,
        model: str = ...,
        max_tokens: int = ...,
        replicas: int = ...,
        temperature: float = ...,
        top_k: int = ...,
        top_p: float = ...,
        seed: int = ...,
        previews: Literal[True],
        sealed: bool = ...,
        exposure: int | None = ...,
        trusted: Sequence[str] = ...,
    ) -> Iterator[str | Preview | Completion]: ...

    @overload
    def stream(
        self,
        prompt: str,
        *,
        model: str = ...,
        max_tokens: int = ...,
        replicas: int = ...,
        temperature: float = ...,
        top_k: int = ...,
        top_p: float = ...,
        seed: int = ...,
        previews: bool = ...,
        sealed: bool = ...,
        exposure: int | None = ...,
        trusted: Sequence[str] = ...,
    ) -> Iterator[str | Preview | Completion]: ...

    def stream(
        self,
        prompt: str,
        *,
        model: str = DEFAULT_MODEL,
        max_tokens: int = 64,
        replicas: int = 2,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        previews: bool = False,
        sealed: bool = False,
        exposure: int | None = None,
        trusted: Sequence[str] = (),
    ) -> Iterator[str | Preview | Completion]:
        """Like ``complete``, but yields the answer's text as it is verified. The sampling settings are
        ``complete``'s (greedy by default); out of range, ``ConfigError`` is raised by this call itself,
        before any iteration.

        The ``str`` items are VERIFIED text: a quorum of the job's workers generated it, token by token
        (spec/verification.md §14); joined, they are the answer's text, and the last item is the
        verified ``Completion`` (its receipt checked; ``VerificationError`` if its text does not start
        with what was yielded). Text the coordinator could not verify while it streamed (an audit-mode
        coordinator verifies only at the end) comes as one ``str`` just before the ``Completion``.
        ``previews=True`` also yields ``Preview`` items: one worker's unverified text, as it generates.
        By default streaming runs in open mode: text passes through the coordinator in plaintext.
        ``sealed=True`` streams a sealed job (spec/verification.md §14.3; ``exposure`` and ``trusted`` as
        for ``complete``): a coordinator in audit mode forwards each chunk sealed by the prover to this
        client once every auditor passed it, and never sees the prompt or the text; each ``str`` is a
        chunk opened here. No previews, and no re-seal after a failure (``NoCapacityError`` instead).
        With an identity the job is paid like ``complete``'s (HOLD, then SETTLE or REFUND).
        """
        sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        seal = _SealOptions(exposure=exposure, trusted=tuple(trusted)) if sealed else None
        return self._paid_stream(prompt, model, max_tokens, replicas, sampling, previews, seal)

    def _paid_stream(
        self,
        prompt: str,
        model: str,
        max_tokens: int,
        replicas: int,
        sampling: Sampling,
        previews: bool,
        seal: _SealOptions | None = None,
    ) -> Iterator[str | Preview | Completion]:
        if self._payer is None:
            yield from self._stream(prompt, model, max_tokens, replicas, sampling, previews, seal)
            return
        # Our HOLD must be the next link of our chain: no other paid call until the coordinator has it,
        # which it has once it streams anything. Released before the first yield, so the caller may make
        # other paid calls while it iterates (holding it across yields deadlocked such a caller).
        self._paying.acquire()
        held = True
        try:
            for item in self._stream(prompt, model, max_tokens, replicas, sampling, previews, seal):
                if held:
                    self._paying.release()
                    held = False
                yield item
        finally:
            if held:
                self._paying.release()

    def _sealed_submission(
        self, prompt: str, model: str, max_tokens: int, replicas: int, sampling: Sampling, seal: _SealOptions
    ) -> tuple[str, SealedJob]:
        """Quote, check the quote and seal a streaming job to the quoted workers: the coordinator's peer id
        and the sealed (and paid) job."""
        cap = min(max(seal.exposure or replicas + 2, replicas), MAX_EXPOSURE)
        trusted = list(seal.trusted)
        quote_request = QuoteRequest(
            model=model, replicas=replicas, exposure=cap, trusted=trusted, max_tokens=max_tokens
        )
        coordinator, quote, job = self._quote_and_seal(quote_request, prompt, sampling, trusted=trusted)
        request = self._paid(msgspec.structs.replace(job.request, stream=True), quote.weight)
        return coordinator, dataclasses.replace(job, request=request)

    def _quote_and_seal(
        self,
        quote_request: QuoteRequest,
        prompt: str,
        sampling: Sampling,
        *,
        trusted: list[str],
        format: PromptFormat = "text",
    ) -> tuple[str, Quote, SealedJob]:
        """Ask for a quote, check it (the workers' keys, the exposure, the trusted list) and seal
        ``prompt`` to the quoted workers: the coordinator's peer id, the quote and the sealed job."""
        coordinator, quote = self._to_coordinator(quote_request)
        if isinstance(quote, ErrorReply):
            raise _ERRORS.get(quote.code, JobError)(quote.message)
        if not isinstance(quote, Quote):
            raise RemoteProtocolError(f"expected a Quote, got {type(quote).__name__}")
        replicas, exposure = quote_request.replicas, quote_request.exposure
        peers = check_quote(quote, trusted=trusted or None, exposure=exposure, replicas=replicas)
        job = seal_job(
            prompt,
            peers=peers,
            model=quote_request.model,
            max_tokens=quote_request.max_tokens,
            replicas=replicas,
            format=format,
            temperature=float(sampling.temperature),
            top_k=sampling.top_k,
            top_p=float(sampling.top_p),
            seed=sampling.seed,
        )
        return coordinator, quote, job

    def _stream(
        self,
        prompt: str,
        model: str,
        max_tokens: int,
        replicas: int,
        sampling: Sampling,
        previews: bool,
        seal: _SealOptions | None = None,
    ) -> Iterator[str | Preview | Completion]:
        sealed: SealedJob | None = None
        quoted = ""
        if seal is not None:
            quoted, sealed = self._sealed_submission(prompt, model, max_tokens, replicas, sampling, seal)
            request = sealed.request
        else:
            request = self._paid(_job(prompt, model, max_tokens, replicas, stream=True, sampling=sampling))
        items: queue.Queue[str | Preview | tuple[Sealed, bytes] | tuple[str, Message] | BaseException] = (
            queue.Queue()
        )
        address = self.coordinator()

        async def exchange() -> None:
            assert self._host is not None
            peer = await self._host.connect(address)
            if quoted and peer != quoted:
                raise RemoteProtocolError("the coordinator's address answered as another peer mid-job")
            stream = await self._host.open_stream(peer)
            try:
                await stream.send(request)
                # at most one verified frame and one preview per token, then the answer
                for _ in range(2 * request.max_tokens + 1):
                    reply = await stream.receive()
                    if not isinstance(reply, JobProgress):
                        items.put((peer, reply))
                        return
                    if reply.job_id != request.job_id:
                        continue
                    if reply.verified and reply.sealed_chunk is not None:
                        if sealed is not None:  # a verified chunk sealed to us (spec/verification.md §14.3)
                            items.put((reply.sealed_chunk, reply.chunk_commitment))
                    elif reply.verified:
                        items.put(reply.text)
                    elif previews:
                        items.put(Preview(reply.text))
                raise RemoteProtocolError("more progress frames than tokens", peer=peer)
            finally:
                await stream.aclose()

        def run() -> None:
            try:
                self._call(exchange)
            except BaseException as exc:  # handed to the consuming thread below
                items.put(exc)

        worker = threading.Thread(target=run, name="opengrid-stream", daemon=True)
        worker.start()
        verified: list[str] = []
        streamed: list[int] = []  # a sealed stream's tokens opened so far
        try:
            while True:
                item = items.get(timeout=self.timeout + 5)
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, tuple) and isinstance(item[0], Sealed):
                    assert sealed is not None and isinstance(item[1], bytes)  # only a sealed stream's
                    text = self._open_chunk(sealed, item[0], item[1], streamed)
                    if text:
                        verified.append(text)
                        yield text
                elif isinstance(item, Preview):
                    yield item
                elif isinstance(item, str):
                    verified.append(item)
                    yield item
                else:
                    completion = self._completion(request, *item, sealed=sealed)
                    sent = "".join(verified)
                    if list(completion.tokens[: len(streamed)]) != streamed:
                        raise VerificationError(
                            f"the answer does not start with the {len(streamed)} tokens streamed to you as "
                            "verified; discard the streamed text and retry (or use another coordinator)"
                        )
                    if not completion.text.startswith(sent):
                        raise VerificationError(
                            f"the coordinator streamed {len(sent)} characters as verified, but its verified "
                            "answer does not start with them; discard the streamed text and retry (or use "
                            "another coordinator)"
                        )
                    if len(completion.text) > len(sent):
                        yield completion.text[len(sent) :]  # verified by the receipt just checked
                    yield completion
                    return
        finally:
            worker.join(timeout=self.timeout + 5)

    @staticmethod
    def _open_chunk(job: SealedJob, sealed: Sealed, commitment: bytes, streamed: list[int]) -> str:
        """Open one verified chunk of a sealed stream (from a worker the job was sealed to, starting where
        the chunks before it ended, matching the commitment its auditors named), add its tokens to
        ``streamed`` and return its text."""
        if sealed.peer_id not in {s.peer_id for s in job.request.sealed}:
            raise VerificationError(
                f"a streamed chunk came sealed by {sealed.peer_id}, a worker this job was not sealed to"
            )
        chunk = open_chunk_as_client(
            sealed.ciphertext,
            job_id=job.request.job_id,
            offset=len(streamed),
            prover_key=public_key_of(sealed.peer_id),
            ephemeral=job.ephemeral,
        )
        if commit_chunk(job.request.job_id, job.salt, chunk.offset, chunk.tokens, chunk.pieces) != commitment:
            raise VerificationError(
                f"the streamed chunk at token {chunk.offset} is not the one its auditors passed (its "
                "commitment differs); discard the streamed text and retry"
            )
        streamed += chunk.tokens
        return "".join(chunk.pieces)

    def _completion(
        self, request: SubmitJob, peer: str, reply: Message, *, sealed: SealedJob | None = None
    ) -> Completion:
        """Check the coordinator's answer and its receipt (opening the sealed output first, if sealed)."""
        job_id = request.job_id
        if isinstance(reply, ErrorReply):
            raise _ERRORS.get(reply.code, JobError)(reply.message)
        if not isinstance(reply, JobAccepted) or reply.job_id != job_id:
            raise RemoteProtocolError("the coordinator answered with something other than this job's result")
        receipt = SignedReceipt(
            entry=reply.receipt, network=self.network, salt=sealed.salt if sealed else b""
        )
        tokens, text, finish_reason = reply.tokens, reply.text, reply.finish_reason
        if sealed is not None:
            output = open_answer(sealed, reply, receipt.receipt.output_commitment)
            tokens, text, finish_reason = output.tokens, output.text, output.finish_reason
        receipt.verify(
            tokens=tokens,
            text=text,
            job_id=job_id,
            coordinator_key=public_key_of(peer),
            weight=self._held_weight(request),
        )
        return Completion(
            job_id=job_id,
            text=text,
            tokens=tokens,
            finish_reason=finish_reason,
            receipt=receipt,
            workers=reply.workers,
            dissenters=reply.dissenters,
            failed=reply.failed,
            coordinator=peer,
            sealed=sealed is not None,
        )


@dataclasses.dataclass(frozen=True)
class _SealOptions:
    """How a sealed ``stream`` seals its prompt: ``complete``'s ``exposure`` and ``trusted``."""

    exposure: int | None
    trusted: tuple[str, ...]


def _account_state(reply: Message) -> AccountState:
    """``reply`` as the AccountState it must be (an ErrorReply becomes the typed error it names)."""
    if isinstance(reply, ErrorReply):
        raise _ERRORS.get(reply.code, RemoteProtocolError)(reply.message)
    if not isinstance(reply, AccountState):
        raise RemoteProtocolError(f"expected an AccountState, got {type(reply).__name__}")
    return reply


def _sealed_to_workers_gone(reply: Message) -> TypeGuard[ErrorReply]:
    """Did a sealed submission fail because the workers it was sealed to cannot run it (failed, offline)?

    The coordinator answers ``no_capacity`` exactly then, once the quote said enough workers serve the
    model (spec/sealed-mode.md §5, §8): a fresh quote and seal can succeed on other workers."""
    return isinstance(reply, ErrorReply) and reply.code == "no_capacity"


MAX_CHAT_MESSAGES: Final = 1024
"""Messages one ``chat`` call may send."""
CHAT_ROLES: Final = ("system", "user", "assistant", "tool")
MAX_TEMPLATES_TRIED: Final = 3
"""Distinct chat templates (from different files of one model name) tried for one ``chat`` call."""


def chat_messages(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """``messages`` checked and copied as ``{"role", "content"}`` dicts; ``ConfigError`` saying which
    message is wrong and how, before anything is sent."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ConfigError(
            f"messages must be a list of {{'role': ..., 'content': ...}} dicts, not {type(messages).__name__}"
        )
    if not messages:
        raise ConfigError("messages must not be empty: send at least one {'role': 'user', 'content': ...}")
    if len(messages) > MAX_CHAT_MESSAGES:
        raise ConfigError(f"{len(messages)} messages is over the limit of {MAX_CHAT_MESSAGES}; send fewer")
    turns = []
    total = 0
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ConfigError(
                f"messages[{i}] is a {type(message).__name__}, not a dict with role and content"
            )
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            raise ConfigError(f"messages[{i}] has key(s) {extra} besides 'role' and 'content'; remove them")
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES:
            raise ConfigError(f"messages[{i}] has role {role!r}; use one of {', '.join(CHAT_ROLES)}")
        if not isinstance(content, str):
            raise ConfigError(f"messages[{i}]'s content is a {type(content).__name__}, not a string")
        total += len(content)
        turns.append({"role": role, "content": content})
    if total > MAX_PROMPT_CHARS:
        raise ConfigError(
            f"the messages hold {total} characters, over the prompt limit of {MAX_PROMPT_CHARS}; shorten them"
        )
    return turns


def _job_id_bytes(job_id: bytes | str) -> bytes:
    """A job id given as 16 bytes or as hex (the API's ``X-OpenGrid-Job-Id``, with or without its
    ``chatcmpl-``/``cmpl-`` prefix from the response's ``id``)."""
    if isinstance(job_id, str):
        text = job_id.rsplit("-", 1)[-1]
        try:
            job_id = bytes.fromhex(text)
        except ValueError as exc:
            raise ConfigError(
                f"job id {text[:40]!r} is not hex; pass the 32 hex characters or 16 bytes"
            ) from exc
    if not isinstance(job_id, bytes) or len(job_id) != JOB_ID_BYTES:
        size = len(job_id) if isinstance(job_id, bytes) else type(job_id).__name__
        raise ConfigError(f"a job id is {JOB_ID_BYTES} bytes (32 hex characters), got {size}")
    return job_id


_DHT_PROBES = 4
"""Coordinators found in the DHT that a client asks at most (in random order) before giving up."""
_DHT_PROBE_TIMEOUT_S = 5.0


def _dht_servers(status: NodeStatus) -> list[str]:
    """Addresses of the DHT servers a node lists: its online coordinators and relays (spec/discovery.md
    §4.6); workers run the DHT as clients."""
    roles = {"coordinator", "relay"}
    return [p.addrs[0] for p in status.peers if p.online and roles & set(p.roles) and p.addrs]
