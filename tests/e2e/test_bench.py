"""``opengrid bench run`` (issue 19) through the real command line, against real nodes on 127.0.0.1: a
coordinator and two workers running the tiny model in llama.cpp. The command line runs in this process
(fixture ``cli``, on a thread beside the nodes' trio loop), except for Ctrl-C, which needs a process.

- five prompts (one sampled, one open, one sealed by the file's default) come back as five verified
  records, each naming the two workers the receipt credits, and the summary table prints;
- a model no worker serves is that job's failure, with the coordinator's reason, beside a job that
  verified: exit status 1, not a crash;
- a malformed line is refused before anything is sent, naming its line: exit status 2;
- Ctrl-C mid-run stops the run within seconds (queued jobs are dropped, those in flight cancelled).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import trio

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from tests.e2e.conftest import Cli
from tests.node.workers import start_workers
from tests.waiting import until

NETWORK = "bench-run-test"
PEER = "12D3KooWN5TM5CbW1QRMfb4Rui58doGzeD2AvdHtagrxTSGtCyCo"


def _write_jsonl(path: pathlib.Path, items: list[dict[str, object]]) -> pathlib.Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return path


PROMPTS = [
    {"prompt": "Once upon a time", "model": "tiny", "max_tokens": 8},
    {"prompt": "The cat sat", "model": "tiny", "max_tokens": 6, "sealed": False},
    {"prompt": "Roll a die:", "model": "tiny", "max_tokens": 6, "temperature": 0.8, "top_p": 0.9, "seed": 7},
    {"prompt": "One, two,", "model": "tiny", "max_tokens": 4},
    {"prompt": "Hello", "max_tokens": 5},  # model from --model
]


async def test_a_batch_of_prompts_is_verified_job_by_job_and_exported(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, cli: Cli
) -> None:
    config = NodeConfig(data_dir=tmp_path / "c", role="coordinator", network=NETWORK, heartbeat_s=0.5)
    coordinator = Node(config, coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.5))
    prompts = _write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    mixed = _write_jsonl(
        tmp_path / "mixed.jsonl",
        [{"prompt": "Hi", "model": "tiny", "max_tokens": 4}, {"prompt": "Hi", "model": "no-such-model"}],
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None
        address = coordinator.host.addrs()[0]
        workers = await start_workers(
            nursery, tmp_path, ("w1", "w2"), bootstrap=address, model_path=tiny_model_path,
            network=NETWORK, heartbeat_s=0.5,
        )  # fmt: skip
        common = ["--bootstrap", address, "--network", NETWORK, "--timeout", "120"]
        good = await trio.to_thread.run_sync(
            lambda: cli(
                "bench",
                "run",
                str(prompts),
                *common,
                "--model",
                "tiny",
                "--concurrency",
                "2",
                "--json",
                str(tmp_path / "out.json"),
            )
        )
        failing = await trio.to_thread.run_sync(
            lambda: cli("bench", "run", str(mixed), *common, "--json", "-", "--quiet")
        )
        peer_ids = sorted(w.host.peer_id for w in workers if w.host is not None)
        nursery.cancel_scope.cancel()

    assert good.returncode == 0, good.stdout + good.stderr
    assert "Traceback" not in good.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    jobs = report["jobs"]
    assert [job["line"] for job in jobs] == [1, 2, 3, 4, 5]
    for job, asked in zip(jobs, PROMPTS, strict=True):
        assert job["ok"] and job["verification"] == "verified", job
        assert sorted(job["workers"]) == peer_ids  # both replicas agreed and the receipt credits both
        assert job["replicas"] == 2 and job["model"] == "tiny"
        assert 1 <= job["tokens"] <= asked["max_tokens"] and job["latency_s"] > 0 and job["tokens_per_s"] > 0
        assert len(job["job_id"]) == 32 and job["receipt"]
    assert [job["sealed"] for job in jobs] == [True, False, True, True, True]
    assert jobs[2]["temperature"] == 0.8 and jobs[2]["top_p"] == 0.9 and jobs[2]["seed"] == 7
    assert len({job["job_id"] for job in jobs}) == 5
    summary = report["summary"]
    assert summary["jobs"] == 5 and summary["ok"] == 5 and summary["failed"] == 0
    assert summary["tokens"] == sum(job["tokens"] for job in jobs)
    assert 0 < summary["p50_latency_s"] <= summary["p95_latency_s"] == max(j["latency_s"] for j in jobs)
    assert "summary" in good.stdout and "p95 s" in good.stdout  # the table printed

    assert failing.returncode == 1, failing.stdout + failing.stderr
    assert "Traceback" not in failing.stderr
    mixed_report = json.loads(failing.stdout)
    ok, unknown = mixed_report["jobs"]
    assert ok["ok"] and sorted(ok["workers"]) == peer_ids
    assert not unknown["ok"] and unknown["verification"] == "failed" and unknown["line"] == 2
    assert unknown["error_type"] == "UnknownModelError" and "no-such-model" in unknown["error"]
    assert mixed_report["summary"]["ok"] == 1 and mixed_report["summary"]["failed"] == 1


def test_a_malformed_line_is_refused_with_its_number_before_anything_is_sent(
    tmp_path: pathlib.Path, cli: Cli
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n\n{"prompt": "broken"\n', encoding="utf-8")
    out = tmp_path / "out.json"
    # Nothing listens on port 9: a run that sent anything would report a transport error instead.
    nowhere = f"/ip4/127.0.0.1/tcp/9/p2p/{PEER}"
    result = cli("bench", "run", str(bad), "--bootstrap", nowhere, "--json", str(out))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"{bad} line 3: not JSON" in result.stderr
    assert not out.exists()
    for line, problem in [
        ('{"prompt": "x", "temperature": -1}', "temperature"),
        ('{"prompt": "x", "max_tokens": 0}', "'max_tokens' must be a whole number 1..8192, got 0"),
        ('{"prompt": "x", "max_tokens": 9000}', "'max_tokens' must be a whole number 1..8192, got 9000"),
        ('{"prompt": "x", "replicas": 9}', "'replicas' must be a whole number 1..8, got 9"),
        ('{"prompt": "x", "colour": "red"}', "unknown key(s) 'colour'"),
        ('["prompt"]', "expected a JSON object"),
    ]:
        bad.write_text('{"prompt": "fine"}\n' + line + "\n", encoding="utf-8")
        result = cli("bench", "run", str(bad), "--bootstrap", nowhere)
        assert result.returncode == 2 and "line 2: " in result.stderr and problem in result.stderr, (
            result.stderr
        )


@pytest.mark.slow  # Ctrl-C to a bench process
async def test_ctrl_c_stops_a_run_at_once(tmp_path: pathlib.Path, tiny_model_path: pathlib.Path) -> None:
    config = NodeConfig(data_dir=tmp_path / "c", role="coordinator", network=NETWORK, heartbeat_s=0.5)
    coordinator = Node(config, coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.5))
    many = _write_jsonl(
        tmp_path / "many.jsonl", [{"prompt": f"Story {i}:", "max_tokens": 32} for i in range(500)]
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None and coordinator.ledger is not None
        address, ledger = coordinator.host.addrs()[0], coordinator.ledger
        await start_workers(
            nursery, tmp_path, ("w1", "w2"), bootstrap=address, model_path=tiny_model_path,
            network=NETWORK, heartbeat_s=0.5,
        )  # fmt: skip
        before = len(ledger)
        env = dict(os.environ, HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache"))
        argv = ["bench", "run", str(many), "--bootstrap", address, "--network", NETWORK, "--model", "tiny"]
        process = subprocess.Popen(
            [sys.executable, "-m", "opengrid", *argv, "--json", str(tmp_path / "out.json")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            await until(lambda: len(ledger) > before, 60, lambda: f"{len(ledger)} entries")  # jobs run
            sent = time.monotonic()
            process.send_signal(signal.SIGINT)
            _, stderr = await trio.to_thread.run_sync(lambda: process.communicate(timeout=60))
            took = time.monotonic() - sent
        finally:
            process.kill()
        done = len(ledger) - before
        nursery.cancel_scope.cancel()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert took < 15, f"stopped {took:.1f} s after Ctrl-C"
    assert done < 500, "every job ran: Ctrl-C did not stop the queue"
    assert not (tmp_path / "out.json").exists()
