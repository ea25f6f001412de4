"""OpenGrid's Python SDK: submit jobs to the network and verify what comes back.

from opengrid_sdk import Client
with Client(bootstrap=["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW..."]) as client:
    done = client.complete("Hello", max_tokens=16, replicas=2)
    print(done.text, done.receipt.credits)
"""

from opengrid_sdk.aio import AsyncClient
from opengrid_sdk.client import (
    DEFAULT_MODEL,
    Client,
    Completion,
    FetchedReceipt,
    Preview,
    Sampling,
    ServedModel,
)
from opengrid_sdk.receipts import HistoryItem, SignedReceipt
from opengrid_sdk.transfers import AccountInfo, TransferReceipt

__all__ = [
    "DEFAULT_MODEL",
    "AccountInfo",
    "AsyncClient",
    "Client",
    "Completion",
    "FetchedReceipt",
    "HistoryItem",
    "Preview",
    "Sampling",
    "ServedModel",
    "SignedReceipt",
    "TransferReceipt",
]
