"""The ChainWriter: one head per chain, whatever waits (spec/ledger.md §4, §6.1)."""

from __future__ import annotations

from opengrid_ledger import ChainWriter, Evidence, Hold, LedgerState, decode_body, decode_entry

from tests.ledger.ledger_factory import COORDINATOR, NETWORK, WORKERS, job_id, make_receipt, pub

USER = WORKERS[4]


def test_an_entry_that_waits_keeps_its_seq_and_the_next_one_is_chained_after_it() -> None:
    """A HOLD above the balance waits (§6.1); the writer's next entry goes after it, never on its seq
    (which would fork our own chain), and both apply once the points arrive."""
    ledger = LedgerState(NETWORK, [pub(COORDINATOR)])
    user = ChainWriter(ledger, USER)
    hold, applied = user.write(Hold(job_id=job_id(1), amount=10, coordinator=pub(COORDINATOR)))
    assert applied == [] and ledger.head(pub(USER)) is None
    second, applied = user.write(Hold(job_id=job_id(2), amount=5, coordinator=pub(COORDINATOR)))
    assert applied == []
    body = decode_body(second.body)
    assert (body.seq, body.prev) == (2, hold.id)
    assert [decode_body(decode_entry(e).body).seq for e in user.entries()] == [1, 2]

    mint = ChainWriter(ledger, COORDINATOR)
    _, applied = mint.write(make_receipt(job_id(3), [(USER, 15)]))
    assert [e.id for e in applied[1:]] == [hold.id, second.id]  # freed by the credit, in chain order
    assert ledger.balance(pub(USER)) == 0 and ledger.head(pub(USER)) == (2, second.id)


def test_entries_signed_ahead_do_not_move_the_head_until_applied() -> None:
    ledger = LedgerState(NETWORK, [pub(COORDINATOR)])
    writer = ChainWriter(ledger, COORDINATOR)
    writer.write(Evidence(job_id=job_id(1), valid=(pub(WORKERS[0]),)))
    a, b = writer.sign_ahead(
        [
            Evidence(job_id=job_id(2), valid=(pub(WORKERS[0]),)),
            Evidence(job_id=job_id(3), timeout=(pub(WORKERS[1]),)),
        ]
    )
    assert [decode_body(a.body).seq, decode_body(b.body).seq] == [2, 3] and decode_body(b.body).prev == a.id
    assert writer.head() == ledger.head(pub(COORDINATOR)) and len(writer.entries()) == 1
    writer.adopt(ledger.apply(a) + ledger.apply(b))  # applied by another path (the job they pay for)
    assert len(writer.entries()) == 3
    entry, _ = writer.write(Evidence(job_id=job_id(4), valid=(pub(WORKERS[2]),)))
    assert decode_body(entry.body).prev == b.id

    fresh = LedgerState(NETWORK, [pub(COORDINATOR)])
    for data in writer.entries():
        assert fresh.apply(decode_entry(data))
