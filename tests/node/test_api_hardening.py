"""The OpenAI-compatible API under attack (issue 15, items 7, 8 and 11), against a real coordinator with
its API on 127.0.0.1 (in-process ``Node``, real libp2p, the tiny model where jobs run).

- A worker's chat template is untrusted code: rendered in the coordinator's event loop, a template with
  nested loops froze the whole node. Now it renders in a killable child process with a time limit: the
  loop never stalls, the request fails with a clear error, and the template is not tried again.
- A big body was read whole before the 413; now Content-Length is checked before reading, and a chunked
  body is cut off as soon as it passes the limit. Unknown paths and wrong methods answer OpenAI JSON.
- Every API user was one client of the coordinator's queue, so one user's flood took the queue from all.
"""

from __future__ import annotations

import pathlib
import secrets
from collections.abc import Callable
from typing import Any

import httpx
import trio

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.net.host import Host
from opengrid.net.keys import public_key_of
from opengrid.node.api import MAX_BODY_BYTES, ApiSettings
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.wire.messages import DecodingContract, ModelOffer, Registered, RegisterWorker
from tests.node.workers import client_host, start_workers
from tests.waiting import until

NETWORK = "api-hardening"
# 10**8 sandbox-legal loop iterations (range() is capped at 100 000 in jinja2's sandbox, nesting is not):
# in the event loop this froze the coordinator for tens of seconds.
SLOW_TEMPLATE = "{% for i in range(100000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}x"
HUGE_TEMPLATE = "{{ 'x' * 1000000000 }}"


def _coordinator(base: pathlib.Path, **config: Any) -> Node:
    settings = NodeConfig(data_dir=base / "c", role="coordinator", network=NETWORK, heartbeat_s=0.5)
    return Node(
        settings,
        coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.5, **config),
        # hostile templates are cut off after 0.5 s (2 s by default): the bound, not its length, is tested
        api=ApiSettings(address="127.0.0.1:0", template_timeout_s=0.5),
    )


async def _raw_request(url: str, head: bytes, body: Callable[[trio.SocketStream], Any]) -> bytes:
    """Send ``head`` on a fresh connection, let ``body`` send (part of) a body, return what the server
    answers within 10 s (the answer's first bytes are enough)."""
    host, port = url.removeprefix("http://").split(":")
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(head)
        answer = b""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(body, stream)
            with trio.fail_after(10):
                while b"\r\n\r\n" not in answer:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    answer += chunk
            nursery.cancel_scope.cancel()
        return answer


async def test_big_bodies_are_refused_before_reading_and_errors_are_openai_json(
    tmp_path: pathlib.Path,
) -> None:
    coordinator = _coordinator(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        url = coordinator.api_urls[0]

        # Announces 200 MB, sends 10 bytes and waits: the 413 must come from the header alone.
        async def ten_bytes(stream: trio.SocketStream) -> None:
            await stream.send_all(b"0123456789")
            await trio.sleep_forever()

        head = (
            b"POST /v1/completions HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
            b"Content-Length: 200000000\r\n\r\n"
        )
        answer = await _raw_request(url, head, ten_bytes)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]

        # Chunked, no length: cut off once past the limit, while the client still has more to send.
        sent = [0]

        async def chunks(stream: trio.SocketStream) -> None:
            piece = b"x" * 65536
            for _ in range(4 * MAX_BODY_BYTES // len(piece)):
                await stream.send_all(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent[0] += len(piece)
            await trio.sleep_forever()  # never the last chunk

        head = (
            b"POST /v1/completions HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        answer = await _raw_request(url, head, chunks)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]

        def plain_errors() -> list[httpx.Response]:
            with httpx.Client(base_url=url, timeout=30) as client:
                return [
                    client.get("/v1/nothing-here"),
                    client.get("/v1/completions"),
                ]

        missing, wrong_method = await trio.to_thread.run_sync(plain_errors)
        for response, status, code in (
            (missing, 404, "unknown_url"),
            (wrong_method, 405, "method_not_allowed"),
        ):
            assert response.status_code == status
            error = response.json()["error"]
            assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]
        assert wrong_method.headers["allow"] == "POST"
        nursery.cancel_scope.cancel()


async def _fake_worker(
    coordinator: Node, name: str, template: str, *, task_status: trio.TaskStatus[None]
) -> None:
    """What a hostile worker does: register (and keep beating) a model whose announced chat template is a
    CPU or memory bomb."""
    assert coordinator.host is not None
    async with trio.open_nursery() as nursery:
        attacker: Host = await nursery.start(client_host)
        peer = await attacker.connect(coordinator.host.addrs()[0])
        contract = DecodingContract(model_sha256=secrets.token_hex(32))
        offer = ModelOffer(name=name, contract=contract, chat_template=template)
        message = RegisterWorker(
            network=NETWORK,
            public_key=public_key_of(attacker.peer_id),
            listen_addrs=attacker.addrs(),
            models=[offer],
        )
        for beat in range(1000):
            with trio.fail_after(10):
                assert isinstance(await attacker.request(peer, message), Registered)
            if beat == 0:
                task_status.started()
            await trio.sleep(0.25)  # a heartbeat's period, as a worker keeps one


async def test_a_workers_hostile_chat_template_never_stalls_the_coordinator(tmp_path: pathlib.Path) -> None:
    coordinator = _coordinator(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        url = coordinator.api_urls[0]
        await nursery.start(_fake_worker, coordinator, "slow", SLOW_TEMPLATE)
        await nursery.start(_fake_worker, coordinator, "huge", HUGE_TEMPLATE)

        # The longest the event loop went without running this task while the attack ran.
        stall = [0.0]

        async def watch_the_loop() -> None:
            while True:
                before = trio.current_time()
                await trio.sleep(0.02)
                stall[0] = max(stall[0], trio.current_time() - before - 0.02)

        nursery.start_soon(watch_the_loop)

        def chat(model: str) -> httpx.Response:
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)

        for model in ("slow", "huge"):
            first = await trio.to_thread.run_sync(chat, model)
            assert first.status_code == 502, first.text
            error = first.json()["error"]
            assert error["code"] == "bad_chat_template" and "chat template" in error["message"]
            # Marked bad: the next request fails at once, without rendering it again.
            with trio.fail_after(5):
                again = await trio.to_thread.run_sync(chat, model)
            assert again.status_code == 502 and "found bad before" in again.json()["error"]["message"]
        assert (
            "longer than" in first.json()["error"]["message"] or "memory" in first.json()["error"]["message"]
        )
        assert stall[0] < 1.0, f"the coordinator's event loop stalled for {stall[0]:.1f} s"
        nursery.cancel_scope.cancel()


async def test_one_api_user_flooding_does_not_starve_another(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path
) -> None:
    coordinator = _coordinator(tmp_path, max_queued_per_client=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None
        url = coordinator.api_urls[0]
        await start_workers(
            nursery, tmp_path, ("w1", "w2"), bootstrap=coordinator.host.addrs()[0],
            model_path=tiny_model_path, network=NETWORK, heartbeat_s=0.5,
        )  # fmt: skip
        body = {"model": "tiny", "prompt": "Flood", "max_tokens": 24, "replicas": 2}
        refused = [0]
        victim_done = trio.Event()

        # The flooder (from 127.0.0.2) keeps 6 requests in flight, re-sending each as soon as it ends.
        def flood_once(client: httpx.Client) -> None:
            response = client.post("/v1/completions", json=body)
            if response.status_code == 503:
                refused[0] += 1

        async def flooder() -> None:
            transport = httpx.HTTPTransport(local_address="127.0.0.2")
            with httpx.Client(base_url=url, transport=transport, timeout=120) as client:
                for _ in range(300):
                    if victim_done.is_set():
                        return
                    await trio.to_thread.run_sync(flood_once, client)

        def victim() -> list[int]:
            with httpx.Client(base_url=url, timeout=120) as client:
                return [client.post("/v1/completions", json=body).status_code for _ in range(3)]

        async with trio.open_nursery() as flood:
            for _ in range(6):
                flood.start_soon(flooder)
            await until(lambda: refused[0] > 0, 60, lambda: "the flood never filled its queue")
            statuses = await trio.to_thread.run_sync(victim)
            victim_done.set()  # the flooders finish the requests they have in flight, then stop
        assert statuses == [200, 200, 200], (
            f"the victim got {statuses} while the flooder got {refused[0]} 503s"
        )
        nursery.cancel_scope.cancel()
