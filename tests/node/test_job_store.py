"""The coordinator's job store: jobs to resume, and verified answers kept for the client that lost them."""

from __future__ import annotations

import pathlib
import time

import pytest

from opengrid.core.events import JobSubmitted
from opengrid.store import job_store
from opengrid.store.job_store import ANSWER_TTL_MS, JobStore
from opengrid.wire.messages import ErrorReply, JobAccepted, SubmitJob


def _job(n: int) -> JobSubmitted:
    request = SubmitJob(job_id=bytes([n]) * 16, model="tiny", prompt=f"prompt {n}", max_tokens=4)
    return JobSubmitted(client=f"client-{n}", request=request, wall_ms=1000)


def _answer(n: int) -> JobAccepted:
    return JobAccepted(
        job_id=bytes([n]) * 16,
        text=f"answer {n}",
        tokens=[1, 2],
        finish_reason="length",
        receipt=b"r",
        workers=[],
    )


def test_a_verified_answer_replaces_its_job_and_only_its_client_gets_it(tmp_path: pathlib.Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.put(_job(1))
    store.put(_job(2))
    now_ms = time.time_ns() // 1_000_000  # reopening prunes by the wall clock
    store.finish(bytes([1]) * 16, _answer(1), now_ms=now_ms)
    store.finish(bytes([2]) * 16, ErrorReply("no_capacity", "none", bytes([2]) * 16), now_ms=now_ms)
    assert store.all() == []  # nothing left to resume
    store.close()
    reopened = JobStore(tmp_path / "jobs.sqlite3")  # survives a restart
    assert reopened.answer(bytes([1]) * 16, "client-1") == _answer(1)
    assert reopened.answer(bytes([1]) * 16, "client-2") is None  # job ids are public, answers are not
    assert reopened.answer(bytes([2]) * 16, "client-2") is None  # failures are not kept


def test_answers_expire_and_are_capped(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job_store, "MAX_ANSWERS", 3)
    monkeypatch.setattr(job_store, "PRUNE_EVERY", 1)  # at every answer kept, to see the bounds exactly
    store = JobStore(tmp_path / "jobs.sqlite3")
    for n in range(1, 6):
        store.put(_job(n))
        store.finish(bytes([n]) * 16, _answer(n), now_ms=1000 * n)
    kept = [n for n in range(1, 6) if store.answer(bytes([n]) * 16, f"client-{n}") is not None]
    assert kept == [3, 4, 5]  # the oldest go first
    store.put(_job(6))
    store.finish(bytes([6]) * 16, _answer(6), now_ms=4000 + ANSWER_TTL_MS + 1)
    kept = [n for n in range(1, 7) if store.answer(bytes([n]) * 16, f"client-{n}") is not None]
    assert kept == [5, 6]  # a day old is gone
