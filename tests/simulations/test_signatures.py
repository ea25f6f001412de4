"""Stubbed signatures with a sampled real check: cheaper, same decisions, tampering still refused."""

from __future__ import annotations

import random

import msgspec
import pytest
from conftest import small
from opengrid_ledger import ED25519, Credit, LedgerState, Receipt, sign_attestation, sign_entry

from opengrid.errors import InvalidEntryError
from simulations.nodes import NETWORK_ID, derive_key
from simulations.signatures import STUB_MARK, SampledScheme, stub_signature
from simulations.simulation import Simulation, simulate

KEY = derive_key(0, "signer")
PUBLIC = bytes(KEY.verify_key)


def test_sampled_signatures_change_no_decision() -> None:
    scenario = small(fidelity="full", duration_s=20)
    real = simulate(scenario, 4)
    sampled = simulate(msgspec.structs.replace(scenario, real_signatures=0.05), 4)
    assert sampled.digest == real.digest
    assert sampled.points == real.points
    assert [j.outcome for j in sampled.jobs] == [j.outcome for j in real.jobs]
    c = sampled.counters
    assert c["signatures_signed_real"] > 0 and c["signatures_signed_stub"] > 10 * c["signatures_signed_real"]
    assert c["signatures_verified_real"] > 0 and c["signatures_verified_stub"] > 0
    assert "signatures_signed_real" not in real.counters  # all real: the plain Ed25519 scheme


def test_the_sample_is_seeded() -> None:
    scenario = small(real_signatures=0.2, duration_s=10)
    first, second = Simulation(scenario, 9), Simulation(scenario, 9)
    first.run(), second.run()
    assert isinstance(first.scheme, SampledScheme) and isinstance(second.scheme, SampledScheme)
    assert first.scheme.counters() == second.scheme.counters()


def test_stubs_refuse_changed_bytes_and_other_keys_and_real_ones_are_checked_for_real() -> None:
    scheme = SampledScheme(ED25519, 0.0, random.Random(1))
    stub = scheme.sign(KEY, b"message")
    assert stub == stub_signature(PUBLIC, b"message") and stub.endswith(STUB_MARK)
    scheme.verify(PUBLIC, b"message", stub)
    with pytest.raises(InvalidEntryError, match="does not match"):
        scheme.verify(PUBLIC, b"messagE", stub)
    with pytest.raises(InvalidEntryError):
        scheme.verify(bytes(derive_key(0, "other").verify_key), b"message", stub)
    always = SampledScheme(ED25519, 1.0, random.Random(1))
    real = always.sign(KEY, b"message")
    assert real == ED25519.sign(KEY, b"message")
    always.verify(PUBLIC, b"message", real)
    with pytest.raises(InvalidEntryError, match="Ed25519"):
        always.verify(PUBLIC, b"message", real[:-1] + bytes([real[-1] ^ 1]))
    assert always.verified_real == 1 and scheme.verified_stub == 1
    with pytest.raises(ValueError, match="rate"):
        SampledScheme(ED25519, 1.5, random.Random(1))


def test_the_ledger_checks_stubs_through_its_scheme_and_the_product_default_refuses_them() -> None:
    scheme = SampledScheme(ED25519, 0.0, random.Random(1))
    worker = derive_key(0, "worker")
    att = sign_attestation(worker, NETWORK_ID, b"j" * 16, b"c" * 32, b"o" * 32, 3, scheme=scheme)
    receipt = Receipt(
        job_id=b"j" * 16,
        contract_hash=b"c" * 32,
        output_commitment=b"o" * 32,
        n_tokens=3,
        credits=(Credit(account=bytes(worker.verify_key), points=3),),
        attestations=(att,),
    )
    ledger = LedgerState(NETWORK_ID, [PUBLIC], scheme=scheme)
    entry = sign_entry(KEY, ledger.next_body(PUBLIC, receipt), scheme=scheme)
    last = entry.body[-1]
    tampered = type(entry)(entry.body[:-1] + bytes([last ^ 1]), entry.signature)  # one bit of the body
    with pytest.raises(InvalidEntryError, match="bad signature"):
        ledger.apply(tampered)
    assert ledger.apply(entry) == [entry] and ledger.balance(bytes(worker.verify_key)) == 3
    product = LedgerState(NETWORK_ID, [PUBLIC])
    assert product.scheme is ED25519
    with pytest.raises(InvalidEntryError, match="bad signature"):
        product.apply(entry)
