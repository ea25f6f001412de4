"""Coordinator admission on live nodes (spec/ledger.md §5.8, §7.1): both sides, on one coordinator.

On a network with a genesis file the coordinator set is the genesis coordinators plus those admitted by
ADMIT entries; a coordinator outside it is a **candidate**: it takes no jobs (its receipts would be
refused everywhere) and asks every minting coordinator it hears of on gossip for a co-signature of its
admission at the current epoch (``AdmitRequest`` → ``AdmitVote`` or a typed refusal). Once it holds
co-signatures from at least 2/3 of the set it writes the ADMIT entry on its own chain and publishes it;
every node applies it and the candidate mints from then on. If the epoch moves meanwhile (another
coordinator was admitted first) its votes are void and it asks again.

A minting coordinator answers with the pure policy of ``opengrid.core.admission_votes``: by default it
refuses (``admission_pending``) and lists the candidate for its operator (``opengrid node pending``),
who approves it with ``opengrid node approve --coordinator PEER_ID``; ``--admit-after-jobs N`` admits a
candidate whose key earned N verified jobs as a worker without asking.
"""

from __future__ import annotations

import logging
import pathlib
import time
from collections.abc import Awaitable, Callable, Sequence

import trio
from nacl.signing import SigningKey
from opengrid_ledger import Admit, ChainWriter, Cosignature, Entry, sign_admit

from opengrid.core.admission_votes import (
    Ballot,
    Refuse,
    check_request,
    decide_vote,
    vote_problem,
    votes_needed,
)
from opengrid.errors import OpenGridError
from opengrid.net.keys import peer_id_of
from opengrid.node import admission
from opengrid.wire.admit import admit_request_signing_bytes
from opengrid.wire.messages import AdmitRequest, AdmitVote, ErrorReply, Message

log = logging.getLogger("opengrid.node")
_ASK_TIMEOUT_S = 10.0

Request = Callable[[str, Message], Awaitable[Message]]
"""Send one message to a peer (by peer id) and return its reply."""
Coordinators = Callable[[], Sequence[tuple[str, bytes]]]
"""(peer id, key) of every coordinator online on gossip."""
Append = Callable[[list[Entry], Entry], None]
"""Store newly applied entries and publish one of ours (the node's store and ledger gossip)."""


class CoordinatorAdmission:
    """The admission protocol of one coordinator: it votes on others' requests (``vote``) and, while it is
    itself a candidate, seeks its own admission (``run``)."""

    def __init__(
        self,
        *,
        network: str,
        signing_key: SigningKey,
        chain: ChainWriter,
        data_dir: pathlib.Path,
        request: Request,
        coordinators: Coordinators,
        append: Append,
        period_s: float,
        auto_min_jobs: int = 0,
    ) -> None:
        self._network = network
        self._key = signing_key
        self.public_key = bytes(signing_key.verify_key)
        self._chain = chain
        """The node's one writer of our chain (shared with the coordinator core): our ADMIT goes on it."""
        self._ledger = chain.ledger
        self._data_dir = data_dir
        self._request = request
        self._coordinators = coordinators
        self._append = append
        self._period_s = period_s
        self._auto_min_jobs = auto_min_jobs
        self._cosigned_logged: set[tuple[int, bytes]] = set()
        self.progress = ""
        """What the candidate is waiting for, in plain words ("" once admitted)."""
        self.admitted = trio.Event()
        """Set once this coordinator is in the coordinator set (at once for a genesis coordinator)."""

    @property
    def candidate(self) -> bool:
        """True while this coordinator is not in its network's coordinator set."""
        return self._ledger.closed and self.public_key not in self._ledger.minters()

    def why_no_jobs(self) -> str:
        """Why a candidate takes no jobs, for refusals and the status line."""
        return (
            f"a candidate coordinator, not admitted on network {self._network!r} yet (its receipts would "
            "not count); it asks the coordinators to admit it"
        )

    # ── candidate side ───────────────────────────────────────────────────────────────────────────────
    async def run(self) -> None:
        """Seek admission until this coordinator is in the set; log what it waits for when that changes."""
        if self.candidate:
            log.warning(
                "this coordinator is not in the coordinator set of network %r (genesis + admissions): it "
                "takes no jobs until 2/3 of the coordinators admit it; asking them",
                self._network,
            )
        epoch = -1
        votes: dict[bytes, Cosignature] = {}
        said = ""
        while self.candidate:
            if len(self._ledger.admitted()) != epoch:
                if epoch >= 0:
                    log.info(
                        "admission epoch moved to %d (another coordinator was admitted): asking again",
                        len(self._ledger.admitted()),
                    )
                epoch, votes = len(self._ledger.admitted()), {}
            members = self._ledger.minters()
            refusals: dict[str, tuple[str, str]] = {}
            for peer, key in sorted(self._coordinators()):
                if key in members and key not in votes:
                    outcome = await self._ask(peer, key, epoch)
                    if isinstance(outcome, Cosignature):
                        votes[key] = outcome
                    else:
                        refusals[peer] = outcome
            if not self.candidate or len(self._ledger.admitted()) != epoch:
                continue
            if len(votes) >= votes_needed(len(members)) and self._write_admit(epoch, votes):
                continue
            self.progress = self._describe(epoch, len(votes), len(members), refusals)
            if self.progress != said:
                log.warning("%s", self.progress)
                said = self.progress
            await trio.sleep(self._period_s)
        self.progress = ""
        if epoch >= 0:
            log.info(
                "admitted: this coordinator mints on network %r from now on (admission epoch %d)",
                self._network,
                self._ledger.admitted().index(self.public_key),
            )
        self.admitted.set()

    async def _ask(self, peer: str, key: bytes, epoch: int) -> Cosignature | tuple[str, str]:
        """Ask ``peer`` (key ``key``) to co-sign; its co-signature, or (refusal code, why)."""
        issued_at_ms = time.time_ns() // 1_000_000
        signed = admit_request_signing_bytes(self._network, key, epoch, self.public_key, issued_at_ms)
        request = AdmitRequest(
            network=self._network,
            epoch=epoch,
            candidate=self.public_key,
            issued_at_ms=issued_at_ms,
            signature=self._key.sign(signed).signature,
        )
        try:
            with trio.fail_after(_ASK_TIMEOUT_S):
                reply = await self._request(peer, request)
        except (OpenGridError, trio.TooSlowError) as exc:
            return "unreachable", str(exc) or "no answer in time"
        if isinstance(reply, ErrorReply):
            return reply.code, reply.message
        if not isinstance(reply, AdmitVote):
            return "malformed", f"answered {type(reply).__name__}"
        problem = vote_problem(self._network, epoch, self.public_key, key, reply)
        if problem:
            return "malformed", problem
        log.info("coordinator %s co-signed our admission (epoch %d)", peer[-8:], epoch)
        return Cosignature(reply.signer, reply.signature)

    def _write_admit(self, epoch: int, votes: dict[bytes, Cosignature]) -> bool:
        """Sign, apply, store and publish our ADMIT entry; False (votes dropped) if the ledger refuses it."""
        admit = Admit(
            coordinator=self.public_key, epoch=epoch, cosignatures=tuple(votes[k] for k in sorted(votes))
        )
        try:
            entry, applied = self._chain.write(admit)
        except OpenGridError as exc:
            log.warning("the ledger refused our ADMIT entry (%s); asking the coordinators again", exc)
            votes.clear()
            return False
        self._append(applied, entry)
        log.info(
            "wrote and published our ADMIT entry: %d co-signature(s) of %d coordinators, epoch %d",
            len(votes),
            len(self._ledger.minters()) - 1,
            epoch,
        )
        return True

    def _describe(self, epoch: int, got: int, members: int, refusals: dict[str, tuple[str, str]]) -> str:
        me = peer_id_of(self.public_key)
        parts = [
            f"candidate coordinator: {got} of the {votes_needed(members)} co-signatures needed from the "
            f"{members} coordinator(s) of network {self._network!r} (admission epoch {epoch})"
        ]
        pending = sorted(p for p, (code, _) in refusals.items() if code == "admission_pending")
        if pending:
            parts.append(
                f"waiting for the operators of {', '.join(p[-8:] for p in pending)} to approve it: each runs "
                f"`opengrid node approve --coordinator --data-dir THEIR_DATA_DIR {me}`"
            )
        others = [
            f"{p[-8:]}: {why}" for p, (code, why) in sorted(refusals.items()) if code != "admission_pending"
        ]
        if others:
            parts.append("other answers: " + "; ".join(others))
        if not refusals and not got:
            parts.append("no minting coordinator heard on gossip yet; is --bootstrap a node of this network?")
        return "; ".join(parts)

    # ── voter side ───────────────────────────────────────────────────────────────────────────────────
    def vote(self, request: AdmitRequest, *, sender: bytes) -> Message:
        """Answer a candidate's request (``sender``: the key of the peer that sent it): our co-signature,
        or a refusal saying what to do."""
        problem = check_request(
            self._network, self.public_key, request, sender=sender, now_ms=time.time_ns() // 1_000_000
        )
        if problem is not None:
            return problem.reply()
        candidate_peer = peer_id_of(request.candidate)
        minters = self._ledger.minters()
        decision = decide_vote(
            Ballot(
                candidate=request.candidate,
                epoch=request.epoch,
                ledger_epoch=len(self._ledger.admitted()),
                voter_is_minter=self.public_key in minters,
                candidate_is_minter=request.candidate in minters,
                approved=candidate_peer in admission.approved(self._data_dir, coordinators=True),
                candidate_jobs=self._ledger.jobs_done(request.candidate),
                auto_min_jobs=self._auto_min_jobs,
                cosigned=admission.votes_given(self._data_dir),
            )
        )
        if isinstance(decision, Refuse):
            if decision.pending and admission.note_pending_coordinator(
                self._data_dir, candidate_peer, request.epoch
            ):
                log.warning(
                    "coordinator %s asks to be admitted to network %r (epoch %d); to co-sign its admission "
                    "run: opengrid node approve --coordinator --data-dir %s %s",
                    candidate_peer[-8:],
                    self._network,
                    request.epoch,
                    self._data_dir,
                    candidate_peer,
                )
            return decision.reply()
        admission.record_vote(self._data_dir, request.epoch, request.candidate)  # before it leaves us
        cosignature = sign_admit(self._key, self._network, request.epoch, request.candidate)
        if (request.epoch, request.candidate) not in self._cosigned_logged:
            self._cosigned_logged.add((request.epoch, request.candidate))
            log.info(
                "co-signed the admission of coordinator %s at epoch %d (%s)",
                candidate_peer[-8:],
                request.epoch,
                decision.why,
            )
        return AdmitVote(
            epoch=request.epoch,
            candidate=request.candidate,
            signer=cosignature.signer,
            signature=cosignature.signature,
        )
