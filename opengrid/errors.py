"""The one exception tree of OpenGrid.

Every error a user or a caller can see is an ``OpenGridError``; foreign exceptions (libp2p, llama.cpp,
SQLite, msgspec) are mapped at the edge with ``raise X(...) from exc``. Messages say what happened, with
the values involved, and what to do next.

::

    OpenGridError
    ├── ConfigError                 bad flag, config value or data dir
    │   └── SettingError            one setting's value is bad (carries key, value, source)
    ├── ProtocolError               a message broke the protocol
    │   ├── LocalProtocolError      we were about to send something invalid (our bug)
    │   │   └── JobStateError       the coordinator moved a job in a way its state table forbids (our bug)
    │   └── RemoteProtocolError     a peer sent something invalid (carries the peer, when known)
    │       ├── FrameTooLargeError  the length prefix announced more than the limit allows
    │       ├── MalformedMessageError  the bytes do not decode to a known message
    │       └── PeerTooSlowError    a frame or a request did not arrive within its deadline
    ├── TransportError              a peer could not be reached, or went away mid-exchange
    │   ├── IncompatiblePeerError   the peer speaks none of our protocols (another version, not OpenGrid)
    │   └── NameResolutionError     a /dns4/, /dns6/ or /dnsaddr/ address named no reachable address (now)
    ├── EngineError                 inference failed
    │   ├── UnknownModelError       no such model here (or on the network)
    │   ├── BadRequestError         the request itself cannot run (too long for the context, empty)
    │   └── TemplateError           a chat template could not render these messages (whose fault: .fault)
    ├── JobError                    a job could not be completed
    │   ├── NoCapacityError         not enough workers serve the model
    │   ├── VerificationError       replicas did not reach quorum, or a result failed its checks
    │   ├── PaymentError            the job must be paid and cannot be (no identity, points or grant)
    │   └── UnknownJobError         no receipt for this job id where it was asked (unknown, failed, running)
    └── LedgerError                 the ledger refused an entry or could not store it
        ├── InvalidEntryError       bad signature, wrong network, broken chain, double count, ...
        └── TransferError           a transfer of points was refused (frozen account, chain out of step)
            ├── InvalidRecipientError     the recipient is not an account key or peer id, or is the sender
            ├── UnknownRecipientError     the ledger has never seen the recipient (confirm a new account)
            ├── InvalidAmountError        points not a whole number in 1..2**63-1
            ├── InvalidMemoError          the memo is too long or holds control characters
            └── InsufficientBalanceError  more points than the sender can spend (carries the balance)
"""

from __future__ import annotations


class OpenGridError(Exception):
    """Base class of every error raised by OpenGrid."""


class ConfigError(OpenGridError):
    """A flag, config value or data directory is invalid."""


class SettingError(ConfigError):
    """One setting has a bad value: the message names the key, the value, where it came from (``flag``,
    ``env:VAR``, ``file:PATH``), what was expected and what to do (opengrid/node/config.py)."""

    def __init__(self, key: str, value: object, source: str, reason: str, fix: str = "") -> None:
        self.key = key
        self.value = value
        self.source = source
        self.reason = reason
        super().__init__(f"invalid {key} = {value!r} (from {source}): {reason}" + (f"; {fix}" if fix else ""))


class ProtocolError(OpenGridError):
    """A message broke the OpenGrid protocol."""


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol forbids: a bug on this side."""


class JobStateError(LocalProtocolError):
    """The coordinator tried to move a job in a way its lifecycle table forbids
    (opengrid/core/coordinator/state.py): a bug in the coordinator, never a peer's doing."""


class RemoteProtocolError(ProtocolError):
    """A peer sent something the protocol forbids.

    ``peer`` names the offender when the transport knows it, so the caller can penalise or disconnect.
    """

    def __init__(self, message: str, *, peer: str | None = None) -> None:
        super().__init__(message if peer is None else f"{message} (peer {peer})")
        self.peer = peer


class FrameTooLargeError(RemoteProtocolError):
    """A frame's length prefix announced more bytes than the limit allows; nothing was read."""


class MalformedMessageError(RemoteProtocolError):
    """A frame's bytes do not decode to a known message of this protocol."""


class PeerTooSlowError(RemoteProtocolError):
    """A peer kept one of our streams waiting past a deadline: a frame whose bytes did not all arrive in
    time once the first one had, or a request that did not arrive within the bound after the stream
    opened (spec/limits.md). The stream is ended; the connection and its other streams live on.

    ``bound_s`` is the deadline that was hit, in seconds.
    """

    def __init__(self, message: str, *, peer: str | None = None, bound_s: float) -> None:
        super().__init__(message, peer=peer)
        self.bound_s = bound_s


class TransportError(OpenGridError):
    """A peer could not be reached, or the connection went away in the middle of an exchange."""


class IncompatiblePeerError(TransportError):
    """The peer answered, but speaks none of the protocols we asked for: another OpenGrid protocol version,
    or not an OpenGrid node. Nothing will get through until one side upgrades."""


class NameResolutionError(TransportError):
    """A DNS multiaddr (``/dns4/``, ``/dns6/``, ``/dns/``, ``/dnsaddr/``) resolved to no dialable address:
    the name is unknown, DNS did not answer in time, or its records name nothing usable. DNS can come back,
    so a node retries it like a bootstrap that does not answer."""


class EngineError(OpenGridError):
    """Inference failed in the engine (llama.cpp or an HTTP server)."""


class UnknownModelError(EngineError):
    """The named model is not installed here, or no worker on the network serves it."""


class BadRequestError(EngineError):
    """The request cannot run on any worker of this model: its prompt and ``max_tokens`` exceed the
    context window, or the prompt is empty with nothing to condition on. The client's fault, never the
    worker's: a worker answers ``malformed`` and keeps its standing (spec/job-protocol.md §7.3)."""


class TemplateError(EngineError):
    """A model's chat template could not render a chat request.

    ``fault`` says whose: ``"client"`` when the template refused the messages (``raise_exception``: a
    role it does not support), ``"template"`` when the template itself broke a limit (time, output size,
    memory) or does not compile: the worker that announced it is at fault, not the client; ``"node"``
    when this node cannot render templates at all (its installation).
    """

    def __init__(self, message: str, *, fault: str) -> None:
        super().__init__(message)
        self.fault = fault


class JobError(OpenGridError):
    """A job could not be completed; the message says why and what to try."""


class NoCapacityError(JobError):
    """Fewer workers serve the requested model than the job's replicas need."""


class VerificationError(JobError):
    """Replicas did not reach quorum, or a result failed its checks (commitment, signature)."""


class PaymentError(JobError):
    """The coordinator runs only paid jobs and this one cannot be paid: no identity, too few points, or
    no starting grant to be had (none on the network, already claimed, or rate-limited).

    ``price`` and ``balance``, when known, are the job's price (the points its HOLD must reserve) and what
    the paying account can spend (both None when the refusal did not say: e.g. no identity at all).
    """

    def __init__(self, message: str, *, price: int | None = None, balance: int | None = None) -> None:
        super().__init__(message)
        self.price = price
        self.balance = balance


class UnknownJobError(JobError):
    """The node asked holds no receipt for this job id: it never ran there, it failed (a failed job has
    none), or it is still running."""


class LedgerError(OpenGridError):
    """The ledger refused an entry or could not store it."""


class InvalidEntryError(LedgerError):
    """A ledger entry failed validation: bad signature, wrong network, broken chain, double count..."""


class TransferError(LedgerError):
    """A transfer of points was refused: the sender's account is frozen after a fork, its chain on the
    node is out of step, or one of the subclasses below."""


class InvalidRecipientError(TransferError):
    """The recipient is neither a 32-byte account key (64 hex digits) nor a libp2p peer id, or it is the
    sender itself."""


class UnknownRecipientError(TransferError):
    """The ledger has never seen the recipient (no entry, no credit, not a coordinator): likely a typo.
    Confirm a new account on purpose (``new_recipient=True``, ``--new-recipient``)."""


class InvalidAmountError(TransferError):
    """The number of points is not a whole number from 1 to 2**63-1."""


class InvalidMemoError(TransferError):
    """The memo is longer than 256 characters or holds a control or text-direction character."""


class InsufficientBalanceError(TransferError):
    """The sender cannot spend that many points: ``balance`` is what it can spend on the node asked
    (``held``: points on hold for its jobs in flight, not spendable), ``amount`` what it tried to send."""

    def __init__(self, message: str, *, balance: int, amount: int, held: int = 0) -> None:
        super().__init__(message)
        self.balance = balance
        self.amount = amount
        self.held = held
