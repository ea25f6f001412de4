"""One typed configuration: NodeConfig's msgspec types check every value of every layer, the same way for
a config built in code, and a bad value is a SettingError that carries its key, value and source."""

from __future__ import annotations

import pathlib

import pytest

from opengrid.cli.main import _build_parser
from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.stream_chunks import ChunkPolicy
from opengrid.errors import ConfigError, SettingError
from opengrid.node.config import SETTINGS, NodeConfig, convert_setting
from opengrid.settings import KEYS, flags_from_namespace, load_settings


def _file(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_each_layer_hides_the_ones_below_and_says_so(tmp_path: pathlib.Path) -> None:
    file = _file(tmp_path, "max_context = 3000\n")
    env = {"OPENGRID_MAX_CONTEXT": "4000"}
    flags = {"max_context": 5000}
    for given, expected, source in (
        (({}, {}, None), 2048, "default"),
        (({}, {}, file), 3000, f"file:{file}"),
        (({}, env, file), 4000, "env:OPENGRID_MAX_CONTEXT"),
        ((flags, env, file), 5000, "flag"),
    ):
        config, sources = load_settings(*given)
        assert (config.max_context, sources["max_context"]) == (expected, source)
        assert set(sources) == set(KEYS)  # every value knows where it came from


@pytest.mark.parametrize(
    ("layers", "source", "fix"),
    [
        (({}, {"OPENGRID_AUDITORS": "0"}), "env:OPENGRID_AUDITORS", "fix or unset OPENGRID_AUDITORS"),
        (({"auditors": 0}, {}), "flag", "fix --auditors"),
    ],
)
def test_a_bad_value_is_a_setting_error_with_key_value_source_and_fix(
    layers: tuple[dict[str, object], dict[str, str]], source: str, fix: str
) -> None:
    flags, env = layers
    with pytest.raises(SettingError) as caught:
        load_settings(flags, env, None)
    error = caught.value
    assert (error.key, error.source) == ("auditors", source)
    assert error.value in ("0", 0)
    assert error.reason == "expected an integer >= 1"
    assert str(error).endswith(f"; {fix}")


def test_a_bad_file_value_names_the_file_to_fix(tmp_path: pathlib.Path) -> None:
    file = _file(tmp_path, 'verify = "vote"\n')
    with pytest.raises(SettingError) as caught:
        load_settings({}, {}, file)
    assert str(caught.value) == (
        f"invalid verify = 'vote' (from file:{file}): allowed: replicate, audit; fix verify in {file}"
    )


def test_env_text_becomes_the_keys_type() -> None:
    env = {
        "OPENGRID_SKIP_SPEED_TEST": "on",
        "OPENGRID_RELAY": "",  # empty: unset (relay is optional: the role decides)
        "OPENGRID_RELAY_VIA": " /ip4/10.0.0.1/tcp/1 , /ip4/10.0.0.2/tcp/2 ",
        "OPENGRID_AUDIT_FULL_RATE": "0.25",
        "OPENGRID_DATA_DIR": "~/grid",
        "OPENGRID_ROLE": " Coordinator ",
    }
    config, _ = load_settings({}, env, None)
    assert config.skip_speed_test is True and config.relay is None
    assert config.relay_via == ("/ip4/10.0.0.1/tcp/1", "/ip4/10.0.0.2/tcp/2")
    assert config.audit_full_rate == 0.25
    assert config.data_dir == pathlib.Path("~/grid").expanduser()
    assert config.role == "coordinator"
    with pytest.raises(
        SettingError, match=r"invalid lan = 'maybe' \(from env:OPENGRID_LAN\): expected true or"
    ):
        load_settings({}, {"OPENGRID_LAN": "maybe"}, None)


def test_a_config_built_in_code_is_checked_by_the_same_types(tmp_path: pathlib.Path) -> None:
    with pytest.raises(SettingError) as caught:
        NodeConfig(data_dir=tmp_path, threads=0).validated()
    assert (caught.value.key, caught.value.source) == ("threads", "NodeConfig")
    with pytest.raises(SettingError, match="heartbeat"):  # a field is checked under its key's name
        NodeConfig(data_dir=tmp_path, heartbeat_s=-1.0).validated()
    with pytest.raises(SettingError, match="not a multiaddr"):
        NodeConfig(data_dir=tmp_path, listen=("127.0.0.1:4001",)).validated()
    # the defaults pass the conversion they are checked by, and come back unchanged
    defaults = NodeConfig(data_dir=tmp_path)
    for key, info in SETTINGS.items():
        assert convert_setting(key, getattr(defaults, info.name), "test") == getattr(defaults, info.name)


def test_a_setting_error_is_a_config_error() -> None:
    assert issubclass(SettingError, ConfigError)  # callers that catch ConfigError keep working


# -- issue 14: streaming chunk sizes are node settings -----------------------------------------------


def _config(*flags: str) -> NodeConfig:
    args = _build_parser().parse_args(["node", "start", *flags])
    config, _ = load_settings(flags_from_namespace(args), {}, None)
    return config.validated()


def test_stream_chunk_flags_reach_the_coordinators_chunk_policy() -> None:
    config = _config("--stream-chunk-first", "2", "--stream-chunk-max", "256")
    policy = CoordinatorConfig(**config.coordinator_settings())
    assert (policy.stream_chunk_first, policy.stream_chunk_max) == (2, 256)
    chunks = ChunkPolicy(first=policy.stream_chunk_first, largest=policy.stream_chunk_max)
    assert [chunks.size(i) for i in range(9)] == [2, 4, 8, 16, 32, 64, 128, 256, 256]
    default = CoordinatorConfig(**_config().coordinator_settings())
    assert (default.stream_chunk_first, default.stream_chunk_max) == (1, 16)  # the core's own defaults


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ("--stream-chunk-first", "0"),
            r"invalid stream_chunk_first = 0 \(from flag\): expected an integer 1",
        ),
        (("--stream-chunk-max", "2048"), r"invalid stream_chunk_max = 2048 \(from flag\): .*1..1024"),
        (
            ("--stream-chunk-first", "128", "--stream-chunk-max", "64"),
            r"stream_chunk_first \(128\) is larger than stream_chunk_max \(64\)",
        ),
    ],
)
def test_bad_stream_chunk_sizes_are_refused_by_name(flags: tuple[str, ...], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        _config(*flags)
