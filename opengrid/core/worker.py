"""The worker's protocol logic: which jobs to take, how to attest results, which receipts to keep.

Sans-IO like the coordinator: inference itself is the driver's business (an engine in a thread); this
module decides and signs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from nacl.signing import SigningKey
from opengrid_ledger import (
    ED25519,
    Attestation,
    Entry,
    LedgerState,
    SignatureScheme,
    decode_entry,
    sign_attestation,
    verify_attestation,
)

from opengrid.core.audit import AuditPolicy, PositionEvidence, SamplingParams, evidence_commitment, judge
from opengrid.core.audit_policy import scored_positions
from opengrid.errors import InvalidEntryError, JobError, RemoteProtocolError, VerificationError
from opengrid.wire.commitment import commit_output
from opengrid.wire.contract import DecodingContract
from opengrid.wire.messages import (
    MAX_AUDIT_REASON_CHARS,
    AuditChunk,
    AuditJob,
    AuditReport,
    ErrorReply,
    ModelOffer,
    ReplicaResult,
    RunJob,
    SealedClaim,
    SealedProgress,
)
from opengrid.wire.sealed import (
    SealedOutput,
    SealedPrompt,
    box_public_key,
    commit_chunk,
    open_chunk_as_auditor,
    open_claim,
    open_prompt,
    seal_chunk,
    seal_claim,
    seal_output,
)


def job_sampling(contract: DecodingContract) -> SamplingParams:
    """The sampler settings a job's contract asks for (spec/verification.md §11): greedy for a greedy
    contract (whose ``top_k`` says 1, and whose seed means nothing), else the client's values.
    Raises ``JobError`` when they are out of the sampler's range."""
    if contract.greedy:
        return SamplingParams()
    return SamplingParams(
        temperature=contract.temperature,
        top_k=contract.top_k,
        top_p=contract.top_p_value,
        seed=contract.seed,
    )


@dataclass(frozen=True)
class Output:
    """What an engine produced for a job."""

    tokens: tuple[int, ...]
    text: str
    finish_reason: str


class WorkerLogic:
    """Accepts jobs for the contracts this worker serves and co-signs their results."""

    def __init__(
        self,
        *,
        network: str,
        signing_key: SigningKey,
        offers: tuple[ModelOffer, ...],
        ledger: LedgerState,
        max_tokens_limit: int = 4096,
        scheme: SignatureScheme = ED25519,
    ) -> None:
        """``scheme`` signs attestations: real Ed25519 unless a simulator passes a cheaper one
        (opengrid_ledger.signatures); ``ledger`` checks receipts with its own (give it the same)."""
        self.network = network
        self._scheme = scheme
        self._key = signing_key
        self.public_key = bytes(signing_key.verify_key)
        self.offers = offers
        self.ledger = ledger
        self.max_tokens_limit = max_tokens_limit
        self._contracts: dict[bytes, DecodingContract] = {o.contract.digest(): o.contract for o in offers}

    def accept(self, run: RunJob) -> ErrorReply | None:
        """Return None to run the job, or the error to answer instead. The job's contract is one of our
        classes with the client's sampling settings written in (``DecodingContract.sampled``)."""
        if run.contract.numerical_class().digest() not in self._contracts:
            served = ", ".join(f"{o.name} ({o.contract.model_sha256[:12]})" for o in self.offers)
            return ErrorReply(
                "unknown_model",
                f"this worker does not serve model {run.contract.model_sha256[:12]} under that contract; "
                f"it serves: {served}",
                run.job_id,
            )
        if run.max_tokens > self.max_tokens_limit:
            return ErrorReply(
                "busy",
                f"max_tokens {run.max_tokens} is above this worker's limit of {self.max_tokens_limit}",
                run.job_id,
            )
        try:
            job_sampling(run.contract)
        except JobError as exc:  # the client's values (a peer that skipped the wire's bounds)
            return ErrorReply("malformed", f"bad sampling settings: {exc}", run.job_id)
        return None

    def open_sealed(self, run: RunJob) -> SealedPrompt:
        """Decrypt a sealed job's prompt (and its salt); RemoteProtocolError if it was not made for us, or
        if the coordinator asks us to seal our output to a worker the client did not seal the prompt to
        (``RunJob.readers``: an auditor must be one who could read the prompt anyway, spec/sealed-mode.md
        §11)."""
        opened = open_prompt(
            run.sealed_prompt, job_id=run.job_id, client_box_key=run.client_box_key, signing_key=self._key
        )
        strangers = [k for k in run.readers if k not in opened.readers]
        if strangers:
            raise RemoteProtocolError(
                f"asked to seal this job's output to {len(strangers)} worker(s) the client did not seal its "
                f"prompt to (key {strangers[0].hex()[:16]}...); refusing to show them the output"
            )
        return opened

    def open_sealed_audit(self, audit: AuditJob) -> tuple[SealedPrompt, SealedOutput] | str:
        """A sealed audit's prompt and the prover's claim, opened and checked; or why the claim fails (the
        prover's fault: a claim that does not open, or is not what the prover attested).

        Raises ``RemoteProtocolError`` when the prompt does not open for us (made for another worker or
        job: not the prover's doing, spec/sealed-mode.md §11)."""
        prompt = open_prompt(
            audit.sealed_prompt,
            job_id=audit.job_id,
            client_box_key=audit.client_box_key,
            signing_key=self._key,
        )
        try:
            attestation = msgspec.msgpack.decode(audit.claim_attestation, type=Attestation)
            verify_attestation(attestation, self.network, scheme=self._scheme)
        except (msgspec.DecodeError, UnicodeDecodeError, InvalidEntryError) as exc:
            return f"the prover's attestation does not verify: {exc}"
        if attestation.job_id != audit.job_id or attestation.contract_hash != audit.contract.digest():
            return "the prover's attestation is for another job or contract"
        if attestation.worker not in prompt.readers:
            return "the prover is not one of the workers the client sealed the prompt to"
        try:
            claim = open_claim(
                audit.sealed_claim, job_id=audit.job_id, prover_key=attestation.worker, signing_key=self._key
            )
        except VerificationError as exc:
            return str(exc)
        if len(claim.tokens) != attestation.n_tokens or (
            commit_output(claim.tokens, claim.text, prompt.salt) != attestation.output_commitment
        ):
            return "the prover's sealed claim is not the output it attested to"
        return prompt, claim

    def seal_chunk(
        self, run: RunJob, offset: int, tokens: list[int], pieces: list[str], *, salt: bytes
    ) -> SealedProgress:
        """A sealed streaming prover's next chunk (spec/verification.md §14.3): sealed to the client and to
        each of ``run.readers`` (checked by ``open_sealed`` against the client's list), with its salted
        commitment."""
        to_client = seal_chunk(
            tokens,
            pieces,
            offset=offset,
            job_id=run.job_id,
            to_box_key=run.client_box_key,
            signing_key=self._key,
        )
        to_readers = [
            SealedClaim(
                reader=key,
                ciphertext=seal_chunk(
                    tokens,
                    pieces,
                    offset=offset,
                    job_id=run.job_id,
                    to_box_key=box_public_key(key),
                    signing_key=self._key,
                ),
            )
            for key in sorted(set(run.readers))
            if key != self.public_key
        ]
        return SealedProgress(
            job_id=run.job_id,
            offset=offset,
            n_tokens=len(tokens),
            commitment=commit_chunk(run.job_id, salt, offset, tokens, pieces),
            to_client=to_client,
            to_readers=to_readers,
        )

    def open_sealed_stream_audit(self, audit: AuditJob) -> SealedPrompt:
        """A sealed chunked audit's prompt (spec/verification.md §14.3), opened; ``RemoteProtocolError``
        when it does not open for us, or when the prover it names is not one of the workers the client
        sealed the prompt to (its chunks could show us nothing the client allowed)."""
        prompt = open_prompt(
            audit.sealed_prompt,
            job_id=audit.job_id,
            client_box_key=audit.client_box_key,
            signing_key=self._key,
        )
        if audit.prover_key not in prompt.readers:
            raise RemoteProtocolError(
                "a sealed chunked audit names a prover the client did not seal the prompt to; refusing it"
            )
        return prompt

    def open_sealed_chunk(
        self, audit: AuditJob, chunk: AuditChunk, salt: bytes
    ) -> tuple[list[int], list[str]] | str:
        """A prover's sealed chunk opened and checked against the commitment the coordinator relayed: its
        tokens and pieces, or why the chunk fails unscored (the prover's fault: it does not open, is not
        the chunk it was sent as, or is not what it committed to)."""
        try:
            opened = open_chunk_as_auditor(
                chunk.sealed_chunk,
                job_id=audit.job_id,
                offset=chunk.offset,
                n_tokens=chunk.end - chunk.offset,
                prover_key=audit.prover_key,
                signing_key=self._key,
            )
        except VerificationError as exc:
            return f"the prover's sealed chunk at {chunk.offset}: {exc}"
        tokens, pieces = list(opened.tokens), list(opened.pieces)
        if commit_chunk(audit.job_id, salt, chunk.offset, tokens, pieces) != chunk.commitment:
            return f"the prover's sealed chunk at {chunk.offset} is not the one it committed to"
        return tokens, pieces

    def attest(self, run: RunJob, output: Output, *, salt: bytes = b"") -> ReplicaResult:
        """Sign the output (the worker's co-signature that the receipt will carry) and wrap it.

        A sealed job's output goes back encrypted to the client, with a salted commitment, so the
        coordinator compares replicas without learning anything about the text.
        """
        attestation = sign_attestation(
            self._key,
            self.network,
            run.job_id,
            run.contract.digest(),
            commit_output(output.tokens, output.text, salt),
            len(output.tokens),
            scheme=self._scheme,
        )
        if run.sealed_prompt:
            sealed = seal_output(
                list(output.tokens),
                output.text,
                output.finish_reason,
                job_id=run.job_id,
                client_box_key=run.client_box_key,
                signing_key=self._key,
            )
            # Sealed audits: the claim also goes to each possible auditor (``open_sealed`` checked that the
            # client sealed the prompt to every one of them).
            claims = [
                SealedClaim(
                    reader=key,
                    ciphertext=seal_claim(
                        list(output.tokens),
                        output.text,
                        output.finish_reason,
                        job_id=run.job_id,
                        reader_key=key,
                        signing_key=self._key,
                    ),
                )
                for key in sorted(set(run.readers))
                if key != self.public_key
            ]
            return ReplicaResult(
                job_id=run.job_id,
                tokens=[],
                text="",
                finish_reason="",
                attestation=msgspec.msgpack.encode(attestation),
                sealed_output=sealed,
                sealed_claims=claims,
            )
        return ReplicaResult(
            job_id=run.job_id,
            tokens=list(output.tokens),
            text=output.text,
            finish_reason=output.finish_reason,
            attestation=msgspec.msgpack.encode(attestation),
        )

    def accept_audit(self, audit: AuditJob) -> ErrorReply | None:
        """Return None to score ``audit``, or the error to answer instead: an auditor needs the same
        weights (model sha256) as the prover, under any contract (spec/verification.md §13)."""
        sha = audit.contract.model_sha256.lower()
        if not any(o.contract.model_sha256.lower() == sha for o in self.offers):
            return ErrorReply(
                "unknown_model",
                f"this worker does not hold model {sha[:12]}, so it cannot audit it",
                audit.job_id,
            )
        if len(audit.tokens) > self.max_tokens_limit:
            return ErrorReply(
                "busy",
                f"the claim has {len(audit.tokens)} tokens, above this worker's limit of "
                f"{self.max_tokens_limit}",
                audit.job_id,
            )
        try:
            wanted = job_sampling(audit.contract)
            asked = SamplingParams(
                temperature=audit.temperature, top_k=audit.top_k, top_p=audit.top_p, seed=audit.seed
            )
        except JobError as exc:
            return ErrorReply("malformed", f"bad sampling settings: {exc}", audit.job_id)
        if asked != wanted:  # a pass signs the contract's digest: score under the contract's sampler only
            return ErrorReply(
                "malformed",
                f"the audit's sampler {asked} is not its contract's {wanted}; audit under the contract",
                audit.job_id,
            )
        return None

    def report(
        self,
        audit: AuditJob,
        evidence: Sequence[PositionEvidence],
        *,
        problem: str = "",
        claim: SealedOutput | None = None,
        salt: bytes = b"",
    ) -> AuditReport:
        """Judge an audit's evidence (``opengrid.core.audit.judge`` at the job's tolerance), commit to it,
        and on a pass co-sign the claim (the attestation the receipt needs to credit this auditor).

        ``problem``: why the claim fails whatever its evidence says (its text is not what its tokens decode
        to here; its tokens are outside the vocabulary, so only the positions before them were scored).
        ``claim`` and ``salt``: a sealed audit's opened claim and the job's salt (``open_sealed_audit``);
        the pass then co-signs the salted commitment, as the prover did."""
        tokens = list(claim.tokens) if claim is not None else list(audit.tokens)
        text = claim.text if claim is not None else audit.text
        finish_reason = claim.finish_reason if claim is not None else audit.finish_reason
        params = SamplingParams(
            temperature=audit.temperature, top_k=audit.top_k, top_p=audit.top_p, seed=audit.seed
        )
        # Only the plan's window counts (spec/verification.md §13.5): an engine that scored more reports
        # the window alone, so the report's count is the one the coordinator expects.
        positions = len(tokens) + (1 if finish_reason == "stop" else 0)
        evidence = evidence[: scored_positions(positions, audit.score_end)]
        verdict = judge(evidence, AuditPolicy(gap_tolerance=audit.tolerance))
        commitment = evidence_commitment(audit.job_id, params, evidence)
        if verdict.accepted and not problem:
            attestation = sign_attestation(
                self._key,
                self.network,
                audit.job_id,
                audit.contract.digest(),
                commit_output(tokens, text, salt),
                len(tokens),
                scheme=self._scheme,
            )
            copy = b""
            if claim is not None:  # the client's second source of the answer it can check (§11)
                copy = seal_output(
                    tokens,
                    text,
                    finish_reason,
                    job_id=audit.job_id,
                    client_box_key=audit.client_box_key,
                    signing_key=self._key,
                )
            return AuditReport(
                job_id=audit.job_id,
                verdict="pass",
                n_scored=verdict.positions,
                max_gap=_wire_gap(verdict.max_gap),
                evidence_commitment=commitment,
                attestation=msgspec.msgpack.encode(attestation),
                sealed_output=copy,
            )
        failure = verdict.failure
        reason = problem or verdict.reason
        return AuditReport(
            job_id=audit.job_id,
            verdict="fail",
            n_scored=verdict.positions,
            max_gap=_wire_gap(verdict.max_gap),
            evidence_commitment=commitment,
            first_failure=-1 if verdict.first_failure is None else verdict.first_failure,
            failure_gap=_wire_gap(failure.gap) if failure is not None else 0.0,
            reason=reason[:MAX_AUDIT_REASON_CHARS],
        )

    def trust_coordinator(self, key: bytes) -> None:
        """Accept receipts minted by ``key`` (the coordinator this worker registered with)."""
        self.ledger.add_minter(key)

    def receive_entries(self, entries: list[bytes]) -> list[Entry]:
        """Validate and apply entries a coordinator pushed; return those newly applied (to persist).

        Entries whose chain predecessor is missing are parked by the ledger and applied when it arrives.
        """
        applied: list[Entry] = []
        for data in entries:
            applied += self.ledger.apply(decode_entry(data))
        return applied


def _wire_gap(gap: float) -> float:
    """A gap as an AuditReport carries it: NaN (a broken engine) as 0 (the verdict already failed it),
    infinity (a token outside every mask) as the field's largest value."""
    if gap != gap:
        return 0.0
    return min(gap, 1e30)
