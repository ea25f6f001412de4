"""The worker's protocol logic: which jobs to take, how to attest results, which receipts to keep.

Sans-IO like the coordinator: inference itself is the driver's business (an engine in a thread); this
module decides and signs.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from nacl.signing import SigningKey
from opengrid_ledger import ED25519, Entry, LedgerState, SignatureScheme, decode_entry, sign_attestation

from opengrid.wire.commitment import commit_output
from opengrid.wire.contract import DecodingContract
from opengrid.wire.messages import ErrorReply, ModelOffer, ReplicaResult, RunJob
from opengrid.wire.sealed import SealedPrompt, open_prompt, seal_output


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
        """Return None to run the job, or the error to answer instead."""
        if run.contract.digest() not in self._contracts:
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
        return None

    def open_sealed(self, run: RunJob) -> SealedPrompt:
        """Decrypt a sealed job's prompt (and its salt); RemoteProtocolError if it was not made for us."""
        return open_prompt(
            run.sealed_prompt, job_id=run.job_id, client_box_key=run.client_box_key, signing_key=self._key
        )

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
            return ReplicaResult(
                job_id=run.job_id,
                tokens=[],
                text="",
                finish_reason="",
                attestation=msgspec.msgpack.encode(attestation),
                sealed_output=sealed,
            )
        return ReplicaResult(
            job_id=run.job_id,
            tokens=list(output.tokens),
            text=output.text,
            finish_reason=output.finish_reason,
            attestation=msgspec.msgpack.encode(attestation),
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
