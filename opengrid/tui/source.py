"""Where the wallet's data comes from: the ``WalletSource`` seam and its SDK implementation.

The app only ever calls a ``WalletSource``, from a worker thread, so every method may block. Production
uses ``SdkWalletSource`` (the public SDK ``Client``, never node internals); tests and the screenshot script
use ``opengrid.testing.wallet.FakeWalletSource``.
"""

from __future__ import annotations

import json
import pathlib
import threading
from typing import Literal, Protocol

from opengrid_sdk import AccountInfo, Client, HistoryItem, TransferReceipt

from opengrid.errors import ConfigError, TransportError
from opengrid.tui.model import pick_address
from opengrid.wire.messages import NodeStatus

Action = Literal["pause", "resume"]
DEFAULT_NETWORK = "opengrid-local"
"""The network a node joins by default (keep in step with ``opengrid.node.config.DEFAULT_NETWORK``)."""
NODE_INFO_FILE = "node.json"
IDENTITY_FILE = "identity.key"


class WalletSource(Protocol):
    """What the wallet needs from a node. Methods may block and raise; the app calls them off its loop."""

    @property
    def address(self) -> str:
        """Where the data comes from, for the status line (a multiaddr or a description)."""
        ...

    @property
    def control_unavailable(self) -> str | None:
        """None when ``control`` can work; otherwise why pause/resume is disabled, in plain words."""
        ...

    def status(self) -> NodeStatus:
        """The node's current status."""
        ...

    def history(self) -> list[HistoryItem]:
        """The node's own verified receipts (paid or outvoted), oldest first."""
        ...

    def control(self, action: Action) -> NodeStatus:
        """Pause or resume the node; returns its status afterwards."""
        ...

    def account_info(self, account: bytes) -> AccountInfo:
        """``account`` as the node's ledger holds it (to say whom points go to before sending)."""
        ...

    def send(self, to: bytes, points: int, memo: str, *, new_recipient: bool) -> TransferReceipt:
        """Send ``points`` from the node's account to ``to`` (the owner only, like ``control``)."""
        ...

    def close(self) -> None:
        """Release connections and threads."""
        ...


def last_known(source: WalletSource) -> tuple[NodeStatus, list[HistoryItem]] | None:
    """What ``source`` can show of a node that does not answer (its ledger on disk), if it can."""
    read = getattr(source, "last_known", None)
    return read() if callable(read) else None


class SdkWalletSource:
    """A ``WalletSource`` that asks a node over the network through ``opengrid_sdk.Client``.

    Build it with ``for_data_dir`` (the node beside you: its address comes from ``node.json``, re-read on
    every call so a restarted node on a new port is found again, and pause/resume signs with its
    ``identity.key``) or ``for_node`` (any node, read-only).
    """

    def __init__(
        self,
        *,
        node: str | None = None,
        data_dir: pathlib.Path | None = None,
        network: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if (node is None) == (data_dir is None):
            raise ConfigError("give exactly one of a node address or a data dir")
        self._node = node
        self._data_dir = data_dir
        self._network_flag = network
        self._timeout = timeout
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._account: bytes | None = None
        self._address = node or ""

    @classmethod
    def for_data_dir(
        cls, data_dir: pathlib.Path, *, network: str | None = None, timeout: float = 10.0
    ) -> SdkWalletSource:
        """The node whose data dir is ``data_dir`` (pause/resume allowed if its identity is readable)."""
        return cls(data_dir=data_dir, network=network, timeout=timeout)

    @classmethod
    def for_node(cls, address: str, *, network: str | None = None, timeout: float = 10.0) -> SdkWalletSource:
        """Any node, by its full multiaddr (read-only: only a node's owner may pause it)."""
        return cls(node=address, network=network, timeout=timeout)

    # ── WalletSource ─────────────────────────────────────────────────────────────────────────────────
    @property
    def address(self) -> str:
        """The multiaddr last dialled (or, before that, where it will come from)."""
        if self._address:
            return self._address
        return f"{self._data_dir / NODE_INFO_FILE}" if self._data_dir else ""

    @property
    def control_unavailable(self) -> str | None:
        """Why pause/resume is disabled, or None when the identity seed is at hand."""
        if self._data_dir is None:
            return (
                "read-only: connected with --node, so the node's identity key is not at hand. "
                "Only its owner can pause it: open the wallet with --data-dir on the node's data dir."
            )
        try:
            self._seed()
        except ConfigError as exc:
            return str(exc)
        return None

    def status(self) -> NodeStatus:
        """Ask the node for its status (and remember its account for ``history``)."""
        client, address = self._connect()
        status = client.status(address)
        self._account = status.public_key
        return status

    def history(self) -> list[HistoryItem]:
        """The node's own receipts, each signature checked by the SDK."""
        client, address = self._connect()
        return client.history(address, account=self._account)

    def control(self, action: Action) -> NodeStatus:
        """Sign a pause/resume with the node's identity key and send it."""
        reason = self.control_unavailable
        if reason is not None:
            raise ConfigError(reason)
        client, address = self._connect()
        return client.control(address, action, identity_seed=self._seed())

    def account_info(self, account: bytes) -> AccountInfo:
        """``account`` in the node's ledger."""
        client, address = self._connect()
        return client.account_info(account, address=address)

    def send(self, to: bytes, points: int, memo: str, *, new_recipient: bool) -> TransferReceipt:
        """Sign a transfer request with the node's identity key: the node writes the TRANSFER on its own
        chain (``Client.send_from_node``)."""
        reason = self.control_unavailable
        if reason is not None:
            raise ConfigError(reason.replace("pause/resume", "sending points"))
        client, address = self._connect()
        return client.send_from_node(
            address, to, points, identity_seed=self._seed(), memo=memo, new_recipient=new_recipient
        )

    def last_known(self) -> tuple[NodeStatus, list[HistoryItem]] | None:
        """The balance and receipts in the node's ledger on disk (data-dir mode), for a node that does
        not answer; None with --node, or when the data dir has no ledger yet."""
        if self._data_dir is None:
            return None
        from opengrid.cli.ledger import last_known_view

        return last_known_view(self._data_dir, self._network_flag)

    def close(self) -> None:
        """Stop the SDK client's thread."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # ── helpers ──────────────────────────────────────────────────────────────────────────────────────
    def _seed(self) -> bytes:
        assert self._data_dir is not None
        path = self._data_dir / IDENTITY_FILE
        try:
            seed = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read {path} ({exc.strerror or exc}): pause/resume needs the node's identity key; "
                "run the wallet as the user that runs the node"
            ) from exc
        if len(seed) != 32:
            raise ConfigError(f"{path} holds {len(seed)} bytes, not a 32-byte identity")
        return seed

    def _target(self) -> tuple[str, str]:
        """(address, network) to use now: from the flags, or from the data dir's node.json."""
        if self._data_dir is None:
            assert self._node is not None
            return self._node, self._network_flag or DEFAULT_NETWORK
        path = self._data_dir / NODE_INFO_FILE
        try:
            info = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(
                f"no {NODE_INFO_FILE} in {self._data_dir}: start the node first "
                f"(opengrid node start --data-dir {self._data_dir})"
            ) from exc
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        addrs = info.get("addrs") if isinstance(info, dict) else None
        address = pick_address([a for a in addrs if isinstance(a, str)]) if isinstance(addrs, list) else None
        if address is None:
            raise ConfigError(f"{path} lists no address to dial; restart the node")
        network = self._network_flag or str(info.get("network") or DEFAULT_NETWORK)
        return address, network

    def _connect(self) -> tuple[Client, str]:
        address, network = self._target()
        with self._lock:
            if self._client is not None and self._client.network != network:
                self._client.close()
                self._client = None
            if self._client is None:
                try:
                    self._client = Client([address], network=network, timeout=self._timeout)
                except OSError as exc:
                    raise TransportError(f"cannot start the SDK client: {exc}") from exc
            self._address = address
            return self._client, address
