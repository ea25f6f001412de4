"""Every ``opengrid node start`` flag is a setting of the same name that the environment and the config
file set too, to the same value (issue 16: ``OPENGRID_HEARTBEAT`` used to be ignored, the key was
``heartbeat_s``). The test walks the real parser, so a new flag without a setting fails here."""

from __future__ import annotations

import argparse
import json
import pathlib

import pytest

from opengrid.cli.main import _build_parser, main
from opengrid.settings import KEYS, env_var, field_of, flags_from_namespace, load_settings, unknown_env_vars

PEER = "12D3KooWN5TM5CbW1QRMfb4Rui58doGzeD2AvdHtagrxTSGtCyCo"
ADDRESS = f"/ip4/127.0.0.1/tcp/4101/p2p/{PEER}"

SAMPLES: dict[str, tuple[list[str], str, str]] = {
    # key: (command-line words after the flag, environment value, TOML literal); none is the default
    "role": (["worker"], "worker", '"worker"'),
    "data_dir": (["/srv/og"], "/srv/og", '"/srv/og"'),
    "network": (["other-net"], "other-net", '"other-net"'),
    "network_key": (["invite-token-1"], "invite-token-1", '"invite-token-1"'),
    "genesis": (["/srv/genesis.json"], "/srv/genesis.json", '"/srv/genesis.json"'),
    "listen": (["/ip4/0.0.0.0/tcp/4001"], "/ip4/0.0.0.0/tcp/4001", '["/ip4/0.0.0.0/tcp/4001"]'),
    "no_listen": ([], "true", "true"),
    "bootstrap": ([ADDRESS], ADDRESS, f'["{ADDRESS}"]'),
    "relay": ([], "true", "true"),
    "relay_via": ([ADDRESS], ADDRESS, f'["{ADDRESS}"]'),
    "lan": (["--no-lan"], "false", "false"),  # on by default: the sample turns it off (the last flag wins)
    "heartbeat": (["2.5"], "2.5", "2.5"),
    "announce": (["1.5"], "1.5", "1.5"),
    "model": (["tiny"], "tiny", '"tiny"'),
    "engine": (["http"], "http", '"http"'),
    "http_url": (["http://127.0.0.1:8000"], "http://127.0.0.1:8000", '"http://127.0.0.1:8000"'),
    "http_backend": (["vllm"], "vllm", '"vllm"'),
    "threads": (["3"], "3", "3"),
    "gpu_layers": (["-1"], "-1", "-1"),
    "max_context": (["4096"], "4096", "4096"),
    "skip_speed_test": ([], "yes", "true"),
    "score_with": (["off"], "off", '"off"'),
    "max_tokens_per_job": (["64"], "64", "64"),
    "work_hours": (["22:00-07:00"], "22:00-07:00", '"22:00-07:00"'),
    "max_load": (["0.5"], "0.5", "0.5"),
    "max_memory": (["300M"], "300M", '"300M"'),
    "split_member": ([], "true", "true"),
    "plain_verification": ([], "1", "true"),
    "verify": (["replicate"], "replicate", '"replicate"'),
    "auditors": (["2"], "2", "2"),
    "audit_full_rate": (["0.3"], "0.3", "0.3"),
    "audit_second_rate": (["0.1"], "0.1", "0.1"),
    "audit_canary_rate": (["0.05"], "0.05", "0.05"),
    "stream_chunk_first": (["2"], "2", "2"),
    "stream_chunk_max": (["128"], "128", "128"),
    "require_payment": ([], "on", "true"),
    "approve_workers": ([], "true", "true"),
    "admit_after_jobs": (["3"], "3", "3"),
    "api": (["127.0.0.1:9400"], "127.0.0.1:9400", '"127.0.0.1:9400"'),
    "api_key": (["sk-local"], "sk-local", '"sk-local"'),
    "api_allow_remote": ([], "true", "true"),
    "trace_frames": (["/srv/frames.bin"], "/srv/frames.bin", '"/srv/frames.bin"'),
    "trace_timing": (["/srv/timing.jsonl"], "/srv/timing.jsonl", '"/srv/timing.jsonl"'),
    "adversary": (["lazy"], "lazy", '"lazy"'),
}


def _node_start_parser() -> argparse.ArgumentParser:
    def sub(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action.choices[name]  # type: ignore[no-any-return]
        raise AssertionError(f"no {name} subcommand")

    return sub(sub(_build_parser(), "node"), "start")


def _flags() -> dict[str, str]:
    """dest -> the flag's spelling, for every setting flag of ``node start``."""
    not_settings = {"help", "verbose_after", "config"}  # --config names the file the settings come from
    return {
        action.dest: action.option_strings[0]
        for action in _node_start_parser()._actions
        if action.dest not in not_settings
    }


def test_every_flag_is_a_setting_named_like_it_and_every_setting_a_flag() -> None:
    flags = _flags()
    assert set(flags) == set(KEYS)
    for key, flag in flags.items():
        assert flag == "--" + key.replace("_", "-")
    assert set(SAMPLES) == set(KEYS)  # a new flag needs a sample here


@pytest.mark.parametrize("key", sorted(KEYS))
def test_flag_env_and_toml_set_the_same_value(key: str, tmp_path: pathlib.Path) -> None:
    words, env_text, toml_text = SAMPLES[key]
    flag = "--" + key.replace("_", "-")
    args = _build_parser().parse_args(["node", "start", flag, *words])
    by_flag, sources = load_settings(flags_from_namespace(args), {}, None)
    assert sources[key] == "flag"
    by_env, sources = load_settings({}, {env_var(key): env_text}, None)
    assert sources[key] == f"env:{env_var(key)}"
    file = tmp_path / "config.toml"
    file.write_text(f"{key} = {toml_text}\n")
    by_file, sources = load_settings({}, {}, file)
    assert sources[key] == f"file:{file}"
    field = field_of(key)
    value = getattr(by_flag, field)
    assert getattr(by_env, field) == value == getattr(by_file, field)
    assert value != getattr(load_settings({}, {}, None)[0], field)  # it changed something


def test_old_names_are_still_read_and_unknown_variables_are_named() -> None:
    config, sources = load_settings({}, {"OPENGRID_HEARTBEAT_S": "3", "OPENGRID_HEARTBEAT": "2"}, None)
    assert (config.heartbeat_s, sources["heartbeat"]) == (2.0, "env:OPENGRID_HEARTBEAT")
    config, _ = load_settings({}, {"OPENGRID_ANNOUNCE_S": "3"}, None)
    assert config.announce_s == 3.0
    problems = unknown_env_vars(
        {"OPENGRID_HEARTBAET": "2", "OPENGRID_ANNOUNCE_S": "3", "OPENGRID_CONFIG": "x", "HOME": "/h"}
    )
    assert problems == [
        "OPENGRID_ANNOUNCE_S is the old name of OPENGRID_ANNOUNCE (still read); rename it",
        "OPENGRID_HEARTBAET is not an OpenGrid setting and is ignored; did you mean OPENGRID_HEARTBEAT?",
    ]


def test_the_real_cli_reads_opengrid_heartbeat(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command line's own entry point (``main(argv)``, in this process) reads the environment."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("OPENGRID_HEARTBEAT", "2")
    monkeypatch.setenv("OPENGRID_SKIP_SPEED_TEST", "true")
    assert main(["config", "show", "--json"]) == 0
    result = capsys.readouterr()
    settings = json.loads(result.out)["settings"]
    assert settings["heartbeat"] == {"value": 2.0, "source": "env:OPENGRID_HEARTBEAT"}
    assert settings["skip_speed_test"] == {"value": True, "source": "env:OPENGRID_SKIP_SPEED_TEST"}
