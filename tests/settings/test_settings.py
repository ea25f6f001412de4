"""Config precedence (flag > env > file > default), origins, and errors that name key, value and choices."""

from __future__ import annotations

import argparse
import json
import pathlib

import pytest

from opengrid.cli import config as config_cli
from opengrid.cli import models as models_cli
from opengrid.errors import ConfigError
from opengrid.node.config import NodeConfig
from opengrid.settings import (
    CONFIG_ENV,
    KEYS,
    add_node_flags,
    default_config_path,
    default_data_dir,
    env_var,
    field_of,
    flags_from_namespace,
    load_settings,
    resolve_config_file,
)

PEER = "12D3KooWN5TM5CbW1QRMfb4Rui58doGzeD2AvdHtagrxTSGtCyCo"


def _write(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_everywhere() -> None:
    config, sources = load_settings({}, {}, None)
    # NodeConfig's defaults, but on every interface with LAN discovery on: `node start` looks for its grid
    # (in-process nodes do not)
    assert config == NodeConfig(data_dir=default_data_dir(), lan=True, listen=("/ip4/0.0.0.0/tcp/0",))
    assert set(sources) == set(KEYS)
    assert set(sources.values()) == {"default"}


def test_every_nodeconfig_field_is_a_key() -> None:
    import msgspec

    assert {field_of(key) for key in KEYS} == {f.name for f in msgspec.structs.fields(NodeConfig)}


def test_flag_beats_env_beats_file_beats_default(tmp_path: pathlib.Path) -> None:
    file = _write(tmp_path, 'network = "from-file"\nthreads = 3\nheartbeat = 7\nmax_context = 4096\n')
    env = {"OPENGRID_NETWORK": "from-env", "OPENGRID_THREADS": "4", "PATH": "/bin"}
    config, sources = load_settings({"network": "from-flag", "model": None}, env, file)
    assert (config.network, sources["network"]) == ("from-flag", "flag")
    assert (config.threads, sources["threads"]) == (4, "env:OPENGRID_THREADS")
    assert (config.heartbeat_s, sources["heartbeat"]) == (7.0, f"file:{file}")
    assert (config.max_context, sources["max_context"]) == (4096, f"file:{file}")
    assert (config.model, sources["model"]) == (None, "default")  # a None flag is "not given"


def test_value_kinds_from_each_layer(tmp_path: pathlib.Path) -> None:
    file = _write(
        tmp_path,
        'data_dir = "~/og"\nlisten = ["/ip4/0.0.0.0/tcp/4001", "/ip6/::1/tcp/4001"]\n'
        'role = "Worker"\nengine = "http"\nhttp_url = "http://127.0.0.1:8000/"\ngpu_layers = -1\n',
    )
    first, second = (
        f"/ip4/10.0.0.{n}/tcp/4001/p2p/12D3KooWN5TM5CbW1QRMfb4Rui58doGzeD2AvdHtagrxTSGtCyCo" for n in (1, 2)
    )
    env = {
        env_var("bootstrap"): f"{first}, {second}",
        env_var("http_backend"): "vllm",
        env_var("model"): "",  # empty: unset an optional key
    }
    config, sources = load_settings({"max_tokens_per_job": 64}, env, file)
    assert config.data_dir == pathlib.Path("~/og").expanduser()
    assert config.listen == ("/ip4/0.0.0.0/tcp/4001", "/ip6/::1/tcp/4001")
    assert config.bootstrap == (first, second)
    assert config.role == "worker"
    assert (config.engine, config.http_url, config.http_backend) == ("http", "http://127.0.0.1:8000", "vllm")
    assert config.gpu_layers == -1
    assert config.max_tokens_per_job == 64
    assert (config.model, sources["model"]) == (None, "env:OPENGRID_MODEL")
    assert config.validated().role == "worker"


@pytest.mark.parametrize(
    ("key", "raw", "allowed"),
    [
        ("role", "boss", "allowed: worker, coordinator, edge, auto"),
        ("engine", "onnx", "allowed: llama, http"),
        ("threads", "0", "integer >= 1"),
        ("threads", "two", "integer >= 1"),
        ("max_tokens_per_job", "-5", "integer >= 1"),
        ("heartbeat", "0", "number of seconds > 0"),
        ("heartbeat", "soon", "number of seconds > 0"),
        ("listen", "127.0.0.1:4001", "not a multiaddr"),
        ("http_url", "127.0.0.1:8000", "http:// or https://"),
        ("network", "x" * 65, "1..64 characters"),
    ],
)
def test_bad_env_values_name_key_value_origin_and_choices(key: str, raw: str, allowed: str) -> None:
    var = env_var(key)
    with pytest.raises(ConfigError) as excinfo:
        load_settings({}, {var: raw}, None)
    message = str(excinfo.value)
    assert f"invalid {key} = {raw!r} (from env:{var})" in message
    assert allowed in message


def test_bad_file_values_and_types(tmp_path: pathlib.Path) -> None:
    cases = {
        "threads = true\n": "invalid threads = True",
        'threads = "4"\n': "invalid threads = '4'",  # TOML has types: a string is not an int
        "listen = []\n": "at least one is needed",
        "listen = [1]\n": "expected a list of multiaddrs",
        "role = 3\n": "allowed: worker",
    }
    for text, expected in cases.items():
        file = _write(tmp_path, text)
        with pytest.raises(ConfigError, match=expected) as excinfo:
            load_settings({}, {}, file)
        assert f"file:{file}" in str(excinfo.value)


def test_unknown_keys_and_broken_toml_are_errors(tmp_path: pathlib.Path) -> None:
    unknown = r"unknown key\(s\) threds \(did you mean threads\?\); remove or rename them"
    with pytest.raises(ConfigError, match=unknown + r" \(known keys: data_dir, role, network"):
        load_settings({}, {}, _write(tmp_path, "threds = 4\n"))
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_settings({}, {}, _write(tmp_path, "role = \n"))
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings({"colour": "red"}, {}, None)


def test_flags_are_checked_too() -> None:
    with pytest.raises(
        ConfigError, match=r"invalid gpu_layers = -2 \(from flag\): expected an integer >= -1"
    ):
        load_settings({"gpu_layers": -2}, {}, None)


def test_config_file_resolution(tmp_path: pathlib.Path) -> None:
    file = _write(tmp_path, "")
    other = tmp_path / "other.toml"
    other.write_text("")
    assert resolve_config_file(file, {CONFIG_ENV: str(other)}) == file
    assert resolve_config_file(None, {CONFIG_ENV: str(other)}) == other
    with pytest.raises(ConfigError, match=r"from \$OPENGRID_CONFIG\) does not exist"):
        resolve_config_file(None, {CONFIG_ENV: str(tmp_path / "missing.toml")})
    with pytest.raises(ConfigError, match="from --config"):
        resolve_config_file(tmp_path / "missing.toml", {})
    assert default_config_path().name == "config.toml"
    assert default_config_path().parent.name == "opengrid"


def test_argparse_glue() -> None:
    parser = argparse.ArgumentParser()
    add_node_flags(parser)
    args = parser.parse_args(["--heartbeat", "2", "--engine", "http", "--listen", "/ip4/127.0.0.1/tcp/1"])
    assert flags_from_namespace(args) == {
        "heartbeat": 2.0,
        "engine": "http",
        "listen": ("/ip4/127.0.0.1/tcp/1",),
    }
    config, sources = load_settings(flags_from_namespace(args), {}, None)
    assert (config.heartbeat_s, sources["heartbeat"]) == (2.0, "flag")


# -- the CLI modules -------------------------------------------------------------------------------


def _cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="opengrid")
    commands = parser.add_subparsers(dest="command", required=True)
    config_cli.register(commands)
    models_cli.register(commands)
    return parser.parse_args(argv)


def test_config_show_json(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    file = _write(tmp_path, 'role = "worker"\n')
    monkeypatch.setenv("OPENGRID_THREADS", "2")
    assert config_cli.run(_cli("config", "show", "--json", "--config", str(file))) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["config_file"] == str(file)
    assert doc["settings"]["role"] == {"value": "worker", "source": f"file:{file}"}
    assert doc["settings"]["threads"] == {"value": 2, "source": "env:OPENGRID_THREADS"}
    assert "needs --bootstrap" in doc["problem"]  # a worker without a coordinator


def test_config_show_text_and_errors(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(_write(tmp_path, "")))
    assert config_cli.run(_cli("config", "show")) == 0
    out = capsys.readouterr().out
    assert "heartbeat" in out and "default" in out
    monkeypatch.setenv("OPENGRID_ROLE", "boss")
    assert config_cli.run(_cli("config", "show")) == 1
    assert "invalid role = 'boss' (from env:OPENGRID_ROLE)" in capsys.readouterr().err


def test_models_list_pull_rm_json(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = str(tmp_path)
    assert models_cli.run(_cli("models", "--cache-dir", cache, "pull", "tiny", "--json")) == 0
    pulled = json.loads(capsys.readouterr().out)
    assert pulled["name"] == "tiny" and len(pulled["sha256"]) == 64
    assert models_cli.run(_cli("models", "--cache-dir", cache, "list", "--json")) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)["models"]}
    assert rows["tiny"]["path"] == pulled["path"]
    assert rows["smollm2-360m-instruct"]["path"] is None
    assert rows["smollm2-360m-instruct"]["source"] == "hub"
    assert models_cli.run(_cli("models", "--cache-dir", cache, "rm", "tiny", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == [pulled["path"]]
    assert models_cli.run(_cli("models", "--cache-dir", cache, "rm", "gpt-17")) == 1
    assert "unknown model 'gpt-17'" in capsys.readouterr().err


def test_availability_keys_come_from_env_and_are_validated() -> None:
    config, sources = load_settings(
        {}, {"OPENGRID_WORK_HOURS": "22:00-07:00", "OPENGRID_MAX_LOAD": "0.5"}, None
    )
    assert (config.work_hours, config.max_load) == ("22:00-07:00", 0.5)
    assert sources["work_hours"] == "env:OPENGRID_WORK_HOURS"
    with pytest.raises(ConfigError, match="work_hours"):
        load_settings({}, {"OPENGRID_WORK_HOURS": "25:00-07:00"}, None)


def test_max_memory_takes_human_sizes_and_refuses_nonsense(tmp_path: pathlib.Path) -> None:
    config, sources = load_settings({}, {"OPENGRID_MAX_MEMORY": "300M"}, None)
    assert config.max_memory == 300 << 20 and sources["max_memory"] == "env:OPENGRID_MAX_MEMORY"
    assert load_settings({}, {"OPENGRID_MAX_MEMORY": "2G"}, None)[0].max_memory == 2 << 30
    assert load_settings({}, {}, None)[0].max_memory is None  # no cap unless asked
    for bad in ("lots", "-1G", "0", "nanM", "1e30G"):
        with pytest.raises(ConfigError, match="max_memory"):
            load_settings({}, {"OPENGRID_MAX_MEMORY": bad}, None)
    small = NodeConfig(data_dir=tmp_path, role="coordinator", max_memory=1000)
    with pytest.raises(ConfigError, match="at least 1M"):
        small.validated()


def test_a_split_member_needs_max_memory_and_is_a_worker_that_serves_no_model(tmp_path: pathlib.Path) -> None:
    address = "/ip4/127.0.0.1/tcp/4101/p2p/12D3KooWN5TM5CbW1QRMfb4Rui58doGzeD2AvdHtagrxTSGtCyCo"
    with pytest.raises(ConfigError, match="--max-memory"):
        NodeConfig(data_dir=tmp_path, bootstrap=(address,), split_member=True).validated()
    member = NodeConfig(data_dir=tmp_path, bootstrap=(address,), split_member=True, max_memory=1 << 30)
    assert member.validated().role == "worker" and not member.validated().serves_models
    with pytest.raises(ConfigError, match="not a coordinator"):
        NodeConfig(data_dir=tmp_path, role="coordinator", split_member=True, max_memory=1 << 30).validated()
