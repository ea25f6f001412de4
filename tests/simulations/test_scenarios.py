"""Every shipped scenario parses, and overrides reach the right keys."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.errors import ConfigError
from simulations.scenario import load, override, parse, typed_value

FOLDER = pathlib.Path(__file__).resolve().parents[2] / "simulations" / "scenarios"
KNOWN = {f.name for f in dataclasses.fields(CoordinatorConfig)}


@pytest.mark.parametrize("path", sorted(FOLDER.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_scenarios_parse(path: pathlib.Path) -> None:
    scenario = load(path)
    assert scenario.name == path.stem
    assert set(scenario.coordinator) <= KNOWN
    assert path.stem in (FOLDER.parent / "README.md").read_text()


@pytest.mark.parametrize(
    ("toml", "where"),
    [
        ("worekrs = 5\n", "scenario"),
        ("[coordinator]\nreplica_timout_s = 30\n", "[coordinator]"),
        ("[workload]\nrate = 2.0\n", "[workload]"),
        ("[network]\nlos = 0.1\n", "[network]"),
        ("[[network.partitions]]\nstart_s = 1\nend_s = 2\nfrac = 0.5\n", "[[network.partitions]] #0"),
        ("[churn.on]\nmean = 60\n", "[churn.on]"),
        ("[[hardware]]\nname = 'cpu'\ntps = 5\n", "[[hardware]] #0"),
        ("[[adversaries]]\nkind = 'lazy'\nfractoin = 0.2\n", "[[adversaries]] #0"),
    ],
)
def test_an_unknown_key_in_a_scenario_file_is_a_config_error_naming_it(
    tmp_path: pathlib.Path, toml: str, where: str
) -> None:
    path = tmp_path / "typo.toml"
    path.write_text(toml)
    key = toml.splitlines()[-1].split(" =")[0]
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert str(path) in message and where in message and f"unknown key(s) [{key!r}]" in message, message
    assert "Allowed:" in message


def test_an_unknown_key_close_to_a_known_one_is_named_with_the_likely_fix(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text("[coordinator]\nreplica_timout_s = 30\n")
    with pytest.raises(ConfigError, match="did you mean 'replica_timeout_s'"):
        load(path)


def test_a_coordinator_table_that_is_not_a_table_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"scenario: coordinator = 5: expected a table, got `int`"):
        parse({"coordinator": 5})


def test_overrides_set_dotted_keys_and_adversary_fractions() -> None:
    raw = override({"workers": 5}, "workload.rate_per_s", 9.0)
    raw = override(raw, "lazy_fraction", 0.2)
    raw = override(raw, "lazy_fraction", 0.3)
    scenario = parse(raw)
    assert scenario.workload.rate_per_s == 9.0
    assert [(a.kind, a.fraction) for a in scenario.adversaries] == [("lazy", 0.3)]


def test_bad_values_name_the_key_to_fix() -> None:
    with pytest.raises(ConfigError, match="adversary kind"):
        parse({"adversaries": [{"kind": "gremlin"}]})
    with pytest.raises(ConfigError, match=r"\[coordinator\]: unknown key\(s\) \['nonsense'\]"):
        parse({"coordinator": {"nonsense": 1}})


def test_overrides_set_a_key_of_every_adversary_population_of_a_kind() -> None:
    raw = {"adversaries": [{"kind": "intermittent", "fraction": 0.2}, {"kind": "lazy", "fraction": 0.1}]}
    scenario = parse(override(raw, "adversaries.intermittent.cheat_rate", 0.2))
    assert [(a.kind, a.cheat_rate) for a in scenario.adversaries] == [("intermittent", 0.2), ("lazy", 0.05)]
    with pytest.raises(ConfigError, match="no 'audit_cartel' adversaries"):
        override(raw, "adversaries.audit_cartel.cheat_rate", 0.2)
    with pytest.raises(ConfigError, match=r"#0: cheat_rate = 1.5: expected `float` <= 1.0"):
        parse({"adversaries": [{"kind": "intermittent", "fraction": 0.2, "cheat_rate": 1.5}]})
    with pytest.raises(ConfigError, match="audit_cost"):
        parse({"audit_cost": 0})


def test_each_value_is_checked_by_its_type_naming_table_and_key() -> None:
    cases = {
        "workers": ({"workers": 0}, "scenario: workers = 0: expected `int` >= 1"),
        "rate": ({"workload": {"rate_per_s": -1}}, "[workload]: rate_per_s = -1: expected `float` > 0.0"),
        "choice": ({"churn": {"on": {"dist": "pareto"}}}, "[churn.on]: dist = 'pareto': invalid enum value"),
        "type": (
            {"hardware": [{"share": "half"}]},
            "[[hardware]] #0: share = 'half': expected `float`, got `str`",
        ),
        "toml types": ({"workers": "5"}, "scenario: workers = '5': expected `int`, got `str`"),
    }
    for name, (raw, message) in cases.items():
        with pytest.raises(ConfigError) as caught:
            parse(raw)
        assert str(caught.value).startswith(message), (name, str(caught.value))


def test_set_text_becomes_the_keys_type() -> None:
    assert typed_value("workers", "500") == 500
    assert typed_value("workload.rate_per_s", "2") == 2.0
    assert typed_value("name", "2024") == "2024"  # a text key keeps the text (a guess would give an int)
    assert typed_value("churn.enabled", "true") is True
    assert typed_value("network.last_mile_ms", "[2, 30]") == (2.0, 30.0)
    assert typed_value("lazy_fraction", "0.2") == 0.2
    assert typed_value("adversaries.intermittent.cheat_tail", "3") == 3
    assert typed_value("coordinator.replica_timeout_s", "30") == 30.0
    assert typed_value("expect.overhead", "1.5") == 1.5  # a free-form table: read as TOML would
    with pytest.raises(ConfigError, match=r"--set workers=many: expected `int`, got `str`"):
        typed_value("workers", "many")
    with pytest.raises(ConfigError, match=r"--set real_fraction=2: expected `float` <= 1.0"):
        typed_value("real_fraction", "2")
    scenario = parse(
        override(override({}, "name", typed_value("name", "2024")), "workers", typed_value("workers", "7"))
    )
    assert (scenario.name, scenario.workers) == ("2024", 7)
