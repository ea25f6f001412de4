"""Scenario files: a TOML description of a simulated network, converted into frozen msgspec Structs.

A scenario says how many nodes, which hardware, what workload, which adversaries and which network and
churn models; the seed comes from the command line so one file gives many independent runs. The
``[coordinator]`` table is passed straight to the real ``CoordinatorConfig``, so knobs added to the core
are usable here without touching the simulator. See simulations/README.md for every key.

A scenario goes through the conversion a node's settings go through (opengrid/node/config.py): msgspec
checks each value against its field's type and constraints (``Annotated[float, Meta(gt=0)]``) and refuses
an unknown key; the error names the table and key to fix. ``--set key=value`` text is converted to the
key's type the same way (:func:`typed_override`). :func:`check` holds only the rules between keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

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

Share = Annotated[float, Meta(ge=0, le=1)]
Positive = Annotated[float, Meta(gt=0)]
AtLeast0 = Annotated[int, Meta(ge=0)]
AtLeast1 = Annotated[int, Meta(ge=1)]


class _Table(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A scenario table: immutable, and an unknown key is an error (a typo is never ignored)."""


class DurationSpec(_Table, frozen=True):
    """A random duration: exponential (memoryless) or Weibull (heavy-tailed sessions when shape < 1)."""

    dist: Literal["exponential", "weibull"] = "exponential"
    mean_s: float = 600.0
    shape: float = 1.0
    """Weibull shape k; volunteer session lengths measured on BOINC/P2P fit k ≈ 0.4-0.7."""


class ChurnSpec(_Table, frozen=True):
    """On/off renewal process per worker: alternate online and offline periods."""

    enabled: bool = False
    on: DurationSpec = DurationSpec(mean_s=1800.0)
    off: DurationSpec = DurationSpec(mean_s=600.0)
    start_online: Share = 1.0
    """Fraction of workers online at t=0 (the others join after an off period)."""
    detect_disconnect: bool = True
    """The transport reports a vanished worker at once (a reset stream) instead of a replica timeout."""
    trace: str = ""
    """CSV ``node,t_on,t_off`` (simulations/traces.py): replay these sessions instead of the renewal
    process (``enabled``, ``on``, ``off`` and ``start_online`` are then ignored)."""


class Partition(_Table, frozen=True):
    """From ``start_s`` to ``end_s`` a ``fraction`` of the workers cannot reach any coordinator."""

    start_s: float
    end_s: float
    fraction: Share = 0.3


class NetworkSpec(_Table, frozen=True):
    """Latency = distance on a unit square x ``span_ms`` + both ends' last mile + jitter + transfer."""

    span_ms: float = 120.0
    last_mile_ms: tuple[float, float] = (2.0, 30.0)
    jitter_ms: float = 2.0
    """Mean of an exponential jitter added to every message."""
    loss: Share = 0.0
    """Probability that a worker<->coordinator message is lost (a broken stream)."""
    bandwidth_mbps: tuple[float, float] = (20.0, 1000.0)
    """Last-mile bandwidth range of workers; coordinators get the top of the range."""
    partitions: tuple[Partition, ...] = ()


class HardwareClass(_Table, frozen=True):
    """A kind of volunteer machine."""

    name: str = "gpu"
    share: float = 1.0
    tokens_per_s: float = 40.0
    memory_gb: float = 16.0
    failure_rate: Share = 0.0
    """Probability that one inference fails (engine error) and the worker reports it."""


class WorkloadSpec(_Table, frozen=True):
    """Jobs arrive as a Poisson process, optionally modulated by a day/night cycle."""

    rate_per_s: Positive = 1.0
    replicas: AtLeast1 = 2
    max_tokens: tuple[int, int] = (16, 64)
    diurnal_amplitude: float = 0.0
    """0 = flat; 0.5 = the rate swings between 0.5x and 1.5x of ``rate_per_s`` over the period."""
    diurnal_period_s: float = 86400.0
    model: str = "sim-model"
    trace: str = ""
    """CSV ``t,model,max_tokens`` (simulations/traces.py): replay these jobs instead of the Poisson
    process (``rate_per_s``, ``max_tokens`` and the diurnal keys are then ignored; ``replicas`` holds)."""


class AdversarySpec(_Table, frozen=True):
    """A population of misbehaving workers, or a Sybil wave of fresh identities joining at ``at_s``."""

    kind: str
    fraction: Share = 0.0
    """Share of the initial workers that behave this way (not used by sybil_wave)."""
    count: AtLeast0 = 0
    """sybil_wave: how many identities join."""
    at_s: float = 0.0
    behaviour: str = "colluding"
    """sybil_wave: how the new identities answer."""
    group: str = "cartel"
    """colluding: members of one group return the same wrong output."""
    cheat_rate: Share = 0.05
    """intermittent, audit_cartel: share of its jobs a member cheats on once trusted."""
    trusted_after: AtLeast0 = 10
    """intermittent, audit_cartel: answers it gives honestly before it starts cheating (its streak)."""
    cheat_tail: AtLeast0 = 0
    """intermittent: 0, a cheat is random tokens throughout; k > 0, a cheat changes only the last k tokens
    of the honest output (a cheater that knows partial audits score a prefix, spec/verification.md §13.5)."""
    coordinator: AtLeast0 = 0
    """equivocating_coordinator: which coordinator, from ``at_s`` on, signs a second, different entry
    for each receipt's seq and pushes it to half the credited workers (needs ``ledger_sync_s`` > 0)."""


class Scenario(_Table, frozen=True):
    """Everything a run needs except the seed."""

    name: str = "unnamed"
    description: str = ""
    duration_s: Positive = 60.0
    fidelity: Fidelity = "full"
    real_fraction: Share = 0.05
    """hybrid: share of workers that run the real WorkerLogic and ledger; the rest are light agents."""
    real_signatures: Share = 1.0
    """Share of signatures made and checked with real Ed25519; the rest are keyed-hash stubs, still
    checked against the signed bytes (simulations/signatures.py). 1 = every signature real."""
    workers: AtLeast1 = 20
    coordinators: AtLeast1 = 1
    tick_s: Positive = 1.0
    """How often coordinators' ``on_timer`` runs (their next_deadline scan is O(workers), so we tick)."""
    ledger_sync_s: Annotated[float, Meta(ge=0)] = 0.0
    """Ledger sync, modelled as a relay: every ledger entry a worker is pushed reaches every other
    coordinator this long after (plus network delay), where the real ``LedgerState`` applies it. 0: no
    sync (each coordinator's ledger holds its own receipts only)."""
    audit_cost: Annotated[float, Meta(gt=0, le=10)] = 0.24
    """Audit mode: a whole-claim audit's compute as a fraction of generating the same tokens (both its
    simulated time and its compute units; a partial window costs its share). 0.24: what the default
    auditor measured on this project's CPU, CPU time of scoring a 128-token greedy claim in one forward
    pass on the bf16 scoring copy ÷ the prover's generation with the Q4_1 file, 0.22-0.24
    (benchmarks/audit_cost_bench.py, spec/verification.md §12.5; sampled claims 0.25). It was 0.44, the
    plain prefill on the Q4_1 file at 2 threads, before scoring copies; an AVX2-only CPU measured 0.42."""
    coordinator: dict[str, Any] = msgspec.field(default_factory=dict)
    workload: WorkloadSpec = WorkloadSpec()
    network: NetworkSpec = NetworkSpec()
    churn: ChurnSpec = ChurnSpec()
    hardware: tuple[HardwareClass, ...] = (HardwareClass(),)
    adversaries: tuple[AdversarySpec, ...] = ()
    expect: dict[str, Any] = msgspec.field(default_factory=dict)
    """Free-form expectations a scenario's test checks (e.g. the BOINC overhead target)."""

    def coordinator_config(self) -> CoordinatorConfig:
        """The real core's config from the ``[coordinator]`` table, converted by msgspec like every other
        table; an unknown key is a ConfigError (a dataclass's extra keys are not refused by msgspec)."""
        names = [f.name for f in dataclasses.fields(CoordinatorConfig)]
        if not isinstance(self.coordinator, Mapping):
            raise ConfigError(f"[coordinator] must be a table, got {self.coordinator!r}")
        unknown = sorted(set(self.coordinator) - set(names))
        if unknown:
            raise _unknown_keys("[coordinator]", unknown, names)
        return _convert(self.coordinator, CoordinatorConfig, "[coordinator]")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for the manifest), in field order."""
        plain: dict[str, Any] = msgspec.to_builtins(self)
        return plain


def _convert(data: object, kind: type[_T], where: str = "", *, strict: bool = True) -> _T:
    """``data`` (a TOML table) as ``kind``, msgspec checking every key; its error becomes a ConfigError
    that names the table (as TOML writes it, ``[[hardware]] #0``) and the key to fix."""
    try:
        return msgspec.convert(data, kind, strict=strict)
    except msgspec.ValidationError as exc:
        text = str(exc)
        reason, _, path = text.partition(" - at `$")
        parts = re.findall(r"\.(\w+)|\[(\d+)\]", path.rstrip("`"))
        unknown = re.fullmatch(r"Object contains unknown field `(.+)`", reason)
        if unknown is not None:
            table = _struct_at(kind, parts)
            names = [f.name for f in msgspec.structs.fields(table)] if table is not None else []
            raise _unknown_keys(_where(where, parts), [unknown.group(1)], names) from None
        key = parts.pop()[0] if parts and parts[-1][0] else ""
        value = _value_at(data, [*parts, (key, "")]) if key else data
        shown = f"{key} = {value!r}: " if key else ""
        reason = reason.replace("`object`", "a table").replace("`array`", "a list")
        raise ConfigError(f"{_where(where, parts)}: {shown}{reason[:1].lower()}{reason[1:]}") from None


_T = typing.TypeVar("_T")


def _where(root: str, parts: list[tuple[str, str]]) -> str:
    """A table's name as a TOML file writes it: ``scenario``, ``[churn.on]``, ``[[hardware]] #0``."""
    names = [name for name, _ in parts if name]
    if not parts:
        return root or "scenario"
    if parts[-1][1]:
        return f"[[{'.'.join(names)}]] #{parts[-1][1]}"
    return f"[{'.'.join(names)}]"


def _struct_at(kind: Any, parts: list[tuple[str, str]]) -> Any:
    """The Struct type found at ``parts`` (field names and list indexes) below ``kind``."""
    for name, index in parts:
        if index:
            kind = typing.get_args(kind)[0]  # tuple[X, ...] -> X
            continue
        hints = typing.get_type_hints(kind, include_extras=False)
        kind = hints.get(name)
    return kind if isinstance(kind, type) and issubclass(kind, msgspec.Struct) else None


def _value_at(data: Any, parts: list[tuple[str, str]]) -> Any:
    for name, index in parts:
        data = data[int(index)] if index else data.get(name) if isinstance(data, Mapping) else None
    return data


def _unknown_keys(where: str, unknown: list[str], names: list[str]) -> ConfigError:
    # A key cut short ("rate" for "rate_per_s") is likelier than a close spelling.
    guesses = {
        k: [n for n in sorted(names) if n.startswith(k)][:1] or difflib.get_close_matches(k, names, n=1)
        for k in unknown
    }
    hint = "".join(f" ({k!r}: did you mean {g[0]!r}?)" for k, g in guesses.items() if g)
    return ConfigError(
        f"{where}: unknown key(s) {unknown}{hint}; remove or rename them (a typo is never ignored). "
        f"Allowed: {sorted(names)}"
    )


def parse(raw: Mapping[str, Any]) -> Scenario:
    """Build a Scenario from a parsed TOML document and check its values."""
    scenario = _convert(raw, Scenario)
    check(scenario)
    return scenario


def check(s: Scenario) -> None:
    """Refuse values that would make a run meaningless, saying which key to fix. (Each value's own range
    is its type's: msgspec checked it in :func:`parse`; these are the rules between keys.)"""
    problems: list[str] = []
    if sum(h.share for h in s.hardware) <= 0:
        problems.append("[[hardware]] shares must add up to more than 0")
    low, high = s.workload.max_tokens
    if not 1 <= low <= high:
        problems.append(f"[workload] max_tokens must be [low, high] with 1 <= low <= high, got {low, high}")
    for a in s.adversaries:
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


def typed_value(key: str, text: str) -> Any:
    """``--set key=text``: the text as a value of ``key``'s type, converted as msgspec converts a node
    setting from the environment (``"2.5"`` for a float, ``"true"`` for a bool, a word for a text or a
    choice), else read as a TOML value (``[2, 30]`` for a pair); a key without a type (``expect.*``, or
    one the scenario does not have, which :func:`parse` then names) as TOML would read it."""
    kind = _type_of(key)
    if kind is None:
        return parse_value(text)
    try:
        return msgspec.convert(text.strip(), kind, strict=False)
    except msgspec.ValidationError:
        pass
    try:
        literal = tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        literal = text
    try:
        return msgspec.convert(literal, kind, strict=False)
    except msgspec.ValidationError as exc:
        reason = str(exc).partition(" - at `$")[0]
        raise ConfigError(f"--set {key}={text}: {reason[:1].lower()}{reason[1:]}") from None


def _type_of(key: str) -> Any:
    """The type of scenario key ``key`` (as :func:`override` reads it), or None when it has none."""
    path = key.split(".")
    kind = key.removesuffix("_fraction")
    if len(path) == 1 and key.endswith("_fraction") and kind in ADVERSARY_KINDS:
        return typing.get_type_hints(AdversarySpec, include_extras=True)["fraction"]
    if len(path) == 3 and path[0] == "adversaries":
        return typing.get_type_hints(AdversarySpec, include_extras=True).get(path[2])
    if len(path) == 2 and path[0] == "coordinator":
        return typing.get_type_hints(CoordinatorConfig, include_extras=True).get(path[1])
    table: Any = Scenario
    for part in path:
        if not (isinstance(table, type) and issubclass(table, msgspec.Struct)):
            return None
        table = typing.get_type_hints(table, include_extras=True).get(part)
    return None if table is None or table is Any or typing.get_origin(table) is dict else table


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
