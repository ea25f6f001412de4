"""Taking a TRANSFER from its author on a live node (spec/ledger.md §5.6).

The ledger's rules already make a spend safe everywhere: a TRANSFER that would overdraw its author waits
(it is never applied with a negative result, on any node, whatever the order entries arrive in), and two
entries of one author with one seq are a fork that cuts the author on every node (§4, §6.2). A node that
takes a transfer straight from a client goes one step further, so the client gets a definite answer now
instead of an entry that waits in the pool and may apply hours later: it takes the entry only if it
applies *at once* on its ledger. :func:`intake_problem` is that decision, a pure function of the ledger
and the entry; the node applies the entry only when it returns None.

What it does not refuse: an entry at a seq the author has already used with another entry. Signing two
entries with one seq is exactly the double spend the chain exists to expose, so the node applies it and
the ledger records the fork (the author is frozen and a FRAUD proof follows, §5.9), rather than keeping
quiet about it.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from .entries import Entry, EntryBody
from .payloads import Transfer
from .state import LedgerState

IntakeCode = Literal["malformed", "insufficient_balance", "unknown_account"]


class IntakeRefusal(msgspec.Struct, frozen=True):
    """Why a node does not take a client's TRANSFER now (``code`` as in the job protocol's errors)."""

    code: IntakeCode
    message: str


def intake_problem(
    ledger: LedgerState, entry: Entry, body: EntryBody, *, new_recipient: bool = False
) -> IntakeRefusal | None:
    """None if ``entry`` (opened: ``body`` is its verified body) is a TRANSFER this node should apply now;
    otherwise why not. ``new_recipient``: the sender knows the recipient has no standing on the ledger yet
    (a fresh account); without it such a recipient is refused as unknown, because points sent to a
    mistyped key are lost for good."""
    payload = body.payload
    if not isinstance(payload, Transfer):
        return IntakeRefusal(
            "malformed",
            f"only TRANSFER entries are taken this way, not {type(payload).__name__.upper()} (a HOLD goes "
            "with the job it pays for)",
        )
    author = body.author
    if ledger.is_frozen(author):
        cut = ledger.frozen()[author]
        return IntakeRefusal(
            "malformed",
            f"account {author.hex()} is frozen from seq {cut} on: it signed two different ledger entries "
            "with one seq (a fork); its later entries are refused on every node",
        )
    if entry.id in ledger:
        return None  # already applied (a retry): taking it again changes nothing
    head = ledger.head(author)
    head_seq = head[0] if head is not None else 0
    if body.seq > head_seq + 1:
        return IntakeRefusal(
            "malformed",
            f"transfer is seq {body.seq} of account {author.hex()}, but this node holds its chain only up to "
            f"seq {head_seq}; send it to the node that took seq {head_seq + 1}, or wait for ledger sync to "
            "bring those entries here and sign again",
        )
    if body.seq <= head_seq:
        return None  # a second entry at a used seq: applying it proves the fork (module docstring)
    return spend_problem(ledger, author, payload.to, payload.amount, new_recipient=new_recipient)


def spend_problem(
    ledger: LedgerState, author: bytes, to: bytes, amount: int, *, new_recipient: bool = False
) -> IntakeRefusal | None:
    """Why ``author``'s next entry, a TRANSFER of ``amount`` to ``to``, would not apply at once on
    ``ledger`` (or would go to an unknown account), or None: the balance and recipient checks shared by a
    client's transfer (:func:`intake_problem`) and a node's own."""
    balance = ledger.balance(author)
    if amount > balance:
        held = ledger.held(author)
        return IntakeRefusal(
            "insufficient_balance",
            f"account {author.hex()} has {balance} spendable points here"
            + (f" ({held} more on hold for jobs in flight)" if held else "")
            + f"; the transfer is {amount}. Send at most {balance}",
        )
    if not new_recipient and not ledger.has_standing(to):
        return IntakeRefusal(
            "unknown_account",
            f"account {to.hex()} has never appeared on this ledger (no entry, no credit, not a "
            "coordinator): check the recipient, or confirm it is a new account (new_recipient=True, "
            "--new-recipient) — points sent to a mistyped key are lost",
        )
    return None
