"""``opengrid config show``: the effective node configuration and where each value came from.

Wiring, in ``opengrid/cli/main.py``: ``config.register(commands)`` while building the parser, and
``return config.run(args)`` when ``args.command == "config"``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import msgspec

from opengrid.errors import ConfigError
from opengrid.settings import (
    CONFIG_ENV,
    KEYS,
    SECRET_KEYS,
    default_config_path,
    env_var,
    load_settings,
    resolve_config_file,
    unknown_env_vars,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the ``config`` command (``config show``) to the ``opengrid`` parser's subcommands."""
    config = subparsers.add_parser(
        "config",
        help="show the effective node configuration and where each value comes from",
        description=(
            "Settings come from, in order of precedence: `node start` flags, OPENGRID_<KEY> environment "
            f"variables, the config file (--config, ${CONFIG_ENV}, else {default_config_path()}), and "
            "built-in defaults."
        ),
    )
    actions = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="print every setting, its value and its origin")
    show.add_argument("--config", type=pathlib.Path, metavar="PATH", help="config file to read")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    config.set_defaults(command="config")
    return config


def run(args: argparse.Namespace) -> int:
    """Print the effective configuration; returns the exit status (1 on a ConfigError)."""
    env = dict(os.environ)
    try:
        file = resolve_config_file(args.config, env)
        config, sources = load_settings({}, env, file)
    except ConfigError as exc:
        print(f"opengrid: error: {exc}", file=sys.stderr)
        return 1
    problem = None
    try:
        config.validated()
    except ConfigError as exc:
        problem = str(exc)
    values = msgspec.to_builtins(config, enc_hook=str)  # keyed like the settings; paths as text
    for key in SECRET_KEYS:
        if values[key]:
            values[key] = "(set, hidden)"  # a shared secret: never print it
    ignored = unknown_env_vars(env)
    if args.json:
        doc = {
            "config_file": str(file) if file is not None else None,
            "settings": {key: {"value": values[key], "source": sources[key]} for key in KEYS},
            "problem": problem,
            "ignored_env": ignored,
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(f"config file: {file if file is not None else f'none (would be {default_config_path()})'}")
    width = max(len(k) for k in KEYS)
    for key in KEYS:
        shown = json.dumps(values[key], ensure_ascii=False)
        print(f"  {key:<{width}}  {shown:<40}  {sources[key]}")
    print(
        f"(each key is a `node start` flag, e.g. max_tokens_per_job is --max-tokens-per-job, and an "
        f"{env_var('<KEY>')} variable)"
    )
    for line in ignored:
        print(f"warning: {line}")
    if problem is not None:
        print(f"note: `node start` with these settings would fail: {problem}")
    return 0
