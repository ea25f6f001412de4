"""A node's validated configuration."""

from __future__ import annotations

import dataclasses
import pathlib
from dataclasses import dataclass
from typing import Literal, TypedDict

from opengrid_ledger.genesis import Genesis, decode_genesis

from opengrid.core.availability import parse_windows
from opengrid.core.coordinator.config import CoordinatorConfig
from opengrid.errors import ConfigError

Role = Literal["worker", "coordinator", "edge", "auto"]
ROLES: tuple[Role, ...] = ("worker", "coordinator", "edge", "auto")
DEFAULT_NETWORK = "opengrid-local"
ADVERSARIES = ("wrong-tokens", "sealed-lie", "lazy", "model-swap", "one-in-twenty", "rubber-stamp")
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


class CoordinatorSettings(TypedDict):
    """The ``CoordinatorConfig`` fields a node's settings decide (``NodeConfig.coordinator_settings``)."""

    heartbeat_s: float
    require_payment: bool
    verify: VerifyMode
    auditors: int
    audit_full_rate: float
    audit_second_rate: float
    audit_canary_rate: float


@dataclass(frozen=True)
class NodeConfig:
    """Everything ``opengrid node start`` needs; ``validated()`` resolves ``auto`` and checks values."""

    data_dir: pathlib.Path
    role: Role = "auto"
    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    bootstrap: tuple[str, ...] = ()
    model: str | None = None
    """Model name or GGUF path a worker serves; None picks the default model."""
    network: str = DEFAULT_NETWORK
    genesis: pathlib.Path | None = None
    """The network's genesis file (JSON, spec/ledger.md §7): its coordinators mint on every node."""
    network_key: str | None = None
    """Shared secret (an invite token) of a private network: only nodes with the same key can connect."""
    heartbeat_s: float = 5.0
    """Workers re-register with their coordinators this often; 3 missed beats mark a worker offline."""
    announce_s: float = 5.0
    """Gossip announcement period: how every node learns of every other (see opengrid/net/gossip.py)."""
    threads: int | None = None
    adversary: str | None = None
    """Demo/test only: make this worker cheat ('wrong-tokens') to show verification catching it."""
    max_tokens_per_job: int = DEFAULT_MAX_TOKENS_PER_JOB
    """A worker refuses jobs asking for more generated tokens than this, and tells its coordinators so in
    its registrations (they send it none). An edge node left at the default takes
    ``EDGE_MAX_TOKENS_PER_JOB``."""
    max_context: int = DEFAULT_MAX_CONTEXT
    """Context window the engine is loaded with (prompt + generated tokens); longer jobs are refused."""
    gpu_layers: int = 0
    """Layers offloaded to the GPU (0: CPU only; -1: all)."""
    engine: EngineKind = "llama"
    """``llama``: llama.cpp in this process; ``http``: an OpenAI-compatible server (``http_url``, or one
    the node starts and stops itself when ``http_url`` is None)."""
    http_url: str | None = None
    """Base URL of a running llama_cpp.server / vLLM to attach to (engine ``http`` only)."""
    http_backend: HttpBackendName = "auto"
    """Which server ``http_url`` is, or which one to start: ``auto`` = vLLM when importable, else
    llama_cpp.server (for an attached server ``auto`` means llama_cpp.server)."""
    work_hours: str = ""
    """Daily hours a worker takes jobs, e.g. ``22:00-07:00`` (several comma-separated); empty: always."""
    approve_workers: bool = False
    """Coordinators: serve only workers the operator approved (``opengrid node approve``)."""
    max_load: float | None = None
    """A worker takes jobs only while other programs load the machine at most this much per core."""
    relay: bool | None = None
    """Relay for nodes that cannot be dialled (circuit relay v2, spec/discovery.md §8). None: coordinators
    do and other roles do not — a coordinator must be reachable anyway and every worker already knows it,
    so a worker behind NAT needs no extra configuration; relayed traffic is small (prompts, answers,
    heartbeats) and bounded per circuit (``opengrid.net.relay.RELAY_LIMITS``)."""
    lan: bool = False
    """Announce this node on the local network and dial the nodes of its network found there (mDNS,
    opengrid/net/lan.py), on the interfaces it listens on. Off here (a library default: in-process nodes and
    tests stay quiet); ``opengrid node start`` turns it on unless ``--no-lan`` (settings.py)."""
    relay_via: tuple[str, ...] = ()
    """Relays to hold a reservation on and be reachable through (their full multiaddrs). Empty and no
    ``listen`` address: the bootstrap nodes are used as relays."""
    require_payment: bool = False
    """Coordinator: run only paid jobs (a HOLD from the client's identity); unpaid ones are refused with
    ``payment_required`` (spec/ledger.md §7)."""
    verify: VerifyMode = CoordinatorConfig.verify
    """Coordinator: how jobs are verified (``CoordinatorConfig.verify``, spec/verification.md §13):
    ``audit`` (the default: one prover, re-scored by another worker holding the weights) or ``replicate``
    (bit-identical replicas, for engines that cannot score)."""
    auditors: int = CoordinatorConfig.auditors
    """Coordinator, ``verify = "audit"``: workers that must pass each claim (CoordinatorConfig.auditors)."""
    audit_full_rate: float = CoordinatorConfig.audit_full_rate
    """Coordinator, ``verify = "audit"``: share of a trusted prover's claims scored in full, the rest on a
    random prefix window (``CoordinatorConfig.audit_full_rate``, spec/verification.md §13.5)."""
    audit_second_rate: float = CoordinatorConfig.audit_second_rate
    """Coordinator, ``verify = "audit"``: share of claims given a second, full audit."""
    audit_canary_rate: float = 0.0
    """Coordinator, ``verify = "audit"``: share of claims that also send one canary audit, a claim whose
    verdict the coordinator knows, to a worker drawn as auditors are (``CoordinatorConfig.audit_canary_rate``,
    spec/verification.md §13.6)."""
    admit_after_jobs: int = 0
    """Coordinators of a network with a genesis file: co-sign, without asking the operator, the admission
    of a candidate coordinator whose key earned at least this many verified jobs as a worker in our
    ledger; 0: only candidates the operator approves (``opengrid node approve --coordinator``)."""
    no_listen: bool = False
    """Listen on no address (``validated`` empties ``listen``): dial out only, reachable through relays."""
    skip_speed_test: bool = False
    """Do not measure tokens/s at start: the node announces no speed and its tier comes from its hardware."""
    plain_verification: bool = False
    """Coordinator: run every job on the replicas asked for, uniformly chosen, no canaries (read by the
    CLI, which picks ``CoordinatorConfig.plain``)."""
    api: str | None = None
    """``HOST:PORT`` to serve the OpenAI-compatible API on; None: no API (read by the CLI)."""
    api_key: str | None = None
    """Bearer key the API requires; None: none (read by the CLI)."""
    api_allow_remote: bool = False
    """Allow a non-loopback ``api`` address (plain HTTP; read by the CLI)."""
    trace_frames: pathlib.Path | None = None
    """Append every job-protocol message received to this file (read by the CLI)."""
    trace_timing: pathlib.Path | None = None
    """Append a JSON line per job timing point to this file (read by the CLI)."""
    max_memory: int | None = None
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
        }

    def validated(self) -> NodeConfig:
        """Return a copy with ``auto`` resolved; raise ConfigError naming the bad value and the choices."""
        if self.role not in ROLES:
            raise ConfigError(f"role {self.role!r} is not one of {', '.join(ROLES)}")
        if self.heartbeat_s <= 0:
            raise ConfigError(f"heartbeat must be positive seconds, got {self.heartbeat_s}")
        if not 0.1 <= self.announce_s <= 3600:
            raise ConfigError(f"announce period must be 0.1..3600 seconds, got {self.announce_s}")
        if self.network_key is not None and len(self.network_key) < 8:
            raise ConfigError("a network key must be at least 8 characters (share it like a password)")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.adversary not in (None, *ADVERSARIES):
            raise ConfigError(f"adversary {self.adversary!r} is not one of: {', '.join(ADVERSARIES)}")
        if not self.network or len(self.network) > 64:
            raise ConfigError(f"network name {self.network!r} must be 1..64 characters")
        if self.max_tokens_per_job < 1:
            raise ConfigError(f"max_tokens_per_job must be >= 1, got {self.max_tokens_per_job}")
        if self.admit_after_jobs < 0:
            raise ConfigError(f"admit_after_jobs must be >= 0 (0: off), got {self.admit_after_jobs}")
        if self.max_context < 16:
            raise ConfigError(f"max_context must be >= 16 tokens, got {self.max_context}")
        parse_windows(self.work_hours)  # raises ConfigError naming the bad part
        if self.max_memory is not None and self.max_memory < MIN_MAX_MEMORY:
            raise ConfigError(
                f"--max-memory must be at least {MIN_MAX_MEMORY} bytes (1M), got {self.max_memory}; "
                "give a size such as 512M or 8G"
            )
        if self.max_load is not None and self.max_load < 0:
            raise ConfigError(f"max_load must be >= 0 (load per core), got {self.max_load}")
        if self.gpu_layers < -1:
            raise ConfigError(
                f"gpu_layers must be -1 (all), 0 (CPU only) or a layer count, got {self.gpu_layers}"
            )
        if self.engine not in ENGINES:
            raise ConfigError(f"engine {self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.verify not in VERIFY_MODES:
            raise ConfigError(f"verify {self.verify!r} is not one of {', '.join(VERIFY_MODES)}")
        if self.auditors < 1:
            raise ConfigError(f"auditors must be at least 1, got {self.auditors}")
        for name in ("audit_full_rate", "audit_second_rate", "audit_canary_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be from 0 to 1, got {getattr(self, name)}")
        if self.http_backend not in HTTP_BACKENDS:
            raise ConfigError(f"http_backend {self.http_backend!r} is not one of {', '.join(HTTP_BACKENDS)}")
        if self.http_url is not None and not self.http_url.startswith(("http://", "https://")):
            raise ConfigError(f"http_url {self.http_url!r} must start with http:// or https://")
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
        return dataclasses.replace(self, role=role, relay=relay, max_tokens_per_job=max_tokens, listen=listen)

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
