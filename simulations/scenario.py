"""Scenario files: a TOML description of a simulated network, parsed into frozen dataclasses.

A scenario says how many nodes, which hardware, what workload, which adversaries and which network and
churn models; the seed comes from the command line so one file gives many independent runs. The
``[coordinator]`` table is passed straight to the real ``CoordinatorConfig``, so knobs added to the core
are usable here without touching the simulator. See simulations/README.md for every key.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.errors import ConfigError

Fidelity = Literal["full", "hybrid"]
BEHAVIOURS = (
    "honest",
    "lazy",
    "model_swap",
    "colluding",
    "withholding",
    "intermittent",
    "lying_auditor",
    "audit_cartel",
)
ADVERSARY_KINDS = (*BEHAVIOURS[1:], "sybil_wave", "equivocating_coordinator")


@dataclass(frozen=True)
class DurationSpec:
    """A random duration: exponential (memoryless) or Weibull (heavy-tailed sessions when shape < 1)."""

    dist: Literal["exponential", "weibull"] = "exponential"
    mean_s: float = 600.0
    shape: float = 1.0
    """Weibull shape k; volunteer session lengths measured on BOINC/P2P fit k ≈ 0.4-0.7."""


@dataclass(frozen=True)
class ChurnSpec:
    """On/off renewal process per worker: alternate online and offline periods."""

    enabled: bool = False
    on: DurationSpec = DurationSpec(mean_s=1800.0)
    off: DurationSpec = DurationSpec(mean_s=600.0)
    start_online: float = 1.0
    """Fraction of workers online at t=0 (the others join after an off period)."""
    detect_disconnect: bool = True
    """The transport reports a vanished worker at once (a reset stream) instead of a replica timeout."""
    trace: str = ""
    """CSV ``node,t_on,t_off`` (simulations/traces.py): replay these sessions instead of the renewal
    process (``enabled``, ``on``, ``off`` and ``start_online`` are then ignored)."""


@dataclass(frozen=True)
class Partition:
    """From ``start_s`` to ``end_s`` a ``fraction`` of the workers cannot reach any coordinator."""

    start_s: float
    end_s: float
    fraction: float = 0.3


@dataclass(frozen=True)
class NetworkSpec:
    """Latency = distance on a unit square x ``span_ms`` + both ends' last mile + jitter + transfer."""

    span_ms: float = 120.0
    last_mile_ms: tuple[float, float] = (2.0, 30.0)
    jitter_ms: float = 2.0
    """Mean of an exponential jitter added to every message."""
    loss: float = 0.0
    """Probability that a worker<->coordinator message is lost (a broken stream)."""
    bandwidth_mbps: tuple[float, float] = (20.0, 1000.0)
    """Last-mile bandwidth range of workers; coordinators get the top of the range."""
    partitions: tuple[Partition, ...] = ()


@dataclass(frozen=True)
class HardwareClass:
    """A kind of volunteer machine."""

    name: str = "gpu"
    share: float = 1.0
    tokens_per_s: float = 40.0
    memory_gb: float = 16.0
    failure_rate: float = 0.0
    """Probability that one inference fails (engine error) and the worker reports it."""


@dataclass(frozen=True)
class WorkloadSpec:
    """Jobs arrive as a Poisson process, optionally modulated by a day/night cycle."""

    rate_per_s: float = 1.0
    replicas: int = 2
    max_tokens: tuple[int, int] = (16, 64)
    diurnal_amplitude: float = 0.0
    """0 = flat; 0.5 = the rate swings between 0.5x and 1.5x of ``rate_per_s`` over the period."""
    diurnal_period_s: float = 86400.0
    model: str = "sim-model"
    trace: str = ""
    """CSV ``t,model,max_tokens`` (simulations/traces.py): replay these jobs instead of the Poisson
    process (``rate_per_s``, ``max_tokens`` and the diurnal keys are then ignored; ``replicas`` holds)."""


@dataclass(frozen=True)
class AdversarySpec:
    """A population of misbehaving workers, or a Sybil wave of fresh identities joining at ``at_s``."""

    kind: str
    fraction: float = 0.0
    """Share of the initial workers that behave this way (not used by sybil_wave)."""
    count: int = 0
    """sybil_wave: how many identities join."""
    at_s: float = 0.0
    behaviour: str = "colluding"
    """sybil_wave: how the new identities answer."""
    group: str = "cartel"
    """colluding: members of one group return the same wrong output."""
    cheat_rate: float = 0.05
    """intermittent, audit_cartel: share of its jobs a member cheats on once trusted."""
    trusted_after: int = 10
    """intermittent, audit_cartel: answers it gives honestly before it starts cheating (its streak)."""
    cheat_tail: int = 0
    """intermittent: 0, a cheat is random tokens throughout; k > 0, a cheat changes only the last k tokens
    of the honest output (a cheater that knows partial audits score a prefix, spec/verification.md §13.5)."""
    coordinator: int = 0
    """equivocating_coordinator: which coordinator, from ``at_s`` on, signs a second, different entry
    for each receipt's seq and pushes it to half the credited workers (needs ``ledger_sync_s`` > 0)."""


@dataclass(frozen=True)
class Scenario:
    """Everything a run needs except the seed."""

    name: str = "unnamed"
    description: str = ""
    duration_s: float = 60.0
    fidelity: Fidelity = "full"
    real_fraction: float = 0.05
    """hybrid: share of workers that run the real WorkerLogic and ledger; the rest are light agents."""
    real_signatures: float = 1.0
    """Share of signatures made and checked with real Ed25519; the rest are keyed-hash stubs, still
    checked against the signed bytes (simulations/signatures.py). 1 = every signature real."""
    workers: int = 20
    coordinators: int = 1
    tick_s: float = 1.0
    """How often coordinators' ``on_timer`` runs (their next_deadline scan is O(workers), so we tick)."""
    ledger_sync_s: float = 0.0
    """Ledger sync, modelled as a relay: every ledger entry a worker is pushed reaches every other
    coordinator this long after (plus network delay), where the real ``LedgerState`` applies it. 0: no
    sync (each coordinator's ledger holds its own receipts only)."""
    audit_cost: float = 0.44
    """Audit mode: an audit's compute as a fraction of generating the same tokens (both its simulated
    time and its compute units). 0.44: scoring 128 tokens in one forward pass, 2 threads, this project's
    CPU (benchmarks/audit_cost_bench.py, spec/verification.md §13.3)."""
    coordinator: Mapping[str, Any] = field(default_factory=dict)
    workload: WorkloadSpec = WorkloadSpec()
    network: NetworkSpec = NetworkSpec()
    churn: ChurnSpec = ChurnSpec()
    hardware: tuple[HardwareClass, ...] = (HardwareClass(),)
    adversaries: tuple[AdversarySpec, ...] = ()
    expect: Mapping[str, Any] = field(default_factory=dict)
    """Free-form expectations a scenario's test checks (e.g. the BOINC overhead target)."""

    def coordinator_config(self) -> CoordinatorConfig:
        """The real core's config from the ``[coordinator]`` table; an unknown key is a ConfigError."""
        built: CoordinatorConfig = _build(CoordinatorConfig, self.coordinator, "[coordinator]")
        return built

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for the manifest), in field order."""
        plain: dict[str, Any] = _plain(dataclasses.asdict(self))
        return plain


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _build(cls: type[Any], data: Mapping[str, Any], where: str) -> Any:
    """Instantiate dataclass ``cls`` from a TOML table, refusing unknown keys with a clear message."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a table, got {data!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        # A key cut short ("rate" for "rate_per_s") is likelier than a close spelling.
        guesses = {
            k: [n for n in sorted(names) if n.startswith(k)][:1] or difflib.get_close_matches(k, names, n=1)
            for k in unknown
        }
        hint = "".join(f" ({k!r}: did you mean {g[0]!r}?)" for k, g in guesses.items() if g)
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}{hint}; remove or rename them (a typo is never ignored). "
            f"Allowed: {sorted(names)}"
        )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def parse(raw: Mapping[str, Any]) -> Scenario:
    """Build a Scenario from a parsed TOML document and check its values."""
    data = dict(raw)
    network = dict(data.pop("network", {}))
    partitions = tuple(
        _build(Partition, p, f"[[network.partitions]] #{i}")
        for i, p in enumerate(network.pop("partitions", []))
    )
    churn = dict(data.pop("churn", {}))
    on = _build(DurationSpec, churn.pop("on", {"mean_s": 1800.0}), "[churn.on]")
    off = _build(DurationSpec, churn.pop("off", {"mean_s": 600.0}), "[churn.off]")
    hardware = tuple(
        _build(HardwareClass, h, f"[[hardware]] #{i}") for i, h in enumerate(data.pop("hardware", []))
    )
    adversaries = tuple(
        _build(AdversarySpec, a, f"[[adversaries]] #{i}") for i, a in enumerate(data.pop("adversaries", []))
    )
    built: dict[str, Any] = {
        "network": dataclasses.replace(_build(NetworkSpec, network, "[network]"), partitions=partitions),
        "churn": dataclasses.replace(_build(ChurnSpec, churn, "[churn]"), on=on, off=off),
        "workload": _build(WorkloadSpec, data.pop("workload", {}), "[workload]"),
    }
    if hardware:
        built["hardware"] = hardware
    built["adversaries"] = adversaries
    scenario: Scenario = _build(Scenario, {**data, **built}, "scenario")
    check(scenario)
    return scenario


def check(s: Scenario) -> None:
    """Refuse values that would make a run meaningless, saying which key to fix."""
    problems: list[str] = []
    if s.fidelity not in ("full", "hybrid"):
        problems.append(f"fidelity must be 'full' or 'hybrid', got {s.fidelity!r}")
    if s.workers < 1 or s.coordinators < 1:
        problems.append(f"need at least 1 worker and 1 coordinator, got {s.workers} and {s.coordinators}")
    if s.duration_s <= 0 or s.tick_s <= 0:
        problems.append("duration_s and tick_s must be > 0")
    if not 0.0 <= s.real_fraction <= 1.0:
        problems.append(f"real_fraction must be in [0, 1], got {s.real_fraction}")
    if not 0.0 <= s.real_signatures <= 1.0:
        problems.append(f"real_signatures must be in [0, 1], got {s.real_signatures}")
    if sum(h.share for h in s.hardware) <= 0:
        problems.append("[[hardware]] shares must add up to more than 0")
    if s.workload.rate_per_s <= 0 or s.workload.replicas < 1:
        problems.append("[workload] rate_per_s must be > 0 and replicas >= 1")
    low, high = s.workload.max_tokens
    if not 1 <= low <= high:
        problems.append(f"[workload] max_tokens must be [low, high] with 1 <= low <= high, got {low, high}")
    if not 0.0 < s.audit_cost <= 10.0:
        problems.append(f"audit_cost must be in (0, 10] (a fraction of a generation), got {s.audit_cost}")
    for a in s.adversaries:
        if not 0.0 <= a.cheat_rate <= 1.0 or a.trusted_after < 0 or a.cheat_tail < 0:
            problems.append(
                f"adversary {a.kind!r}: cheat_rate must be in [0, 1], trusted_after and cheat_tail >= 0, "
                f"got {a.cheat_rate}, {a.trusted_after} and {a.cheat_tail}"
            )
        if a.kind not in ADVERSARY_KINDS:
            problems.append(f"adversary kind {a.kind!r} unknown; known: {', '.join(ADVERSARY_KINDS)}")
        if a.kind == "sybil_wave" and a.behaviour not in BEHAVIOURS:
            problems.append(f"sybil_wave behaviour {a.behaviour!r} unknown; known: {', '.join(BEHAVIOURS)}")
        if a.kind == "equivocating_coordinator" and not 0 <= a.coordinator < s.coordinators:
            problems.append(
                f"equivocating_coordinator: coordinator {a.coordinator} is not 0..{s.coordinators - 1}"
            )
        if a.kind == "equivocating_coordinator" and (s.ledger_sync_s <= 0 or s.coordinators < 2):
            problems.append(
                "equivocating_coordinator needs ledger_sync_s > 0 and 2+ coordinators: without sync no "
                "honest node ever sees both entries of a fork"
            )
    if s.ledger_sync_s < 0:
        problems.append(f"ledger_sync_s must be >= 0, got {s.ledger_sync_s}")
    if sum(a.fraction for a in s.adversaries if a.kind in BEHAVIOURS) > 1.0:
        problems.append("adversary fractions add up to more than 1")
    if problems:
        raise ConfigError("bad scenario " + repr(s.name) + ": " + "; ".join(problems))
    s.coordinator_config()


def load_raw(path: Path) -> dict[str, Any]:
    """Read a scenario file as a plain TOML document (for overrides before :func:`parse`)."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"scenario file {path} not found; see simulations/scenarios/") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"scenario file {path} is not valid TOML: {exc}") from exc


def load(path: Path, overrides: Mapping[str, Any] | None = None) -> Scenario:
    """Parse the scenario at ``path`` with ``overrides`` (see :func:`override`) applied first.

    Relative trace paths (``churn.trace``, ``workload.trace``) are resolved against ``path``'s folder.
    """
    raw = load_raw(path)
    for key, value in (overrides or {}).items():
        raw = override(raw, key, value)
    for table in ("churn", "workload"):
        section = raw.get(table)
        if isinstance(section, dict) and isinstance(section.get("trace"), str) and section["trace"]:
            trace = Path(section["trace"])
            if not trace.is_absolute() and (path.parent / trace).exists():
                raw = override(raw, f"{table}.trace", str(path.parent / trace))
    try:
        return parse(raw)
    except ConfigError as exc:
        raise ConfigError(f"scenario file {path}: {exc}") from exc


def parse_value(text: str) -> Any:
    """A command-line value as TOML would read it: int, float, bool, else the string itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def override(raw: Mapping[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``key`` set to ``value``.

    ``key`` is a dotted path (``workload.rate_per_s``), ``<adversary kind>_fraction``
    (``lazy_fraction=0.2``), which sets that adversary population's share, adding it if absent, or
    ``adversaries.<kind>.<key>`` (``adversaries.intermittent.cheat_rate=0.2``), which sets a key of every
    population of that kind already in the file.
    """
    doc: dict[str, Any] = _deep_copy(raw)
    path = key.split(".")
    if len(path) == 3 and path[0] == "adversaries":
        matching = [a for a in doc.get("adversaries", []) if a.get("kind") == path[1]]
        if not matching:
            raise ConfigError(f"cannot set {key!r}: the scenario has no {path[1]!r} adversaries")
        for entry in matching:
            entry[path[2]] = value
        return doc
    kind = key.removesuffix("_fraction")
    if key.endswith("_fraction") and kind in ADVERSARY_KINDS:
        adversaries = doc.setdefault("adversaries", [])
        for entry in adversaries:
            if entry.get("kind") == kind:
                entry["fraction"] = value
                return doc
        adversaries.append({"kind": kind, "fraction": value})
        return doc
    *parents, leaf = key.split(".")
    table = doc
    for part in parents:
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise ConfigError(f"cannot set {key!r}: {part!r} is not a table")
    table[leaf] = value
    return doc


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
