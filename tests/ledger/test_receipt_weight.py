"""A receipt's ``weight`` (spec/ledger.md §5.2, §7): the points per token its coordinator priced the job's
model at, recorded so anyone can check ``points == max(1, n_tokens) x weight``; omitted when 1."""

from __future__ import annotations

import msgspec
import pytest
from ledger_factory import (
    COORDINATOR,
    MINTERS,
    N_TOKENS,
    NETWORK,
    WORKERS,
    Author,
    job_id,
    make_receipt,
    raw_sign,
)
from opengrid_ledger import LedgerState, Receipt, decode_body, open_entry

from opengrid.errors import InvalidEntryError


def test_a_weighted_receipt_round_trips_and_mints_its_credits() -> None:
    receipt = msgspec.structs.replace(make_receipt(job_id(1), [(WORKERS[0], N_TOKENS * 8)]), weight=8)
    entry = Author(COORDINATOR).append(receipt)
    payload = decode_body(entry.body).payload
    assert isinstance(payload, Receipt) and payload.weight == 8
    ledger = LedgerState(NETWORK, minters=MINTERS)
    ledger.apply(entry)
    assert ledger.balance(bytes(WORKERS[0].verify_key)) == N_TOKENS * 8


def test_weight_one_is_omitted_so_old_receipts_keep_their_bytes() -> None:
    receipt = make_receipt(job_id(1), [(WORKERS[0], N_TOKENS)])
    assert receipt.weight == 1
    assert b"weight" not in Author(COORDINATOR).append(receipt).body


@pytest.mark.parametrize("weight", [0, -3])
def test_a_receipt_weight_below_one_is_refused(weight: int) -> None:
    receipt = msgspec.structs.replace(make_receipt(job_id(1), [(WORKERS[0], 5)]), weight=weight)
    entry = raw_sign(COORDINATOR, Author(COORDINATOR).body(receipt))
    with pytest.raises(InvalidEntryError, match="receipt weight"):
        open_entry(entry, NETWORK)
