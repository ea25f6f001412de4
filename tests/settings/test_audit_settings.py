"""The audit settings of ``node start`` reach the coordinator's policy, and bad values are refused."""

from __future__ import annotations

import pathlib

import pytest

from opengrid.cli.main import _build_parser
from opengrid.core.coordinator import CoordinatorConfig
from opengrid.errors import ConfigError
from opengrid.node.config import NodeConfig
from opengrid.settings import flags_from_namespace, load_settings


def _config(*flags: str) -> NodeConfig:
    args = _build_parser().parse_args(["node", "start", *flags])
    config, _ = load_settings(flags_from_namespace(args), {}, None)
    return config.validated()


def test_the_audit_flags_set_the_coordinators_audit_policy() -> None:
    config = _config(
        "--verify", "audit", "--auditors", "2", "--audit-full-rate", "0.3", "--audit-second-rate", "0.1"
    )
    policy = CoordinatorConfig(**config.coordinator_settings())
    assert (policy.verify, policy.auditors, policy.audit_full_rate, policy.audit_second_rate) == (
        "audit", 2, 0.3, 0.1,
    )  # fmt: skip
    plain = CoordinatorConfig.plain(**config.coordinator_settings())
    assert (plain.verify, plain.audit_full_rate) == ("audit", 0.3)
    # Audit is the default, with the policy of spec/verification.md §13.5; replicate is asked for by name.
    default = CoordinatorConfig(**_config().coordinator_settings())
    assert (default.verify, default.auditors, default.audit_full_rate, default.audit_second_rate) == (
        "audit", 1, 0.55, 0.02,
    )  # fmt: skip
    assert default == CoordinatorConfig(), "the node's defaults are the coordinator's"
    assert CoordinatorConfig(**_config("--verify", "replicate").coordinator_settings()).verify == "replicate"


def test_the_canary_audit_rate_reaches_the_coordinator() -> None:
    config = _config("--verify", "audit", "--audit-canary-rate", "0.05")
    assert CoordinatorConfig(**config.coordinator_settings()).audit_canary_rate == 0.05
    assert CoordinatorConfig(**_config().coordinator_settings()).audit_canary_rate == 0.0


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("--audit-full-rate", "1.5"), "audit_full_rate"),
        (("--audit-second-rate", "-0.1"), "audit_second_rate"),
        (("--auditors", "0"), "auditors"),
        (("--audit-canary-rate", "1.01"), "audit_canary_rate"),
    ],
)
def test_out_of_range_audit_settings_are_refused_by_name(flags: tuple[str, ...], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        _config(*flags)


def test_a_config_file_out_of_range_rate_names_the_file(tmp_path: pathlib.Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text("audit_full_rate = 2\n")
    with pytest.raises(ConfigError, match=r"audit_full_rate.*expected a number from 0 to 1"):
        load_settings({}, {}, file)
