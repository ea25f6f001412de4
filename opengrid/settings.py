"""A node's settings from four layers: command-line flags > environment > config file > defaults.

Every ``opengrid node start`` flag is a setting, under the flag's own name: ``--max-tokens-per-job 512``
is ``max_tokens_per_job = 512`` in the config file and ``OPENGRID_MAX_TOKENS_PER_JOB=512`` in the
environment (upper case; lists comma-separated; an empty value means "unset" for optional keys; a
switch such as ``--skip-speed-test`` takes true/false, 1/0, yes/no, on/off). The config file is TOML with one
top-level key per setting and lives at :func:`default_config_path` (the platform's user config dir /
``opengrid`` / ``config.toml``) unless ``--config PATH`` or ``$OPENGRID_CONFIG`` names another one.

:func:`load_settings` is a pure function of its three inputs: it reads only the file it is given, and
takes the environment as a mapping, so tests pass plain dicts. It reports where each value came from
(``"default"``, ``"file:PATH"``, ``"env:VAR"``, ``"flag"``). The keys' types and constraints are
:class:`NodeConfig`'s (opengrid/node/config.py, msgspec): every value of every layer goes through the same
conversion, and a bad one fails with a :class:`SettingError` naming the key, the value, its source, the
allowed values and what to fix. An ``OPENGRID_*`` variable that names
no setting is reported by :func:`unknown_env_vars` (with the likely intended name), never ignored silently.
"""

from __future__ import annotations

import argparse
import difflib
import pathlib
import tomllib
import typing
from collections.abc import Mapping
from typing import Any

import msgspec
import platformdirs

from opengrid.errors import ConfigError, SettingError
from opengrid.node.config import (
    ADVERSARIES,
    DEFAULT_API_ADDRESS,
    DEFAULT_NETWORK,
    ENGINES,
    HTTP_BACKENDS,
    ROLES,
    SCORE_WITH,
    SETTINGS,
    VERIFY_MODES,
    NodeConfig,
    convert_setting,
    fix_hint,
)

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "KEYS",
    "SECRET_KEYS",
    "add_node_flags",
    "default_config_path",
    "default_data_dir",
    "env_var",
    "flags_from_namespace",
    "load_settings",
    "resolve_config_file",
    "resolve_data_dir",
    "unknown_env_vars",
]

NODE_START_LISTEN = "/ip4/0.0.0.0/tcp/0"
"""Where ``opengrid node start`` listens unless told otherwise: every interface (announced as the
machine's own addresses, opengrid/net/host.py), a free port."""
ENV_PREFIX = "OPENGRID_"
CONFIG_ENV = "OPENGRID_CONFIG"
"""Environment variable naming the config file (``--config`` wins over it)."""
OTHER_ENV_VARS = frozenset({CONFIG_ENV, "OPENGRID_CRASH_SEED", "OPENGRID_FUZZ_EXAMPLES"})
"""``OPENGRID_*`` variables that are not settings (the config file's path; the test suite's knobs)."""


def default_config_path() -> pathlib.Path:
    """The platform's user config dir / ``opengrid`` / ``config.toml`` (may not exist)."""
    return platformdirs.user_config_path("opengrid") / "config.toml"


def default_data_dir() -> pathlib.Path:
    """The platform's user data dir / ``opengrid``: identity key, ledger, node.json. The one default of
    every command that reads a node's data dir (``node``, ``ledger``, ``wallet``, ``doctor``)."""
    return platformdirs.user_data_path("opengrid")


def resolve_data_dir(flag: pathlib.Path | None, env: Mapping[str, str]) -> pathlib.Path:
    """The data dir a command other than ``node start`` reads: ``--data-dir``, else the one ``node
    start`` would use with the same environment and config file (``$OPENGRID_DATA_DIR``, the file's
    ``data_dir``, :func:`default_data_dir`)."""
    if flag is not None:
        return flag.expanduser()
    config, _ = load_settings({}, env, resolve_config_file(None, env))
    return config.data_dir


def env_var(key: str) -> str:
    """``OPENGRID_<KEY>`` for a setting (``heartbeat`` -> ``OPENGRID_HEARTBEAT``)."""
    return ENV_PREFIX + key.upper()


def unknown_env_vars(env: Mapping[str, str]) -> list[str]:
    """One sentence per ``OPENGRID_*`` variable in ``env`` that names no setting (a typo, or an old
    name), with the variable it most likely meant."""
    known = {env_var(key): key for key in KEYS}
    problems = []
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var in known or var in OTHER_ENV_VARS:
            continue
        alias = _ALIASES.get(var[len(ENV_PREFIX) :].lower())
        if alias is not None:
            problems.append(f"{var} is the old name of {env_var(alias)} (still read); rename it")
            continue
        guess = difflib.get_close_matches(var, list(known), n=1)
        meant = f"; did you mean {guess[0]}?" if guess else " (settings: `opengrid config show`)"
        problems.append(f"{var} is not an OpenGrid setting and is ignored{meant}")
    return problems


KEYS: dict[str, str] = {key: info.name for key, info in SETTINGS.items()}
"""Every setting's key (a ``node start`` flag's name: ``--max-load`` -> ``max_load``) and the NodeConfig
field it sets (the same name, except ``heartbeat`` -> ``heartbeat_s`` and ``announce`` -> ``announce_s``).
The keys' types and constraints are NodeConfig's (opengrid/node/config.py)."""
SECRET_KEYS = frozenset({"network_key", "api_key"})
"""Never printed (``opengrid config show`` says only that they are set)."""

_ALIASES = {"heartbeat_s": "heartbeat", "announce_s": "announce"}
"""Older spellings still read from config files and the environment (the field names, before the keys
were named like their flags)."""


def field_of(key: str) -> str:
    """The :class:`NodeConfig` field a setting sets."""
    return KEYS[key]


def resolve_config_file(flag: pathlib.Path | None, env: Mapping[str, str]) -> pathlib.Path | None:
    """The config file to read: ``--config``, else ``$OPENGRID_CONFIG``, else the default if it exists.

    A file named explicitly (flag or environment) must exist; the default one is optional.
    """
    named, origin = (flag, "--config") if flag is not None else (None, "")
    if named is None and env.get(CONFIG_ENV):
        named, origin = pathlib.Path(env[CONFIG_ENV]), f"${CONFIG_ENV}"
    if named is not None:
        named = named.expanduser()
        if not named.is_file():
            raise ConfigError(
                f"config file {str(named)!r} (from {origin}) does not exist; create it or drop {origin} "
                f"to use {default_config_path()}"
            )
        return named
    default = default_config_path()
    return default if default.is_file() else None


def load_settings(
    flags: Mapping[str, Any], env: Mapping[str, str], file: pathlib.Path | None
) -> tuple[NodeConfig, dict[str, str]]:
    """Merge defaults < ``file`` < ``env`` < ``flags`` into a :class:`NodeConfig`, with each value's source.

    ``flags`` maps keys to values (``None`` = flag not given); ``env`` is the environment (only
    ``OPENGRID_<KEY>`` variables are read); ``file`` is a TOML file or None. Each value is converted to its
    key's type and checked as it is read (:func:`opengrid.node.config.convert_setting`), so a bad one is a
    :class:`SettingError` naming its source (``"file:PATH"``, ``"env:VAR"``, ``"flag"``; the returned
    sources say ``"default"`` for the rest). Rules between keys (a worker needs a bootstrap address,
    ``auto`` role resolution) are :meth:`NodeConfig.validated`'s, which the caller runs before starting.
    """
    unknown_flags = sorted(set(flags) - set(KEYS))
    if unknown_flags:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown_flags)}; known: {', '.join(KEYS)}")
    # `node start` listens on every interface and looks for its grid on the LAN by default, so a plain
    # `opengrid node start` on two machines of one network makes a grid. NodeConfig's own defaults
    # (127.0.0.1, no mDNS) are for nodes made in-process (tests, tools), which must stay on loopback.
    defaults = NodeConfig(data_dir=default_data_dir(), lan=True, listen=(NODE_START_LISTEN,))
    values: dict[str, Any] = {}
    sources = dict.fromkeys(KEYS, "default")

    def take(key: str, raw: object, source: str, *, text: bool = False) -> None:
        parsed = _from_text(key, raw) if text and isinstance(raw, str) else raw
        try:
            value = convert_setting(key, _normalized(key, parsed), source, strict=source.startswith("file:"))
        except SettingError as exc:
            raise SettingError(key, raw, source, exc.reason, fix_hint(key, source)) from None
        if key == "listen" and not value:
            needed = "at least one is needed, e.g. /ip4/127.0.0.1/tcp/4001 (no_listen = true: none)"
            raise SettingError(key, raw, source, needed, fix_hint(key, source))
        values[key], sources[key] = value, source

    if file is not None:
        for key, raw in _read_toml(file).items():
            take(key, raw, f"file:{file}")  # strict: TOML has types, "4" is not an integer
    for var, key in [(env_var(old), new) for old, new in _ALIASES.items()] + [(env_var(k), k) for k in KEYS]:
        if var in env:
            take(key, env[var], f"env:{var}", text=True)
    for key, raw in flags.items():
        if raw is not None:
            take(key, raw, "flag")
    config = msgspec.structs.replace(defaults, **{field_of(key): value for key, value in values.items()})
    return config, sources


def _optional(key: str) -> bool:
    return type(None) in typing.get_args(SETTINGS[key].type)


def _base(key: str) -> Any:
    """A setting's type without ``| None`` and its constraints: ``bool``, ``tuple``, ``Literal``..."""
    kind = SETTINGS[key].type
    if _optional(key):
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    return typing.get_args(kind)[0] if typing.get_origin(kind) is typing.Annotated else kind


def _from_text(key: str, text: str) -> object:
    """An environment variable's text as the value it stands for: empty is "unset" for optional keys,
    a list is comma-separated, a switch is true/false, 1/0, yes/no or on/off. Numbers are left to the
    (non-strict) conversion."""
    word = text.strip()
    base = _base(key)
    if not word and _optional(key):
        return None
    if base is bool:
        return _SWITCH_WORDS.get(word.lower(), text)
    if typing.get_origin(base) is tuple:
        return [item for item in (part.strip() for part in word.split(",")) if item]
    return text


_SWITCH_WORDS = {"1": True, "true": True, "yes": True, "on": True}
_SWITCH_WORDS |= {"0": False, "false": False, "no": False, "off": False}


def _normalized(key: str, raw: object) -> object:
    """Forgiving spellings every source may use: surrounding blanks, a choice in any case (``Worker``), a
    URL's trailing slash, ``api = true`` for the default API address."""
    if key == "api" and (raw is True or (isinstance(raw, str) and raw.strip().lower() == "true")):
        return DEFAULT_API_ADDRESS
    if isinstance(raw, list | tuple):
        return [item.strip() if isinstance(item, str) else item for item in raw]
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    if typing.get_origin(_base(key)) is typing.Literal:
        return text.lower()
    return text.rstrip("/") if key == "http_url" else text


def _read_toml(path: pathlib.Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    data = {_ALIASES.get(key, key): value for key, value in data.items()}
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        hints = [
            f"{key} (did you mean {close[0]}?)"
            if (close := difflib.get_close_matches(key, list(KEYS), n=1))
            else key
            for key in unknown
        ]
        raise ConfigError(
            f"config file {path} has unknown key(s) {', '.join(hints)}; remove or rename them "
            f"(known keys: {', '.join(KEYS)})"
        )
    return data


# -- argparse glue for the CLI ---------------------------------------------------------------------


def flags_from_namespace(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line: flags whose value is not None (or an empty list).

    For precedence to work, ``node start`` flags default to None (not to the setting's default), so a
    flag left out lets the environment and the config file speak. Each flag's ``dest`` is its key.
    """
    flags: dict[str, Any] = {}
    for key in KEYS:
        value = getattr(args, key, None)
        if value is None or (isinstance(value, list) and not value):
            continue
        flags[key] = tuple(value) if isinstance(value, list) else value
    return flags


def add_node_flags(parser: argparse.ArgumentParser) -> None:
    """Add every ``node start`` flag, in groups, plus ``--config``. Each flag is the setting of the same
    name (``KEYS``) and defaults to None, so that the environment and the config file can set it too."""
    node = parser.add_argument_group("node")
    node.add_argument(
        "--role",
        choices=ROLES,
        help="auto = coordinator without --bootstrap; with it, edge on machines under 2 GiB of RAM, else "
        "worker (default: auto)",
    )
    node.add_argument(
        "--data-dir",
        type=pathlib.Path,
        metavar="DIR",
        help=f"where the identity key, the ledger and node.json live (default: {default_data_dir()})",
    )
    node.add_argument(
        "--config",
        type=pathlib.Path,
        metavar="PATH",
        help=f"config file (default: ${CONFIG_ENV}, else {default_config_path()})",
    )
    node.add_argument("--network", help=f"network name (default: {DEFAULT_NETWORK})")
    node.add_argument(
        "--network-key",
        metavar="SECRET",
        help="private network: only nodes started with the same key (an invite token, >= 8 characters) "
        "can connect; prefer $OPENGRID_NETWORK_KEY to keep it out of the process list",
    )
    node.add_argument(
        "--genesis",
        type=pathlib.Path,
        metavar="FILE",
        help="the network's genesis file (JSON: network, coordinators, grant_points); its coordinators "
        "mint points on this node's ledger and coordinators sync their ledgers with each other",
    )

    network = parser.add_argument_group("network")
    network.add_argument(
        "--listen",
        action="append",
        metavar="MULTIADDR",
        help=f"address to listen on, repeatable (default: {NODE_START_LISTEN}: every interface, a free port, "
        "so nodes on the LAN can reach this one; /ip4/127.0.0.1/tcp/0 keeps it to this machine)",
    )
    network.add_argument(
        "--no-listen",
        action="store_true",
        default=None,
        help="listen on no address: dial out only, reachable through relays (--relay-via, else the "
        "--bootstrap nodes)",
    )
    network.add_argument(
        "--bootstrap",
        action="append",
        metavar="MULTIADDR",
        help="any node's full multiaddr, as it prints at start (.../p2p/12D3KooW...), or a DNS name: "
        "/dns4/NAME/tcp/PORT/p2p/ID, /dnsaddr/NAME (TXT records dnsaddr=...); repeatable; the node finds "
        "every coordinator through it (gossip)",
    )
    network.add_argument(
        "--relay",
        action=argparse.BooleanOptionalAction,
        help="relay for nodes that cannot be dialled (circuit relay v2; default: coordinators do)",
    )
    network.add_argument(
        "--lan",
        action=argparse.BooleanOptionalAction,
        help="find this network's nodes on the local network (mDNS) and announce this one there, on the "
        "interfaces it listens on (--listen /ip4/0.0.0.0/tcp/4001: the whole LAN; the default 127.0.0.1: "
        "this machine). Without --bootstrap a node first looks for 3 s: it joins a grid it finds as a "
        "worker, else it starts one as coordinator (default: on)",
    )
    network.add_argument(
        "--relay-via",
        action="append",
        metavar="MULTIADDR",
        help="be reachable through this relay (a node started with --relay, or a coordinator): hold a "
        "reservation on it and announce the relayed address; repeatable. When none of them has held a "
        "reservation for 60 s the node takes another relay by itself until one of them is back",
    )
    network.add_argument(
        "--heartbeat",
        type=float,
        metavar="SECONDS",
        help="how often workers re-register with their coordinators (default: 5)",
    )
    network.add_argument(
        "--announce",
        type=float,
        metavar="SECONDS",
        help="how often the node announces itself on gossip; 3 missed announcements mark it offline "
        "(default: 5)",
    )

    engine = parser.add_argument_group("model and engine (workers)")
    engine.add_argument(
        "--model",
        metavar="NAME_OR_PATH",
        help="model a worker serves: a catalog name (smollm2-135m-instruct, tiny) or a .gguf path",
    )
    engine.add_argument(
        "--engine", choices=ENGINES, help="llama (in-process) or http (a llama.cpp/vLLM server)"
    )
    engine.add_argument(
        "--http-url", metavar="URL", help="attach to this OpenAI-compatible server (engine http)"
    )
    engine.add_argument("--http-backend", choices=HTTP_BACKENDS, help="which server --http-url is / to start")
    engine.add_argument(
        "--threads", type=int, metavar="N", help="CPU threads for inference (default: llama.cpp's)"
    )
    engine.add_argument(
        "--gpu-layers", type=int, metavar="N", help="layers offloaded to the GPU (0: CPU only)"
    )
    engine.add_argument(
        "--max-context", type=int, metavar="N", help="context window (prompt + output tokens)"
    )
    engine.add_argument(
        "--score-with",
        choices=SCORE_WITH,
        help="what this worker's audits score on: auto (default: a scoring copy of a Q4_1 model on the "
        "CPU, bf16 where the CPU has AVX512_BF16 and f16 elsewhere, about half the audit's compute, "
        "+~300 MiB), off (the model itself), or a copy type",
    )
    engine.add_argument(
        "--skip-speed-test",
        action=argparse.BooleanOptionalAction,
        help="do not measure tokens/s at start (faster restarts; the node then announces no speed and its "
        "tier comes from its hardware alone)",
    )

    limits = parser.add_argument_group("worker limits")
    limits.add_argument(
        "--max-tokens-per-job", type=int, metavar="N", help="refuse jobs asking for more tokens"
    )
    limits.add_argument(
        "--work-hours",
        metavar="HH:MM-HH:MM",
        help="take jobs only in these daily hours, e.g. 22:00-07:00 (comma-separated; default: always)",
    )
    limits.add_argument(
        "--max-load",
        type=float,
        metavar="LOAD",
        help="take jobs only while other programs load the machine at most this much per core (e.g. 0.5)",
    )
    limits.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="memory this node offers at most, its model and split-group layers together (e.g. 2G, 300M; "
        "binary units); announced on gossip; a model larger than this runs as a split group "
        "(spec/split.md)",
    )
    limits.add_argument(
        "--split-member",
        action=argparse.BooleanOptionalAction,
        help="serve no model: lend --max-memory to split groups whose model fits no single node (the "
        "head sends the layers; no model file needed here; spec/split.md)",
    )

    coordinator = parser.add_argument_group("coordinator")
    coordinator.add_argument(
        "--plain-verification",
        action="store_true",
        default=None,
        help="uniformly chosen workers, no canaries, no adaptive trust: with --verify replicate every job "
        "runs the replicas asked for (default: reputation-weighted choice, canary jobs, adaptive "
        "replication or audit windows)",
    )
    coordinator.add_argument(
        "--verify",
        choices=VERIFY_MODES,
        help="how jobs are verified: one worker generating and another holding the same weights "
        "re-scoring its output (audit, the default; needs 2 workers per model) or bit-identical replicas "
        "(replicate, for engines that cannot score)",
    )
    coordinator.add_argument(
        "--auditors",
        type=int,
        metavar="N",
        help="--verify audit: workers that must pass each claim (default: 1)",
    )
    coordinator.add_argument(
        "--audit-full-rate",
        type=float,
        metavar="P",
        help="--verify audit: share of a trusted prover's claims scored in full; the rest are scored on "
        "a random prefix, drawn after the claim (untrusted provers: always in full; default: 0.55; 1 "
        "scores every claim in full; spec/verification.md §13.5)",
    )
    coordinator.add_argument(
        "--audit-second-rate",
        type=float,
        metavar="P",
        help="--verify audit: share of claims given one more auditor and a full window (a second audit, "
        "which meets a lying auditor; default: 0.02)",
    )
    coordinator.add_argument(
        "--audit-canary-rate",
        type=float,
        metavar="P",
        help="--verify audit: share of claims that also send one canary audit (a claim whose verdict the "
        "coordinator knows) to a worker drawn as auditors are; a wrong verdict bars it from auditing "
        "(default: 0; spec/verification.md §13.6)",
    )
    coordinator.add_argument(
        "--stream-chunk-first",
        type=int,
        metavar="N",
        help="--verify audit, streaming jobs: tokens in the first chunk audited and released to the client "
        "(its first verified text waits for it; default: 1; spec/verification.md §14.2)",
    )
    coordinator.add_argument(
        "--stream-chunk-max",
        type=int,
        metavar="N",
        help="--verify audit, streaming jobs: each later chunk doubles the previous one up to N tokens "
        "(at most 1024; default: 16): fewer audit round trips on long answers, a longer tail",
    )
    coordinator.add_argument(
        "--require-payment",
        action=argparse.BooleanOptionalAction,
        help="run only paid jobs (clients with an identity pay from their points; a new identity claims "
        "the network's starting grant); unpaid jobs get 'payment_required'",
    )
    coordinator.add_argument(
        "--approve-workers",
        action=argparse.BooleanOptionalAction,
        help="serve only workers you approved (`opengrid node pending` lists those asking, "
        "`opengrid node approve` admits one)",
    )
    coordinator.add_argument(
        "--admit-after-jobs",
        type=int,
        metavar="N",
        help="on a network with a genesis file: co-sign the admission of a new coordinator whose key "
        "earned N verified jobs as a worker, without `opengrid node approve --coordinator` (default 0: only "
        "those you approve)",
    )

    api = parser.add_argument_group("OpenAI-compatible API")
    api.add_argument(
        "--api",
        nargs="?",
        const=DEFAULT_API_ADDRESS,
        metavar="HOST:PORT",
        help=f"serve the OpenAI-compatible API (default address when given bare: {DEFAULT_API_ADDRESS})",
    )
    api.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on the API")
    api.add_argument(
        "--api-allow-remote",
        action="store_true",
        default=None,
        help="allow a non-loopback --api address (plain HTTP!)",
    )

    diagnostics = parser.add_argument_group("diagnostics")
    diagnostics.add_argument(
        "--trace-frames",
        type=pathlib.Path,
        metavar="FILE",
        help="append every job-protocol message this node receives to FILE (length-prefixed msgpack), "
        "to audit exactly what it saw",
    )
    diagnostics.add_argument(
        "--trace-timing",
        type=pathlib.Path,
        metavar="FILE",
        help="append a JSON line to FILE each time a job passes a point (dispatched, sent, received, "
        "engine started...), stamped with this machine's monotonic clock, to see where a job's time goes "
        "(benchmarks/grid_discovery_bench.py merges a coordinator's and its workers' files)",
    )
    diagnostics.add_argument("--adversary", choices=ADVERSARIES, help=argparse.SUPPRESS)
