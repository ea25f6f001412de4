"""Seeded sampling end to end (issue 14 item 4; spec/verification.md §11) on real nodes: a coordinator on
127.0.0.1 with its OpenAI API, workers running the tiny model in llama.cpp.

- Replicated mode: a sampled job submitted through the SDK (open and sealed) and through the official
  ``openai`` client is run by two workers that draw the same noise (the job's id and the client's seed),
  so they agree token for token; the answer is exactly what one build computes locally for that job id
  and seed, and the receipt signs the client's settings (the job's contract digest).
- Audit mode: a sampled claim is re-scored under the same sampler and passes; a prover that draws its own
  noise (another seed) is caught, earns nothing, and the client gets the honest sample.
- A worker whose engine cannot run the job's sampler (llama_cpp.server over HTTP) refuses a sampled job
  as the client's fault, with a reason the client can act on, and keeps its standing.
- Out-of-range settings are refused with a clear error on every surface: the SDK (``ConfigError``
  before anything is sent), the API (OpenAI-style 400 naming the field), the CLI (``--help``'d flags).

The audit-mode and replicated-mode tests run on the in-memory network in virtual time (the API still
serves HTTP on 127.0.0.1); the HTTP-engine test on real libp2p hosts (its engine is a child process).
"""

from __future__ import annotations

import dataclasses
import pathlib
import secrets
from functools import partial
from typing import Any

import msgspec
import openai
import pytest
import trio
from opengrid_ledger import Receipt, decode_body, decode_entry
from opengrid_sdk import Client, Completion
from trio.testing import MockClock

from opengrid.core.audit import SamplingParams
from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.reputation import Reputation
from opengrid.engines import Engine, GenerationRequest, LlamaEngine, ModelInfo, sha256_file
from opengrid.engines.base import Generation
from opengrid.engines.http import ManagedServer
from opengrid.errors import ConfigError
from opengrid.net.host import Host
from opengrid.net.transport import StreamHost
from opengrid.node.api import ApiSettings
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.testing.memnet import MemoryNetwork
from opengrid.wire.contract import DecodingContract
from opengrid.wire.messages import ErrorReply, JobAccepted, SubmitJob
from tests.node.test_audit_mode import _coordinator as _audit_coordinator
from tests.node.test_audit_mode import _Preferring, _workers
from tests.node.workers import client_host, start_workers

NETWORK = "sampling-test"
PROMPT = "Once upon a time"
MAX_TOKENS = 10
SAMPLED = SamplingParams(temperature=1.5, top_k=40, top_p=0.95, seed=7)


def _info(path: pathlib.Path) -> ModelInfo:
    return ModelInfo(name="tiny", path=path, sha256=sha256_file(path))


async def _local(info: ModelInfo, job_id: bytes, sampling: SamplingParams) -> tuple[int, ...]:
    """What one build of llama.cpp generates for ``job_id`` under ``sampling``: the sample the network
    must return (replicas and prover run the same build here)."""

    def generate() -> tuple[int, ...]:
        with LlamaEngine(info, n_threads=1) as engine:
            request = GenerationRequest(PROMPT, MAX_TOKENS, sampling=sampling, job_id=job_id)
            return engine.generate(request).tokens

    return await trio.to_thread.run_sync(generate)


def _receipt(entry: bytes) -> Receipt:
    payload = decode_body(decode_entry(entry).body).payload
    assert isinstance(payload, Receipt)
    return payload


def _job_contract(info: ModelInfo, sampling: SamplingParams) -> DecodingContract:
    """The contract a sampled job of the tiny model's class runs under (what the receipt signs)."""
    with LlamaEngine(info, n_threads=1) as engine:
        offered = engine.contract
    settings = dataclasses.asdict(sampling)
    return offered.sampled(**settings)


async def test_a_sampled_job_verifies_in_replicated_mode_through_the_sdk_and_the_openai_client(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    info = _info(tiny_model_path)
    coordinator = Node(
        NodeConfig(data_dir=tmp_path / "c", role="coordinator", network=NETWORK, heartbeat_s=0.5),
        coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.5),
        api=ApiSettings(address="127.0.0.1:0"),
        transport=memnet,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None
        address = coordinator.host.addrs()[0]
        await start_workers(
            nursery, tmp_path, ("w1", "w2"), bootstrap=address, model_path=tiny_model_path,
            network=NETWORK, heartbeat_s=0.5, transport=memnet,
        )  # fmt: skip
        settings: dict[str, Any] = dataclasses.asdict(SAMPLED)

        def through_the_sdk() -> tuple[Completion, Completion, list[str]]:
            with Client([address], network=NETWORK, timeout=60, transport=memnet) as client:
                open_job = client.complete(
                    PROMPT, model="tiny", max_tokens=MAX_TOKENS, replicas=2, sealed=False, **settings
                )
                sealed_job = client.complete(
                    PROMPT, model="tiny", max_tokens=MAX_TOKENS, replicas=2, **settings
                )
                refused = []
                for bad in ({"temperature": 10.5}, {"temperature": -1.0}, {"top_p": 0.0}, {"top_k": -1},
                            {"seed": 2**64}, {"seed": -1}, {"temperature": float("nan")}):  # fmt: skip
                    with pytest.raises(ConfigError) as error:
                        client.complete(PROMPT, model="tiny", max_tokens=MAX_TOKENS, sealed=False, **bad)
                    refused.append(str(error.value))
                with pytest.raises(ConfigError, match="top_p must be"):
                    client.stream(PROMPT, model="tiny", top_p=2.0)  # at the call, not at the first item
                return open_job, sealed_job, refused

        open_job, sealed_job, refused = await trio.to_thread.run_sync(through_the_sdk)
        contract = await trio.to_thread.run_sync(_job_contract, info, SAMPLED)
        for done in (open_job, sealed_job):
            assert len(done.workers) == 2 and not done.dissenters, "both replicas drew the same sample"
            assert tuple(done.tokens) == await _local(info, done.job_id, SAMPLED)
            assert done.receipt.receipt.contract_hash == contract.digest(), "the receipt signs the settings"
        greedy = await _local(info, open_job.job_id, SamplingParams())
        # The settings do choose among samples: other seeds of the same job give other outputs (any one
        # sample may equal the greedy output by chance: a few in 150 at temperature 1.5, measured).
        others = {
            await _local(info, open_job.job_id, dataclasses.replace(SAMPLED, seed=s)) for s in range(8, 12)
        }
        assert len(others | {tuple(open_job.tokens)}) > 1
        assert "temperature must be in [0, 10]" in refused[0] and "10.5" in refused[0]
        assert "top_p must be in (0, 1]" in refused[2] and "top_k must be" in refused[3]
        assert "seed must be in 0..2**64-1" in refused[4]

        # The official openai client against the node's API: temperature, top_p, seed, and top_k as an
        # extension; the answer is the sample this request's job id and seed fix.
        api = coordinator.api_urls[0] + "/v1"

        def through_openai() -> tuple[Any, Any, Any, list[openai.BadRequestError]]:
            client = openai.OpenAI(base_url=api, api_key="unused", max_retries=0, timeout=60)
            sampled = client.completions.create(
                model="tiny", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=SAMPLED.temperature,
                top_p=SAMPLED.top_p, seed=SAMPLED.seed, extra_body={"top_k": SAMPLED.top_k},
            )  # fmt: skip
            default = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=MAX_TOKENS)
            chat = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": PROMPT}], max_tokens=MAX_TOKENS,
                temperature=1.2, seed=99,
            )  # fmt: skip
            errors = []
            for bad in ({"temperature": 11.0}, {"top_p": 1.5}, {"seed": -3},
                        {"extra_body": {"top_k": -2}}):  # fmt: skip
                with pytest.raises(openai.BadRequestError) as error:
                    client.completions.create(model="tiny", prompt=PROMPT, max_tokens=MAX_TOKENS, **bad)
                errors.append(error.value)
            with pytest.raises(openai.BadRequestError) as error:
                client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "x"}], temperature=-0.5
                )
            errors.append(error.value)
            return sampled, default, chat, errors

        sampled, default, chat, errors = await trio.to_thread.run_sync(through_openai)
        extension = sampled.model_extra["opengrid"]
        assert extension["decoding"] == "sampled" and extension["sampling"] == settings
        assert len(extension["workers"]) == 2
        job_id = bytes.fromhex(extension["job_id"])
        assert tuple(extension["tokens"]) == await _local(info, job_id, SAMPLED)
        assert _receipt(bytes.fromhex(extension["receipt"])).contract_hash == contract.digest()
        # No temperature: greedy, the deterministic default (not OpenAI's 1.0).
        assert default.model_extra["opengrid"]["decoding"] == "greedy"
        assert tuple(default.model_extra["opengrid"]["tokens"]) == greedy
        chat_extension = chat.model_extra["opengrid"]
        assert chat_extension["decoding"] == "sampled" and len(chat_extension["workers"]) == 2
        assert chat_extension["sampling"] == {"temperature": 1.2, "top_k": 0, "top_p": 1.0, "seed": 99}
        params = [error.body["param"] for error in errors]  # type: ignore[index]
        assert params == ["temperature", "top_p", "seed", "top_k", "temperature"]
        assert all(error.status_code == 400 for error in errors)
        assert "got 11.0" in str(errors[0]) and "got -3" in str(errors[2])
        nursery.cancel_scope.cancel()


class _OwnNoiseEngine:
    """A prover that samples with noise of its own choosing (another seed than the client's) instead of
    the job's: its output is a fine-looking sample of the right model, just not the one the job fixes."""

    def __init__(self, inner: LlamaEngine) -> None:
        self._inner = inner

    @property
    def model(self) -> ModelInfo:
        return self._inner.model

    @property
    def contract(self) -> DecodingContract:
        return self._inner.contract

    def generate(self, request: GenerationRequest) -> Generation:
        """The first sample under seeds after the client's that differs from the job's own (a prover
        steering the output picks one that differs), else the job's own."""
        honest = self._inner.generate(request)
        for step in range(1, 21):
            own = dataclasses.replace(request.sampling, seed=request.sampling.seed + step)
            chosen = self._inner.generate(dataclasses.replace(request, sampling=own))
            if chosen.tokens != honest.tokens:
                return chosen
        return honest

    def close(self) -> None:
        self._inner.close()


async def test_a_sampled_job_is_audited_and_a_prover_with_its_own_noise_is_caught(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    info = _info(tiny_model_path)
    rng = _Preferring(3)
    coordinator = _audit_coordinator(tmp_path, memnet, rng)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        engines: dict[str, Engine] = {
            "cheat": _OwnNoiseEngine(LlamaEngine(info, n_threads=1)),
            "w1": LlamaEngine(info, n_threads=1),
            "w2": LlamaEngine(info, n_threads=1),
        }
        workers = await _workers(nursery, tmp_path, coordinator, engines, memnet)
        ids = {name: node.host.peer_id for name, node in workers.items() if node.host is not None}
        assert coordinator.host is not None and coordinator.coordinator is not None
        assert coordinator.ledger is not None
        client: StreamHost = await nursery.start(partial(client_host, transport=memnet))
        peer = await client.connect(coordinator.host.addrs()[0])

        async def submit() -> JobAccepted:
            job = SubmitJob(
                job_id=secrets.token_bytes(16), model="tiny", prompt=PROMPT, max_tokens=MAX_TOKENS,
                **dataclasses.asdict(SAMPLED),
            )  # fmt: skip
            with trio.fail_after(90):
                reply = await client.request(peer, job)
            assert isinstance(reply, JobAccepted), reply
            assert tuple(reply.tokens) == await _local(info, job.job_id, SAMPLED), "the job's own sample"
            return reply

        # An honest prover (w1) audited by w2: the sampled claim passes under the job's sampler.
        rng.prefer = [ids["w1"], ids["w2"]]
        honest = await submit()
        assert honest.workers == [ids["w1"], ids["w2"]] and not honest.failed
        assert workers["w2"].worker_driver.audits_run == 1
        assert len(_receipt(honest.receipt).credits) == 2

        # The cheat proves first: its sample (noise of its own) fails the audit, the job is re-run by an
        # honest prover, and the client gets the sample its job id and seed fix. The cheat earns nothing.
        rng.prefer = [ids["cheat"]]
        caught = await submit()
        cheat = workers["cheat"]
        assert cheat.jobs_run == 1, "the cheat was the first prover"
        assert ids["cheat"] not in caught.workers and ids["cheat"] in caught.failed
        assert cheat.public_key not in {c.account for c in _receipt(caught.receipt).credits}
        assert coordinator.ledger.balance(cheat.public_key) == 0
        assert coordinator.coordinator.reputation.get(cheat.public_key, Reputation()).invalid == 1
        nursery.cancel_scope.cancel()


def test_a_sampled_jobs_wire_message_round_trips_with_its_settings() -> None:
    job = SubmitJob(job_id=b"j" * 16, model="tiny", prompt="p", max_tokens=4, **dataclasses.asdict(SAMPLED))
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(job), type=SubmitJob)
    assert (decoded.temperature, decoded.top_k, decoded.top_p, decoded.seed) == (1.5, 40, 0.95, 7)
    offered = DecodingContract(model_sha256="ab" * 32)
    assert decoded.job_contract(offered).numerical_class() == offered


def test_the_cli_refuses_out_of_range_sampling_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from opengrid.cli.main import main

    for flag, value, message in [
        ("--temperature", "12", "--temperature must be in [0, 10] (0 = greedy), got 12.0"),
        ("--top-p", "0", "--top-p must be in (0, 1] (1 = off), got 0.0"),
        ("--top-k", "-5", "--top-k must be in 0..4294967295 (0 = off), got -5"),
        ("--seed", "1.5", "--seed takes a whole number, got '1.5'"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(["submit", "hi", "--bootstrap", "/ip4/127.0.0.1/tcp/1", flag, value])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["submit", "--help"])
    help_text = capsys.readouterr().out
    assert all(flag in help_text for flag in ("--temperature", "--top-p", "--top-k", "--seed"))


async def test_a_grid_whose_workers_run_http_engines_refuses_a_sampled_job_and_runs_greedy_ones(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path
) -> None:
    # llama_cpp.server samples with its own RNG, which no replica or auditor can recompute: the coordinator
    # sends sampled jobs only to classes that run the job's own sampler, so here it refuses the job
    # (``no_capacity``, saying what to do) before any worker is asked; the worker keeps its standing and
    # still runs greedy jobs. (The worker's own refusal, for a coordinator that sends one anyway, is
    # tests/core/test_sampled_jobs.py's.)
    info = _info(tiny_model_path)
    coordinator = Node(
        NodeConfig(data_dir=tmp_path / "c", role="coordinator", heartbeat_s=0.5),
        coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.5),
    )
    with ManagedServer(info, n_threads=1, ready_timeout_s=60) as server, server.engine() as engine:
        async with trio.open_nursery() as nursery:
            await nursery.start(coordinator.run)
            assert coordinator.host is not None and coordinator.coordinator is not None
            workers = await _workers(nursery, tmp_path, coordinator, {"http": engine})
            worker = workers["http"]
            client: Host = await nursery.start(client_host)
            peer = await client.connect(coordinator.host.addrs()[0])

            async def submit(**sampling: Any) -> Any:
                job = SubmitJob(
                    job_id=secrets.token_bytes(16), model="tiny", prompt=PROMPT, max_tokens=4, replicas=1,
                    **sampling,
                )  # fmt: skip
                with trio.fail_after(60):
                    return await client.request(peer, job)

            refused = await submit(temperature=0.7, seed=1)
            assert isinstance(refused, ErrorReply) and refused.code == "no_capacity", refused
            assert "decodes greedily only" in refused.message and "send temperature 0" in refused.message
            assert coordinator.coordinator.reputation.get(worker.public_key, Reputation()).invalid == 0
            greedy = await submit()
            assert isinstance(greedy, JobAccepted), greedy
            assert greedy.workers == [worker.host.peer_id if worker.host else ""]
            nursery.cancel_scope.cancel()
