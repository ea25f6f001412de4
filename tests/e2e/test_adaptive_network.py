"""Issue 4 on a real network: adaptive replication, reputation and canaries against cheaters.

Five workers as separate processes: two honest, one lazy (random tokens), one model-swapped (a different
tiny model behind the announced one) and one that is SIGKILLed in the middle of a job. The coordinator
runs its default policy (adaptive replication, reputation-weighted choice, canaries).
"""

from __future__ import annotations

import pathlib
import re
import signal
import threading
import time

import pytest
from opengrid_sdk import Client, Completion

from opengrid.cli.demo import DemoNetwork, wait_for_workers
from opengrid.errors import VerificationError
from opengrid.net.keys import public_key_of
from tests.e2e.test_network import direct_llama

pytestmark = pytest.mark.slow
NETWORK = "opengrid-adaptive"
MAX_TOKENS = 6
JOBS = 48


def _kill_when_it_runs_a_job(net: DemoNetwork, name: str, stop: threading.Event) -> threading.Thread:
    node = next(n for n in net.nodes if n.name == name)

    def watch() -> None:
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            if re.search(r"running (sealed )?job", node.log_path.read_text(errors="replace")):
                node.process.send_signal(signal.SIGKILL)
                node.process.wait()
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_cheaters_never_reach_the_client_lose_reputation_and_replication_falls(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path
) -> None:
    net = DemoNetwork(tmp_path, model=str(tiny_model_path), network=NETWORK)
    stop = threading.Event()
    try:
        # Adaptive replication is what this measures: replicate by name (audit is the default).
        coordinator = net.start("coordinator", "coordinator", extra_args=["--verify", "replicate"])
        net.wait_ready(coordinator)
        address = coordinator.addrs[0]
        roles = {"honest-1": None, "honest-2": None, "lazy": "lazy", "swapped": "model-swap", "dying": None}
        for name, adversary in roles.items():
            extra = ["--adversary", adversary] if adversary else []
            net.wait_ready(net.start(name, "worker", bootstrap=address, extra_args=extra))
        peer = {n.name: n.peer_id for n in net.nodes}
        with Client([address], network=NETWORK, timeout=120) as client:
            wait_for_workers(client, 5, timeout=60)
            watcher = _kill_when_it_runs_a_job(net, "dying", stop)
            answers: list[Completion] = []
            refused = 0
            for i in range(JOBS):
                prompt = f"Job {i} says"
                try:
                    done = client.complete(
                        prompt, model="tiny", max_tokens=MAX_TOKENS, replicas=2, sealed=False
                    )
                except VerificationError:
                    refused += 1  # no honest majority could be formed: refused, never a wrong answer
                    continue
                assert (done.text, done.tokens) == direct_llama(tiny_model_path, prompt, MAX_TOKENS)
                assert not {peer["lazy"], peer["swapped"]} & set(done.workers)
                answers.append(done)
            stop.set()
            watcher.join()
            status = client.status()
        assert next(n for n in net.nodes if n.name == "dying").process.returncode == -signal.SIGKILL
        # A job that draws a cheater while only 2 honest workers are left (after "dying" died) reaches
        # 2-1-1 at most over the 4 workers: no quorum, refused (never a wrong answer), and nobody is
        # outvoted, so the cheater's reputation does not fall on that job. How many such draws happen is
        # chance: 1-9 of 48 in 8 runs on the 2-core machine (two CI runs at 9). A broken reputation would
        # refuse most jobs (~5 in 6 draw a cheater).
        assert refused <= JOBS // 4 and len(answers) >= JOBS - JOBS // 4

        balances = status.balances
        for cheater in ("lazy", "swapped"):
            assert balances.get(public_key_of(peer[cheater]).hex(), 0) == 0, cheater
        assert all(balances.get(public_key_of(peer[h]).hex(), 0) > 0 for h in ("honest-1", "honest-2"))

        # Replicas per accepted job fall once honest workers have long valid streaks (BOINC 1/n).
        def replicas(done: Completion) -> int:
            return len(done.workers) + len(done.dissenters) + len(done.failed)

        early = [replicas(d) for d in answers[:10]]
        late = [replicas(d) for d in answers[-12:]]
        assert sum(late) / len(late) < sum(early) / len(early)
        assert any(len(d.workers) == 1 for d in answers[-12:]), "no trusted single result after the streaks"
    finally:
        stop.set()
        net.stop()
