"""The coordinator's protocol machine: registry of workers, dispatch, verification, receipts.

Sans-IO: ``handle(event, now)`` and ``on_timer(now)`` return effects (data) that a driver executes — the
trio node over libp2p, or the simulator over its event heap. The machine never waits and never does I/O.

Job lifecycle (spec/job-protocol.md §Lifecycle)::

    submitted ──dispatch k replicas──▶ running ──quorum──▶ accepted (receipt signed, points minted)
                                        │  ▲
                 disagreement / failure │  │ one more replica (bounded)
                                        ▼  │
                                      (refill) ──no workers / limit──▶ failed (typed error to the client)

Adaptive replication, reputation and canaries (spec/verification-adaptive.md): the machine keeps a
``Reputation`` per worker key, rebuilt from its own receipts at start and updated by every verified
outcome. A job whose lead worker has earned trust may run on that worker alone (probability ``1 - p``,
``p = max(min_replication_rate, 1/streak)``); such a "trusted single result" is accepted with one credit.
Now and then (``canary_rate``) a verified answer is re-sent under a fresh job id to one worker that never
saw it; a different answer costs that worker its reputation. Canaries never reach a client or the ledger.

Audit mode (``CoordinatorConfig.verify = "audit"``, spec/verification.md §13; the default, and
``replicate`` selects the replication above by name): a job runs on one prover; its checked result (the
claim) goes to ``auditors`` workers holding the same weights, on any numerical class (``DispatchAudit``),
whose ``AuditReturned`` reports pass it (receipt: the prover and the auditors credited) or fail it (the
prover penalised, the job re-run on another prover within ``max_failovers``). A failed or silent auditor
is replaced; a claim with no free auditor waits for a slot. Auditors are checked too (§13.6): canary
audits (a claim whose verdict the coordinator knows), a split verdict settled by a tie-break audit, and an
auditor record (``audit_reputation``, journalled through ``audit_journal`` so it survives restarts) that
weighs the draw and bars an auditor once caught. A streaming
job's claim is audited in chunks as the prover streams it (``SendAuditChunk``, ``ChunkAudited``;
spec/verification.md §14.2). A sealed job is audited among the workers it was sealed to
(spec/sealed-mode.md §11): the prover seals its claim to them, each auditor gets its own prompt and claim
ciphertexts, and the machine sees no plaintext; a sealed streaming job's chunks come sealed to the client
and the auditors with salted commitments (``SealedChunkReported``, spec/verification.md §14.3).

Capacity and queueing (spec/job-protocol.md §8.1): a worker runs at most ``slots`` replicas (and canaries)
of this coordinator at once. A job that cannot get its replicas because every worker that could run it is
busy waits in a ``FairQueue`` (opengrid/core/queueing.py): paid jobs and volunteers' in good standing
before open ones (bounded: every fourth turn goes to an open job while one waits), interactive before
batch, clients in turn.
Whenever a slot may have freed (a result, a failure, a timeout, a settled job, a worker coming online) the
machine offers the free slots to the waiting jobs in that order.

Payment (spec/ledger.md §7, spec/job-protocol.md §5.4): a job may carry its client's HOLD of
``job_cost``; the machine applies it before dispatch, then SETTLEs it to the agreeing workers or REFUNDs
it. A new account's job may also carry its GRANT (the starting grant), applied just before the HOLD;
``vouch`` signs the voucher such a GRANT needs, under the rate limits of ``opengrid.core.grants``. With
``require_payment`` an unpaid job is refused (``payment_required``).

Layout (one concern per module; ``Coordinator`` in ``machine.py`` combines the parts)::

    config.py     CoordinatorConfig and the constants the parts share
    records.py    plain records: a worker, a job in flight, a known answer, a canary
    state.py      the job lifecycle as an explicit state table (JobState, TRANSITIONS, move)
    shared.py     CoordinatorParts: the typed shared state and the calls the parts make on each other
    registry.py   registrations decided and recorded, the candidate index, quotes answered, weights,
                  reputations, speeds
    dispatch.py   submission checks, the fair queue drained into worker slots, refills
    results.py    replica results checked and judged, failures and refusals, acceptance, learning
    streaming.py  streaming jobs: the prefix a quorum of replicas agreed on, forwarded as it grows; in
                  audit mode, the prover's claim cut into chunks for its auditors, forwarded as they pass
    audits.py     audit mode: claims sent to auditors, reports checked, claims rejected or accepted
    canaries.py   known answers and canaries
    settle.py     a job's end without a receipt: failure, cancellation, slots freed, hold refunded
    payments.py   holds and grants, the operator's own jobs, starting-grant vouchers, payouts
    chain.py      our own hash chain: the only part that holds the key and signs
    machine.py    Coordinator: construction, handle/on_timer dispatch, deadlines, public queries

Why mixins over one typed shared state, and not components: the parts call each other in a web (a
result can refill the job, which can fail it, which refunds its hold through the chain; a drain starts
audits, a rejected audit refills). Components would each need references to most of the others and every
``self._x`` in 1,900 lines of decision code would change, a diff too large to review for a change that must
not change behaviour. The mixins keep each method's body as it was; ``CoordinatorParts`` (shared.py) is
their explicit contract: every shared attribute with its type, and every cross-part call as an abstract
method, so mypy checks each part on its own and a missing part makes ``Coordinator`` impossible to build.
"""

from opengrid.core.coordinator.config import QUOTE_FRESH_BEATS, CoordinatorConfig
from opengrid.core.coordinator.machine import Coordinator
from opengrid.core.coordinator.records import WorkerRecord
from opengrid.core.coordinator.state import JobEvent, JobState

__all__ = ["QUOTE_FRESH_BEATS", "Coordinator", "CoordinatorConfig", "JobEvent", "JobState", "WorkerRecord"]
