"""Durable storage for the node (driver ring): SQLite under the node's data dir."""

from __future__ import annotations

from .ledger_store import LEDGER_FILE, LedgerStore, open_ledger, replay

__all__ = ["LEDGER_FILE", "LedgerStore", "open_ledger", "replay"]
