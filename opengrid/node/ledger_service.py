"""The ledger service: stores what a node's ledger gains, and keeps it in step with the network's.

Entries arrive four ways — written by this node (``append``), pushed on gossip as they are written,
pushed by a coordinator with its receipts (``on_receipts``), and pulled by sync (``/opengrid/ledger-sync/1``,
opengrid/node/ledger_sync.py); sync fills whatever gossip loses. Each way ends in the SQLite store, and in a
FRAUD proof when the ledger froze an author for a fork (spec/ledger.md §4, §5.9).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import trio
from opengrid_ledger import (
    Entry,
    Fraud,
    Grant,
    Transfer,
    decode_body,
    decode_entry,
    encode_entry,
    intake_problem,
    memo_problem,
    open_entry,
    spend_problem,
)
from opengrid_ledger.sync import IdIndex, SyncSession

from opengrid.core.control import OwnerTransfers
from opengrid.errors import OpenGridError
from opengrid.net.host import FrameStream
from opengrid.node import ledger_sync
from opengrid.node.context import NodeContext, short
from opengrid.node.coordinator_admission import CoordinatorAdmission
from opengrid.node.ledger_sync import SYNC_PROTOCOL
from opengrid.wire.messages import (
    AccountState,
    ErrorReply,
    Message,
    OwnerTransfer,
    ReceiptNotice,
    TransferRequest,
)

log = logging.getLogger("opengrid.node")
_SYNC_TIMEOUT_S = 60.0
_SYNC_PERIOD_BEATS = 6
"""A worker pulls its coordinator's ledger every this many heartbeats, and soon after each receipt."""


class LedgerService:
    """A node's ledger traffic: store, gossip, sync, receipts pushed to workers, FRAUD proofs."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._sync_index = IdIndex()
        self._refusals_reported: set[str] = set()
        self._forks_seen: set[bytes] = set()
        """Frozen authors already handled by ``report_forks``."""
        self.sync_wanted = trio.Event()
        """Set to make a worker's sync loop pull from its coordinators now."""
        self._owner_transfers: OwnerTransfers | None = None

    # ── our own entries ──────────────────────────────────────────────────────────────────────────────
    def append(self, entry: Entry) -> None:
        """Store an entry this node wrote (already applied to its ledger) and gossip it."""
        ctx = self._ctx
        assert ctx.store is not None and ctx.nursery is not None
        ctx.store.append(entry)
        ctx.nursery.start_soon(self.publish_entry, entry)

    async def publish_entry(self, entry: Entry) -> None:
        assert self._ctx.membership is not None
        try:
            await self._ctx.membership.gossip.publish_ledger(encode_entry(entry))
        except OpenGridError as exc:  # best effort: sync carries it later
            log.debug("ledger entry not gossiped: %s", exc)

    # ── sync ─────────────────────────────────────────────────────────────────────────────────────────
    async def serve_sync(self, stream: FrameStream) -> None:
        """A peer syncs its ledger with ours (both sides gain what they lack; everything is verified)."""
        assert self._ctx.ledger is not None
        session = SyncSession(self._ctx.ledger, self._sync_index, peer=stream.peer)
        try:
            with trio.fail_after(_SYNC_TIMEOUT_S):
                await ledger_sync.respond(stream, session)
        finally:
            self._store_synced(stream.peer, session)

    async def sync_ledger(self, peer: str) -> int:
        """Sync our ledger with ``peer``'s; return how many entries we gained (stored)."""
        assert self._ctx.host is not None and self._ctx.ledger is not None
        session = SyncSession(self._ctx.ledger, self._sync_index, peer=peer)
        stream = await self._ctx.host.open_stream(peer, SYNC_PROTOCOL)  # type: ignore[arg-type]
        try:
            with trio.fail_after(_SYNC_TIMEOUT_S):
                await ledger_sync.initiate(stream, session)
        finally:
            await stream.aclose()
            self._store_synced(peer, session)
        return len(session.applied)

    def _store_synced(self, peer: str, session: SyncSession) -> None:
        assert self._ctx.store is not None
        if session.applied:
            self._ctx.store.append_many(session.applied)
            log.info(
                "ledger sync with %s: %d new entr%s",
                short(peer),
                len(session.applied),
                "y" if len(session.applied) == 1 else "ies",
            )
        if session.refused:
            # Once per peer at WARNING: a peer holding entries we refuse (often receipts of a coordinator
            # we do not trust) offers them again at every sync.
            level = logging.DEBUG if peer in self._refusals_reported else logging.WARNING
            self._refusals_reported.add(peer)
            log.log(
                level,
                "ledger sync with %s: refused %d entries (first: %s)",
                short(peer),
                len(session.refused),
                session.refused[0][1],
            )
        if self._ctx.nursery is not None:
            self.report_forks()

    async def _sync_with(self, coordinators: Sequence[str]) -> None:
        """Sync with each coordinator in turn; a failure is logged and retried on the next round."""
        for peer in coordinators:
            try:
                await self.sync_ledger(peer)
            except (OpenGridError, trio.TooSlowError) as exc:
                log.info(
                    "ledger sync with coordinator %s failed (will retry): %s",
                    short(peer),
                    str(exc) or "timed out",
                )

    async def sync_loop(self, registered: trio.Event, coordinators: Callable[[], list[str]]) -> None:
        """Workers: keep our ledger in step with our coordinators' (receipts, holds, settlements), from
        our first registration on."""
        await registered.wait()
        while True:
            with trio.move_on_after(self._ctx.config.heartbeat_s * _SYNC_PERIOD_BEATS):
                await self.sync_wanted.wait()
            self.sync_wanted = trio.Event()
            await self._sync_with(coordinators())
            await trio.sleep(0.2)  # let a burst of receipts settle into one sync

    async def peer_sync_loop(self) -> None:
        """Coordinators: keep our ledger in step with every other minting coordinator we hear of on gossip
        (anti-entropy, spec/ledger.md §9): at once when one appears or returns (a healed partition), then
        every few heartbeats. Coordinators that do not mint in our ledger are skipped: their receipts
        would only be refused."""
        assert self._ctx.membership is not None and self._ctx.ledger is not None
        gossip, ledger = self._ctx.membership.gossip, self._ctx.ledger

        def minting_coordinators() -> set[str]:
            online = gossip.directory.online(trio.current_time(), role="coordinator")
            return {a.peer_id for a in online if a.public_key in ledger.minters()}

        while True:
            attempted = minting_coordinators()
            await self._sync_with(sorted(attempted))
            # Next round after a few beats, or as soon as a coordinator appears or returns (a healed
            # partition); one that went offline and came back is new again.
            with trio.move_on_after(self._ctx.config.heartbeat_s * _SYNC_PERIOD_BEATS):
                while not minting_coordinators() - attempted:
                    attempted &= minting_coordinators()
                    await gossip.changed.wait()

    # ── gossip: entries pushed as they are written ───────────────────────────────────────────────────
    def valid_gossip(self, sender: str, data: bytes) -> bool:
        """gossipsub validator (runs before delivery and forwarding): a signed entry of our network.
        Whether it applies (minter, chain, balance) is our ledger's call, made after delivery."""
        try:
            open_entry(decode_entry(data), self._ctx.config.network)
        except OpenGridError as exc:
            log.info("dropped a ledger gossip message from %s: %s", short(sender), exc)
            return False
        return True

    async def gossip_loop(self) -> None:
        assert self._ctx.membership is not None
        async for sender, data in self._ctx.membership.gossip.ledger_messages:
            self.take_gossiped_entry(sender, data)

    def take_gossiped_entry(self, sender: str, data: bytes) -> None:
        """Apply and store an entry delivered by gossip (nothing if it does not apply)."""
        assert self._ctx.ledger is not None and self._ctx.store is not None
        try:
            applied = self._ctx.ledger.apply(decode_entry(data))
        except OpenGridError as exc:  # e.g. minted by a coordinator we do not trust, or a fork
            log.debug("ledger entry from gossip (via %s) not applied: %s", short(sender), exc)
            applied = []
        if applied:
            self._ctx.store.append_many(applied)
        self.report_forks()

    # ── receipts pushed to a worker ──────────────────────────────────────────────────────────────────
    def on_receipts(self, peer: str, notice: ReceiptNotice) -> None:
        """Workers: apply and store the entries a coordinator pushed with its receipt notice."""
        ctx = self._ctx
        assert ctx.worker is not None and ctx.store is not None
        self.sync_wanted.set()  # pull what the notice cannot carry (e.g. a paying client's HOLD)
        applied = []
        for data in notice.entries:  # one at a time: a bad entry must not cost the good ones before it
            try:
                newly = ctx.worker.receive_entries([data])
            except OpenGridError as exc:
                log.warning("refused an entry from %s: %s", short(peer), exc)
                continue
            for entry in newly:
                ctx.store.append(entry)
            applied += newly
        self.report_forks()
        if applied:
            log.info(
                "stored %d ledger entr%s; my balance: %d points",
                len(applied),
                "y" if len(applied) == 1 else "ies",
                ctx.points(),
            )

    # ── transfers (spec/ledger.md §5.6, spec/job-protocol.md §5.19) ─────────────────────────────────
    def account_state(self, account: bytes, entry_id: bytes = b"") -> AccountState:
        """``account`` as our ledger holds it (``entry_id``: a transfer just applied, for its reply)."""
        ledger = self._ctx.ledger
        assert ledger is not None
        head = ledger.head(account)
        return AccountState(
            account=account,
            balance=ledger.balance(account),
            held=ledger.held(account),
            seq=head[0] if head is not None else 0,
            head=bytes(head[1]) if head is not None else b"",
            standing=ledger.has_standing(account),
            frozen=ledger.is_frozen(account),
            entry_id=entry_id,
        )

    def on_transfer(self, peer: str, request: TransferRequest) -> Message:
        """An account holder's signed TRANSFER (and, for a new account, its GRANT): applied only if it
        applies at once (``opengrid_ledger.transfers``), then stored and published on gossip; answered with
        the sender's account after it, or why not."""
        ctx = self._ctx
        ledger, store = ctx.ledger, ctx.store
        assert ledger is not None and store is not None
        network = ctx.config.network
        try:
            entry = decode_entry(request.entry)
            body = open_entry(entry, network)
        except OpenGridError as exc:
            return ErrorReply("malformed", f"the transfer is not a valid ledger entry: {exc}")
        applied: list[Entry] = []
        try:
            if request.grant:
                try:
                    grant = decode_entry(request.grant)
                    grant_body = open_entry(grant, network)
                except OpenGridError as exc:
                    return ErrorReply("malformed", f"the grant is not a valid ledger entry: {exc}")
                if not isinstance(grant_body.payload, Grant) or grant_body.author != body.author:
                    return ErrorReply(
                        "malformed", "the grant must be a GRANT entry authored by the transfer's sender"
                    )
                try:
                    applied += ledger.apply(grant)
                except OpenGridError as exc:
                    return ErrorReply("malformed", f"the ledger refused the grant: {exc}")
            refusal = intake_problem(ledger, entry, body, new_recipient=request.new_recipient)
            if refusal is not None:
                return ErrorReply(refusal.code, refusal.message)
            try:
                applied += ledger.apply(entry)
            except OpenGridError as exc:  # a fork (a second entry at a used seq), a broken chain
                self.report_forks()
                return ErrorReply("malformed", f"the ledger refused the transfer: {exc}")
        finally:
            # What was applied stays applied (a GRANT before a refused TRANSFER): store and publish it.
            if applied:
                store.append_many(applied)
                for done in applied:
                    if ctx.nursery is not None:
                        ctx.nursery.start_soon(self.publish_entry, done)
        if entry.id not in ledger:
            return ErrorReply(
                "malformed", "the transfer waits in the ledger for an earlier entry; sign again"
            )
        payload = body.payload
        assert isinstance(payload, Transfer)  # intake_problem took only a TRANSFER
        log.info(
            "took a transfer of %d points from %s to %s (via %s)",
            payload.amount,
            body.author.hex()[:16],
            payload.to.hex()[:16],
            short(peer),
        )
        return self.account_state(body.author, bytes(entry.id))

    def on_owner_transfer(self, request: OwnerTransfer) -> Message:
        """The node's owner sends points from the node's own account: checked (the node's key, fresh, not
        replayed), then written on our chain by its one writer, stored and published; answered with our
        account after it, or why not."""
        ctx = self._ctx
        ledger, chain, host = ctx.ledger, ctx.chain, ctx.host
        assert ledger is not None and chain is not None and host is not None
        if self._owner_transfers is None:
            self._owner_transfers = OwnerTransfers(
                network=ctx.config.network, peer_id=host.peer_id, public_key=ctx.public_key
            )
        refusal = self._owner_transfers.decide(request, now_ms=time.time_ns() // 1_000_000)
        if refusal is not None:
            return refusal.reply()
        me = ctx.public_key
        problem = memo_problem(request.memo)
        if request.to == me:
            problem = "the node's account cannot send points to itself"
        if problem:
            return ErrorReply("malformed", problem)
        if ledger.is_frozen(me):
            return ErrorReply(
                "malformed", "this node's account is frozen after a fork; it cannot send points"
            )
        if ctx.chain_reserved:
            return ErrorReply(
                "busy",
                "a paid API job of this node holds its chain's next entry (its HOLD); a transfer now would "
                "fork the account. Try again when that job has finished",
            )
        head, applied_head = chain.head(), ledger.head(me)
        if head is not None and (applied_head is None or head[0] > applied_head[0]):
            return ErrorReply(
                "busy",
                f"this node's chain has an entry that waits (seq {head[0]}); a transfer now would wait "
                "behind it. Try again once it applies",
            )
        refused = spend_problem(ledger, me, request.to, request.amount, new_recipient=request.new_recipient)
        if refused is not None:
            return ErrorReply(refused.code, refused.message)
        try:
            entry, applied = chain.write(Transfer(to=request.to, amount=request.amount, memo=request.memo))
        except OpenGridError as exc:
            return ErrorReply("malformed", f"the ledger refused the transfer: {exc}")
        self.append_applied(applied, entry)
        log.info("sent %d points to %s, as the owner asked", request.amount, request.to.hex()[:16])
        return self.account_state(me, bytes(entry.id))

    def append_applied(self, applied: list[Entry], entry: Entry) -> None:
        """Store what one of our writes applied, publish the entry, and have a worker's sync loop push it
        to its coordinators now (gossip is best effort)."""
        ctx = self._ctx
        assert ctx.store is not None and ctx.nursery is not None
        ctx.store.append_many(applied)
        ctx.nursery.start_soon(self.publish_entry, entry)
        self.sync_wanted.set()

    # ── forks ────────────────────────────────────────────────────────────────────────────────────────
    def report_forks(self) -> None:
        """Publish a FRAUD proof for each author our ledger froze for signing two entries with one seq,
        unless one is known already (spec/ledger.md §4, §5.9): nodes that saw one branch only then cut the
        forker too. Only forkers with standing get one (spec/ledger.md §6.3); ours goes on our own chain."""
        ctx = self._ctx
        assert ctx.ledger is not None and ctx.store is not None and ctx.nursery is not None
        assert ctx.chain is not None
        ledger = ctx.ledger
        frozen = ledger.proven()  # forkers with standing: no proof is made for free keys' forks
        if len(frozen) == len(self._forks_seen):
            return
        fresh = sorted(set(frozen) - self._forks_seen)
        if ctx.chain_reserved:
            return  # a paid API job's HOLD may hold our next seq (api_payment.py): made on a later round
        if not ledger.has_standing(ctx.public_key):
            # Our FRAUD would wait for our standing (spec/ledger.md §5.9) and every later entry of our chain
            # behind it: a candidate coordinator's ADMIT would then never apply. Retried once we have it.
            return
        self._forks_seen.update(fresh)
        # A fork is rare: scanning the ledger for proofs someone else published is affordable then.
        payloads = (decode_body(e.body).payload for e in ledger.entries())
        proven = {decode_body(decode_entry(p.first).body).author for p in payloads if isinstance(p, Fraud)}
        for author in fresh:
            payload = ledger.fraud_payload(author)
            if payload is None or author in proven or author == ctx.public_key:
                continue
            try:  # through the node's one chain writer: the coordinator's next receipt follows it
                entry, _ = ctx.chain.write(payload)
            except OpenGridError as exc:  # e.g. the two entries do not fit one entry's size limit
                log.warning("fork by %s found, but no FRAUD proof could be made: %s", author.hex()[:16], exc)
                continue
            self.append(entry)
            log.warning(
                "%s signed two different ledger entries with one seq: frozen, FRAUD proof published",
                author.hex()[:16],
            )

    # ── coordinator admission (ADMIT entries) ────────────────────────────────────────────────────────
    def start_admission(self, nursery: trio.Nursery) -> None:
        """Coordinators of a network whose genesis fixes the coordinator set: vote on candidates, and
        seek our own admission while we are one (opengrid/node/coordinator_admission.py)."""
        ctx = self._ctx
        assert ctx.ledger is not None and ctx.host is not None and ctx.membership is not None
        assert ctx.chain is not None
        if not ctx.ledger.closed:
            return
        host, gossip, store = ctx.host, ctx.membership.gossip, ctx.store
        assert store is not None

        def coordinators() -> list[tuple[str, bytes]]:
            online = gossip.directory.online(trio.current_time(), role="coordinator")
            return [(a.peer_id, a.public_key) for a in online if a.peer_id != host.peer_id]

        def append(applied: list[Entry], entry: Entry) -> None:
            store.append_many(applied)
            nursery.start_soon(self.publish_entry, entry)

        ctx.admission = CoordinatorAdmission(
            network=ctx.config.network,
            signing_key=ctx.key,
            chain=ctx.chain,
            data_dir=ctx.config.data_dir,
            request=host.request,
            coordinators=coordinators,
            append=append,
            period_s=2 * ctx.config.heartbeat_s,
            auto_min_jobs=ctx.config.admit_after_jobs,
        )
        nursery.start_soon(ctx.admission.run)
