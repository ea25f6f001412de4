"""A node's settings from four layers: command-line flags > environment > config file > defaults.

The config file is TOML with one top-level key per :class:`~opengrid.node.config.NodeConfig` field
(``role = "worker"``, ``listen = ["/ip4/0.0.0.0/tcp/4001"]``, ``max_tokens_per_job = 512``). It lives
at :func:`default_config_path` (the platform's user config dir / ``opengrid`` / ``config.toml``) unless
``--config PATH`` or ``$OPENGRID_CONFIG`` names another one. Every key can be set by the environment as
``OPENGRID_<KEY>`` (upper case; lists comma-separated; an empty value means "unset" for optional keys)
and by a flag.

:func:`load_settings` is a pure function of its three inputs: it reads only the file it is given, and
takes the environment as a mapping, so tests pass plain dicts. It reports where each value came from
(``"default"``, ``"file:PATH"``, ``"env:VAR"``, ``"flag"``) and fails with :class:`ConfigError`
naming the key, the bad value, its origin and the allowed values.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import platformdirs

from opengrid.core.availability import parse_windows
from opengrid.errors import ConfigError
from opengrid.node.config import ADVERSARIES, ENGINES, HTTP_BACKENDS, ROLES, VERIFY_MODES, NodeConfig

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "KEYS",
    "default_config_path",
    "default_data_dir",
    "env_var",
    "flags_from_namespace",
    "load_settings",
    "resolve_config_file",
]

ENV_PREFIX = "OPENGRID_"
CONFIG_ENV = "OPENGRID_CONFIG"
"""Environment variable naming the config file (``--config`` wins over it)."""

_ADVERSARIES = ADVERSARIES


def default_config_path() -> pathlib.Path:
    """The platform's user config dir / ``opengrid`` / ``config.toml`` (may not exist)."""
    return platformdirs.user_config_path("opengrid") / "config.toml"


def default_data_dir() -> pathlib.Path:
    """The platform's user data dir / ``opengrid``: identity key, ledger, node.json."""
    return platformdirs.user_data_path("opengrid")


def env_var(key: str) -> str:
    """``OPENGRID_<KEY>`` for a config key (``heartbeat_s`` -> ``OPENGRID_HEARTBEAT_S``)."""
    return ENV_PREFIX + key.upper()


# -- value parsers: (raw value, from_text) -> typed value, ValueError with the allowed values ------


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _int(minimum: int) -> Callable[[Any, bool], int]:
    def parse(value: Any, from_text: bool) -> int:
        if from_text and isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ValueError(f"expected an integer >= {minimum}") from None
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"expected an integer >= {minimum}")
        if value < minimum:
            raise ValueError(f"expected an integer >= {minimum}")
        return value

    return parse


def _positive_float(value: Any, from_text: bool) -> float:
    if from_text and isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError("expected a number > 0") from None
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ValueError("expected a number > 0")
    return float(value)


def _bool(value: Any, from_text: bool) -> bool:
    if from_text and isinstance(value, str):
        word = value.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _choice(choices: tuple[str, ...]) -> Callable[[Any, bool], str]:
    def parse(value: Any, from_text: bool) -> str:
        if not isinstance(value, str) or value.strip().lower() not in choices:
            raise ValueError(f"allowed: {', '.join(choices)}")
        return value.strip().lower()

    return parse


def _path(value: Any, from_text: bool) -> pathlib.Path:
    if isinstance(value, pathlib.Path):
        return value.expanduser()
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a path")
    return pathlib.Path(value.strip()).expanduser()


def _name(value: Any, from_text: bool) -> str:
    text = _text(value).strip()
    if not 1 <= len(text) <= 64:
        raise ValueError("expected 1..64 characters")
    return text


def _secret(value: Any, from_text: bool) -> str:
    if not isinstance(value, str) or len(value.strip()) < 8:
        raise ValueError("a network key is a text of at least 8 characters (share it like a password)")
    return value.strip()


def _work_hours(value: Any, from_text: bool) -> str:
    text = _text(value).strip()
    try:
        parse_windows(text)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return text


def _model(value: Any, from_text: bool) -> str:
    text = _text(value).strip()
    if not text:
        raise ValueError("expected a catalog name (see `opengrid models list`) or a .gguf path")
    return text


def _url(value: Any, from_text: bool) -> str:
    text = _text(value).strip()
    if not text.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL, e.g. http://127.0.0.1:8000")
    return text.rstrip("/")


def _multiaddrs(value: Any, from_text: bool) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")] if from_text else [value.strip()]
        items = [v for v in items if v]
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise ValueError("expected a list of multiaddrs, e.g. ['/ip4/127.0.0.1/tcp/4001']")
    for item in items:
        _check_multiaddr(item)
    return tuple(items)


def _check_multiaddr(text: str) -> None:
    from multiaddr import Multiaddr

    try:
        Multiaddr(text)
    except Exception as exc:  # multiaddr raises several types (ValueError, its own errors)
        raise ValueError(
            f"{text!r} is not a multiaddr ({exc}); expected e.g. /ip4/127.0.0.1/tcp/4001"
        ) from None


@dataclass(frozen=True)
class _Key:
    parse: Callable[[Any, bool], Any]
    optional: bool = False
    """``None`` is allowed (the default, or an empty environment variable)."""
    nonempty: bool = False
    """For lists: at least one item."""


KEYS: dict[str, _Key] = {
    "data_dir": _Key(_path),
    "role": _Key(_choice(ROLES)),
    "listen": _Key(_multiaddrs, nonempty=True),
    "bootstrap": _Key(_multiaddrs),
    "model": _Key(_model, optional=True),
    "network": _Key(_name),
    "network_key": _Key(_secret, optional=True),
    "genesis": _Key(_path, optional=True),
    "heartbeat_s": _Key(_positive_float),
    "announce_s": _Key(_positive_float),
    "threads": _Key(_int(1), optional=True),
    "adversary": _Key(_choice(_ADVERSARIES), optional=True),
    "max_tokens_per_job": _Key(_int(1)),
    "max_context": _Key(_int(16)),
    "gpu_layers": _Key(_int(-1)),
    "engine": _Key(_choice(ENGINES)),
    "http_url": _Key(_url, optional=True),
    "http_backend": _Key(_choice(HTTP_BACKENDS)),
    "work_hours": _Key(_work_hours),
    "max_load": _Key(_positive_float, optional=True),
    "relay": _Key(_bool, optional=True),
    "relay_via": _Key(_multiaddrs),
    "require_payment": _Key(_bool),
    "approve_workers": _Key(_bool),
    "admit_after_jobs": _Key(_int(0)),
    "verify": _Key(_choice(VERIFY_MODES)),
}
"""Every NodeConfig field and how its values are checked."""


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
    """Merge defaults < ``file`` < ``env`` < ``flags`` into a :class:`NodeConfig`, with each value's origin.

    ``flags`` maps config keys to values (``None`` = flag not given); ``env`` is the environment
    (only ``OPENGRID_<KEY>`` variables are read); ``file`` is a TOML file or None. Every value is
    checked; cross-key rules (a worker needs a bootstrap address, ``auto`` role resolution) are left to
    :meth:`NodeConfig.validated`, which the caller runs before starting a node.
    """
    unknown_flags = sorted(set(flags) - set(KEYS))
    if unknown_flags:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown_flags)}; known: {', '.join(KEYS)}")
    defaults = NodeConfig(data_dir=default_data_dir())
    values: dict[str, Any] = {key: getattr(defaults, key) for key in KEYS}
    sources = dict.fromkeys(KEYS, "default")

    if file is not None:
        origin = f"file:{file}"
        for key, raw in _read_toml(file).items():
            values[key] = _check(key, raw, origin, from_text=False)
            sources[key] = origin
    for key in KEYS:
        var = env_var(key)
        if var in env:
            origin = f"env:{var}"
            values[key] = _check(key, env[var], origin, from_text=True)
            sources[key] = origin
    for key, raw in flags.items():
        if raw is None:
            continue
        values[key] = _check(key, raw, "flag", from_text=isinstance(raw, str))
        sources[key] = "flag"
    config = dataclasses.replace(defaults, **values)
    return config, sources


def _check(key: str, raw: Any, origin: str, *, from_text: bool) -> Any:
    spec = KEYS[key]
    if spec.optional and (raw is None or (from_text and isinstance(raw, str) and not raw.strip())):
        return None
    try:
        value = spec.parse(raw, from_text)
    except ValueError as exc:
        raise ConfigError(f"invalid {key} = {raw!r} (from {origin}): {exc}") from None
    if spec.nonempty and not value:
        raise ConfigError(
            f"invalid {key} = {raw!r} (from {origin}): at least one is needed, e.g. /ip4/127.0.0.1/tcp/4001"
        )
    return value


def _read_toml(path: pathlib.Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ConfigError(
            f"config file {path} has unknown key(s) {', '.join(unknown)}; known keys: {', '.join(KEYS)}"
        )
    return data


# -- argparse glue for the CLI ---------------------------------------------------------------------

FLAG_DESTS: dict[str, str] = {
    "data_dir": "data_dir",
    "role": "role",
    "listen": "listen",
    "bootstrap": "bootstrap",
    "model": "model",
    "network": "network",
    "network_key": "network_key",
    "genesis": "genesis",
    "heartbeat": "heartbeat_s",
    "announce": "announce_s",
    "threads": "threads",
    "adversary": "adversary",
    "max_tokens_per_job": "max_tokens_per_job",
    "max_context": "max_context",
    "gpu_layers": "gpu_layers",
    "engine": "engine",
    "http_url": "http_url",
    "http_backend": "http_backend",
    "work_hours": "work_hours",
    "max_load": "max_load",
    "relay": "relay",
    "relay_via": "relay_via",
    "require_payment": "require_payment",
    "approve_workers": "approve_workers",
    "admit_after_jobs": "admit_after_jobs",
    "verify": "verify",
}
"""argparse ``dest`` of each ``node start`` flag -> config key."""


def flags_from_namespace(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys set on the command line: flags whose value is not None (or an empty list).

    For precedence to work, ``node start`` flags must default to None (not to the config default).
    """
    flags: dict[str, Any] = {}
    for dest, key in FLAG_DESTS.items():
        value = getattr(args, dest, None)
        if value is None or (isinstance(value, list) and not value):
            continue
        flags[key] = tuple(value) if isinstance(value, list) else value
    return flags


def add_node_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and the resource and engine flags to ``node start`` (all default to None)."""
    parser.add_argument(
        "--config",
        type=pathlib.Path,
        metavar="PATH",
        help=f"config file (default: ${CONFIG_ENV}, else {default_config_path()})",
    )
    parser.add_argument(
        "--max-tokens-per-job", type=int, metavar="N", help="refuse jobs asking for more tokens"
    )
    parser.add_argument(
        "--max-context", type=int, metavar="N", help="context window (prompt + output tokens)"
    )
    parser.add_argument(
        "--gpu-layers", type=int, metavar="N", help="layers offloaded to the GPU (0: CPU only)"
    )
    parser.add_argument(
        "--engine", choices=ENGINES, help="llama (in-process) or http (a llama.cpp/vLLM server)"
    )
    parser.add_argument(
        "--http-url", metavar="URL", help="attach to this OpenAI-compatible server (engine http)"
    )
    parser.add_argument("--http-backend", choices=HTTP_BACKENDS, help="which server --http-url is / to start")
    parser.add_argument(
        "--work-hours",
        metavar="HH:MM-HH:MM",
        help="take jobs only in these daily hours, e.g. 22:00-07:00 (comma-separated; default: always)",
    )
    parser.add_argument(
        "--max-load",
        type=float,
        metavar="LOAD",
        help="take jobs only while other programs load the machine at most this much per core (e.g. 0.5)",
    )
