"""Nothing accepted is lost (issue 15, item 9): a coordinator killed with SIGKILL still gives a client the
verified answer of a job it finished, when the client retries the job id after the restart.

Before: a job the coordinator finished while its client could not hear it (the client crashed, or the
coordinator did and finished the job on resuming it) was done and credited, and a retry got "job id
already used" — the answer was gone. Now the coordinator keeps a verified answer in its job store
(SQLite, synchronous=FULL) before it answers, and gives it again to the client that submitted the job,
never to another (job ids are public in receipts; answers are not).
"""

from __future__ import annotations

import pathlib
import secrets

import pytest
import trio
from opengrid_ledger import Receipt, decode_entry, open_entry

from opengrid.cli.demo import DemoNetwork
from opengrid.net.host import Host, open_host, quiet_libp2p_logging
from opengrid.wire.commitment import commit_output
from opengrid.wire.messages import ErrorReply, JobAccepted, NodeStatus, StatusRequest, SubmitJob

pytestmark = pytest.mark.slow

NETWORK = "opengrid-lost-answers"


async def _status(client: Host, peer: str) -> NodeStatus:
    reply = await client.request(peer, StatusRequest())
    assert isinstance(reply, NodeStatus)
    return reply


async def test_a_finished_job_is_answered_again_after_a_sigkill_and_only_to_its_client(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path
) -> None:
    quiet_libp2p_logging()
    net = DemoNetwork(tmp_path, model=str(tiny_model_path), network=NETWORK)
    try:
        coordinator = net.start("coordinator", "coordinator", extra_args=["--plain-verification"])
        net.wait_ready(coordinator)
        for name in ("worker-1", "worker-2"):
            net.start(name, "worker", bootstrap=coordinator.addrs[0])
        job = SubmitJob(job_id=secrets.token_bytes(16), model="tiny", prompt="Once upon a time", max_tokens=8)
        async with open_host(secrets.token_bytes(32)) as client, open_host(secrets.token_bytes(32)) as other:
            peer = await client.connect(coordinator.addrs[0])
            with trio.fail_after(60):
                while len((await _status(client, peer)).workers) < 2:
                    await trio.sleep(0.2)
            with trio.fail_after(60):  # the answer the client will lose (it crashes, say)
                first = await client.request(peer, job)
            assert isinstance(first, JobAccepted), first

            coordinator.process.kill()  # SIGKILL: no clean shutdown
            coordinator.process.wait()
            await client.disconnect(peer)
            restarted = net.start("coordinator", "coordinator", extra_args=["--plain-verification"])
            net.wait_ready(restarted)
            assert restarted.peer_id == peer  # same data dir, same identity

            with trio.fail_after(30):
                await client.connect(restarted.addrs[0])
                reply = await client.request(peer, job)
            assert reply == first  # the same verified answer, receipt and all
            receipt = open_entry(decode_entry(reply.receipt), NETWORK).payload
            assert isinstance(receipt, Receipt) and receipt.job_id == job.job_id
            assert receipt.output_commitment == commit_output(reply.tokens, reply.text)

            with trio.fail_after(30):
                await other.connect(restarted.addrs[0])
                stolen = await other.request(peer, job)
            assert isinstance(stolen, ErrorReply) and "already used" in stolen.message
    finally:
        net.stop()
