"""One fully populated instance of every job-protocol message (non-default values wherever possible)."""

from __future__ import annotations

import typing

from opengrid.wire.contract import DecodingContract
from opengrid.wire.messages import (
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
    SealedClaim,
    SealedProgress,
    StatusRequest,
    SubmitJob,
    TransferRequest,
    WorkerSummary,
)

CONTRACT = DecodingContract(model_sha256="ab" * 32, backend_version="0.3.36", n_batch=256, flash_attn=True)
JOB = JobId(bytes(range(16)))

MESSAGE_TYPES: tuple[type, ...] = typing.get_args(Message)


def sample_messages() -> list[Message]:
    """Every message type once, in the order of the ``Message`` union."""
    return [
        RegisterWorker(
            network="testnet",
            public_key=b"\x01" * 32,
            listen_addrs=["/ip4/127.0.0.1/tcp/4001"],
            models=[ModelOffer(name="tiny", contract=CONTRACT), ModelOffer(name="other", contract=CONTRACT)],
            slots=4,
            software="opengrid/0.1.0",
        ),
        Registered(coordinator_key=b"\x02" * 32, heartbeat_s=2.5),
        SubmitJob(
            job_id=JOB,
            model="tiny",
            prompt="Héllo, wörld ✓ \x00 🚀",
            max_tokens=64,
            replicas=3,
            client_key=b"\x03" * 32,
            priority="batch",
            grant=b"\x93grant",
        ),
        RunJob(job_id=JOB, contract=CONTRACT, prompt="Once upon a time", max_tokens=8192),
        ReplicaProgress(job_id=JOB, text=" there", tokens=[5, 6], pieces=[" the", "re"]),
        SealedProgress(
            job_id=JOB,
            offset=4,
            n_tokens=1024,
            commitment=b"\x07" * 32,
            to_client=b"\x01" * 64,
            to_readers=[SealedClaim(reader=b"\x02" * 32, ciphertext=b"\x03" * 64)],
        ),
        JobProgress(job_id=JOB, text=" there", verified=True),
        ReplicaResult(
            job_id=JOB,
            tokens=[0, 1, 31337, 2**32 - 1],
            text=" there was",
            finish_reason="length",
            attestation=b"\x00attestation\xff",
        ),
        JobAccepted(
            job_id=JOB,
            text=" there was",
            tokens=[5, 6, 7],
            finish_reason="stop",
            receipt=b"\x93receipt",
            workers=["peerA", "peerB"],
            dissenters=["peerC"],
            failed=["peerD"],
        ),
        ReceiptNotice(entries=[b"entry-1", b"", b"\xff" * 40]),
        StatusRequest(),
        NodeStatus(
            peer_id="12D3KooWpeer",
            public_key=b"\x04" * 32,
            role="coordinator",
            addrs=["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWpeer"],
            points=1234,
            jobs_done=7,
            models=["tiny"],
            workers=[WorkerSummary(peer_id="w1", public_key=b"\x05" * 32, models=["tiny"], online=False)],
            balances={"05" * 32: 99},
            ledger_entries=3,
            peers=[
                PeerSummary(
                    peer_id="w1",
                    roles=["worker"],
                    models=["tiny"],
                    addrs=["/ip4/127.0.0.1/tcp/4002/p2p/w1"],
                    last_seen_s=1.5,
                    online=True,
                    rtt_ms=0.8,
                )
            ],
            network="opengrid-local",
            candidate=True,
        ),
        HistoryRequest(account=b"\x05" * 32, limit=10),
        History(entries=[b"entry-1", b"entry-2"]),
        ControlRequest(action="pause", issued_at_ms=1_700_000_000_000, signature=b"\x06" * 64),
        QuoteRequest(model="tiny", replicas=2, exposure=4, trusted=["12D3KooWpeer"], max_tokens=64),
        Quote(
            model="tiny",
            workers=[QuotedWorker(peer_id="12D3KooWpeer", public_key=b"\x07" * 32, box_key=b"\x08" * 32)],
        ),
        ErrorReply(code="no_capacity", message="only 1 worker(s) serve it; lower replicas", job_id=JOB),
        GrantRequest(account=b"\x09" * 32, issued_at_ms=1_700_000_000_000, signature=b"\x0a" * 64),
        GrantVoucher(account=b"\x09" * 32, points=100, signer=b"\x02" * 32, signature=b"\x0b" * 64),
        AdmitRequest(
            network="opengrid-local",
            epoch=0,
            candidate=b"\x0c" * 32,
            issued_at_ms=1_700_000_000_000,
            signature=b"\x0d" * 64,
        ),
        AdmitVote(epoch=0, candidate=b"\x0c" * 32, signer=b"\x02" * 32, signature=b"\x0e" * 64),
        DialBackRequest(addrs=["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWpeer"]),
        DialBackReport(
            results=[
                DialBackResult("/ip4/127.0.0.1/tcp/4001", True, "a libp2p listener answered"),
                DialBackResult("/ip4/10.0.0.2/tcp/4001", False, "not dialled: another IP", False),
            ]
        ),
        AuditJob(
            job_id=JOB,
            contract=DecodingContract(model_sha256="ab" * 32),
            prompt="Once upon a time",
            tokens=[101, 202, 303],
            text=" there was",
            finish_reason="stop",
            format="chat",
            temperature=0.8,
            top_k=40,
            top_p=0.95,
            seed=2**63 + 5,
            tolerance=0.75,
        ),
        AuditReport(
            job_id=JOB,
            verdict="fail",
            n_scored=4,
            max_gap=12.5,
            evidence_commitment=b"\x0f" * 32,
            first_failure=2,
            failure_gap=12.5,
            reason="position 2: claimed token 303 is 12.500 logits below the sampler's choice",
            attestation=b"\x10" * 100,
        ),
        AuditChunk(
            job_id=JOB,
            offset=4,
            tokens=[101, 202],
            pieces=[" the", " quick"],
            final=True,
            finish_reason="stop",
            text=" the quick",
        ),
        ChunkVerdict(
            job_id=JOB,
            end=6,
            verdict="fail",
            max_gap=12.5,
            first_failure=5,
            failure_gap=12.5,
            reason="position 5: claimed token 202 is 12.500 logits below the sampler's choice",
        ),
        FirstPositionVerdict(job_id=JOB, tokens=[101, 7], pieces=[" the", " a"]),
        ModelsRequest(model="tiny"),
        ModelList(
            models=[
                ModelInfo(
                    name="tiny",
                    sha256="ab" * 32,
                    workers=2,
                    weight=3,
                    chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}",
                    bos_token="<s>",
                    eos_token="</s>",
                )
            ]
        ),
        ReceiptRequest(job_id=JOB),
        JobReceipt(
            job_id=JOB,
            receipt=b"\x93receipt",
            answered=True,
            text=" there",
            tokens=[5, 6],
            finish_reason="stop",
        ),
        AccountRequest(account=b"\x07" * 32),
        AccountState(
            account=b"\x07" * 32,
            balance=90,
            held=10,
            seq=3,
            head=b"\x08" * 32,
            standing=True,
            frozen=False,
            entry_id=b"\x08" * 32,
        ),
        TransferRequest(entry=b"\x82entry", new_recipient=True, grant=b"\x82grant"),
        OwnerTransfer(
            to=b"\x09" * 32,
            amount=25,
            memo="for the docs",
            new_recipient=True,
            issued_at_ms=1_700_000_000_000,
            signature=b"\x0a" * 64,
        ),
    ]


def sample(kind: type[Message]) -> Message:
    """The sample of one message type (by type, so adding types never shifts what a test picks)."""
    return next(m for m in sample_messages() if type(m) is kind)
