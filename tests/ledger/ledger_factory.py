"""Builders for real, signed ledger objects (real PyNaCl keys, fixed seeds; no mocks)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import msgspec
import nacl.signing
from opengrid_ledger import (
    ENTRY_DOMAIN,
    Admit,
    Attestation,
    Credit,
    Entry,
    EntryBody,
    Genesis,
    Grant,
    Payload,
    Receipt,
    sign_admit,
    sign_attestation,
    sign_entry,
    sign_grant_voucher,
)

NETWORK = "testnet"
CONTRACT = hashlib.sha256(b"contract").digest()
COMMITMENT = hashlib.sha256(b"output tokens").digest()
N_TOKENS = 42


def key(n: int) -> nacl.signing.SigningKey:
    """A deterministic signing key: the same n always gives the same key."""
    return nacl.signing.SigningKey(hashlib.sha256(b"test key %d" % n).digest())


def pub(k: nacl.signing.SigningKey) -> bytes:
    return bytes(k.verify_key)


def job_id(n: int) -> bytes:
    return n.to_bytes(16, "big")


COORDINATOR = key(1)
OTHER_COORDINATOR = key(2)
THIRD_COORDINATOR = key(3)
WORKERS = [key(10 + i) for i in range(5)]
MINTERS = [pub(COORDINATOR), pub(OTHER_COORDINATOR), pub(THIRD_COORDINATOR)]


def make_receipt(
    job: bytes,
    workers: Sequence[tuple[nacl.signing.SigningKey, int]],
    *,
    network: str = NETWORK,
    dissenters: tuple[bytes, ...] = (),
) -> Receipt:
    """A valid receipt crediting each (worker, points), each with its own attestation."""
    attestations = tuple(
        sign_attestation(w, network, job, CONTRACT, COMMITMENT, N_TOKENS) for w, _ in workers
    )
    return Receipt(
        job_id=job,
        contract_hash=CONTRACT,
        output_commitment=COMMITMENT,
        n_tokens=N_TOKENS,
        credits=tuple(Credit(pub(w), points) for w, points in workers),
        attestations=attestations,
        dissenters=dissenters,
    )


def raw_sign(k: nacl.signing.SigningKey, body: EntryBody) -> Entry:
    """Sign without sign_entry's checks: how a buggy or hostile peer would build an entry."""
    encoded = msgspec.msgpack.encode(body)
    return Entry(encoded, k.sign(ENTRY_DOMAIN + encoded).signature)


class Author:
    """Keeps one author's chain (seq, prev) so tests can emit consecutive entries."""

    def __init__(self, k: nacl.signing.SigningKey, network: str = NETWORK) -> None:
        self.key = k
        self.network = network
        self.seq = 0
        self.prev = b""

    def body(self, payload: Payload) -> EntryBody:
        return EntryBody(self.network, pub(self.key), self.seq + 1, self.prev, payload)

    def append(self, payload: Payload, *, checked: bool = True) -> Entry:
        body = self.body(payload)
        entry = sign_entry(self.key, body) if checked else raw_sign(self.key, body)
        self.seq += 1
        self.prev = entry.id
        return entry


def attestation_replace(att: Attestation, **changes: object) -> Attestation:
    return msgspec.structs.replace(att, **changes)


GRANT = 100
GENESIS = Genesis(NETWORK, tuple(MINTERS), grant_points=GRANT)
USERS = [key(100 + i) for i in range(4)]


def grant(author: Author, points: int = GRANT, voucher_key: nacl.signing.SigningKey = COORDINATOR) -> Entry:
    """``author``'s first entry: the starting grant, vouched for by ``voucher_key``."""
    voucher = sign_grant_voucher(voucher_key, author.network, pub(author.key), points)
    return author.append(Grant(points, voucher), checked=False)


def admit(author: Author, new: bytes, epoch: int, signers: Sequence[nacl.signing.SigningKey]) -> Entry:
    cosigs = tuple(sign_admit(k, author.network, epoch, new) for k in signers)
    return author.append(Admit(new, epoch, cosigs))
