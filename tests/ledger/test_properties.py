"""Property tests over every payload kind (spec/ledger.md §6): any delivery order, any duplication and any
split give the same state, forks included; honest accounts never go negative; no point without a mint."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from ledger_factory import (
    COORDINATOR,
    GENESIS,
    NETWORK,
    OTHER_COORDINATOR,
    THIRD_COORDINATOR,
    USERS,
    WORKERS,
    Author,
    admit,
    grant,
    job_id,
    key,
    make_receipt,
    pub,
    raw_sign,
)
from opengrid_ledger import (
    Credit,
    Entry,
    Evidence,
    Grant,
    Hold,
    LedgerState,
    Receipt,
    Refund,
    Settle,
    Transfer,
    decode_body,
    make_fraud,
    sign_grant_voucher,
)

from opengrid.errors import InvalidEntryError

PROPERTY = settings(max_examples=40, derandomize=True, database=None, deadline=None)
NEWCOMER = key(50)


@st.composite
def scenarios(draw: st.DrawFn) -> list[Entry]:
    """Entries of every kind with real cross-author dependencies, some waiting forever, maybe a fork."""
    coordinators = [Author(COORDINATOR), Author(OTHER_COORDINATOR)]
    users = [Author(k) for k in USERS[:3]]
    entries = [grant(user) for user in users]
    holds: list[tuple[Entry, int, int]] = []  # (hold, amount, job)
    job = 0
    if draw(st.booleans()):
        entries.append(admit(Author(key(60)), pub(NEWCOMER), 0, [COORDINATOR, THIRD_COORDINATOR]))
        coordinators.append(Author(NEWCOMER))
    for _ in range(draw(st.integers(2, 10))):
        kind = draw(st.sampled_from(["receipt", "hold", "close", "transfer", "evidence"]))
        coordinator = draw(st.sampled_from(coordinators))
        if kind == "receipt":
            job += 1
            workers = draw(
                st.lists(st.sampled_from(WORKERS + USERS[:2]), min_size=1, max_size=2, unique_by=pub)
            )
            entries.append(
                coordinator.append(
                    make_receipt(job_id(job), [(w, draw(st.integers(1, 80))) for w in workers])
                )
            )
        elif kind == "hold":
            job += 1
            amount = draw(st.integers(1, 150))  # may exceed the balance: then it waits
            hold = draw(st.sampled_from(users)).append(Hold(job_id(job), amount, pub(COORDINATOR)))
            entries.append(hold)
            holds.append((hold, amount, job))
            if draw(st.booleans()):
                receipt = make_receipt(job_id(job), [(WORKERS[0], 1), (WORKERS[1], 1)])
                entries.append(coordinators[0].append(receipt))
        elif kind == "close" and holds:
            hold, amount, _ = holds.pop(draw(st.integers(0, len(holds) - 1)))
            if draw(st.booleans()):
                entries.append(coordinators[0].append(Refund(hold.id)))
            else:
                pay = draw(st.integers(1, amount))
                entries.append(coordinators[0].append(Settle(hold.id, (Credit(pub(WORKERS[0]), pay),))))
        elif kind == "transfer":
            source, target = draw(st.permutations(users))[:2]
            entries.append(source.append(Transfer(pub(target.key), draw(st.integers(1, 120)))))
        elif kind == "evidence":
            job += 1
            valid = draw(st.lists(st.sampled_from(WORKERS), max_size=2, unique_by=pub))
            timeout = [w for w in WORKERS[3:] if w not in valid]
            entries.append(
                coordinator.append(
                    Evidence(job_id(job), tuple(map(pub, valid)), (), tuple(map(pub, timeout)))
                )
            )
    if draw(st.booleans()):
        # User 0 double-spends: a second branch from one of its seqs, and maybe a FRAUD entry about it.
        forker = users[0]
        own = [e for e in entries if decode_body(e.body).author == pub(forker.key)]
        at = draw(st.integers(1, len(own)))
        branch = Author(forker.key)
        branch.seq, branch.prev = at - 1, (own[at - 2].id if at > 1 else b"")
        voucher = sign_grant_voucher(OTHER_COORDINATOR, NETWORK, pub(forker.key), 100)
        payload = Transfer(pub(USERS[3]), 1) if at > 1 else Grant(100, voucher)
        fork = branch.append(payload, checked=False)
        entries.append(fork)
        if draw(st.booleans()):
            entries.append(Author(WORKERS[4]).append(make_fraud(own[at - 1], fork)))
    return entries


def fold(entries: list[Entry]) -> LedgerState:
    """Apply in the given order, re-offering refused entries until nothing changes (as sync re-fetches)."""
    ledger = LedgerState.from_genesis(GENESIS)
    todo = list(entries)
    while todo:
        before = (len(ledger), len(ledger.pending()), len(ledger.frozen()))
        again = []
        for entry in todo:
            try:
                ledger.apply(entry)
            except InvalidEntryError:
                again.append(entry)
        if (len(ledger), len(ledger.pending()), len(ledger.frozen())) == before:
            break
        todo = again
    return ledger


def summary(ledger: LedgerState) -> tuple[object, ...]:
    accounts = [pub(k) for k in [*USERS, *WORKERS]]
    return (
        ledger.balances(),
        [ledger.held(a) for a in accounts],
        [ledger.reputation(a) for a in accounts],
        ledger.heads(),
        ledger.frozen(),
        ledger.minted(),
        sorted(e.id for e in ledger.entries()),
        sorted(e.id for e in ledger.pending()),
        ledger.minters(),
    )


@PROPERTY
@given(st.data())
def test_any_order_and_duplication_give_the_same_state(data: st.DataObject) -> None:
    entries = data.draw(scenarios())
    reference = summary(fold(entries))
    duplicates = data.draw(st.lists(st.sampled_from(entries), max_size=6))
    shuffled = data.draw(st.permutations(entries + duplicates))
    assert summary(fold(shuffled)) == reference


@PROPERTY
@given(st.data())
def test_merging_partial_states_gives_the_whole(data: st.DataObject) -> None:
    entries = data.draw(scenarios())
    sides = data.draw(st.lists(st.sampled_from("ab+"), min_size=len(entries), max_size=len(entries)))
    left = [e for e, s in zip(entries, sides, strict=True) if s in "a+"]
    right = [e for e, s in zip(entries, sides, strict=True) if s in "b+"]
    whole = summary(fold(entries))
    # Merge = union of what each side holds (applied, waiting and fork evidence), in either order.
    for first, second in ((left, right), (right, left)):
        held = fold(first)
        known = (
            held.entries()
            + held.pending()
            + [e for pair in map(held.fork_evidence, held.frozen()) if pair for e in pair]
        )
        assert summary(fold(known + data.draw(st.permutations(second)))) == whole


class LedgerMachine(RuleBasedStateMachine):
    """Honest users and coordinators next to malicious authors; checks the invariants after each step."""

    @initialize()
    def setup(self) -> None:
        self.ledger = LedgerState.from_genesis(GENESIS)
        self.job = 0
        self.open_holds: list[tuple[Entry, int]] = []
        self.honest_users = [pub(k) for k in USERS[:3]]
        self.keys = {pub(k): k for k in [*USERS, *WORKERS, COORDINATOR, OTHER_COORDINATOR, key(70)]}
        for user in USERS[:3]:
            self._honest(user, self._grant_payload(user))

    # -- helpers --------------------------------------------------------------------------------------

    def _grant_payload(self, user: object) -> Grant:
        account = pub(user)  # type: ignore[arg-type]
        return Grant(100, sign_grant_voucher(COORDINATOR, NETWORK, account, 100))

    def _honest(self, signer: object, payload: object) -> list[Entry]:
        body = self.ledger.next_body(pub(signer), payload)  # type: ignore[arg-type]
        return self.ledger.apply(raw_sign(signer, body))  # type: ignore[arg-type]

    def _idle(self, signer: object) -> bool:
        """No waiting entry (a waiting one holds the next seq: appending again would fork)."""
        author = pub(signer)  # type: ignore[arg-type]
        return all(decode_body(e.body).author != author for e in self.ledger.pending())

    def _refused(self, entry: Entry, match: str) -> None:
        with pytest.raises(InvalidEntryError, match=match):
            self.ledger.apply(entry)

    # -- honest ---------------------------------------------------------------------------------------

    @rule(
        workers=st.lists(st.sampled_from(WORKERS), min_size=1, max_size=3, unique_by=pub),
        points=st.integers(1, 50),
    )
    def receipt(self, workers: list[object], points: int) -> None:
        self.job += 1
        self._honest(COORDINATOR, make_receipt(job_id(self.job), [(w, points) for w in workers]))  # type: ignore[misc]

    @rule(user=st.sampled_from(USERS[:3]), fraction=st.floats(0.1, 1.0))
    def hold(self, user: object, fraction: float) -> None:
        amount = int(self.ledger.balance(pub(user)) * fraction)  # type: ignore[arg-type]
        if amount < 1 or not self._idle(user):
            return
        self.job += 1
        applied = self._honest(user, Hold(job_id(self.job), amount, pub(COORDINATOR)))
        self.open_holds.append((applied[0], self.job))

    @precondition(lambda self: self.open_holds)
    @rule(pay=st.booleans(), which=st.integers(0, 50))
    def close(self, pay: bool, which: int) -> None:
        hold, job = self.open_holds.pop(which % len(self.open_holds))
        if pay:
            self._honest(COORDINATOR, make_receipt(job_id(job), [(WORKERS[0], 1)]))
            amount = self.ledger.hold(hold.id).amount  # type: ignore[union-attr]
            self._honest(COORDINATOR, Settle(hold.id, (Credit(pub(WORKERS[0]), amount // 2 + 1),)))
        else:
            self._honest(COORDINATOR, Refund(hold.id))

    @rule(
        source=st.sampled_from(USERS[:3]),
        recipient=st.sampled_from(USERS[:4] + WORKERS[:1]),
        fraction=st.floats(0.1, 1.0),
    )
    def transfer(self, source: object, recipient: object, fraction: float) -> None:
        amount = int(self.ledger.balance(pub(source)) * fraction)  # type: ignore[arg-type]
        if amount >= 1 and source is not recipient and self._idle(source):
            self._honest(source, Transfer(pub(recipient), amount))  # type: ignore[arg-type]

    # -- malicious ------------------------------------------------------------------------------------

    @rule(index=st.integers(0, 10**6))
    def forged_signature(self, index: int) -> None:
        body = self.ledger.next_body(pub(COORDINATOR), make_receipt(job_id(10**6), [(key(70), 10**6)]))
        entry = raw_sign(COORDINATOR, body)
        signature = bytearray(entry.signature)
        signature[index % 64] ^= 1 << (index % 8)
        self._refused(Entry(entry.body, bytes(signature)), "bad signature")

    @rule()
    def mint_by_non_coordinator(self) -> None:
        body = self.ledger.next_body(pub(WORKERS[2]), make_receipt(job_id(10**6), [(WORKERS[2], 10**6)]))
        self._refused(raw_sign(WORKERS[2], body), "not a minter")

    @rule()
    def cross_network_replay(self) -> None:
        thief = Author(key(70), network="othernet")
        self._refused(thief.append(Transfer(pub(key(70)), 1), checked=False), "network")

    @precondition(lambda self: self.ledger.receipt_for(job_id(1)) is not None)
    @rule()
    def duplicate_receipt(self) -> None:
        receipt = decode_body(self.ledger.receipt_for(job_id(1)).body).payload  # type: ignore[union-attr]
        body = self.ledger.next_body(pub(OTHER_COORDINATOR), receipt)
        if self._idle(OTHER_COORDINATOR):
            self._refused(raw_sign(OTHER_COORDINATOR, body), "already credited")

    @precondition(lambda self: self.open_holds)
    @rule()
    def spend_without_hold(self) -> None:
        hold, _ = self.open_holds[0]
        body = self.ledger.next_body(pub(OTHER_COORDINATOR), Settle(hold.id, (Credit(pub(key(70)), 1),)))
        if self._idle(OTHER_COORDINATOR):
            self._refused(raw_sign(OTHER_COORDINATOR, body), "only it may close")

    @rule(amount=st.integers(1, 10**6))
    def overspend(self, amount: int) -> None:
        # A malicious account with nothing spends anyway: the entry waits forever, nothing moves.
        thief = key(71)
        if self._idle(thief):
            self._honest(thief, Transfer(pub(key(70)), amount))

    @rule(amount=st.integers(1, 200))
    def double_spend(self, amount: int) -> None:
        # A malicious account with a grant pays two honest users with one seq, then is caught.
        cheat = key(72)
        if self.ledger.is_frozen(pub(cheat)):
            return
        if self.ledger.head(pub(cheat)) is None:
            self._honest(cheat, self._grant_payload(cheat))
            if not self._idle(cheat):
                return
        body = self.ledger.next_body(pub(cheat), Transfer(pub(USERS[0]), amount))
        self.ledger.apply(raw_sign(cheat, body))
        twin = msgspec.structs.replace(body, payload=Transfer(pub(USERS[1]), amount))
        with pytest.raises(InvalidEntryError, match="fork"):
            self.ledger.apply(raw_sign(cheat, twin))

    # -- invariants -----------------------------------------------------------------------------------

    @invariant()
    def no_negative_balance(self) -> None:
        for account, points in self.ledger.balances().items():
            assert points > 0, account.hex()
        assert all(self.ledger.held(a) >= 0 for a in self.keys)

    @invariant()
    def every_point_was_minted_by_a_receipt_or_grant(self) -> None:
        minted = 0
        for entry in self.ledger.entries():
            payload = decode_body(entry.body).payload
            if isinstance(payload, Receipt):
                minted += sum(c.points for c in payload.credits)
            elif isinstance(payload, Grant):
                minted += payload.points
        total = sum(self.ledger.balances().values()) + sum(self.ledger.held(a) for a in self.keys)
        assert total == minted == self.ledger.minted()
        assert self.ledger.balance(pub(key(70))) == self.ledger.balance(pub(key(71))) == 0

    @invariant()
    def replay_from_scratch_agrees(self) -> None:
        fresh = fold(self.ledger.entries() + self.ledger.pending())
        assert fresh.balances() == self.ledger.balances() or self.ledger.frozen()


LedgerMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=25, derandomize=True, database=None, deadline=None
)
TestLedgerMachine = LedgerMachine.TestCase
