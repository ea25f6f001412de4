"""``AsyncClient``: the SDK for asyncio programs.

The network side runs on trio (py-libp2p), on the client's own private thread; asyncio callers await it
through ``asyncio.to_thread``, so neither event loop ever blocks the other. Each call is bounded by the
client's ``timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Literal

from opengrid.net.transport import LIBP2P, Transport
from opengrid.node.config import DEFAULT_NETWORK
from opengrid.wire.messages import NodeStatus, Priority
from opengrid_sdk.client import (
    DEFAULT_MODEL,
    SEALED_RETRIES,
    Client,
    Completion,
    FetchedReceipt,
    Preview,
    ServedModel,
)
from opengrid_sdk.receipts import HistoryItem
from opengrid_sdk.transfers import AccountInfo, TransferReceipt

_DONE = object()


class AsyncClient:
    """Asyncio twin of ``Client``; create it with ``await AsyncClient.connect(...)`` or ``async with``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    @classmethod
    async def connect(
        cls,
        bootstrap: Sequence[str],
        *,
        network: str = DEFAULT_NETWORK,
        timeout: float = 300.0,
        network_key: str | None = None,
        identity_seed: bytes | None = None,
        transport: Transport = LIBP2P,
    ) -> AsyncClient:
        """Start the client's host (in its own thread) and return the async client. ``identity_seed``:
        pay for jobs from that account's points (see ``Client``). ``transport``: the network, as
        ``Client``'s (tests pass an in-memory one, whose trio run then runs the client's work)."""
        client = await asyncio.to_thread(
            Client,
            list(bootstrap),
            network=network,
            timeout=timeout,
            network_key=network_key,
            identity_seed=identity_seed,
            transport=transport,
        )
        return cls(client)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await asyncio.to_thread(self._client.close)

    async def complete(
        self,
        prompt: str,
        *,
        model: str = DEFAULT_MODEL,
        max_tokens: int = 64,
        replicas: int = 2,
        sealed: bool = True,
        exposure: int | None = None,
        trusted: Sequence[str] = (),
        priority: Priority = "interactive",
        retries: int = SEALED_RETRIES,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> Completion:
        """See ``Client.complete`` (sealed by default; a sealed job whose workers failed is sealed to
        others and resubmitted, at most ``retries`` times; greedy unless ``temperature > 0``)."""
        return await asyncio.to_thread(
            self._client.complete,
            prompt,
            model=model,
            max_tokens=max_tokens,
            replicas=replicas,
            sealed=sealed,
            exposure=exposure,
            trusted=trusted,
            priority=priority,
            retries=retries,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
        )

    def stream(
        self,
        prompt: str,
        *,
        model: str = DEFAULT_MODEL,
        max_tokens: int = 64,
        replicas: int = 2,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        previews: bool = False,
        sealed: bool = False,
        exposure: int | None = None,
        trusted: Sequence[str] = (),
    ) -> AsyncIterator[str | Preview | Completion]:
        """See ``Client.stream``: verified text as it is verified (``str``), unverified ``Preview`` items
        only with ``previews=True``, then the verified ``Completion``; ``sealed=True`` streams a sealed
        job's verified chunks (spec/verification.md §14.3). Settings out of range raise ``ConfigError``
        here, before any iteration."""
        items = self._client.stream(
            prompt,
            model=model,
            max_tokens=max_tokens,
            replicas=replicas,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            previews=previews,
            sealed=sealed,
            exposure=exposure,
            trusted=trusted,
        )
        return _iterate(items)

    async def chat(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        model: str = DEFAULT_MODEL,
        max_tokens: int = 256,
        replicas: int = 2,
        sealed: bool = True,
        exposure: int | None = None,
        trusted: Sequence[str] = (),
        priority: Priority = "interactive",
        retries: int = SEALED_RETRIES,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> Completion:
        """See ``Client.chat``: the model's chat template renders ``messages``; the job runs as
        ``complete``'s. Malformed messages raise ``ConfigError`` before anything is sent."""
        return await asyncio.to_thread(
            self._client.chat,
            messages,
            model=model,
            max_tokens=max_tokens,
            replicas=replicas,
            sealed=sealed,
            exposure=exposure,
            trusted=trusted,
            priority=priority,
            retries=retries,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
        )

    async def models(self) -> list[ServedModel]:
        """See ``Client.models``: served models with sha256, online workers and points per token."""
        return await asyncio.to_thread(self._client.models)

    async def receipt(self, job_id: bytes | str, *, address: str | None = None) -> FetchedReceipt:
        """See ``Client.receipt``: the job's signed receipt, verified; ``UnknownJobError`` if none."""
        return await asyncio.to_thread(lambda: self._client.receipt(job_id, address=address))

    async def balance(self, account: bytes | None = None) -> int:
        """See ``Client.balance``."""
        return await asyncio.to_thread(self._client.balance, account)

    async def claim_grant(self) -> int:
        """See ``Client.claim_grant``."""
        return await asyncio.to_thread(self._client.claim_grant)

    async def account_info(self, account: bytes | None = None, *, address: str | None = None) -> AccountInfo:
        """See ``Client.account_info``."""
        return await asyncio.to_thread(self._client.account_info, account, address=address)

    async def transfer(
        self, to: str | bytes, points: int, *, memo: str = "", new_recipient: bool = False
    ) -> TransferReceipt:
        """See ``Client.transfer``: send points from this client's identity."""
        return await asyncio.to_thread(
            self._client.transfer, to, points, memo=memo, new_recipient=new_recipient
        )

    async def send_from_node(
        self,
        address: str,
        to: str | bytes,
        points: int,
        *,
        identity_seed: bytes,
        memo: str = "",
        new_recipient: bool = False,
    ) -> TransferReceipt:
        """See ``Client.send_from_node``: a node's owner sends points from the node's account."""
        return await asyncio.to_thread(
            self._client.send_from_node,
            address,
            to,
            points,
            identity_seed=identity_seed,
            memo=memo,
            new_recipient=new_recipient,
        )

    async def price(self, *, model: str = DEFAULT_MODEL, max_tokens: int = 64, replicas: int = 2) -> int:
        """See ``Client.price``: the points a paid job of this shape holds."""
        return await asyncio.to_thread(
            lambda: self._client.price(model=model, max_tokens=max_tokens, replicas=replicas)
        )

    async def status(self, address: str | None = None) -> NodeStatus:
        return await asyncio.to_thread(self._client.status, address)

    async def history(
        self, address: str | None = None, *, account: bytes | None = None, limit: int = 100
    ) -> list[HistoryItem]:
        return await asyncio.to_thread(self._client.history, address, account=account, limit=limit)

    async def control(
        self, address: str, action: Literal["pause", "resume"], *, identity_seed: bytes
    ) -> NodeStatus:
        return await asyncio.to_thread(self._client.control, address, action, identity_seed=identity_seed)


async def _iterate(items: Iterator[str | Preview | Completion]) -> AsyncIterator[str | Preview | Completion]:
    """``items`` (a blocking iterator) as an async one: each ``next`` runs on a thread."""
    while (item := await asyncio.to_thread(next, items, _DONE)) is not _DONE:
        yield item  # type: ignore[misc]
