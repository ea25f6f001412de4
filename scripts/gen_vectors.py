"""Generate the golden test vectors in spec/vectors/ (spec/vectors/README.md) from fixed keys and seeds.

    .venv/bin/python scripts/gen_vectors.py           # (re)write spec/vectors/*.json
    .venv/bin/python scripts/gen_vectors.py --check   # exit 1 if the committed files differ

Everything is deterministic: Ed25519 signatures are deterministic, keys come from fixed 32-byte seeds,
and the sealed-mode boxes use explicit fixed nonces (real clients draw them at random). Bytes are
lower-case hex in every file. tests/spec/ consumes the vectors without this script, and also checks
that this script reproduces the committed files exactly.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys
import typing
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
VECTOR_DIR = ROOT / "spec" / "vectors"
sys.path[:0] = [str(ROOT), str(ROOT / "ledger"), str(ROOT / "sdk")]

import msgspec  # noqa: E402
import nacl.signing  # noqa: E402
from nacl.public import Box, PrivateKey, PublicKey  # noqa: E402
from opengrid_ledger import (  # noqa: E402
    Admit,
    Credit,
    Entry,
    EntryBody,
    Evidence,
    Genesis,
    Grant,
    Hold,
    LedgerState,
    Payload,
    Receipt,
    Refund,
    Settle,
    Transfer,
    attestation_signing_bytes,
    encode_entry,
    encode_genesis,
    make_fraud,
    sign_admit,
    sign_attestation,
    sign_entry,
    sign_grant_voucher,
)
from opengrid_ledger.entries import ENTRY_DOMAIN  # noqa: E402

from opengrid.core.audit import PositionEvidence, SamplingParams, evidence_commitment  # noqa: E402
from opengrid.errors import InvalidEntryError  # noqa: E402
from opengrid.wire.admit import admit_request_signing_bytes  # noqa: E402
from opengrid.wire.codec import encode_frame, encode_message  # noqa: E402
from opengrid.wire.commitment import commit_output  # noqa: E402
from opengrid.wire.contract import DecodingContract  # noqa: E402
from opengrid.wire.control import control_signing_bytes, owner_transfer_signing_bytes  # noqa: E402
from opengrid.wire.grant import grant_request_signing_bytes  # noqa: E402
from opengrid.wire.messages import (  # noqa: E402
    AccountRequest,
    AccountState,
    AdmitRequest,
    AdmitVote,
    AuditChunk,
    AuditJob,
    AuditReport,
    ChunkVerdict,
    ControlRequest,
    DialBackReport,
    DialBackRequest,
    DialBackResult,
    ErrorReply,
    FirstPositionVerdict,
    GrantRequest,
    GrantVoucher,
    History,
    HistoryRequest,
    JobAccepted,
    JobId,
    JobProgress,
    JobReceipt,
    Message,
    ModelInfo,
    ModelList,
    ModelOffer,
    ModelsRequest,
    NodeStatus,
    OwnerTransfer,
    PeerSummary,
    Quote,
    QuotedWorker,
    QuoteRequest,
    ReceiptNotice,
    ReceiptRequest,
    Registered,
    RegisterWorker,
    ReplicaProgress,
    ReplicaResult,
    RunJob,
    Sealed,
    SealedClaim,
    SealedProgress,
    StatusRequest,
    SubmitJob,
    TransferRequest,
    WorkerSummary,
)
from opengrid.wire.sealed import SEALED_TAG, SealedOutput, SealedPrompt, box_public_key  # noqa: E402

NETWORK = "opengrid-vectors"
ISSUED_AT_MS = 1_700_000_000_000

# ── keys: SigningKey(bytes([n]) * 32), so anyone can rebuild them ─────────────────────────────────────
SEEDS = {
    "C1": 1,
    "C2": 2,
    "C3": 3,
    "W1": 11,
    "W2": 12,
    "U1": 21,
    "X": 31,
    "N": 41,
    "F": 51,
    "NODE": 61,
    "G": 81,
    "A": 91,
}
KEYS = {name: nacl.signing.SigningKey(bytes([n]) * 32) for name, n in SEEDS.items()}
PUB = {name: bytes(key.verify_key) for name, key in KEYS.items()}
EPHEMERAL_SEED = bytes([71]) * 32
"""The client's X25519 ephemeral key of the sealed-mode vector (nacl PrivateKey from these bytes)."""


def job(n: int) -> JobId:
    return JobId(n.to_bytes(16, "big"))


CONTRACT = DecodingContract(model_sha256="ab" * 32, backend_version="0.3.36")
TOKENS = [504, 3575, 282, 4649, 30]
TEXT = " Paris. It is"
COMMITMENT = commit_output(TOKENS, TEXT)


def hexify(value: Any) -> Any:
    """JSON-ready copy of ``value`` with every bytes object as lower-case hex."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): hexify(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [hexify(v) for v in value]
    return value


def structure(obj: Any) -> Any:
    """A Struct as plain JSON data (tags included, bytes as hex)."""
    return hexify(msgspec.to_builtins(obj, builtin_types=(bytes,)))


def dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def keys_section(*names: str) -> dict[str, Any]:
    return {name: {"seed": bytes([SEEDS[name]]).hex() * 32, "public_key": PUB[name].hex()} for name in names}


# ── (d) attestation ───────────────────────────────────────────────────────────────────────────────────


def attestation_vectors() -> dict[str, Any]:
    worker = KEYS["W1"]
    att = sign_attestation(worker, NETWORK, job(1), CONTRACT.digest(), COMMITMENT, len(TOKENS))
    return {
        "description": "A worker attestation (spec/ledger.md §5.1): the signed msgpack array, the Ed25519 "
        "signature, and the Attestation struct as carried in ReplicaResult.attestation and receipts.",
        "keys": keys_section("W1"),
        "network": NETWORK,
        "worker": "W1",
        "fields": {
            "job_id": job(1).hex(),
            "contract_hash": CONTRACT.digest().hex(),
            "output_commitment": COMMITMENT.hex(),
            "n_tokens": len(TOKENS),
        },
        "signing_bytes": attestation_signing_bytes(
            NETWORK, PUB["W1"], job(1), CONTRACT.digest(), COMMITMENT, len(TOKENS)
        ).hex(),
        "signature": att.signature.hex(),
        "encoded": msgspec.msgpack.encode(att).hex(),
        "value": structure(att),
        "refused_on_network": "othernet",
    }


# ── (b) contracts, (c) commitments ────────────────────────────────────────────────────────────────────


def contract_vectors() -> dict[str, Any]:
    contracts = [
        CONTRACT,
        DecodingContract(model_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
        DecodingContract(
            model_sha256="00" * 32,
            backend_version="0.3.36",
            temperature=0.5,
            top_k=40,
            repeat_penalty=1.1,
            seed=2**32 - 1,
            n_batch=2,
            flash_attn=True,
            kv_cache_type="f32",
        ),
        # A sampled job's contract: the first class with a client's settings (SubmitJob.job_contract).
        CONTRACT.sampled(temperature=0.8, top_k=0, top_p=0.95, seed=2**64 - 1),
    ]
    return {
        "description": "DecodingContract canonical msgpack (the ten first fields always, top_p only below 1; "
        "floats as float64) and its digest = sha256(encoding), the numerical class id "
        "(spec/verification.md §2).",
        "contracts": [
            {
                "value": structure(c),
                "encoded": msgspec.msgpack.encode(c).hex(),
                "digest": c.digest().hex(),
            }
            for c in contracts
        ],
    }


def commitment_vectors() -> dict[str, Any]:
    salt = bytes(range(16))
    cases = [
        ([], "", b""),
        ([1, 2, 3], "abc", b""),
        (TOKENS, TEXT, b""),
        ([0, 2**32 - 1], "Héllo ✓ 🚀", b""),
        ([], "", salt),
        (TOKENS, TEXT, salt),
    ]
    return {
        "description": "Output commitments (spec/verification.md §3): sha256('opengrid/output/1' 0x00 || "
        "salt || u32be(len(tokens)) || u32be(token)* || utf8(text)); salt empty (open mode) or 16 bytes "
        "(sealed mode).",
        "commitments": [
            {
                "tokens": tokens,
                "text": text,
                "salt": salt.hex(),
                "mode": "sealed" if salt else "open",
                "commitment": commit_output(tokens, text, salt).hex(),
            }
            for tokens, text, salt in cases
        ],
    }


# ── (g) control ───────────────────────────────────────────────────────────────────────────────────────


def control_vectors() -> tuple[dict[str, Any], ControlRequest]:
    from opengrid.net.keys import peer_id_of

    peer_id = peer_id_of(PUB["NODE"])
    signed = control_signing_bytes(NETWORK, peer_id, "pause", ISSUED_AT_MS)
    request = ControlRequest(
        action="pause", issued_at_ms=ISSUED_AT_MS, signature=KEYS["NODE"].sign(signed).signature
    )
    doc = {
        "description": "An owner's ControlRequest (spec/job-protocol.md §5.11): Ed25519 by the node's own "
        "identity key over msgpack(['opengrid/control/1', network, peer_id, action, issued_at_ms]).",
        "keys": keys_section("NODE"),
        "network": NETWORK,
        "peer_id": peer_id,
        "action": "pause",
        "issued_at_ms": ISSUED_AT_MS,
        "signing_bytes": signed.hex(),
        "signature": request.signature.hex(),
        "frame": encode_frame(request).hex(),
    }
    return doc, request


# ── (i) starting grant ────────────────────────────────────────────────────────────────────────────────


def grant_vectors() -> tuple[dict[str, Any], GrantRequest, GrantVoucher, SubmitJob]:
    """A new account G asks coordinator C1 for its starting grant, then pays its first job with it."""
    signed = grant_request_signing_bytes(NETWORK, PUB["C1"], PUB["G"], ISSUED_AT_MS)
    request = GrantRequest(
        account=PUB["G"], issued_at_ms=ISSUED_AT_MS, signature=KEYS["G"].sign(signed).signature
    )
    voucher = sign_grant_voucher(KEYS["C1"], NETWORK, PUB["G"], GENESIS.grant_points)
    reply = GrantVoucher(
        account=PUB["G"], points=GENESIS.grant_points, signer=voucher.signer, signature=voucher.signature
    )
    chain = _Chain("G")
    grant = chain.append(Grant(GENESIS.grant_points, voucher))
    hold = chain.append(Hold(job(9), 16, PUB["C1"]))
    submit = SubmitJob(
        job_id=job(9), model="smollm2-135m-instruct", prompt="Paid for", max_tokens=8, replicas=2,
        hold=encode_entry(hold), grant=encode_entry(grant),
    )  # fmt: skip
    doc = {
        "description": "A new account's starting grant (spec/ledger.md §5.7, §7; spec/job-protocol.md "
        "§5.14): its GrantRequest, signed by the account over msgpack(['opengrid/grant-request/1', network, "
        "coordinator key, account, issued_at_ms]); the coordinator's GrantVoucher, its signature over "
        "msgpack(['opengrid/grant/1', network, account, points]); then the account's first paid job, "
        "carrying its GRANT (seq 1) and its HOLD of max_tokens x replicas points (seq 2).",
        "keys": keys_section("G", "C1"),
        "network": NETWORK,
        "genesis_grant_points": GENESIS.grant_points,
        "issued_at_ms": ISSUED_AT_MS,
        "request_signing_bytes": signed.hex(),
        "request_frame": encode_frame(request).hex(),
        "voucher_signing_bytes": msgspec.msgpack.encode(
            ["opengrid/grant/1", NETWORK, PUB["G"], GENESIS.grant_points]
        ).hex(),
        "voucher_frame": encode_frame(reply).hex(),
        "grant_entry": encode_entry(grant).hex(),
        "hold_entry": encode_entry(hold).hex(),
        "submit_frame": encode_frame(submit).hex(),
    }
    return doc, request, reply, submit


# ── (j) coordinator admission ─────────────────────────────────────────────────────────────────────────


def admit_vectors() -> tuple[dict[str, Any], AdmitRequest, AdmitVote]:
    """Candidate coordinator A asks genesis coordinator C1 to co-sign its admission at epoch 0."""
    signed = admit_request_signing_bytes(NETWORK, PUB["C1"], 0, PUB["A"], ISSUED_AT_MS)
    request = AdmitRequest(
        network=NETWORK, epoch=0, candidate=PUB["A"], issued_at_ms=ISSUED_AT_MS,
        signature=KEYS["A"].sign(signed).signature,
    )  # fmt: skip
    cosignature = sign_admit(KEYS["C1"], NETWORK, 0, PUB["A"])
    vote = AdmitVote(epoch=0, candidate=PUB["A"], signer=cosignature.signer, signature=cosignature.signature)
    doc = {
        "description": "A candidate coordinator's admission (spec/ledger.md §5.8, §7.1; spec/job-protocol.md "
        "§5.15): its AdmitRequest, signed by the candidate over msgpack(['opengrid/admit-request/1', "
        "network, coordinator key, epoch, candidate, issued_at_ms]); the coordinator's AdmitVote, its "
        "signature over msgpack(['opengrid/admit/1', network, epoch, candidate]): one co-signature of the "
        "ADMIT entry.",
        "keys": keys_section("A", "C1"),
        "network": NETWORK,
        "epoch": 0,
        "issued_at_ms": ISSUED_AT_MS,
        "request_signing_bytes": signed.hex(),
        "request_frame": encode_frame(request).hex(),
        "vote_signing_bytes": msgspec.msgpack.encode(["opengrid/admit/1", NETWORK, 0, PUB["A"]]).hex(),
        "vote_frame": encode_frame(vote).hex(),
    }
    return doc, request, vote


# ── (h) sealed mode ───────────────────────────────────────────────────────────────────────────────────


def sealed_vectors() -> tuple[dict[str, Any], SubmitJob, RunJob, ReplicaResult]:
    ephemeral = PrivateKey(EPHEMERAL_SEED)
    worker = KEYS["W1"]
    salt = bytes(range(100, 116))
    prompt = "The capital of France is"
    prompt_nonce, output_nonce = bytes(range(24)), bytes(range(24, 48))
    # No readers (an unaudited job): the 4-element array seal_prompt writes then, as before the field.
    prompt_plain = msgspec.msgpack.encode((SEALED_TAG, job(9), prompt, salt))
    prompt_box = Box(ephemeral, PublicKey(box_public_key(PUB["W1"])))
    sealed_prompt = bytes(prompt_box.encrypt(prompt_plain, prompt_nonce))
    output_plain = msgspec.msgpack.encode(SealedOutput(SEALED_TAG, job(9), TOKENS, TEXT, "length"))
    output_box = Box(worker.to_curve25519_private_key(), ephemeral.public_key)
    sealed_output = bytes(output_box.encrypt(output_plain, output_nonce))
    salted = commit_output(TOKENS, TEXT, salt)
    att = sign_attestation(worker, NETWORK, job(9), CONTRACT.digest(), salted, len(TOKENS))
    submit = SubmitJob(
        job_id=job(9),
        model="smollm2-135m-instruct",
        prompt="",
        max_tokens=5,
        replicas=1,
        sealed=[Sealed(peer_id="W1", ciphertext=sealed_prompt)],
        client_box_key=bytes(ephemeral.public_key),
    )
    run = RunJob(
        job_id=job(9),
        contract=CONTRACT,
        prompt="",
        max_tokens=5,
        sealed_prompt=sealed_prompt,
        client_box_key=bytes(ephemeral.public_key),
    )
    result = ReplicaResult(
        job_id=job(9),
        tokens=[],
        text="",
        finish_reason="",
        attestation=msgspec.msgpack.encode(att),
        sealed_output=sealed_output,
    )
    doc = {
        "description": "A sealed-mode round trip (opengrid/wire/sealed.py) with fixed keys and nonces: the "
        "client seals a SealedPrompt to worker W1's X25519 key (derived from its Ed25519 key) with its "
        "ephemeral key (no readers: the 4-element array); W1 seals a SealedOutput back; W1 attests to "
        "the salted commitment. A NaCl Box ciphertext is the 24-byte nonce followed by the "
        "XSalsa20-Poly1305 box.",
        "keys": keys_section("W1"),
        "network": NETWORK,
        "worker": "W1",
        "worker_box_public_key": box_public_key(PUB["W1"]).hex(),
        "client_ephemeral_private_key": EPHEMERAL_SEED.hex(),
        "client_box_key": bytes(ephemeral.public_key).hex(),
        "job_id": job(9).hex(),
        "prompt": {
            "value": structure(msgspec.msgpack.decode(prompt_plain, type=SealedPrompt)),
            "plaintext": prompt_plain.hex(),
            "nonce": prompt_nonce.hex(),
            "ciphertext": sealed_prompt.hex(),
        },
        "output": {
            "value": structure(SealedOutput(SEALED_TAG, job(9), TOKENS, TEXT, "length")),
            "plaintext": output_plain.hex(),
            "nonce": output_nonce.hex(),
            "ciphertext": sealed_output.hex(),
        },
        "salt": salt.hex(),
        "salted_commitment": salted.hex(),
        "attestation": msgspec.msgpack.encode(att).hex(),
    }
    return doc, submit, run, result


# ── (e) ledger entries with expected validation results, (f) a small ledger ──────────────────────────


class _Chain:
    def __init__(self, name: str, network: str = NETWORK) -> None:
        self.name, self.key, self.network = name, KEYS[name], network
        self.seq, self.prev = 0, b""

    def body(self, payload: Payload, *, seq: int | None = None, prev: bytes | None = None) -> EntryBody:
        seq = self.seq + 1 if seq is None else seq
        prev = self.prev if prev is None else prev
        return EntryBody(self.network, PUB[self.name], seq, prev, payload)

    def sign(self, payload: Payload, **overrides: Any) -> Entry:
        """Sign without advancing the chain (for forged or refused entries)."""
        body = self.body(payload, **overrides)
        encoded = msgspec.msgpack.encode(body)
        return Entry(encoded, self.key.sign(ENTRY_DOMAIN + encoded).signature)

    def append(self, payload: Payload) -> Entry:
        entry = sign_entry(self.key, self.body(payload))
        self.seq, self.prev = self.seq + 1, entry.id
        return entry


def _receipt(job_id: bytes, credits: list[tuple[str, int]], *, network: str = NETWORK) -> Receipt:
    atts = tuple(
        sign_attestation(KEYS[w], network, job_id, CONTRACT.digest(), COMMITMENT, len(TOKENS))
        for w, _ in credits
    )
    return Receipt(
        job_id=job_id,
        contract_hash=CONTRACT.digest(),
        output_commitment=COMMITMENT,
        n_tokens=len(TOKENS),
        credits=tuple(Credit(PUB[w], p) for w, p in credits),
        attestations=atts,
        issued_at_ms=ISSUED_AT_MS,
    )


GENESIS = Genesis(NETWORK, (PUB["C1"], PUB["C2"], PUB["C3"]), grant_points=100)


def ledger_steps() -> list[tuple[str, Entry, str]]:
    """(what it shows, entry, intended outcome: 'applied', 'waiting' or an error substring), in order."""
    c1, c2, c3 = _Chain("C1"), _Chain("C2"), _Chain("C3")
    w1, w2, u1, x, n, f = (_Chain(name) for name in ("W1", "W2", "U1", "X", "N", "F"))
    steps: list[tuple[str, Entry, str]] = []

    def step(what: str, entry: Entry, outcome: str = "applied") -> Entry:
        steps.append((what, entry, outcome))
        return entry

    voucher_u1 = sign_grant_voucher(KEYS["C1"], NETWORK, PUB["U1"], 100)
    step("grant: U1 claims the starting grant with C1's voucher", u1.append(Grant(100, voucher_u1)))
    step("receipt: C1 credits W1 and W2 for job 1", c1.append(_receipt(job(1), [("W1", 10), ("W2", 10)])))
    evidence = Evidence(job(1), valid=(PUB["W1"], PUB["W2"]))
    step("evidence: C1 records W1 and W2 valid for job 1", c1.append(evidence))
    hold2 = step("hold: U1 reserves 30 for job 2, closed by C1", u1.append(Hold(job(2), 30, PUB["C1"])))
    step("receipt: C1 credits W1 for job 2", c1.append(_receipt(job(2), [("W1", 12)])))
    settle = Settle(hold2.id, (Credit(PUB["W1"], 12),))
    step("settle: C1 pays W1 12 out of U1's hold; 18 go back", c1.append(settle))
    hold3 = step("hold: U1 reserves 20 for job 3", u1.append(Hold(job(3), 20, PUB["C1"])))
    step("refund: C1 returns U1's hold for job 3", c1.append(Refund(hold3.id)))
    step("transfer: W1 gives U1 5", w1.append(Transfer(PUB["U1"], 5)))
    step("transfer with a memo: W1 gives U1 3", w1.append(Transfer(PUB["U1"], 3, memo="thanks for the docs")))
    cosigs = tuple(sign_admit(KEYS[k], NETWORK, 0, PUB["N"]) for k in ("C1", "C2"))
    step(
        "admit: N becomes a coordinator at epoch 0, co-signed by C1, C2", n.append(Admit(PUB["N"], 0, cosigs))
    )
    step("receipt: the admitted N credits W2 for job 4", n.append(_receipt(job(4), [("W2", 7)])))
    voucher_f = sign_grant_voucher(KEYS["C2"], NETWORK, PUB["F"], 100)
    f_grant = step("grant: F claims the starting grant with C2's voucher", f.append(Grant(100, voucher_f)))
    good = w2.sign(Transfer(PUB["U1"], 1))
    forged = Entry(good.body, bytes([good.signature[0] ^ 1]) + good.signature[1:])
    step("forged: bad signature (first signature byte flipped)", forged, "bad signature")
    other = _Chain("W2", "othernet").sign(Transfer(PUB["U1"], 1))
    step("forged: wrong network", other, "entry is for network")
    unchained = c1.sign(Evidence(job(2), valid=(PUB["W1"],)), prev=bytes(32))
    step("forged: broken chain (seq 6 whose prev is not C1's seq 5)", unchained, "broken chain")
    outsider = x.sign(_receipt(job(5), [("W1", 3)]))
    step("forged: receipt by X, who is not a minter", outsider, "not a minter")
    again = c2.sign(_receipt(job(1), [("W1", 10)]))
    step("forged: duplicate receipt (C2 credits job 1 again)", again, "already credited")
    hold6 = step("hold: U1 reserves 10 for job 6, closed by C1", u1.append(Hold(job(6), 10, PUB["C1"])))
    theft = c2.sign(Settle(hold6.id, (Credit(PUB["W1"], 10),)))
    step("forged: C2 settles a hold that names C1 (no spend without the hold)", theft, "only it may close it")
    phantom = c3.append(Settle(hashlib.sha256(b"no such hold").digest(), (Credit(PUB["W1"], 1),)))
    step("waiting: C3 settles a hold that does not exist (never applies)", phantom, "waiting")
    spend = step("transfer: F gives U1 10", f.append(Transfer(PUB["U1"], 10)))
    fork = f.sign(Transfer(PUB["W1"], 10), seq=2, prev=f_grant.id)
    step("fork: F signs another seq 2; F is cut at seq 2 and its transfer to U1 undone", fork, "fork:")
    step("fraud: W2 publishes the proof of F's fork", w2.append(make_fraud(spend, fork)))
    overdraft = u1.append(Transfer(PUB["W2"], 1000))
    step("waiting: U1 transfers more than it has (waits for credits)", overdraft, "waiting")
    return steps


def _summary(ledger: LedgerState) -> dict[str, Any]:
    accounts = sorted({*ledger.balances(), *(PUB[n] for n in SEEDS)})
    return {
        "balances": {a.hex(): ledger.balance(a) for a in accounts if ledger.balance(a)},
        "held": {a.hex(): ledger.held(a) for a in accounts if ledger.held(a)},
        "jobs_done": {a.hex(): ledger.jobs_done(a) for a in accounts if ledger.jobs_done(a)},
        "reputation": {a.hex(): list(ledger.reputation(a)) for a in accounts if any(ledger.reputation(a))},
        "minted": ledger.minted(),
        "minters": sorted(m.hex() for m in ledger.minters()),
        "frozen": {a.hex(): cut for a, cut in sorted(ledger.frozen().items())},
        "applied": len(ledger),
        "waiting": sorted(e.id.hex() for e in ledger.pending()),
    }


def ledger_vectors() -> tuple[dict[str, Any], dict[str, Any], list[Entry]]:
    ledger = LedgerState.from_genesis(GENESIS)
    cases = []
    kept: list[Entry] = []
    for what, entry, intended in ledger_steps():
        try:
            applied = ledger.apply(entry)
        except InvalidEntryError as exc:
            outcome: dict[str, Any] = {"result": "refused", "error": intended}
            if intended not in str(exc):
                raise AssertionError(f"{what}: expected {intended!r}, got {exc}") from exc
            if intended == "fork:":
                kept.append(entry)  # a fork's second branch belongs to the set: it is evidence
        else:
            actual = "applied" if applied else "waiting"
            if actual != intended:
                raise AssertionError(f"{what}: expected {intended}, got {actual}")
            outcome = {"result": actual, "applied": [e.id.hex() for e in applied]}
            kept.append(entry)
        body = msgspec.msgpack.decode(entry.body)
        cases.append(
            {
                "what": what,
                "kind": body["payload"]["type"],
                "author": next(n for n, p in PUB.items() if p == body["author"]),
                "seq": body["seq"],
                "entry": encode_entry(entry).hex(),
                "id": entry.id.hex(),
                "body": hexify(body),
                "expected": outcome,
            }
        )
    summary = _summary(ledger)
    kinds = {str(k.__struct_config__.tag) for k in typing.get_args(Payload)}
    assert {c["kind"] for c in cases if c["expected"]["result"] == "applied"} == kinds, (
        "every payload kind needs a valid vector"
    )
    header = {
        "network": NETWORK,
        "genesis": json.loads(encode_genesis(GENESIS)),
        "genesis_msgpack": msgspec.msgpack.encode(GENESIS).hex(),
        "keys": keys_section("C1", "C2", "C3", "W1", "W2", "U1", "X", "N", "F"),
    }
    entries_doc = {
        "description": "Ledger entries of every payload kind, applied IN ORDER to one fresh "
        "LedgerState.from_genesis(genesis), with the outcome of each apply: 'applied' (with the ids newly "
        "applied), 'waiting' (valid, parked or blocked on a dependency) or 'refused' with a substring of "
        "the InvalidEntryError message. `final` is the state after the last step (spec/ledger.md §3-6).",
        **header,
        "steps": cases,
        "final": summary,
    }
    small = LedgerState.from_genesis(GENESIS)
    for entry in kept:
        try:
            small.apply(entry)
        except InvalidEntryError:
            pass  # the fork's second branch: refused, but it cuts the forker
    assert _summary(small) == summary, "the set of kept entries must fold to the same state"
    small_doc = {
        "description": "A small ledger as a SET of entries (the applied, waiting and fork-evidence entries "
        "of ledger-entries.json). Applying them in ANY order, re-offering refused ones until nothing "
        "changes, MUST give `final` (spec/ledger.md §6.2: merge is set union).",
        **header,
        "entries": [encode_entry(e).hex() for e in kept],
        "final": summary,
    }
    return entries_doc, small_doc, kept


# ── (a) one frame per job-protocol message ────────────────────────────────────────────────────────────


def messages(
    receipt_entries: list[Entry],
    control: ControlRequest,
    sealed: tuple[SubmitJob, RunJob, ReplicaResult],
    grant: tuple[GrantRequest, GrantVoucher, SubmitJob],
    admit: tuple[AdmitRequest, AdmitVote],
) -> list[tuple[str, Message]]:
    offer = ModelOffer(
        name="smollm2-135m-instruct",
        contract=CONTRACT,
        chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
    )
    att = sign_attestation(KEYS["W1"], NETWORK, job(1), CONTRACT.digest(), COMMITMENT, len(TOKENS))
    receipt = next(
        e for e in receipt_entries if msgspec.msgpack.decode(e.body)["payload"]["type"] == "receipt"
    )
    submit_sealed, run_sealed, result_sealed = sealed
    transfer = next(
        e
        for e in receipt_entries
        if msgspec.msgpack.decode(e.body)["payload"].get("memo")  # W1's transfer with a memo
    )
    return [
        ("a worker registers with one model", RegisterWorker(
            network=NETWORK, public_key=PUB["W1"], listen_addrs=["/ip4/127.0.0.1/tcp/4001"], models=[offer],
            slots=2, software="opengrid/0.1.0")),
        ("registered", Registered(coordinator_key=PUB["C1"], heartbeat_s=5.0)),
        ("an open job, defaults left as they are", SubmitJob(
            job_id=job(1), model="smollm2-135m-instruct", prompt="The capital of France is", max_tokens=5)),
        ("an open streaming chat job", SubmitJob(
            job_id=job(2), model="smollm2-135m-instruct", prompt="Héllo ✓ 🚀", max_tokens=64, replicas=3,
            format="chat", stream=True)),
        ("a batch job: it waits behind interactive jobs for a free worker", SubmitJob(
            job_id=job(3), model="smollm2-135m-instruct", prompt="Summarise: ...", max_tokens=64,
            priority="batch")),
        ("a sampled job: Gumbel-max at temperature 0.7 with the client's seed (spec/verification.md §11)",
         SubmitJob(
            job_id=job(4), model="smollm2-135m-instruct", prompt="Once upon a time", max_tokens=16,
            temperature=0.7, top_k=40, top_p=0.9, seed=42)),
        ("a sealed job (see sealed.json)", submit_sealed),
        ("run a replica", RunJob(
            job_id=job(1), contract=CONTRACT, prompt="The capital of France is", max_tokens=5)),
        ("run a sealed replica (see sealed.json)", run_sealed),
        ("progress", ReplicaProgress(job_id=job(1), text=" Paris")),
        (
            "progress with tokens",
            ReplicaProgress(job_id=job(1), text=" Paris", tokens=[7042, 13], pieces=[" Paris", ""]),
        ),
        ("a sealed streaming prover's chunk: two tokens sealed to the client and one reader, with its "
         "salted commitment (spec/verification.md §14.3)", SealedProgress(
            job_id=job(1), offset=0, n_tokens=2, commitment=bytes(range(32)), to_client=b"\x01" * 48,
            to_readers=[SealedClaim(reader=PUB["W2"], ciphertext=b"\x02" * 48)])),
        ("a verified sealed chunk forwarded to the client", JobProgress(
            job_id=job(1), text="", verified=True,
            sealed_chunk=Sealed(peer_id="W1", ciphertext=b"\x01" * 48), chunk_commitment=bytes(range(32)))),
        ("a sealed chunk relayed to its auditor", AuditChunk(
            job_id=job(1), offset=0, tokens=[], pieces=[], sealed_chunk=b"\x02" * 48,
            commitment=bytes(range(32)), end=2)),
        ("a chunk verdict naming the sealed chunk's commitment", ChunkVerdict(
            job_id=job(1), end=2, verdict="pass", max_gap=0.125, commitment=bytes(range(32)))),
        ("job progress", JobProgress(job_id=job(1), text=" Paris")),
        ("verified job progress", JobProgress(job_id=job(1), text=" Paris", verified=True)),
        ("a replica's result with its attestation (see attestation.json)", ReplicaResult(
            job_id=job(1), tokens=TOKENS, text=TEXT, finish_reason="length",
            attestation=msgspec.msgpack.encode(att))),
        ("a sealed replica's result (see sealed.json)", result_sealed),
        ("accepted, with the receipt entry", JobAccepted(
            job_id=job(1), text=TEXT, tokens=TOKENS, finish_reason="length", receipt=encode_entry(receipt),
            workers=["W1", "W2"], dissenters=["W3"], failed=[])),
        ("receipt notice", ReceiptNotice(entries=[encode_entry(e) for e in receipt_entries[:3]])),
        ("status request", StatusRequest()),
        ("a coordinator's status", NodeStatus(
            peer_id="12D3KooWExample", public_key=PUB["C1"], role="coordinator",
            addrs=["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWExample"], points=0, jobs_done=0,
            workers=[WorkerSummary(peer_id="W1", public_key=PUB["W1"], models=["smollm2-135m-instruct"],
                                   online=True)],
            balances={PUB["W1"].hex(): 22}, ledger_entries=5,
            peers=[PeerSummary(peer_id="W1", roles=["worker"], models=["smollm2-135m-instruct"],
                               addrs=["/ip4/127.0.0.1/tcp/4002/p2p/W1"], last_seen_s=1.2, online=True,
                               rtt_ms=0.6, software="opengrid/0.1.0")],
            network="opengrid-local")),
        ("history request", HistoryRequest(account=PUB["W1"], limit=10)),
        ("history", History(entries=[encode_entry(receipt)])),
        ("control (see control.json)", control),
        ("quote request", QuoteRequest(model="smollm2-135m-instruct", replicas=1, exposure=2)),
        ("quote", Quote(model="smollm2-135m-instruct", workers=[
            QuotedWorker(peer_id="W1", public_key=PUB["W1"], box_key=box_public_key(PUB["W1"]))])),
        ("error", ErrorReply(code="no_capacity", message="only 1 worker serves it; lower replicas",
                             job_id=job(1))),
        ("a paid job refused by a coordinator that runs only paid jobs", ErrorReply(
            code="payment_required", message="this coordinator runs only paid jobs", job_id=job(1))),
        ("grant request (see grant.json)", grant[0]),
        ("grant voucher (see grant.json)", grant[1]),
        ("a new account's first paid job: its GRANT, then its HOLD (see grant.json)", grant[2]),
        ("admit request (see admit.json)", admit[0]),
        ("admit vote (see admit.json)", admit[1]),
        ("admission refused until the operator approves", ErrorReply(
            code="admission_pending", message="awaiting approval by this coordinator's operator")),
        ("a dial-back request: dial my listen addresses on a fresh connection", DialBackRequest(
            addrs=["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWExample", "/ip4/10.0.0.2/tcp/4001"])),
        ("a dial-back report: one result per address asked, in order", DialBackReport(results=[
            DialBackResult("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWExample", True, "a libp2p listener answered"),
            DialBackResult("/ip4/10.0.0.2/tcp/4001", False,
                           "not dialled: the request came from 127.0.0.1, not 10.0.0.2", dialled=False)])),
        ("an audit: re-score a prover's greedy claim that stopped (spec/verification.md §13)", AuditJob(
            job_id=job(1), contract=DecodingContract(model_sha256="ab" * 32), prompt="Once upon a time",
            tokens=[101, 202], text=" there was", finish_reason="stop")),
        ("a partial audit: score only the first of the claim's three positions (spec/verification.md §13.5)",
         AuditJob(job_id=job(1), contract=DecodingContract(model_sha256="ab" * 32), prompt="Once upon a time",
                  tokens=[101, 202], text=" there was", finish_reason="stop", score_end=1)),
        ("an audit report that rejects the claim at its second position", AuditReport(
            job_id=job(1), verdict="fail", n_scored=3, max_gap=12.5, evidence_commitment=_AUDIT_COMMITMENT,
            first_failure=1, failure_gap=12.5,
            reason="position 1: claimed token 202 is 12.500 logits below the sampler's choice")),
        ("a chunked audit of a streaming job: the claim follows in AuditChunks (spec/verification.md §14.2)",
         AuditJob(job_id=job(1), contract=DecodingContract(model_sha256="ab" * 32), prompt="Once upon a time",
                  tokens=[], text="", finish_reason="", chunked=True)),
        ("an audit chunk: the claim's first two tokens with their text pieces", AuditChunk(
            job_id=job(1), offset=0, tokens=[101, 202], pieces=[" there", " was"])),
        ("the final audit chunk: the claim stopped; its whole text", AuditChunk(
            job_id=job(1), offset=2, tokens=[], pieces=[], final=True, finish_reason="stop",
            text=" there was")),
        ("a chunk verdict: the first two positions pass", ChunkVerdict(
            job_id=job(1), end=2, verdict="pass", max_gap=0.125)),
        ("a chunk verdict that fails position 3", ChunkVerdict(
            job_id=job(1), end=4, verdict="fail", max_gap=12.5, first_failure=3, failure_gap=12.5,
            reason="position 3: claimed token 404 is 12.500 logits below the sampler's choice")),
        ("an auditor's first position judged in advance: two tokens it would pass at position 0",
         FirstPositionVerdict(job_id=job(1), tokens=[1014, 330], pieces=[" there", " a"])),
        ("models request: every model served here (no chat templates)", ModelsRequest()),
        ("a model list", ModelList(models=[ModelInfo(
            name="smollm2-135m-instruct", sha256="ab" * 32, workers=2, weight=1)])),
        ("models request naming one model: its entries, with the chat template", ModelsRequest(
            model="smollm2-135m-instruct")),
        ("a model list with a chat template", ModelList(models=[ModelInfo(
            name="smollm2-135m-instruct", sha256="ab" * 32, workers=2, weight=1,
            chat_template="{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}",
            bos_token="<s>", eos_token="</s>")])),
        ("receipt request", ReceiptRequest(job_id=job(1))),
        ("a job's receipt, from the ledger", JobReceipt(job_id=job(1), receipt=encode_entry(receipt))),
        ("a job's receipt with its kept answer (to the job's own client)", JobReceipt(
            job_id=job(1), receipt=encode_entry(receipt), answered=True, text=TEXT, tokens=TOKENS,
            finish_reason="length")),
        ("no receipt for that job id here", ErrorReply(
            code="unknown_job", message="no receipt for job 0101...; it never ran here, or it failed",
            job_id=job(1))),
        ("account request", AccountRequest(account=PUB["W1"])),
        ("an account as the node's ledger holds it", AccountState(
            account=PUB["W1"], balance=14, held=0, seq=2, head=bytes(transfer.id), standing=True,
            frozen=False)),
        ("a transfer request: W1's signed TRANSFER with a memo (spec/ledger.md §5.6)", TransferRequest(
            entry=encode_entry(transfer))),
        ("the sender's account after the transfer was applied", AccountState(
            account=PUB["W1"], balance=14, held=0, seq=2, head=bytes(transfer.id), standing=True,
            frozen=False, entry_id=bytes(transfer.id))),
        ("a transfer above the sender's balance", ErrorReply(
            code="insufficient_balance",
            message="account 0707... has 14 spendable points here; the transfer is 1000. Send at most 14")),
        ("an owner asks its node to send 25 points from the node's account", owner_transfer()),
    ]  # fmt: skip


def owner_transfer() -> OwnerTransfer:
    """NODE's owner sends 25 points to U1 from the node's own account (signed with the node's key)."""
    from opengrid.net.keys import peer_id_of

    signed = owner_transfer_signing_bytes(
        NETWORK, peer_id_of(PUB["NODE"]), PUB["U1"], 25, "for the docs", False, ISSUED_AT_MS
    )
    return OwnerTransfer(
        to=PUB["U1"], amount=25, memo="for the docs", issued_at_ms=ISSUED_AT_MS,
        signature=KEYS["NODE"].sign(signed).signature,
    )  # fmt: skip


_AUDIT_COMMITMENT = evidence_commitment(
    job(1),
    SamplingParams(),
    [
        PositionEvidence(token=101, logprob=-0.25, gap=0.0, rank=0, mask_margin=0.0),
        PositionEvidence(token=202, logprob=-14.0, gap=12.5, rank=7, mask_margin=0.0),
        PositionEvidence(token=2, logprob=-0.5, gap=0.0, rank=0, mask_margin=0.0),
    ],
)
"""The evidence commitment of the audit report vector (opengrid.core.audit.evidence_commitment)."""


def _bad_body(value: dict[str, Any]) -> str:
    return msgspec.msgpack.encode(value).hex()


def frame_of(body_hex: str) -> str:
    return (len(body_hex) // 2).to_bytes(4, "big").hex() + body_hex


def job_protocol_vectors(items: list[tuple[str, Message]]) -> dict[str, Any]:
    frames = [
        {
            "what": what,
            "type": type(message).__struct_config__.tag,
            "name": type(message).__name__,
            "value": structure(message),
            "body": encode_message(message).hex(),
            "frame": encode_frame(message).hex(),
        }
        for what, message in items
    ]
    submit = {"type": "submit", "job_id": job(1), "model": "m", "prompt": "p", "max_tokens": 1}
    invalid = [
        ("empty frame (length 0)", "00000000", "MalformedMessageError"),
        ("length over 4 MiB", (4 * 1024 * 1024 + 1).to_bytes(4, "big").hex(), "FrameTooLargeError"),
        ("not msgpack", frame_of("c1"), "MalformedMessageError"),
        ("unknown tag", frame_of(_bad_body({"type": "gossip"})), "MalformedMessageError"),
        ("unknown field", frame_of(_bad_body({**submit, "priority": 1})), "MalformedMessageError"),
        ("job_id of 15 bytes", frame_of(_bad_body({**submit, "job_id": bytes(15)})), "MalformedMessageError"),
        ("max_tokens 0", frame_of(_bad_body({**submit, "max_tokens": 0})), "MalformedMessageError"),
        ("replicas 9", frame_of(_bad_body({**submit, "replicas": 9})), "MalformedMessageError"),
        ("missing required field", frame_of(_bad_body({"type": "progress", "job_id": job(1)})),
         "MalformedMessageError"),
    ]  # fmt: skip
    return {
        "description": "One or more frames per job-protocol message (spec/job-protocol.md §3-5): `value` is "
        "the message as JSON data (bytes as hex; see spec/schemas/job-protocol.json for which fields are "
        "bytes), `body` its canonical msgpack, `frame` = u32be(len(body)) || body. `invalid` frames MUST "
        "be refused with the named error (both are RemoteProtocolErrors).",
        "frames": frames,
        "invalid": [{"what": w, "frame": f, "error": e} for w, f, e in invalid],
    }


def build_vectors() -> dict[str, str]:
    """File name -> exact file text, for every vector file."""
    entries_doc, small_doc, kept = ledger_vectors()
    control_doc, control = control_vectors()
    sealed_doc, *sealed_messages = sealed_vectors()
    submit_sealed, run_sealed, result_sealed = sealed_messages
    grant_doc, *grant_messages = grant_vectors()
    admit_doc, admit_request, admit_vote = admit_vectors()
    docs = {
        "job-protocol.json": job_protocol_vectors(
            messages(
                kept,
                control,
                (submit_sealed, run_sealed, result_sealed),  # type: ignore[arg-type]
                tuple(grant_messages),  # type: ignore[arg-type]
                (admit_request, admit_vote),
            )
        ),
        "contract.json": contract_vectors(),
        "commitments.json": commitment_vectors(),
        "attestation.json": attestation_vectors(),
        "control.json": control_doc,
        "grant.json": grant_doc,
        "admit.json": admit_doc,
        "ledger-entries.json": entries_doc,
        "ledger-small.json": small_doc,
        "sealed.json": sealed_doc,
    }
    return {name: dump(doc) for name, doc in docs.items()}


def main() -> int:
    from spec_files import write_or_check

    return write_or_check(build_vectors(), VECTOR_DIR, ROOT, what="vectors", script="gen_vectors.py")


if __name__ == "__main__":
    sys.exit(main())
