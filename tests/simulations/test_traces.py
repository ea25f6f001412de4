"""Churn and workload replayed from CSV traces (simulations/traces.py), and the shipped example."""

from __future__ import annotations

import pathlib

import pytest
from conftest import small

from opengrid.core.events import WorkerRegistered
from opengrid.errors import ConfigError
from simulations.engine import NS_PER_S
from simulations.scenario import load
from simulations.simulation import Simulation, simulate
from simulations.traces import load_churn, load_workload

ROOT = pathlib.Path(__file__).resolve().parents[2]


def write(path: pathlib.Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_jobs_arrive_as_the_workload_trace_says(tmp_path: pathlib.Path) -> None:
    trace = write(
        tmp_path / "jobs.csv",
        "t,model,max_tokens\n3.5,other,12\n1.25,sim-model,20\n2,sim-model,9\n3.5,sim-model,30\n99,late,5\n",
    )
    result = simulate(small(duration_s=20, workload={"replicas": 2, "trace": trace}), 3)
    jobs = [(j.submit_ns, j.model, j.max_tokens) for j in result.jobs]
    assert jobs == [  # by time, ties in file order; the row after the end is never submitted
        (1_250_000_000, "sim-model", 20),
        (2 * NS_PER_S, "sim-model", 9),
        (3_500_000_000, "other", 12),
        (3_500_000_000, "sim-model", 30),
    ]
    # Every worker serves every model of the trace, and answers are checked against the job's model.
    assert [(j.outcome, j.correct) for j in result.jobs] == [("accepted", True)] * 4


def test_workers_come_and_go_as_the_churn_trace_says(tmp_path: pathlib.Path) -> None:
    trace = write(tmp_path / "churn.csv", "node,t_on,t_off\n0,0,5\n0,10,\n2,2,\n3,1,4\n")
    simulation = Simulation(small(workers=4, coordinators=1, churn={"trace": trace}), 3, trace=True)
    simulation.run()
    trace_of = simulation.coordinators[0].trace
    assert trace_of is not None
    registered: dict[str, list[float]] = {}
    for now_ns, event, _ in trace_of:
        if isinstance(event, WorkerRegistered):
            registered.setdefault(event.peer, []).append(now_ns / NS_PER_S)
    assert "w1" not in registered  # no row: never online
    assert min(registered["w0"]) < 1 and not any(5 < t < 10 for t in registered["w0"])
    assert max(registered["w0"]) > 25  # back from 10 s to the end
    assert min(registered["w2"]) >= 2 and min(registered["w3"]) >= 1 and max(registered["w3"]) < 5
    sessions = {w.peer: w.session for w in simulation.workers}
    assert sessions == {"w0": 3, "w1": 0, "w2": 1, "w3": 2}  # each on and each off counts one


def test_bad_traces_are_config_errors_naming_the_line(tmp_path: pathlib.Path) -> None:
    cases = {
        "node,t_on,t_off\n0,0,5\n7,1,2\n": "line 3: node 7 is not a worker",
        "node,t_on,t_off\n0,4,2\n": "line 2: t_off 2.0 is not after t_on 4.0",
        "node,t_on,t_off\n0,0,5\n0,3,\n": "sessions of node 0 overlap",
        "node,start\n0,1\n": "header must start with node,t_on,t_off",
    }
    for text, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_churn(pathlib.Path(write(tmp_path / "c.csv", text)), workers=4)
    with pytest.raises(ConfigError, match="line 2: max_tokens must be an integer"):
        load_workload(pathlib.Path(write(tmp_path / "w.csv", "t,model,max_tokens\n1,m,lots\n")))
    with pytest.raises(ConfigError, match="not found"):
        load_workload(tmp_path / "missing.csv")


def test_the_shipped_trace_scenario_replays_both_traces_deterministically() -> None:
    scenario = load(ROOT / "simulations" / "scenarios" / "trace-replay.toml")
    first, second = simulate(scenario, 1), simulate(scenario, 1)
    assert first.digest == second.digest
    assert {j.model for j in first.jobs} == {"sim-model", "sim-model-large"}
    assert len(first.jobs) == len(load_workload(pathlib.Path(scenario.workload.trace)))
    assert sum(1 for j in first.jobs if j.outcome == "accepted") > 0.9 * len(first.jobs)
