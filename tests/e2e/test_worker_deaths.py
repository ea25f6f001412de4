"""A job survives worker deaths (issue 16), against real node processes and the tiny model.

A sealed job may only run on the workers its prompt was sealed to. Here most of them are SIGKILLed
between the quote and the submission — dead, but not yet known to be by the coordinator — and the client
still gets a verified answer: the coordinator ends the job ``no_capacity`` naming them, and the SDK quotes,
seals and submits again under a fresh job id (spec/sealed-mode.md §5). Paid jobs too: the first HOLD is
refunded and the next one is the next link of the payer's chain.

The kill is timed by wrapping the SDK's ``check_quote`` (the real one still runs): it is the moment the
client knows which workers it is about to seal to and has not submitted yet.
"""

from __future__ import annotations

import asyncio
import pathlib
import signal
import time
from collections.abc import Iterator

import pytest
from opengrid_sdk import AsyncClient, Client, Completion
from opengrid_sdk import client as client_module
from opengrid_sdk.sealed import check_quote

from opengrid.cli.demo import DemoNetwork, DemoNode, wait_for_workers
from opengrid.errors import NoCapacityError
from opengrid.net.keys import public_key_of
from opengrid.wire.messages import Quote
from tests.e2e.test_network import direct_llama

pytestmark = pytest.mark.slow
NETWORK = "opengrid-deaths"
MAX_TOKENS = 8


class Killer:
    """Wraps ``check_quote``: on the next quote, SIGKILL ``count`` of the quoted workers (never one of
    ``spare``) before the client seals to them."""

    def __init__(self, workers: list[DemoNode]) -> None:
        self.by_peer = {w.peer_id: w for w in workers}
        self.count = 0
        self.spare: set[str] = set()
        self.killed: list[DemoNode] = []
        self.quotes = 0

    def __call__(
        self, quote: Quote, *, trusted: list[str] | None, exposure: int | None = None, replicas: int = 1
    ) -> list[str]:
        peers = check_quote(quote, trusted=trusted, exposure=exposure, replicas=replicas)
        self.quotes += 1
        victims = [p for p in peers if p not in self.spare][: self.count]
        for peer in victims:
            node = self.by_peer[peer]
            node.process.send_signal(signal.SIGKILL)
            node.process.wait(timeout=10)
            self.killed.append(node)
        self.count = 0
        return peers


def _grid(tmp_path: pathlib.Path, model: pathlib.Path, verify: str) -> Iterator[tuple[DemoNetwork, str]]:
    net = DemoNetwork(tmp_path, model=str(model), network=NETWORK)
    try:
        coordinator = net.start(
            "coordinator", "coordinator", extra_args=["--plain-verification", "--verify", verify]
        )
        net.wait_ready(coordinator)
        address = coordinator.addrs[0]
        workers = [net.start(f"worker-{i}", "worker", bootstrap=address) for i in range(1, 7)]
        for worker in workers:
            net.wait_ready(worker)
        yield net, address
    finally:
        net.stop()


@pytest.fixture
def network(tmp_path: pathlib.Path, tiny_model_path: pathlib.Path) -> Iterator[tuple[DemoNetwork, str]]:
    """A coordinator that replicates by name, and six workers."""
    yield from _grid(tmp_path, tiny_model_path, "replicate")


@pytest.fixture
def audit_network(tmp_path: pathlib.Path, tiny_model_path: pathlib.Path) -> Iterator[tuple[DemoNetwork, str]]:
    """A coordinator that audits every job (one prover, one auditor, full audits), and six workers."""
    yield from _grid(tmp_path, tiny_model_path, "audit")


def _check(done: Completion, model: pathlib.Path, prompt: str, dead: set[str]) -> None:
    assert (done.text, done.tokens) == direct_llama(model, prompt, MAX_TOKENS)
    done.receipt.verify(tokens=done.tokens, text=done.text, job_id=done.job_id)
    assert len(done.workers) == 2 and not dead & set(done.workers)


def test_sealed_jobs_survive_the_death_of_the_workers_they_were_sealed_to(
    network: tuple[DemoNetwork, str], tiny_model_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net, address = network
    workers = [n for n in net.nodes if n.role == "worker"]
    killer = Killer(workers)
    monkeypatch.setattr(client_module, "check_quote", killer)
    with Client([address], network=NETWORK, timeout=90) as client:
        wait_for_workers(client, 6, timeout=120)
        started = time.monotonic()

        # 3 of the 4 workers quoted die before the submission: with 2 replicas the first seal cannot
        # reach quorum, so the answer must come from a second seal, to other workers.
        killer.count = 3
        prompt = "The capital of France is"
        done = client.complete(prompt, model="tiny", max_tokens=MAX_TOKENS, replicas=2)
        dead = {n.peer_id for n in killer.killed}
        assert len(dead) == 3 and all(n.process.returncode == -signal.SIGKILL for n in killer.killed)
        _check(done, tiny_model_path, prompt, dead)
        assert 1 <= len(done.resealed) <= 2 and done.job_id not in done.resealed
        assert killer.quotes == 1 + len(done.resealed)
        first_took = time.monotonic() - started

        # Jobs right after, on the three survivors: each gets its verified answer.
        for prompt in ("Volunteer computing means", "Once upon a time,"):
            done = client.complete(prompt, model="tiny", max_tokens=MAX_TOKENS, replicas=2)
            _check(done, tiny_model_path, prompt, dead)

        # The asyncio client re-seals the same way: one more of the three survivors dies after its quote
        # (exposure = replicas: the job is sealed to exactly two workers, one of them now dead).
        async def asynchronous() -> Completion:
            async with await AsyncClient.connect([address], network=NETWORK, timeout=90) as aclient:
                killer.count = 1
                return await aclient.complete(
                    "Twice two is", model="tiny", max_tokens=MAX_TOKENS, replicas=2, exposure=2
                )

        done = asyncio.run(asynchronous())
        dead = {n.peer_id for n in killer.killed}
        assert len(dead) == 4
        _check(done, tiny_model_path, "Twice two is", dead)
        assert done.resealed
        took = time.monotonic() - started
    print(f"first job with 3 of 4 sealed-to workers dead: {first_took:.1f} s; all four jobs: {took:.1f} s")
    assert took < 120


def test_a_paid_sealed_job_is_resealed_and_paid_once(
    network: tuple[DemoNetwork, str], tiny_model_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net, address = network
    workers = [n for n in net.nodes if n.role == "worker"]
    payer = workers[0]
    payer_key = public_key_of(payer.peer_id)
    cost = MAX_TOKENS * 2  # job_cost(max_tokens, replicas=2) at weight 1 (the tiny model)
    killer = Killer(workers)
    killer.spare = {payer.peer_id}
    monkeypatch.setattr(client_module, "check_quote", killer)
    with Client([address], network=NETWORK, timeout=90) as client:
        wait_for_workers(client, 6, timeout=120)
        for i in range(30):  # the payer earns its points first (bounded)
            if client.status().balances.get(payer_key.hex(), 0) >= cost:
                break
            try:  # 4 of the 6: a worker the coordinator took offline for a moment (load) is not needed
                client.complete(f"Earning {i}", model="tiny", max_tokens=MAX_TOKENS, replicas=4, sealed=False)
            except NoCapacityError:
                time.sleep(0.5)
        seed = (payer.data_dir / "identity.key").read_bytes()
        with Client([address], network=NETWORK, timeout=90, identity_seed=seed) as paying:
            before = paying.status().balances
            killer.count = 1  # sealed to two workers (exposure = replicas), one dies: sealed afresh
            prompt = "Paid for"
            done = paying.complete(prompt, model="tiny", max_tokens=MAX_TOKENS, replicas=2, exposure=2)
            after = paying.status().balances
    dead = {n.peer_id for n in killer.killed}
    assert len(dead) == 1 and done.resealed
    _check(done, tiny_model_path, prompt, dead)
    # The failed seal's HOLD was refunded: the payer paid for the verified job only, once.
    n = len(done.tokens)
    expected = dict(before)
    for key, points in done.receipt.credits.items():
        expected[key.hex()] = expected.get(key.hex(), 0) + points + n
    expected[payer_key.hex()] = expected.get(payer_key.hex(), 0) - n * len(done.receipt.credits)
    for account, balance in expected.items():
        assert after.get(account, 0) == balance, account


def test_a_paid_audited_sealed_job_is_resealed_and_pays_prover_and_auditor_per_the_spec(
    audit_network: tuple[DemoNetwork, str], tiny_model_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit mode's counterpart of the test above (spec/verification.md §13.3): the job is sealed to two
    workers (a prover and its auditor), one of which dies between the quote and the submission. Whichever
    part the coordinator gives it, the job cannot be proven and audited among the workers it was sealed to:
    it ends ``no_capacity`` (its HOLD refunded), the SDK seals afresh, and the answer is generated by one
    prover and audited by another. The payer's HOLD pays the prover ``n`` and the auditor ``ceil(n / 2)``
    and refunds the rest; the receipt mints the same to each again; nobody else's balance moves."""
    net, address = audit_network
    workers = [n for n in net.nodes if n.role == "worker"]
    payer = workers[0]
    payer_key = public_key_of(payer.peer_id)
    replicas = 2
    cost = MAX_TOKENS * replicas  # the HOLD: job_cost(max_tokens, replicas) at weight 1 (the tiny model)
    killer = Killer(workers)
    killer.spare = {payer.peer_id}
    monkeypatch.setattr(client_module, "check_quote", killer)
    with Client([address], network=NETWORK, timeout=90) as client:
        wait_for_workers(client, 6, timeout=120)
        for i in range(40):  # the payer earns its points first, as prover or auditor (bounded)
            if client.status().balances.get(payer_key.hex(), 0) >= cost:
                break
            try:
                client.complete(f"Earning {i}", model="tiny", max_tokens=MAX_TOKENS, sealed=False)
            except NoCapacityError:
                time.sleep(0.5)
        seed = (payer.data_dir / "identity.key").read_bytes()
        with Client([address], network=NETWORK, timeout=90, identity_seed=seed) as paying:
            before = paying.status().balances
            assert before.get(payer_key.hex(), 0) >= cost
            killer.count = 1  # sealed to two (exposure 2: a prover and an auditor); one dies: sealed afresh
            prompt = "Paid for"
            done = paying.complete(prompt, model="tiny", max_tokens=MAX_TOKENS, replicas=replicas, exposure=2)
            after = paying.status().balances
    dead = {n.peer_id for n in killer.killed}
    assert len(dead) == 1 and done.resealed and not dead & set(done.workers)
    assert (done.text, done.tokens) == direct_llama(tiny_model_path, prompt, MAX_TOKENS)
    done.receipt.verify(tokens=done.tokens, text=done.text, job_id=done.job_id)
    n = len(done.tokens)
    prover, *auditors = (public_key_of(w) for w in done.workers)
    assert 1 <= len(auditors) <= 2, "one auditor (a random second audit may add one)"
    half = -(-n // 2)
    assert done.receipt.credits == {prover: n, **{a: half for a in auditors}}, "§13.3: n and ceil(n / 2)"
    assert n + half * len(auditors) <= cost, "the HOLD covers every payout"
    # Each credited worker: the receipt mints its credit and the HOLD pays it as much; the payer pays the
    # payouts only (the failed seal's HOLD was refunded, the rest of this one too); nobody else changes.
    expected = dict(before)
    for key, points in done.receipt.credits.items():
        expected[key.hex()] = expected.get(key.hex(), 0) + 2 * points
    expected[payer_key.hex()] = expected.get(payer_key.hex(), 0) - (n + half * len(auditors))
    for account in sorted(set(expected) | set(after)):
        assert after.get(account, 0) == expected.get(account, 0), account
