"""Sending points: the checks a transfer passes before anything is signed, and what comes back.

A transfer is a TRANSFER entry (spec/ledger.md §5.6) signed by the sender as the next link of its own
chain. ``Client.transfer`` writes it for the client's identity and hands it to a coordinator, which applies
it only if it applies at once there (enough spendable points, the chain in step) and publishes it;
``Client.send_from_node`` asks a node to write one from the node's own account, on the node's own chain.
"""

from __future__ import annotations

from dataclasses import dataclass

from opengrid_ledger import memo_problem

from opengrid.errors import (
    InsufficientBalanceError,
    InvalidAmountError,
    InvalidMemoError,
    InvalidRecipientError,
    OpenGridError,
    TransferError,
    UnknownRecipientError,
)
from opengrid.net.keys import public_key_of
from opengrid.wire.messages import MAX_POINTS, AccountState, ErrorReply


@dataclass(frozen=True)
class AccountInfo:
    """An account as one node's ledger holds it (``Client.account_info``)."""

    account: bytes
    balance: int
    """Spendable points."""
    held: int
    """Points on hold for jobs in flight (not spendable until settled or refunded)."""
    seq: int
    """Entries on the account's own chain (its next entry is ``seq + 1``)."""
    standing: bool
    """Known to the ledger: a coordinator, has entries, or was ever credited."""
    frozen: bool
    """Caught signing two entries with one seq (a fork): its later entries are refused everywhere."""
    node: str
    """Peer id of the node that answered."""


@dataclass(frozen=True)
class TransferReceipt:
    """A transfer a node applied to its ledger (and published to the network)."""

    entry_id: bytes
    """The TRANSFER entry's id."""
    sender: bytes
    to: bytes
    points: int
    memo: str
    balance: int
    """The sender's spendable points after it, on the node that took it."""
    node: str
    """Peer id of the node that applied it."""


def recipient_key(to: str | bytes) -> bytes:
    """The 32-byte account key named by ``to``: raw key bytes, 64 hex digits, or a libp2p peer id (a
    node's account is its peer id's key). Raises ``InvalidRecipientError`` for anything else."""
    if isinstance(to, bytes):
        if len(to) != 32:
            raise InvalidRecipientError(f"a recipient key is 32 bytes, got {len(to)}")
        return to
    text = to.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    try:
        return public_key_of(text)
    except OpenGridError:
        raise InvalidRecipientError(
            f"recipient {to!r} is neither an account key (64 hex digits) nor a peer id (12D3KooW...); "
            "`opengrid ledger balance` and the wallet's Node tab show an account's key"
        ) from None


def check_transfer(points: object, memo: object) -> None:
    """Raise ``InvalidAmountError`` or ``InvalidMemoError`` unless ``points`` and ``memo`` can travel."""
    if type(points) is not int or not 1 <= points <= MAX_POINTS:
        raise InvalidAmountError(f"points must be a whole number from 1 to {MAX_POINTS}, got {points!r}")
    if not isinstance(memo, str):
        raise InvalidMemoError(f"the memo must be text, got {type(memo).__name__}")
    problem = memo_problem(memo)
    if problem:
        raise InvalidMemoError(problem)


def account_info(reply: AccountState, node: str) -> AccountInfo:
    """The SDK's view of a node's ``AccountState``."""
    return AccountInfo(
        account=reply.account,
        balance=reply.balance,
        held=reply.held,
        seq=reply.seq,
        standing=reply.standing,
        frozen=reply.frozen,
        node=node,
    )


def refused(reply: ErrorReply, *, amount: int, balance: int | None = None, held: int = 0) -> TransferError:
    """The typed error for a node's refusal of a transfer (``balance``: the sender's, when known)."""
    if reply.code == "insufficient_balance":
        return InsufficientBalanceError(
            reply.message, balance=balance if balance is not None else 0, amount=amount, held=held
        )
    if reply.code == "unknown_account":
        return UnknownRecipientError(reply.message)
    return TransferError(f"the node refused the transfer ({reply.code}): {reply.message}")
