"""An in-memory ``WalletSource`` with realistic data, for tests and the screenshot script (not the product).

Nothing here touches the network; ``FakeWalletSource`` just hands back what it holds, so a test can change
``node_status`` or ``items`` between refreshes, or set ``failure`` to make the next calls raise.
"""

from __future__ import annotations

import hashlib
import random

import msgspec
from nacl.signing import SigningKey
from opengrid_sdk import AccountInfo, HistoryItem, TransferReceipt

from opengrid.errors import ConfigError, InsufficientBalanceError, UnknownRecipientError
from opengrid.tui.source import Action
from opengrid.wire.messages import NodeStatus, WorkerSummary

MODEL = "smollm2-135m-instruct"


class FakeWalletSource:
    """A ``WalletSource`` over plain values."""

    def __init__(
        self,
        node_status: NodeStatus,
        items: list[HistoryItem],
        *,
        address: str = "/ip4/127.0.0.1/tcp/4001",
        control_unavailable: str | None = None,
    ) -> None:
        self.node_status = node_status
        self.items = items
        self.failure: Exception | None = None
        """When set, every call raises it (a node gone away)."""
        self.calls: list[str] = []
        self.known_accounts: dict[bytes, int] = {}
        """Accounts the fake ledger knows (key: balance); others need ``new_recipient``."""
        self.sent: list[tuple[bytes, int, str]] = []
        """Transfers sent: (to, points, memo)."""
        self._address = address
        self._control_unavailable = control_unavailable

    @property
    def address(self) -> str:
        return self._address

    @property
    def control_unavailable(self) -> str | None:
        return self._control_unavailable

    def status(self) -> NodeStatus:
        self._record("status")
        return self.node_status

    def history(self) -> list[HistoryItem]:
        self._record("history")
        return list(self.items)

    def control(self, action: Action) -> NodeStatus:
        self._record(action)
        if self._control_unavailable is not None:
            raise ConfigError(self._control_unavailable)
        self.node_status = msgspec.structs.replace(self.node_status, paused=action == "pause")
        return self.node_status

    def account_info(self, account: bytes) -> AccountInfo:
        self._record("account_info")
        known = account in self.known_accounts
        return AccountInfo(
            account, self.known_accounts.get(account, 0), 0, 1 if known else 0, known, False, ""
        )

    def send(self, to: bytes, points: int, memo: str, *, new_recipient: bool) -> TransferReceipt:
        self._record("send")
        if self._control_unavailable is not None:
            raise ConfigError(self._control_unavailable)
        if to not in self.known_accounts and not new_recipient:
            raise UnknownRecipientError(f"account {to.hex()} has never appeared on this ledger")
        if points > self.node_status.points:
            raise InsufficientBalanceError(
                f"account {self.node_status.public_key.hex()} has {self.node_status.points} spendable "
                f"points here; the transfer is {points}",
                balance=self.node_status.points,
                amount=points,
            )
        balance = self.node_status.points - points
        self.node_status = msgspec.structs.replace(self.node_status, points=balance)
        self.sent.append((to, points, memo))
        entry_id = hashlib.sha256(f"transfer/{len(self.sent)}".encode()).digest()
        return TransferReceipt(entry_id, self.node_status.public_key, to, points, memo, balance, "")

    def close(self) -> None:
        self.calls.append("close")

    def _record(self, call: str) -> None:
        self.calls.append(call)
        if self.failure is not None:
            raise self.failure


def demo_key(name: str) -> bytes:
    """A fixed Ed25519 public key per name, so screenshots and tests are repeatable."""
    return bytes(SigningKey(hashlib.sha256(name.encode()).digest()).verify_key)


def _peer_id(key: bytes) -> str:
    from opengrid.net.keys import peer_id_of

    return peer_id_of(key)


def demo_history(
    account: str,
    now_ms: int,
    *,
    jobs: int = 64,
    outvoted: tuple[int, ...] = (9, 40, 58),
    transfers: tuple[int, ...] = (30, 61),
    seed: int = 7,
) -> list[HistoryItem]:
    """``jobs`` receipts for ``account`` over the six hours before ``now_ms``, oldest first, busiest in the
    afternoon; the jobs numbered in ``outvoted`` were outvoted; after the jobs numbered in ``transfers``
    the account received points (the first) and sent some (the others)."""
    rng = random.Random(seed)
    coordinators = [demo_key("coordinator-a"), demo_key("coordinator-b")]
    start = now_ms - 6 * 3_600_000
    times = sorted(start + int(rng.triangular(0, 6 * 3_600_000, 3.8 * 3_600_000)) for _ in range(jobs))
    items = []
    for index, issued in enumerate(times):
        n_tokens = rng.randrange(16, 96)
        lost = index in outvoted
        items.append(
            HistoryItem(
                entry_id=hashlib.sha256(f"{account}/entry/{index}".encode()).digest(),
                job_id=hashlib.sha256(f"{account}/job/{index}".encode()).digest()[:16],
                coordinator_key=coordinators[0] if index % 5 else coordinators[1],
                outcome="outvoted" if lost else "paid",
                points=0 if lost else n_tokens,
                n_tokens=n_tokens,
                issued_at_ms=issued,
            )
        )
        if index in transfers:
            first = index == transfers[0]
            items.append(
                HistoryItem(
                    entry_id=hashlib.sha256(f"{account}/transfer/{index}".encode()).digest(),
                    job_id=b"",
                    coordinator_key=b"",
                    outcome="received" if first else "sent",
                    points=250 if first else -120,
                    n_tokens=0,
                    issued_at_ms=0,
                    counterparty=demo_key("friend" if first else "research-lab"),
                    memo="thanks!" if first else "donation",
                )
            )
    return items


def demo_worker_source(now_ms: int) -> FakeWalletSource:
    """A worker that has earned for an afternoon, opened with --data-dir (pause/resume allowed)."""
    key = demo_key("worker-1")
    items = demo_history("worker-1", now_ms)
    peer_id = _peer_id(key)
    status = NodeStatus(
        peer_id=peer_id,
        public_key=key,
        role="worker",
        addrs=[f"/ip4/127.0.0.1/tcp/41733/p2p/{peer_id}", f"/ip4/192.168.1.20/tcp/41733/p2p/{peer_id}"],
        points=sum(i.points for i in items),
        jobs_done=sum(1 for i in items if i.outcome == "paid"),
        models=[MODEL],
        ledger_entries=len(items),
    )
    source = FakeWalletSource(status, items, address=status.addrs[0])
    source.known_accounts[demo_key("docs-fund")] = 1200  # a project that takes donations
    return source


def demo_coordinator_source(now_ms: int) -> FakeWalletSource:
    """A coordinator with four workers (one offline), opened read-only with --node."""
    key = demo_key("coordinator-a")
    peer_id = _peer_id(key)
    names = ["worker-1", "worker-2", "worker-3", "worker-4"]
    workers = [
        WorkerSummary(
            peer_id=_peer_id(demo_key(n)), public_key=demo_key(n), models=[MODEL], online=n != "worker-4"
        )
        for n in names
    ]
    balances = {
        demo_key(n).hex(): points for n, points in zip(names, [3_412, 2_987, 3_105, 640], strict=True)
    }
    status = NodeStatus(
        peer_id=peer_id,
        public_key=key,
        role="coordinator",
        addrs=[f"/ip4/127.0.0.1/tcp/4001/p2p/{peer_id}"],
        points=0,
        jobs_done=0,
        workers=workers,
        balances=balances,
        ledger_entries=211,
    )
    return FakeWalletSource(
        status,
        [],
        address=status.addrs[0],
        control_unavailable=(
            "read-only: connected with --node, so the node's identity key is not at hand. Only its "
            "owner can pause it: open the wallet with --data-dir on the node's data dir."
        ),
    )
