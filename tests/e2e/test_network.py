"""End to end: a coordinator and workers as separate OS processes on 127.0.0.1, driven through the SDK.

These start real ``opengrid node start`` processes (real libp2p hosts, real llama.cpp on the generated tiny
model, real SQLite ledgers) and check what a user relies on: verified answers identical to llama.cpp's
own, receipts that verify, points that add up, a cheater outvoted, a killed worker replaced.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import pathlib
import re
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence

import llama_cpp
import pytest
from opengrid_sdk import AsyncClient, Client, Completion, Preview

from opengrid.cli.demo import DemoNetwork, DemoNode, wait_for_workers
from opengrid.errors import (
    NoCapacityError,
    OpenGridError,
    TransportError,
    UnknownModelError,
    VerificationError,
)
from opengrid.net.keys import public_key_of

pytestmark = pytest.mark.slow

NETWORK = "opengrid-e2e"
PROMPTS = ("The capital of France is", "Volunteer computing means", "Once upon a time,")
MAX_TOKENS = 12


REPLICATE = ["--plain-verification", "--verify", "replicate"]
"""Exact replication by name (audit is the default): these tests are about replicas agreeing."""


def direct_llama(model: pathlib.Path, prompt: str, max_tokens: int) -> tuple[str, list[int]]:
    """What llama.cpp itself answers with the contract's settings (greedy, n_batch 512, no flash attn)."""
    llm = llama_cpp.Llama(
        model_path=str(model), n_ctx=2048, n_batch=512, flash_attn=False, seed=0, verbose=False
    )
    try:
        out = llm.create_completion(
            prompt, max_tokens=max_tokens, temperature=0.0, top_k=1, repeat_penalty=1.0
        )
        text = out["choices"][0]["text"]  # type: ignore[index]
        prompt_tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        tokens: list[int] = []
        for token in llm.generate(prompt_tokens, top_k=1, temp=0.0, repeat_penalty=1.0):
            tokens.append(token)
            if len(tokens) == max_tokens:
                break
        return text, tokens
    finally:
        llm.close()


@contextlib.contextmanager
def _kill_first_worker_that_starts(net: DemoNetwork) -> Iterator[list[DemoNode]]:
    """SIGKILL the first worker whose log says it started running a job (watched from a thread)."""
    killed: list[DemoNode] = []
    stop = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            for node in net.nodes:
                log_text = node.log_path.read_text(errors="replace") if node.role == "worker" else ""
                if re.search(r"running (sealed )?job", log_text):
                    node.process.send_signal(signal.SIGKILL)
                    node.process.wait()
                    killed.append(node)
                    return
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield killed
    finally:
        stop.set()
        watcher.join()
    assert killed, "no worker started the job"


def _start(
    base: pathlib.Path, model: pathlib.Path, honest: int, cheaters: int = 0, worker_args: Sequence[str] = ()
) -> tuple[DemoNetwork, str]:
    net = DemoNetwork(base, model=str(model), network=NETWORK)
    # Plain verification (uniform choice, no adaptive replication or canaries) keeps these tests about
    # replication itself; tests/e2e/test_adaptive_network.py covers the adaptive policy.
    coordinator = net.start("coordinator", "coordinator", extra_args=REPLICATE)
    net.wait_ready(coordinator)
    address = coordinator.addrs[0]
    workers = [
        net.start(f"worker-{i + 1}", "worker", bootstrap=address, cheater=i >= honest, extra_args=worker_args)
        for i in range(honest + cheaters)
    ]
    for worker in workers:
        net.wait_ready(worker)
    return net, address


@pytest.fixture(scope="module")
def mixed_network(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_path: pathlib.Path
) -> Iterator[tuple[DemoNetwork, Client]]:
    """Coordinator + 3 honest workers + 1 worker that returns wrong tokens."""
    net, address = _start(tmp_path_factory.mktemp("mixed"), tiny_model_path, honest=3, cheaters=1)
    try:
        with Client([address], network=NETWORK, timeout=120) as client:
            wait_for_workers(client, 4, timeout=60)
            yield net, client
    finally:
        net.stop()


def _by_name(net: DemoNetwork, name: str) -> DemoNode:
    return next(node for node in net.nodes if node.name == name)


def test_answers_are_verified_and_identical_to_llama_cpp(
    mixed_network: tuple[DemoNetwork, Client], tiny_model_path: pathlib.Path
) -> None:
    net, client = mixed_network
    cheater = _by_name(net, "worker-4").peer_id
    for prompt in PROMPTS:
        done = client.complete(prompt, model="tiny", max_tokens=MAX_TOKENS, replicas=2)
        text, tokens = direct_llama(tiny_model_path, prompt, MAX_TOKENS)
        assert done.text == text
        assert done.tokens == tokens
        assert len(done.workers) >= 2 and cheater not in done.workers
        done.receipt.verify(tokens=done.tokens, text=done.text, job_id=done.job_id)
        with pytest.raises(VerificationError):
            done.receipt.verify(tokens=done.tokens, text=done.text + "!", job_id=done.job_id)


def test_streaming_yields_verified_text_then_the_completion(
    mixed_network: tuple[DemoNetwork, Client],
) -> None:
    _, client = mixed_network
    items = list(client.stream("Streaming is", model="tiny", max_tokens=32, replicas=2, previews=True))
    *streamed, done = items
    assert isinstance(done, Completion)
    verified = [item for item in streamed if isinstance(item, str)]
    previews = [item for item in streamed if isinstance(item, Preview)]
    # Joined, the verified text is the answer (that it comes while generating is timed in
    # tests/e2e/test_openai_api.py); the previews are asked for, typed apart, and never in that text.
    assert verified and "".join(verified) == done.text
    assert previews and all(isinstance(p.text, str) for p in previews)
    done.receipt.verify(tokens=done.tokens, text=done.text, job_id=done.job_id)
    plain = list(client.stream("Streaming is", model="tiny", max_tokens=8, replicas=2))
    assert not any(isinstance(item, Preview) for item in plain)  # previews only when asked


def test_the_async_client_completes_and_streams(mixed_network: tuple[DemoNetwork, Client]) -> None:
    net, _ = mixed_network
    address = _by_name(net, "coordinator").addrs[0]

    async def scenario() -> tuple[Completion, list[str | Completion], int]:
        async with await AsyncClient.connect([address], network=NETWORK) as aclient:
            done, streamed = await asyncio.gather(
                aclient.complete("Async one", model="tiny", max_tokens=8),
                _collect(aclient.stream("Async two", model="tiny", max_tokens=8)),
            )
            status = await aclient.status()
            return done, streamed, len(status.workers)

    done, streamed, workers = asyncio.run(scenario())
    assert len(done.tokens) == 8 and len(done.workers) == 2
    assert isinstance(streamed[-1], Completion) and "".join(map(str, streamed[:-1])) == streamed[-1].text
    assert workers == 4


async def _collect(items: AsyncIterator[str | Completion]) -> list[str | Completion]:
    return [item async for item in items]


def test_the_cheater_is_outvoted_and_earns_nothing(mixed_network: tuple[DemoNetwork, Client]) -> None:
    net, client = mixed_network
    cheater = _by_name(net, "worker-4")
    honest = {n.peer_id for n in net.nodes if n.role == "worker" and not n.cheater}
    # Replicas are picked at random (1 in 2 jobs includes the cheater here); once picked, its output
    # disagrees, a third worker is asked, and the majority outvotes it. Bounded: P(never picked) ~ 1e-6.
    outvoted = None
    for attempt in range(20):
        done = client.complete(f"Cheat test {attempt}", model="tiny", max_tokens=MAX_TOKENS, replicas=2)
        assert set(done.workers) <= honest
        assert public_key_of(cheater.peer_id) not in done.receipt.credits
        if cheater.peer_id in done.dissenters:
            outvoted = done
            break
    assert outvoted is not None, "the cheater was never picked in 20 jobs"
    assert len(outvoted.workers) == 2
    assert public_key_of(cheater.peer_id) in outvoted.receipt.receipt.dissenters
    assert client.status(cheater.addrs[0]).points == 0


def test_without_an_honest_majority_the_job_fails(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path
) -> None:
    net, address = _start(tmp_path, tiny_model_path, honest=1, cheaters=1)
    try:
        with Client([address], network=NETWORK, timeout=120) as client:
            wait_for_workers(client, 2, timeout=60)
            with pytest.raises(VerificationError, match="quorum"):
                client.complete("Who is right?", model="tiny", max_tokens=MAX_TOKENS, replicas=2)
            assert all(points == 0 for points in client.status().balances.values())
    finally:
        net.stop()


def test_points_add_up_in_every_ledger(mixed_network: tuple[DemoNetwork, Client]) -> None:
    net, client = mixed_network
    before = client.status().balances
    jobs: list[Completion] = [
        client.complete(f"Job number {i}", model="tiny", max_tokens=MAX_TOKENS, replicas=2) for i in range(3)
    ]
    expected: collections.Counter[str] = collections.Counter({k: v for k, v in before.items()})
    for done in jobs:
        for key, points in done.receipt.credits.items():
            assert points == len(done.tokens)
            expected[key.hex()] += points
    coordinator_view = client.status().balances
    assert coordinator_view == dict(expected)
    # Each worker's own ledger (fed by receipts the coordinator pushes) agrees with the coordinator's.
    deadline = time.monotonic() + 15
    for node in net.nodes:
        if node.role != "worker":
            continue
        while True:
            status = client.status(node.addrs[0])
            if (
                status.points == coordinator_view.get(status.public_key.hex(), 0)
                or time.monotonic() > deadline
            ):
                break
            time.sleep(0.1)
        assert status.points == coordinator_view.get(status.public_key.hex(), 0), node.name
        # The node's history is its signed receipts, verified by the client, and it adds up to its points.
        history = client.history(node.addrs[0], limit=1024)
        assert sum(item.points for item in history) == status.points
        assert all(item.outcome in ("paid", "outvoted") and item.issued_at_ms > 0 for item in history)
        if node.cheater:
            assert {item.outcome for item in history} <= {"outvoted"}


def test_unknown_model_and_too_many_replicas_are_typed_errors(
    mixed_network: tuple[DemoNetwork, Client],
) -> None:
    _, client = mixed_network
    with pytest.raises(UnknownModelError, match="no-such-model"):
        client.complete("hi", model="no-such-model", max_tokens=4)
    with pytest.raises(NoCapacityError, match="replicas"):
        client.complete("hi", model="tiny", max_tokens=4, replicas=8)


def test_a_worker_killed_mid_job_is_replaced(tmp_path: pathlib.Path, tiny_model_path: pathlib.Path) -> None:
    net, address = _start(tmp_path, tiny_model_path, honest=3, worker_args=["--max-tokens-per-job", "2000"])
    try:
        with Client([address], network=NETWORK, timeout=120) as client:
            wait_for_workers(client, 3, timeout=60)
            prompt, max_tokens = "A long story:", 1500
            with _kill_first_worker_that_starts(net) as killed:
                done = client.complete(prompt, model="tiny", max_tokens=max_tokens, replicas=2)
            victim = killed[0]
            assert victim.process.returncode == -signal.SIGKILL
            assert victim.peer_id in done.failed
            assert victim.peer_id not in done.workers and len(done.workers) == 2
            text, tokens = direct_llama(tiny_model_path, prompt, max_tokens)
            assert (done.text, done.tokens) == (text, tokens)
    finally:
        net.stop()


def test_workers_driving_llama_cpp_servers_give_llama_cpps_answer(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path
) -> None:
    """The HTTP engine (it drives vLLM on GPUs) behind real nodes, over managed llama_cpp.server servers."""
    servers_before = _model_servers()
    net, address = _start(tmp_path, tiny_model_path, honest=2, worker_args=["--engine", "http"])
    try:
        with Client([address], network=NETWORK, timeout=120) as client:
            wait_for_workers(client, 2, timeout=90)
            prompt = "Servers are"
            done = client.complete(prompt, model="tiny", max_tokens=MAX_TOKENS, replicas=2)
            assert (done.text, done.tokens) == direct_llama(tiny_model_path, prompt, MAX_TOKENS)
            assert len(done.workers) == 2
    finally:
        net.stop()
    assert _model_servers() <= servers_before, "a model server outlived its node"


def _model_servers() -> set[int]:
    """PIDs of llama_cpp.server processes running on this machine."""
    import subprocess

    lines = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return {int(line.split()[0]) for line in lines.splitlines()[1:] if "llama_cpp.server" in line}


def test_a_client_that_gives_up_cancels_the_job_and_stops_the_workers(tmp_path: pathlib.Path) -> None:
    """Cancel by walking away: the SDK's timeout closes its stream; the coordinator cancels the job and
    its replicas; each worker stops generating mid-way (SmolLM2 counts on for ~18 s: 1000 tokens)."""
    net = DemoNetwork(tmp_path, model="smollm2-135m-instruct", network=NETWORK)
    try:
        coordinator = net.start("coordinator", "coordinator", extra_args=REPLICATE)
        net.wait_ready(coordinator)
        workers = [net.start(f"worker-{i}", "worker", bootstrap=coordinator.addrs[0]) for i in (1, 2)]
        for worker in workers:
            net.wait_ready(worker)
        with Client([coordinator.addrs[0]], network=NETWORK, timeout=120) as patient:
            wait_for_workers(patient, 2, timeout=60)
            entries_before = patient.status().ledger_entries
        with Client([coordinator.addrs[0]], network=NETWORK, timeout=2.0) as impatient:
            with pytest.raises(TransportError, match="no answer"):
                impatient.complete("1, 2, 3, 4, 5, 6, 7, 8,", max_tokens=1000, replicas=2, sealed=False)
        deadline = time.monotonic() + 20
        logs: list[str] = []
        while time.monotonic() < deadline:
            logs = [w.log_path.read_text(errors="replace") for w in workers]
            if all("abandoned by the coordinator" in text for text in logs):
                break
            time.sleep(0.1)
        assert all("abandoned by the coordinator" in text for text in logs), logs
        assert "went away: cancelling it" in coordinator.log_path.read_text(errors="replace")
        with Client([coordinator.addrs[0]], network=NETWORK) as patient:
            assert patient.status().ledger_entries == entries_before  # nothing was credited
    finally:
        net.stop()


def test_sigterm_lets_a_worker_finish_its_job_then_stop(tmp_path: pathlib.Path) -> None:
    """A volunteer stopping their node mid-job does not waste the job: it finishes, is paid, then exits."""
    net = DemoNetwork(tmp_path, model="smollm2-135m-instruct", network=NETWORK)
    try:
        coordinator = net.start("coordinator", "coordinator", extra_args=["--plain-verification"])
        net.wait_ready(coordinator)
        workers = [net.start(f"worker-{i}", "worker", bootstrap=coordinator.addrs[0]) for i in (1, 2)]
        for worker in workers:
            net.wait_ready(worker)
        stopped: list[DemoNode] = []

        def stop_first_runner() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not stopped:
                for worker in workers:
                    if "running job" in worker.log_path.read_text(errors="replace"):
                        worker.process.send_signal(signal.SIGTERM)
                        stopped.append(worker)
                        return
                time.sleep(0.01)

        with Client([coordinator.addrs[0]], network=NETWORK, timeout=120) as client:
            wait_for_workers(client, 2, timeout=60)
            watcher = threading.Thread(target=stop_first_runner, daemon=True)
            watcher.start()
            done = client.complete("Tell a story.", max_tokens=150, replicas=2, sealed=False)
            watcher.join()
        assert stopped, "no worker started the job"
        assert stopped[0].peer_id in done.workers  # it finished the job and was credited
        assert stopped[0].process.wait(timeout=30) == 0
        log = stopped[0].log_path.read_text(errors="replace")
        assert "taking no new work" in log and "stopped cleanly" in log
    finally:
        net.stop()


def test_a_volunteer_spends_its_points_on_a_sealed_job(mixed_network: tuple[DemoNetwork, Client]) -> None:
    """A worker's own identity pays: HOLD at submission, SETTLE to the agreeing workers on acceptance."""
    net, client = mixed_network
    payer = _by_name(net, "worker-1")
    payer_key = public_key_of(payer.peer_id)
    cost = 8 * 2  # job_cost(max_tokens=8, replicas=2)
    for i in range(20):  # earn enough first (bounded)
        if client.status().balances.get(payer_key.hex(), 0) >= cost:
            break
        client.complete(f"Earning {i}", model="tiny", max_tokens=8, replicas=4, sealed=False)
    seed = (payer.data_dir / "identity.key").read_bytes()
    with Client([_by_name(net, "coordinator").addrs[0]], network=NETWORK, identity_seed=seed) as paying:
        before = paying.status().balances
        done = paying.complete("Paid for", model="tiny", max_tokens=8, replicas=2)
        after = paying.status().balances
    assert done.sealed and paying.account == payer_key
    n = len(done.tokens)
    expected = {
        key.hex(): before.get(key.hex(), 0) + points + n for key, points in done.receipt.credits.items()
    }
    expected[payer_key.hex()] = expected.get(payer_key.hex(), before.get(payer_key.hex(), 0)) - n * len(
        done.receipt.credits
    )
    for account, balance in expected.items():
        assert after.get(account, 0) == balance, account
    # Ledger sync brings the payer's HOLD and the SETTLE into every worker's own ledger: all agree.
    deadline = time.monotonic() + 30
    while True:
        views = {n.name: client.status(n.addrs[0]) for n in net.nodes if n.role == "worker"}
        coordinator_view = client.status().balances
        if all(s.points == coordinator_view.get(s.public_key.hex(), 0) for s in views.values()):
            break
        assert time.monotonic() < deadline, {
            k: (v.points, coordinator_view.get(v.public_key.hex())) for k, v in views.items()
        }
        time.sleep(0.2)


def test_a_coordinator_restart_does_not_lose_an_accepted_job(tmp_path: pathlib.Path) -> None:
    """SIGKILL the coordinator mid-job; restarted on the same data dir and port it resumes the job,
    and the client that retries with the same job id gets the verified answer."""
    import socket

    from opengrid.wire.messages import JobAccepted, SubmitJob

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    listen = ["--plain-verification", "--listen", f"/ip4/127.0.0.1/tcp/{port}"]
    net = DemoNetwork(tmp_path, model="smollm2-135m-instruct", network=NETWORK)
    try:
        coordinator = net.start("coordinator", "coordinator", extra_args=listen)
        net.wait_ready(coordinator)
        address = f"/ip4/127.0.0.1/tcp/{port}/p2p/{coordinator.peer_id}"
        workers = [net.start(f"worker-{i}", "worker", bootstrap=address) for i in (1, 2)]
        for worker in workers:
            net.wait_ready(worker)
        # 120 tokens: a second or more of counting even on a quiet machine (the kill below comes within
        # ~10 ms of the job starting); each token more costs three times over (the resumed job on two
        # workers, then llama.cpp's own answer, generated twice by direct_llama).
        job = SubmitJob(job_id=b"\x42" * 16, model="smollm2-135m-instruct", prompt="1, 2, 3,", max_tokens=120)
        with Client([address], network=NETWORK, timeout=120) as client:
            wait_for_workers(client, 2, timeout=60)
            lost: list[BaseException] = []

            def submit() -> None:
                try:
                    client._call(lambda: client._request(address, job))  # a raw SubmitJob with our job id
                except BaseException as exc:  # the coordinator is killed under it
                    lost.append(exc)

            first = threading.Thread(target=submit, daemon=True)
            first.start()
            deadline = time.monotonic() + 60
            while not any("running job" in w.log_path.read_text(errors="replace") for w in workers):
                assert time.monotonic() < deadline, "no worker started the job"
                time.sleep(0.01)
            coordinator.process.send_signal(signal.SIGKILL)
            coordinator.process.wait()
            first.join(timeout=30)
            assert lost and isinstance(lost[0], OpenGridError)

        restarted = net.start("coordinator", "coordinator", extra_args=listen)
        net.wait_ready(restarted)
        assert restarted.peer_id == coordinator.peer_id
        with Client([address], network=NETWORK, timeout=120) as client:
            _, reply = client._call(lambda: client._request(address, job))  # the client retries
        assert isinstance(reply, JobAccepted) and reply.job_id == job.job_id
        text, _ = direct_llama_model("smollm2-135m-instruct", job.prompt, job.max_tokens)
        assert reply.text == text
        assert "resuming 1 job(s)" in restarted.log_path.read_text(errors="replace")
    finally:
        net.stop()


def direct_llama_model(name: str, prompt: str, max_tokens: int) -> tuple[str, list[int]]:
    from opengrid.engines import resolve_model

    return direct_llama(resolve_model(name).path, prompt, max_tokens)
