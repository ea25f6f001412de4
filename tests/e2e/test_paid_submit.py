"""``opengrid submit --identity DATA_DIR|KEYFILE`` pays for the job from that identity's account, through
the real command line (in this process, fixture ``cli``, on a thread beside the nodes) against real nodes
on 127.0.0.1 (a coordinator that runs only paid jobs, two workers with the tiny model); a key that is
missing, unreadable or not a key, and an account that cannot pay, each get one clear line
(spec/ledger.md §7)."""

from __future__ import annotations

import json
import pathlib
import subprocess

import trio
from opengrid_ledger import Grant, Hold, decode_body

from opengrid.node.identity import IDENTITY_FILE
from opengrid.wire.messages import job_cost
from tests.e2e.conftest import Cli
from tests.node.workers import paid_coordinator, start_workers

NETWORK = "paid-submit-test"
GRANT = 50
PEER = "12D3KooWN5TM5CbW1QRMfb4Rui58doGzeD2AvdHtagrxTSGtCyCo"


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output
    (line,) = [line for line in output.splitlines() if "error:" in line]
    return line


def test_a_key_that_is_missing_unreadable_or_not_a_key_is_one_line_before_any_network(
    tmp_path: pathlib.Path, cli: Cli
) -> None:
    # The bootstrap address leads nowhere: the identity is checked first, so these fail at once.
    base = ("submit", "Hello", "--bootstrap", f"/ip4/127.0.0.1/tcp/9/p2p/{PEER}", "--identity")
    empty_dir = tmp_path / "empty-node"
    empty_dir.mkdir()
    line = _error_line(cli(*base, str(empty_dir)))
    assert f"data dir {empty_dir} has no {IDENTITY_FILE}" in line
    line = _error_line(cli(*base, str(tmp_path / "nope.key")))
    assert f"no identity file {tmp_path / 'nope.key'}" in line

    short = tmp_path / "short.key"
    short.write_bytes(b"12345")
    line = _error_line(cli(*base, str(short)))
    assert "holds 5 bytes, not a 32-byte Ed25519 identity seed" in line

    odd = tmp_path / "odd-node"
    (odd / IDENTITY_FILE).mkdir(parents=True)  # unreadable as a file (root reads any file mode)
    line = _error_line(cli(*base, str(odd)))
    assert f"cannot read the identity in {odd / IDENTITY_FILE}" in line


async def test_submit_with_an_identity_pays_from_that_account(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, cli: Cli
) -> None:
    coordinator, genesis = paid_coordinator(tmp_path, NETWORK, grant=GRANT)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None and coordinator.ledger is not None
        address = coordinator.host.addrs()[0]
        w1, _ = await start_workers(
            nursery, tmp_path, ("w1", "w2"), bootstrap=address, model_path=tiny_model_path,
            network=NETWORK, genesis=genesis, heartbeat_s=0.5,
        )  # fmt: skip
        ledger, volunteer = coordinator.ledger, w1.public_key
        common = ("--bootstrap", address, "--network", NETWORK, "--model", "tiny", "--replicas", "2")

        def submit(*argv: str) -> subprocess.CompletedProcess[str]:
            return cli("submit", *argv, *common)

        # Unpaid, the coordinator refuses it and says how to pay.
        refused = await trio.to_thread.run_sync(submit, "Free?", "--max-tokens", "4")
        assert "only paid jobs" in _error_line(refused)

        # A volunteer pays from its node's account (the data dir's identity.key): its starting grant,
        # then the HOLD, as the first links of its chain.
        paid = await trio.to_thread.run_sync(
            submit, "Paid", "--max-tokens", "4", "--identity", str(tmp_path / "w1"), "--json"
        )
        assert paid.returncode == 0, paid.stderr
        answer = json.loads(paid.stdout)
        mine = [decode_body(e.body).payload for e in ledger.entries_by_author(volunteer)]
        assert [type(p) for p in mine] == [Grant, Hold]
        hold = mine[1]
        assert isinstance(hold, Hold) and hold.job_id.hex() == answer["job_id"]
        assert hold.amount == job_cost(4, 2) and ledger.held(volunteer) == 0
        assert answer["paid"] == {"account": volunteer.hex(), "balance": ledger.balance(volunteer)}

        # A key file works the same; a job dearer than the balance: the price and the balance, in one line.
        balance = ledger.balance(volunteer)
        dear = await trio.to_thread.run_sync(
            submit, "Dear", "--max-tokens", "512", "--identity", str(tmp_path / "w1" / IDENTITY_FILE)
        )
        line = _error_line(dear)
        assert f"has {balance} points; this job costs up to {job_cost(512, 2)}" in line
        assert len(ledger.entries_by_author(volunteer)) == 2  # nothing signed for it
        nursery.cancel_scope.cancel()
