"""TRANSFER on the ledger (spec/ledger.md §5.6): the memo's rules, history both ways, what a live node takes
from a client (``intake_problem``), and no double spend — an account's spends are ordered by its own chain,
an overdraft never applies anywhere, and two branches at one seq leave at most one standing (here: none,
the account is cut at the fork) on every node, whatever the order entries arrive in."""

from __future__ import annotations

import copy
import random
import re

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_factory import GENESIS, GRANT, USERS, WORKERS, Author, grant, key, make_receipt, pub, raw_sign
from opengrid_ledger import (
    MAX_MEMO_CHARS,
    Entry,
    Hold,
    LedgerState,
    Transfer,
    decode_body,
    intake_problem,
    memo_problem,
    sign_entry,
)
from opengrid_ledger.payloads import check_payload

from opengrid.errors import InvalidEntryError

PROPERTY = settings(max_examples=60, derandomize=True, database=None, deadline=None)
SENDER = USERS[0]
ALICE, BOB = pub(USERS[1]), pub(USERS[2])


def funded() -> tuple[LedgerState, Author]:
    ledger = LedgerState.from_genesis(GENESIS)
    sender = Author(SENDER)
    ledger.apply(grant(sender))
    return ledger, sender


# ── the memo ─────────────────────────────────────────────────────────────────────────────────────────


def test_a_transfer_without_a_memo_keeps_its_bytes() -> None:
    """``memo`` was added with a default and goes last: old TRANSFER bodies keep their bytes and ids."""
    encoded = msgspec.msgpack.encode(Transfer(ALICE, 5))
    assert encoded == msgspec.msgpack.encode({"type": "transfer", "to": ALICE, "amount": 5})
    assert b"memo" in msgspec.msgpack.encode(Transfer(ALICE, 5, memo="x"))


@pytest.mark.parametrize(
    ("memo", "problem"),
    [
        ("", ""),
        ("thanks for the docs — ✓ 🚀", ""),
        ("x" * MAX_MEMO_CHARS, ""),
        ("x" * (MAX_MEMO_CHARS + 1), "257 characters"),
        ("two\nlines", "U+000A"),
        ("\x1b[2Jcleared", "U+001B"),
        ("pay \u202eevil", "U+202E"),
    ],
)
def test_memo_rules(memo: str, problem: str) -> None:
    assert (problem in memo_problem(memo)) and (bool(memo_problem(memo)) == bool(problem))
    payload = Transfer(ALICE, 1, memo=memo)
    if problem:
        with pytest.raises(InvalidEntryError, match=re.escape(problem)):
            check_payload(payload, GENESIS.network, pub(SENDER))
    else:
        check_payload(payload, GENESIS.network, pub(SENDER))


def test_a_signed_entry_with_a_bad_memo_is_refused_by_every_ledger() -> None:
    ledger, sender = funded()
    body = sender.body(Transfer(ALICE, 1, memo="\x07bell"))
    with pytest.raises(InvalidEntryError, match="control character"):
        sign_entry(SENDER, body)  # the reference signer refuses what a ledger would refuse
    with pytest.raises(InvalidEntryError, match="control character"):
        ledger.apply(raw_sign(SENDER, body))


# ── history both ways ────────────────────────────────────────────────────────────────────────────────


def test_history_shows_transfers_sent_and_received_with_counterparty_and_memo() -> None:
    ledger, sender = funded()
    sent = sender.append(Transfer(ALICE, 30, memo="for the docs"))
    ledger.apply(sent)
    alice = Author(USERS[1])
    back = alice.append(Transfer(pub(SENDER), 5, memo="change"))
    ledger.apply(back)
    mine = [(i.kind, i.delta, i.counterparty, i.memo) for i in ledger.history(pub(SENDER))]
    assert mine == [
        ("grant", GRANT, b"", ""),
        ("transfer", -30, ALICE, "for the docs"),
        ("transfer", 5, ALICE, "change"),
    ]
    theirs = [(i.kind, i.delta, i.counterparty, i.memo) for i in ledger.history(ALICE)]
    assert theirs == [("transfer", 30, pub(SENDER), "for the docs"), ("transfer", -5, pub(SENDER), "change")]


# ── what a live node takes from a client ──────────────────────────────────────────────────────────────


def test_intake_takes_only_a_transfer_that_applies_at_once() -> None:
    ledger, sender = funded()
    known = Author(USERS[1])
    ledger.apply(grant(known))

    def problem(entry: Entry, *, new_recipient: bool = False) -> str | None:
        refusal = intake_problem(ledger, entry, decode_body(entry.body), new_recipient=new_recipient)
        return None if refusal is None else f"{refusal.code}: {refusal.message}"

    hold = Author(SENDER)
    hold.seq, hold.prev = sender.seq, sender.prev
    assert "only TRANSFER" in (problem(hold.append(Hold(b"\x01" * 16, 5, pub(WORKERS[0])))) or "")
    too_much = copy.copy(sender).append(Transfer(ALICE, GRANT + 1))
    assert problem(too_much) == (
        f"insufficient_balance: account {pub(SENDER).hex()} has {GRANT} spendable points here; the "
        f"transfer is {GRANT + 1}. Send at most {GRANT}"
    )
    stranger = copy.copy(sender).append(Transfer(pub(key(999)), 1))
    assert (problem(stranger) or "").startswith("unknown_account")
    assert problem(stranger, new_recipient=True) is None
    ahead = copy.copy(sender)
    ahead.append(Transfer(ALICE, 1))
    assert "holds its chain only up to seq 1" in (problem(ahead.append(Transfer(ALICE, 1))) or "")
    good = sender.append(Transfer(ALICE, 10))
    assert problem(good) is None
    assert ledger.apply(good) == [good]
    assert problem(good) is None  # a retry of an applied entry: taken again, changes nothing
    assert ledger.apply(good) == []
    # a second entry at a used seq is not refused quietly: applying it proves the fork
    twin = Author(SENDER)
    twin.seq, twin.prev = 1, decode_body(good.body).prev
    double = twin.append(Transfer(BOB, 10))
    assert problem(double) is None
    with pytest.raises(InvalidEntryError, match="fork"):
        ledger.apply(double)
    assert ledger.is_frozen(pub(SENDER)) and ledger.balance(ALICE) == GRANT  # known's grant only
    assert (problem(sender.append(Transfer(ALICE, 1))) or "").startswith("malformed: account")


# ── no double spend ──────────────────────────────────────────────────────────────────────────────────


@st.composite
def spends(draw: st.DrawFn) -> list[tuple[int, int]]:
    """A chain of (recipient index, amount) spends, some of which overdraw."""
    return draw(st.lists(st.tuples(st.integers(0, 2), st.integers(1, GRANT)), min_size=1, max_size=6))


RECIPIENTS = [ALICE, BOB, pub(USERS[3])]


def chain_of(author: Author, plan: list[tuple[int, int]]) -> list[Entry]:
    return [author.append(Transfer(RECIPIENTS[r], amount)) for r, amount in plan]


@PROPERTY
@given(plan=spends(), seed=st.integers(0, 2**32 - 1), credit=st.integers(0, 200))
def test_an_overdraft_never_applies_and_every_order_gives_one_state(
    plan: list[tuple[int, int]], seed: int, credit: int
) -> None:
    """One account's transfers, some above what it has, and maybe a credit that arrives later: in any
    order, every node applies the same prefix of the chain, never more than the account received."""
    sender = Author(SENDER)
    entries = [grant(sender), *chain_of(sender, plan)]
    coordinator = Author(key(1))
    if credit:
        entries.append(coordinator.append(make_receipt(b"\x09" * 16, [(SENDER, credit)])))
    states = []
    rng = random.Random(seed)
    for _ in range(3):
        ledger = LedgerState.from_genesis(GENESIS)
        order = entries[:]
        rng.shuffle(order)
        for entry in order + order[: len(order) // 2]:  # duplicates too
            try:
                ledger.apply(entry)
            except InvalidEntryError:
                pass
        states.append((ledger.balances(), ledger.heads(), len(ledger.pending())))
        assert all(points >= 0 for points in ledger.balances().values())
        sent = sum(-i.delta for i in ledger.history(pub(SENDER)) if i.kind == "transfer")
        assert sent <= GRANT + credit
        # the applied part is exactly the longest affordable prefix of the chain
        budget, expected = GRANT + credit, 0
        for _, amount in plan:
            if amount > budget:
                break
            budget, expected = budget - amount, expected + amount
        assert sent == expected
    assert states[0] == states[1] == states[2]


@PROPERTY
@given(left=spends(), right=spends(), seed=st.integers(0, 2**32 - 1))
def test_a_double_spend_across_a_partition_leaves_no_branch_standing(
    left: list[tuple[int, int]], right: list[tuple[int, int]], seed: int
) -> None:
    """The same account spends on both sides of a partition: the two sides sign different entries at seq 2.
    Each side applies its own branch; once the sides merge (any order), both hold the same state, the
    account is cut at seq 2 on both, and nothing either branch sent stands: at most one branch (here none)."""
    sender = Author(SENDER)
    start = grant(sender)
    twin = copy.copy(sender)
    branch_a, branch_b = chain_of(sender, left), chain_of(twin, right)
    if branch_a[0].id == branch_b[0].id:
        return  # the same spend on both sides is no fork (hypothesis may draw equal plans)
    side_a, side_b = LedgerState.from_genesis(GENESIS), LedgerState.from_genesis(GENESIS)
    for ledger, branch in ((side_a, branch_a), (side_b, branch_b)):
        for entry in [start, *branch]:
            ledger.apply(entry)
        assert not ledger.is_frozen(pub(SENDER))
    rng = random.Random(seed)
    for ledger, other in ((side_a, branch_b), (side_b, branch_a)):
        incoming = [start, *other]
        rng.shuffle(incoming)
        for entry in incoming:
            try:
                ledger.apply(entry)
            except InvalidEntryError:
                pass
    for ledger in (side_a, side_b):
        assert ledger.frozen() == {pub(SENDER): 2}
        assert ledger.fork_evidence(pub(SENDER)) is not None
        assert ledger.balance(pub(SENDER)) == GRANT
        assert all(ledger.balance(r) == 0 for r in RECIPIENTS)
    assert side_a.balances() == side_b.balances() and side_a.heads() == side_b.heads()
