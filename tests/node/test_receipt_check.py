"""A node passing on an answer from its coordinator checks the receipt exactly as the SDK does (one
verifier: opengrid/wire/receipts.py). Before, the node ran a weaker copy (signature, signer, job id,
commitment) and passed on, as verified, a receipt the SDK refuses: one that mints more than tokens x
weight (spec/ledger.md §7).
"""

from __future__ import annotations

import pathlib
from typing import cast

import msgspec
import pytest
from opengrid_ledger import Receipt, decode_body, decode_entry, encode_entry, sign_entry
from opengrid_sdk.receipts import SignedReceipt

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.errors import VerificationError
from opengrid.net.keys import peer_id_of
from opengrid.node.api_service import ApiService
from opengrid.node.config import NodeConfig
from opengrid.node.context import NodeContext
from opengrid.node.coordinator_driver import CoordinatorDriver
from opengrid.node.registration import Registration
from opengrid.wire.messages import JobAccepted
from tests.core.grid_harness import NETWORK, Grid, finished, honest, job_id, signing_key


def _forge(reply: JobAccepted, **changes: object) -> JobAccepted:
    """``reply`` with its receipt changed and signed again by the coordinator's own key (valid signature)."""
    body = decode_body(decode_entry(reply.receipt).body)
    assert isinstance(body.payload, Receipt)
    payload = msgspec.structs.replace(body.payload, **changes)
    forged = sign_entry(signing_key("coordinator"), msgspec.structs.replace(body, payload=payload))
    return msgspec.structs.replace(reply, receipt=encode_entry(forged))


@pytest.fixture
def accepted() -> tuple[JobAccepted, str]:
    """A real verified answer of the core coordinator, and the coordinator's peer id."""
    grid = Grid(n=3, config=CoordinatorConfig.plain())
    grid.register()
    reply = finished(grid.run_job(1, honest, replicas=2))
    assert isinstance(reply, JobAccepted)
    return reply, peer_id_of(grid.coordinator.public_key)


def _node_check(tmp_path: pathlib.Path) -> ApiService:
    ctx = NodeContext(config=NodeConfig(data_dir=tmp_path, network=NETWORK), key=signing_key("api node"))
    # Only the receipt check is exercised: it needs the node's network, not its drivers.
    return ApiService(ctx, cast(CoordinatorDriver, None), cast(Registration, None))


def test_the_node_passes_on_what_the_sdk_accepts(
    tmp_path: pathlib.Path, accepted: tuple[JobAccepted, str]
) -> None:
    reply, coordinator = accepted
    SignedReceipt(reply.receipt, NETWORK).verify(tokens=reply.tokens, text=reply.text, job_id=job_id(1))
    assert _node_check(tmp_path)._receipt_problem(reply, coordinator) == ""


def test_the_node_refuses_a_receipt_minting_more_than_tokens_times_weight(
    tmp_path: pathlib.Path, accepted: tuple[JobAccepted, str]
) -> None:
    """The weaker copy accepted this one: valid signatures, the right job, signer and commitment."""
    reply, coordinator = accepted
    receipt = decode_body(decode_entry(reply.receipt).body).payload
    assert isinstance(receipt, Receipt)
    inflated = tuple(msgspec.structs.replace(c, points=c.points * 1000) for c in receipt.credits)
    forged = _forge(reply, credits=inflated)
    with pytest.raises(VerificationError, match="mints points no job earned"):
        SignedReceipt(forged.receipt, NETWORK).verify(tokens=forged.tokens, text=forged.text)
    assert "mints points no job earned" in _node_check(tmp_path)._receipt_problem(forged, coordinator)
