"""A node's configuration: one typed schema, checked in one place.

:class:`NodeConfig` is a frozen msgspec Struct holding every setting of ``opengrid node start``. Each field's
type carries its constraints (``Annotated[int, Meta(ge=1)]``, a ``Literal`` of the allowed words), so one
conversion, :func:`convert_setting`, checks a value wherever it comes from: the config file, the environment
or a flag (opengrid/settings.py layers those and records where each value came from), or a NodeConfig
built in code (:meth:`NodeConfig.validated` runs the same conversion on every field). What a type cannot
say is in ``_VALUE_CHECKS`` (a multiaddr's syntax, daily hours, a port's range) and, for rules between
keys (a worker needs a bootstrap address; ``auto`` resolved), in :meth:`NodeConfig.validated`.

A setting's key, in the config file, the environment (``OPENGRID_<KEY>``) and its flag (``--<key>``), is
the field's encoded name: the field name itself except ``heartbeat_s`` and ``announce_s`` (keys
``heartbeat`` and ``announce``, named like their flags).
"""

from __future__ import annotations

import pathlib
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypedDict

import msgspec
from msgspec import Meta
from opengrid_ledger.genesis import Genesis, decode_genesis

from opengrid.core.availability import parse_windows
from opengrid.core.coordinator.config import CoordinatorConfig
from opengrid.errors import ConfigError, SettingError
from opengrid.wire.messages import MAX_PROGRESS_TOKENS

Role = Literal["worker", "coordinator", "edge", "auto"]
ROLES: tuple[Role, ...] = ("worker", "coordinator", "edge", "auto")
DEFAULT_NETWORK = "opengrid-local"
Adversary = Literal["wrong-tokens", "sealed-lie", "lazy", "model-swap", "one-in-twenty", "rubber-stamp"]
ADVERSARIES: tuple[Adversary, ...] = (
    "wrong-tokens", "sealed-lie", "lazy", "model-swap", "one-in-twenty", "rubber-stamp",
)  # fmt: skip
"""Demo/test-only misbehaviours: wrong tokens (outvoted by replicas); a sealed output that does not match
what the worker attested (caught by the client); random tokens without running the model (lazy); a
different model behind the announced one (model-swap). Canaries and replication catch the last two.
Audit mode (spec/verification.md §13.6): one token in 20 changed (one-in-twenty, caught by every audit
window); an auditor that passes every claim unscored (rubber-stamp, caught by canary and second audits)."""
DEFAULT_LISTEN = "/ip4/127.0.0.1/tcp/0"
DEFAULT_API_ADDRESS = "127.0.0.1:9337"
"""Where ``--api`` serves when given bare (here, not in opengrid.node.api: the CLI reads it without the
node extra that the API server needs)."""
EngineKind = Literal["llama", "http"]
ENGINES: tuple[EngineKind, ...] = ("llama", "http")
VerifyMode = Literal["replicate", "audit"]
VERIFY_MODES: tuple[VerifyMode, ...] = ("replicate", "audit")
HttpBackendName = Literal["auto", "llama.cpp-server", "vllm"]
HTTP_BACKENDS: tuple[HttpBackendName, ...] = ("auto", "llama.cpp-server", "vllm")
ScoreWith = Literal["auto", "off", "bf16", "f16", "f32", "q8_0"]
SCORE_WITH: tuple[ScoreWith, ...] = ("auto", "off", "bf16", "f16", "f32", "q8_0")
"""What a worker's audits score on (``load_engine(score_with=...)``, spec/verification.md §12.5): ``auto``
a scoring copy for Q4_1 weights on the CPU (bf16 where the CPU multiplies bf16 natively, else f16), else
the model itself; ``off`` always the model itself;
a copy type (opengrid.engines.scoring_copy.SCORING_COPY_TYPES) that copy."""
DEFAULT_MAX_TOKENS_PER_JOB = 1024
EDGE_MAX_TOKENS_PER_JOB = 128
"""An edge node (a small machine) takes short jobs only, unless ``max_tokens_per_job`` says otherwise."""
DEFAULT_MAX_CONTEXT = 2048
MIN_MAX_MEMORY = 1 << 20
"""The smallest ``--max-memory``: one MiB (less holds no layer of any model)."""
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_memory(text: str) -> int:
    """Bytes of a size like ``8G``, ``512M``, ``1.5G`` or ``1048576`` (binary units; a trailing ``B``,
    ``iB`` is allowed); ConfigError saying what is accepted otherwise."""
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = raw[-1:] if raw[-1:] in _UNITS and raw[-1:] else ""
    number = raw[: -len(unit)] if unit else raw
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value * _UNITS[unit] >= 2**62:
        raise ConfigError(f"--max-memory {text!r} is not a size; use e.g. 8G, 512M or a number of bytes")
    return int(value * _UNITS[unit])


# -- constrained types: each ``description`` is the "expected ..." of the error a bad value gets -----
Seconds = Annotated[float, Meta(gt=0, description="expected a number of seconds > 0")]
AnnounceSeconds = Annotated[float, Meta(ge=0.1, le=3600, description="expected seconds, 0.1..3600")]
Fraction = Annotated[float, Meta(ge=0, le=1, description="expected a number from 0 to 1")]
Load = Annotated[float, Meta(gt=0, description="expected a load per core > 0, e.g. 0.5")]
AtLeast0 = Annotated[int, Meta(ge=0, description="expected an integer >= 0")]
AtLeast1 = Annotated[int, Meta(ge=1, description="expected an integer >= 1")]
GpuLayers = Annotated[int, Meta(ge=-1, description="expected an integer >= -1 (-1: all layers, 0: CPU only)")]
ContextTokens = Annotated[int, Meta(ge=16, description="expected an integer >= 16 (tokens)")]
ChunkTokens = Annotated[
    int, Meta(ge=1, le=MAX_PROGRESS_TOKENS, description=f"expected an integer 1..{MAX_PROGRESS_TOKENS}")
]
NetworkName = Annotated[str, Meta(min_length=1, max_length=64, description="expected 1..64 characters")]
NetworkKey = Annotated[
    str,
    Meta(min_length=8, description="expected at least 8 characters (share the key like a password)"),
]
Text = Annotated[str, Meta(min_length=1, description="expected a non-empty text")]
ModelName = Annotated[
    str, Meta(min_length=1, description="expected a catalog name (`opengrid models list`) or a .gguf path")
]
HttpUrl = Annotated[
    str,
    Meta(
        pattern=r"^https?://", description="expected an http:// or https:// URL, e.g. http://127.0.0.1:8000"
    ),
]
HostPort = Annotated[
    str,
    Meta(
        pattern=r"^.+:[0-9]{1,5}$",
        description=f"expected HOST:PORT, e.g. {DEFAULT_API_ADDRESS} (or true for that address)",
    ),
]
MemorySize = Annotated[
    int,
    Meta(ge=MIN_MAX_MEMORY, description="expected a size of at least 1M, e.g. 512M, 8G or a number of bytes"),
]
Multiaddrs = Annotated[
    tuple[str, ...], Meta(description="expected a list of multiaddrs, e.g. ['/ip4/127.0.0.1/tcp/4001']")
]


class CoordinatorSettings(TypedDict):
    """The ``CoordinatorConfig`` fields a node's settings decide (``NodeConfig.coordinator_settings``)."""

    heartbeat_s: float
    require_payment: bool
    verify: VerifyMode
    auditors: int
    audit_full_rate: float
    audit_second_rate: float
    audit_canary_rate: float
    stream_chunk_first: int
    stream_chunk_max: int


class NodeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything ``opengrid node start`` needs; ``validated()`` checks every value and resolves ``auto``.

    Built from settings by opengrid/settings.py, or in code (tests, tools); change one with
    ``msgspec.structs.replace``.
    """

    # -- the node --------------------------------------------------------------------------------
    data_dir: pathlib.Path
    role: Role = "auto"
    """``auto``: a coordinator without ``bootstrap``; with one, an edge on machines under 2 GiB of RAM, else
    a worker (``validated`` resolves it, opengrid/node/probe.py)."""
    network: NetworkName = DEFAULT_NETWORK
    """The network's name: nodes of other networks are not spoken to."""
    network_key: NetworkKey | None = None
    """Shared secret (an invite token) of a private network: only nodes with the same key can connect."""
    genesis: pathlib.Path | None = None
    """The network's genesis file (JSON, spec/ledger.md §7): its coordinators mint on every node."""

    # -- network ---------------------------------------------------------------------------------
    listen: Multiaddrs = (DEFAULT_LISTEN,)
    """Addresses to listen on (``node start``'s default is every interface, settings.py)."""
    no_listen: bool = False
    """Listen on no address (``validated`` empties ``listen``): dial out only, reachable through relays."""
    bootstrap: Multiaddrs = ()
    """Any nodes' full multiaddrs (``.../p2p/<peer id>``) or DNS names: how the node finds its network."""
    relay: bool | None = None
    """Relay for nodes that cannot be dialled (circuit relay v2, spec/discovery.md §8). None: coordinators
    do and other roles do not — a coordinator must be reachable anyway and every worker already knows it,
    so a worker behind NAT needs no extra configuration; relayed traffic is small (prompts, answers,
    heartbeats) and bounded per circuit (``opengrid.net.relay.RELAY_LIMITS``)."""
    relay_via: Multiaddrs = ()
    """Relays to hold a reservation on and be reachable through (their full multiaddrs). Empty and no
    ``listen`` address: the bootstrap nodes are used as relays."""
    lan: bool = False
    """Announce this node on the local network and dial the nodes of its network found there (mDNS,
    opengrid/net/lan.py), on the interfaces it listens on. Off here (a library default: in-process nodes and
    tests stay quiet); ``opengrid node start`` turns it on unless ``--no-lan`` (settings.py)."""
    heartbeat_s: Seconds = msgspec.field(default=5.0, name="heartbeat")
    """Workers re-register with their coordinators this often; 3 missed beats mark a worker offline."""
    announce_s: AnnounceSeconds = msgspec.field(default=5.0, name="announce")
    """Gossip announcement period: how every node learns of every other (see opengrid/net/gossip.py)."""

    # -- model and engine (workers) --------------------------------------------------------------
    model: ModelName | None = None
    """Model name or GGUF path a worker serves; None picks the default model."""
    engine: EngineKind = "llama"
    """``llama``: llama.cpp in this process; ``http``: an OpenAI-compatible server (``http_url``, or one
    the node starts and stops itself when ``http_url`` is None)."""
    http_url: HttpUrl | None = None
    """Base URL of a running llama_cpp.server / vLLM to attach to (engine ``http`` only)."""
    http_backend: HttpBackendName = "auto"
    """Which server ``http_url`` is, or which one to start: ``auto`` = vLLM when importable, else
    llama_cpp.server (for an attached server ``auto`` means llama_cpp.server)."""
    threads: AtLeast1 | None = None
    """CPU threads for inference; None: llama.cpp's choice."""
    gpu_layers: GpuLayers = 0
    """Layers offloaded to the GPU (0: CPU only; -1: all)."""
    max_context: ContextTokens = DEFAULT_MAX_CONTEXT
    """Context window the engine is loaded with (prompt + generated tokens); longer jobs are refused."""
    skip_speed_test: bool = False
    """Do not measure tokens/s at start: the node announces no speed and its tier comes from its hardware."""
    score_with: ScoreWith = "auto"
    """What this worker's audits score on (engine ``llama``; spec/verification.md §12.5): ``auto`` a bf16
    scoring copy of a Q4_1 model on the CPU (about 0.24 of a generation's CPU against ~0.55 on the Q4_1
    file; written once in the model cache's ``scoring-copies/``, +305 MiB of RSS for SmolLM2-135M), else
    the model itself; ``off`` the model itself (no copy, no extra memory); ``bf16``, ``f16``, ``f32`` or
    ``q8_0`` that copy. Jobs, contracts and evidence name the original either way."""

    # -- worker limits ---------------------------------------------------------------------------
    max_tokens_per_job: AtLeast1 = DEFAULT_MAX_TOKENS_PER_JOB
    """A worker refuses jobs asking for more generated tokens than this, and tells its coordinators so in
    its registrations (they send it none). An edge node left at the default takes
    ``EDGE_MAX_TOKENS_PER_JOB``."""
    work_hours: str = ""
    """Daily hours a worker takes jobs, e.g. ``22:00-07:00`` (several comma-separated); empty: always."""
    max_load: Load | None = None
    """A worker takes jobs only while other programs load the machine at most this much per core."""

    # -- coordinator -----------------------------------------------------------------------------
    plain_verification: bool = False
    """Coordinator: run every job on the replicas asked for, uniformly chosen, no canaries (read by the
    CLI, which picks ``CoordinatorConfig.plain``)."""
    verify: VerifyMode = CoordinatorConfig.verify
    """Coordinator: how jobs are verified (``CoordinatorConfig.verify``, spec/verification.md §13):
    ``audit`` (the default: one prover, re-scored by another worker holding the weights) or ``replicate``
    (bit-identical replicas, for engines that cannot score)."""
    auditors: AtLeast1 = CoordinatorConfig.auditors
    """Coordinator, ``verify = "audit"``: workers that must pass each claim (CoordinatorConfig.auditors)."""
    audit_full_rate: Fraction = CoordinatorConfig.audit_full_rate
    """Coordinator, ``verify = "audit"``: share of a trusted prover's claims scored in full, the rest on a
    random prefix window (``CoordinatorConfig.audit_full_rate``, spec/verification.md §13.5)."""
    audit_second_rate: Fraction = CoordinatorConfig.audit_second_rate
    """Coordinator, ``verify = "audit"``: share of claims given a second, full audit."""
    audit_canary_rate: Fraction = 0.0
    """Coordinator, ``verify = "audit"``: share of claims that also send one canary audit, a claim whose
    verdict the coordinator knows, to a worker drawn as auditors are (``CoordinatorConfig.audit_canary_rate``,
    spec/verification.md §13.6)."""
    stream_chunk_first: ChunkTokens = CoordinatorConfig.stream_chunk_first
    """Coordinator, ``verify = "audit"``, streaming jobs: tokens in the first chunk sent to the auditors
    (``CoordinatorConfig.stream_chunk_first``, spec/verification.md §14.2): the client's first verified text
    waits for it."""
    stream_chunk_max: ChunkTokens = CoordinatorConfig.stream_chunk_max
    """Coordinator, streaming audited jobs: each later chunk doubles the previous one up to this many tokens
    (``CoordinatorConfig.stream_chunk_max``, at most 1024: fewer audit round trips on long answers)."""
    require_payment: bool = False
    """Coordinator: run only paid jobs (a HOLD from the client's identity); unpaid ones are refused with
    ``payment_required`` (spec/ledger.md §7)."""
    approve_workers: bool = False
    """Coordinators: serve only workers the operator approved (``opengrid node approve``)."""
    admit_after_jobs: AtLeast0 = 0
    """Coordinators of a network with a genesis file: co-sign, without asking the operator, the admission
    of a candidate coordinator whose key earned at least this many verified jobs as a worker in our
    ledger; 0: only candidates the operator approves (``opengrid node approve --coordinator``)."""

    # -- OpenAI-compatible API -------------------------------------------------------------------
    api: HostPort | None = None
    """``HOST:PORT`` to serve the OpenAI-compatible API on; None: no API (read by the CLI)."""
    api_key: Text | None = None
    """Bearer key the API requires; None: none (read by the CLI)."""
    api_allow_remote: bool = False
    """Allow a non-loopback ``api`` address (plain HTTP; read by the CLI)."""

    # -- diagnostics -----------------------------------------------------------------------------
    trace_frames: pathlib.Path | None = None
    """Append every job-protocol message received to this file (read by the CLI)."""
    trace_timing: pathlib.Path | None = None
    """Append a JSON line per job timing point to this file (read by the CLI)."""
    adversary: Adversary | None = None
    """Demo/test only: make this worker cheat ('wrong-tokens') to show verification catching it."""
    max_memory: MemorySize | None = None
    """Bytes this node offers at most (``--max-memory 2G``): its own model and the split-group sessions it
    serves together (spec/split.md §2, §5); announced on gossip so heads can plan groups. None: no cap is
    announced and the node serves no split sessions."""
    split_member: bool = False
    """Serve no model: lend ``max_memory`` to split groups' heads instead (``--split-member``, spec/split.md
    §7); needs ``max_memory`` and the worker role. Such a node does not register with coordinators."""

    def coordinator_settings(self) -> CoordinatorSettings:
        """The ``CoordinatorConfig`` fields this config sets (heartbeat, payment, how jobs are verified)."""
        return {
            "heartbeat_s": self.heartbeat_s,
            "require_payment": self.require_payment,
            "verify": self.verify,
            "auditors": self.auditors,
            "audit_full_rate": self.audit_full_rate,
            "audit_second_rate": self.audit_second_rate,
            "audit_canary_rate": self.audit_canary_rate,
            "stream_chunk_first": self.stream_chunk_first,
            "stream_chunk_max": self.stream_chunk_max,
        }

    def validated(self) -> NodeConfig:
        """Return a copy with ``auto`` resolved, after checking every value (the conversion a setting from
        a file, the environment or a flag gets: :func:`convert_setting`) and the rules between keys; raise
        ConfigError (a :class:`SettingError` for one bad value) naming the key, the value and the fix."""
        for info in msgspec.structs.fields(self):
            convert_setting(info.encode_name, getattr(self, info.name), CODE_SOURCE)
        if self.stream_chunk_first > self.stream_chunk_max:
            raise ConfigError(
                f"stream_chunk_first ({self.stream_chunk_first}) is larger than stream_chunk_max "
                f"({self.stream_chunk_max}): the first chunk is the smallest; lower one or raise the other"
            )
        from opengrid.net.names import check_name_address, dns_protocol  # trio: only when validating

        for flag, addresses in (("--bootstrap", self.bootstrap), ("--relay-via", self.relay_via)):
            for address in addresses:
                if flag == "--relay-via" and dns_protocol(address) is not None:
                    raise ConfigError(
                        f"--relay-via {address!r}: give the relay's /ip4/ or /ip6/ address (the circuit "
                        "address peers dial embeds it, so it must not need DNS); names are for --bootstrap"
                    )
                check_name_address(address, flag)
                if flag == "--bootstrap" and dns_protocol(address) == "dnsaddr":
                    continue  # /dnsaddr/NAME: its TXT records name the peers (opengrid/net/names.py)
                if "/p2p/" not in address:
                    raise ConfigError(
                        f"{flag} {address!r} has no /p2p/<peer id> part: a node is dialled by address and "
                        "identity, e.g. /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW... (every node prints its full "
                        "address at start; `opengrid status` shows it too)"
                    )
        if self.split_member and self.max_memory is None:
            raise ConfigError(
                "--split-member lends memory to split groups: say how much with --max-memory, e.g. 2G"
            )
        if self.split_member and self.role not in ("worker", "auto"):
            raise ConfigError(f"--split-member makes a worker a split-group member; not a {self.role}")
        listen = () if self.no_listen else self.listen
        role = "worker" if self.split_member else self.role  # a member lends memory: a worker's job
        if role == "auto":
            from opengrid.node.probe import auto_role, probe_hardware

            role = auto_role(bool(self.bootstrap), probe_hardware())
        if role in ("worker", "edge") and not self.bootstrap:
            raise ConfigError(
                f"a {role} needs --bootstrap with the multiaddr of any node of the network (every node "
                "prints it at start, e.g. /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...)"
            )
        if not listen and (role == "coordinator" or self.relay):
            raise ConfigError(
                f"a {'relay' if self.relay else role} must listen on an address others can dial, e.g. "
                "--listen /ip4/0.0.0.0/tcp/4001"
            )
        relay = self.relay if self.relay is not None else role == "coordinator"
        max_tokens = self.max_tokens_per_job
        if role == "edge" and max_tokens == DEFAULT_MAX_TOKENS_PER_JOB:
            max_tokens = EDGE_MAX_TOKENS_PER_JOB
        return msgspec.structs.replace(
            self, role=role, relay=relay, max_tokens_per_job=max_tokens, listen=listen
        )

    @property
    def relays(self) -> tuple[str, ...]:
        """The relays this node reserves a slot on: ``relay_via``, else its bootstrap nodes when it
        listens on no address of its own (it is then reachable only through them). Bootstraps given by DNS
        name are not among them: the circuit address others dial embeds the relay's own address (such a
        node finds relays like any other, opengrid/node/autorelay.py)."""
        from opengrid.net.names import dns_protocol

        if self.relay_via:
            return self.relay_via
        return () if self.listen else tuple(a for a in self.bootstrap if dns_protocol(a) is None)

    @property
    def serves_models(self) -> bool:
        return self.role in ("worker", "edge") and not self.split_member


SETTINGS: dict[str, msgspec.structs.FieldInfo] = {
    info.encode_name: info for info in msgspec.structs.fields(NodeConfig)
}
"""Every setting by its key (``heartbeat``), in NodeConfig's field order: its field and its type."""
CODE_SOURCE = "NodeConfig"
"""The source :meth:`NodeConfig.validated` names for a value set in code."""


def convert_setting(key: str, raw: object, source: str, *, strict: bool = True) -> Any:
    """``raw`` converted to setting ``key``'s type and checked against its constraints: the one check
    every value passes. ``strict=False`` lets text become a number or a boolean (``"4"``, ``"true"``);
    ``source`` (``flag``, ``env:VAR``, ``file:PATH``) goes into the :class:`SettingError` a bad value gets."""
    info = SETTINGS[key]
    try:
        if key in _SIZE_KEYS and isinstance(raw, str) and raw.strip():
            raw = _size(raw)  # "2G" from a file, the environment or a flag: bytes, then the type's check
        value = msgspec.convert(raw, info.type, strict=strict, dec_hook=_decode_path)
        check = _VALUE_CHECKS.get(key)
        if check is not None and value is not None:
            check(value)
    except msgspec.ValidationError as exc:
        reason = _expected(info.type) or str(exc)
        raise SettingError(key, raw, source, reason, fix_hint(key, source)) from None
    except ValueError as exc:
        raise SettingError(key, raw, source, str(exc), fix_hint(key, source)) from None
    return value


_SIZE_KEYS = frozenset({"max_memory"})
"""Settings given as a size of memory (``512M``, ``8G`` or bytes)."""


def _size(text: str) -> int:
    try:
        return parse_memory(text)
    except ConfigError:
        raise ValueError("expected a size such as 512M, 8G or a number of bytes (binary units)") from None


def _decode_path(kind: type, value: object) -> object:
    if kind is not pathlib.Path:
        raise NotImplementedError(kind)
    if isinstance(value, pathlib.Path):
        return value.expanduser()
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a path")
    return pathlib.Path(value.strip()).expanduser()


def _expected(kind: Any) -> str | None:
    """What a value of ``kind`` must be: its Meta's description, the allowed words of a Literal."""
    origin = typing.get_origin(kind)
    if origin is Annotated:
        described = [m.description for m in kind.__metadata__ if isinstance(m, Meta) and m.description]
        return described[0] if described else _expected(typing.get_args(kind)[0])
    if origin is Literal:
        return "allowed: " + ", ".join(str(word) for word in typing.get_args(kind))
    inner = [arg for arg in typing.get_args(kind) if arg is not type(None)]
    if type(None) in typing.get_args(kind) and len(inner) == 1:  # X | None
        return _expected(inner[0])
    return {bool: "expected true or false", pathlib.Path: "expected a path", str: "expected a text"}.get(kind)


def fix_hint(key: str, source: str) -> str:
    """What to do about a bad value of ``key`` from ``source``: the flag, variable or file to fix."""
    kind, _, where = source.partition(":")
    if kind == "flag":
        return f"fix --{key.replace('_', '-')}"
    if kind == "env":
        return f"fix or unset {where}"
    if kind == "file":
        return f"fix {key} in {where}"
    return ""


def _multiaddrs(addresses: tuple[str, ...]) -> None:
    from multiaddr import Multiaddr

    for text in addresses:
        try:
            Multiaddr(text)
        except Exception as exc:  # multiaddr raises several types (ValueError, its own errors)
            raise ValueError(
                f"{text!r} is not a multiaddr ({exc}); expected e.g. /ip4/127.0.0.1/tcp/4001"
            ) from None


def _work_hours(text: str) -> None:
    try:
        parse_windows(text)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _port(address: str) -> None:
    if not 0 < int(address.rpartition(":")[2]) < 65536:
        raise ValueError(f"expected HOST:PORT with a port 1..65535, e.g. {DEFAULT_API_ADDRESS}")


_VALUE_CHECKS: dict[str, Callable[[Any], None]] = {
    "listen": _multiaddrs,
    "bootstrap": _multiaddrs,
    "relay_via": _multiaddrs,
    "work_hours": _work_hours,
    "api": _port,
}
"""What a type cannot say: run after the conversion, raising ValueError with the expected form."""


def load_genesis(config: NodeConfig) -> Genesis | None:
    """The genesis file the config names, checked against the node's network; None without one."""
    if config.genesis is None:
        return None
    try:
        genesis = decode_genesis(config.genesis.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read genesis file {config.genesis}: {exc.strerror or exc}") from exc
    if genesis.network != config.network:
        raise ConfigError(
            f"genesis file {config.genesis} is for network {genesis.network!r}, this node is on "
            f"{config.network!r}; start it with --network {genesis.network}"
        )
    return genesis
