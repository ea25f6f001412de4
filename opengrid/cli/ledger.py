"""``opengrid ledger balance|history|verify``: read a node's ledger store, read-only, and verify it.

Every entry is verified (signatures included) as it is read: the CLI trusts nothing in the data dir but
the genesis rules it is given. Safe to run next to a running node (SQLite WAL, read-only connection).

The lead wires it into ``opengrid.cli.main``: ``ledger.register(commands)`` in the parser, and
``if args.command == "ledger": return ledger.run(args)`` in ``main``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import Any

import nacl.signing
from opengrid_ledger import Genesis, LedgerState, Receipt, decode_body, decode_genesis, encode_entry
from opengrid_sdk import HistoryItem

from opengrid.errors import ConfigError
from opengrid.settings import resolve_data_dir
from opengrid.store.ledger_store import LEDGER_FILE, LedgerStore, replay
from opengrid.wire.messages import NodeStatus

IDENTITY_FILE = "identity.key"
NODE_INFO_FILE = "node.json"
DEFAULT_NETWORK = "opengrid-local"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ledger balance|history|verify`` to the ``opengrid`` command's subparsers."""
    ledger = subparsers.add_parser("ledger", help="read and verify a node's points ledger")
    actions = ledger.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    helps = {
        "balance": "points of an account (default: this node's) and every nonzero balance",
        "history": "every entry that changed an account's points, transfers sent and received with their "
        "counterparty and memo (default: this node's account)",
        "verify": "re-verify every stored entry; exit 1 if any is invalid",
    }
    for name, text in helps.items():
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument(
            "--data-dir",
            type=pathlib.Path,
            default=None,
            metavar="DIR",
            help="the node's data dir (holds ledger.sqlite3; default: the one `node start` uses, "
            "$OPENGRID_DATA_DIR or the config file's data_dir, else the user data dir)",
        )
        action.add_argument("--json", action="store_true", help="print JSON instead of text")
        action.add_argument("--network", help="network id (default: from DIR/node.json, else opengrid-local)")
        action.add_argument(
            "--genesis", type=pathlib.Path, metavar="FILE", help="the network's genesis file (JSON)"
        )
        action.add_argument(
            "--minter",
            action="append",
            default=[],
            metavar="HEX",
            help="a coordinator key to accept receipts from (repeatable); without --genesis or "
            "--minter, every receipt author in the store is accepted, and the output says so",
        )
        if name != "verify":
            action.add_argument("--account", metavar="HEX", help="account key (default: this node's)")


def run(args: argparse.Namespace) -> int:
    """Run ``opengrid ledger <action>``; returns the exit status."""
    data_dir = resolve_data_dir(args.data_dir, os.environ)
    store_path = data_dir / LEDGER_FILE
    if not store_path.exists():
        raise ConfigError(f"no ledger at {store_path}; pass the node's --data-dir")
    genesis = _genesis(args.genesis)
    network = args.network or (genesis.network if genesis else None) or _node_network(data_dir)
    store = LedgerStore(store_path, read_only=True)
    try:
        minters, trusted_all = _minters(args, store, genesis)
        ledger = LedgerState(network, minters, genesis=genesis)
        skipped = replay(store, ledger, verify=True)
    finally:
        store.close()
    report: dict[str, Any] = {
        "network": network,
        "entries": len(ledger),
        "invalid": [{"id": eid.hex(), "why": why} for eid, why in skipped],
        "waiting": len(ledger.pending()),
        "frozen": {author.hex(): seq for author, seq in ledger.frozen().items()},
        "minters_from_store": trusted_all,
    }
    if args.ledger_command == "verify":
        return _print(args, report, _verify_text(report), 1 if skipped else 0)
    account = _account(args, data_dir)
    if args.ledger_command == "balance":
        report |= {
            "account": account.hex() if account else None,
            "balance": ledger.balance(account) if account else None,
            "held": ledger.held(account) if account else None,
            "jobs_done": ledger.jobs_done(account) if account else None,
            "reputation": list(ledger.reputation(account)) if account else None,
            "receipts": _receipts(ledger, account, network) if account else None,
            "balances": {key.hex(): points for key, points in ledger.balances().items()},
            "minted": ledger.minted(),
        }
        return _print(args, report, _balance_text(report), 0)
    if account is None:
        raise ConfigError("no account: pass --account HEX (no identity.key in the data dir)")
    report |= {
        "account": account.hex(),
        "history": [
            {
                "entry": item.entry_id.hex(),
                "author": item.author.hex(),
                "seq": item.seq,
                "kind": item.kind,
                "delta": item.delta,
                "job": item.job_id.hex(),
                "counterparty": item.counterparty.hex(),
                "memo": item.memo,
            }
            for item in ledger.history(account)
        ],
    }
    return _print(args, report, _history_text(report), 0)


def last_known_view(
    data_dir: pathlib.Path, network: str | None = None
) -> tuple[NodeStatus, list[HistoryItem]] | None:
    """What a stopped node's data dir says of it, for the wallet while the node does not answer: its
    balance, jobs and receipts in its ledger on disk (read-only, every signature verified; receipts of
    every author in the store accepted, as ``ledger balance`` without --genesis). None when the data
    dir holds no ledger or identity."""
    from opengrid_sdk.receipts import history_item

    from opengrid.net.keys import peer_id_of

    account = _account(argparse.Namespace(account=None), data_dir)
    store_path = data_dir / LEDGER_FILE
    if account is None or not store_path.exists():
        return None
    network = network or _node_network(data_dir)
    store = LedgerStore(store_path, read_only=True)
    try:
        minters, _ = _minters(argparse.Namespace(minter=[]), store, None)
        ledger = LedgerState(network, minters)
        replay(store, ledger, verify=True)
    finally:
        store.close()
    try:
        role = str(json.loads((data_dir / NODE_INFO_FILE).read_text()).get("role") or "node")
    except (OSError, ValueError, AttributeError):
        role = "node"
    status = NodeStatus(
        peer_id=peer_id_of(account),
        public_key=account,
        role=role,
        addrs=[],
        points=ledger.balance(account),
        jobs_done=ledger.jobs_done(account),
        ledger_entries=len(ledger),
        network=network,
    )
    items = [history_item(encode_entry(entry), account, network) for entry in ledger.entries()]
    return status, [item for item in items if item is not None]


def _receipts(ledger: LedgerState, account: bytes, network: str) -> dict[str, Any]:
    """The account's receipts counted as the wallet counts them (the same SDK rule: credited = paid, a
    dissenter = outvoted), so ``ledger balance`` and the wallet's reputation screen agree."""
    from opengrid_sdk.receipts import history_item

    from opengrid.tui.model import summarize_reputation

    items = [history_item(encode_entry(entry), account, network) for entry in ledger.entries()]
    summary = summarize_reputation([item for item in items if item is not None])
    return {
        "paid": summary.paid,
        "outvoted": summary.outvoted,
        "agreement_rate": summary.agreement_rate,
        "streak": summary.streak,
    }


def _genesis(path: pathlib.Path | None) -> Genesis | None:
    if path is None:
        return None
    try:
        return decode_genesis(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read genesis file {path}: {exc.strerror or exc}") from exc


def _node_network(data_dir: pathlib.Path) -> str:
    try:
        info = json.loads((data_dir / NODE_INFO_FILE).read_text())
    except (OSError, ValueError):
        return DEFAULT_NETWORK
    network = info.get("network") if isinstance(info, dict) else None
    return network if isinstance(network, str) and network else DEFAULT_NETWORK


def _hex_key(text: str, what: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise ConfigError(f"{what} {text!r} is not hex") from exc
    if len(key) != 32:
        raise ConfigError(f"{what} must be 32 bytes (64 hex digits), got {len(key)}")
    return key


def _minters(
    args: argparse.Namespace, store: LedgerStore, genesis: Genesis | None
) -> tuple[list[bytes], bool]:
    minters = [_hex_key(text, "--minter") for text in args.minter]
    if minters or genesis is not None:
        return minters, False
    # No rules given: accept every receipt author found (signatures are still verified).
    found = set()
    for entry in store.entries():
        try:
            body = decode_body(entry.body)
        except Exception:  # a corrupt row: replay reports it
            continue
        if isinstance(body.payload, Receipt):
            found.add(body.author)
    return sorted(found), True


def _account(args: argparse.Namespace, data_dir: pathlib.Path) -> bytes | None:
    if args.account:
        return _hex_key(args.account, "--account")
    try:
        seed = (data_dir / IDENTITY_FILE).read_bytes()
    except OSError:
        return None
    if len(seed) != 32:
        raise ConfigError(f"{data_dir / IDENTITY_FILE} is not a 32-byte identity")
    return bytes(nacl.signing.SigningKey(seed).verify_key)


def _print(args: argparse.Namespace, report: dict[str, Any], text: str, status: int) -> int:
    print(json.dumps(report, indent=2) if args.json else text, file=sys.stdout)
    return status


def _verify_text(report: dict[str, Any]) -> str:
    lines = [f"network {report['network']}: {report['entries']} entries valid"]
    if report["minters_from_store"]:
        lines.append("note: no --genesis/--minter given; receipts from every author in the store accepted")
    lines += [f"INVALID {item['id']}: {item['why']}" for item in report["invalid"]]
    lines += [f"frozen after a fork: {author} from seq {seq}" for author, seq in report["frozen"].items()]
    if report["waiting"]:
        lines.append(f"{report['waiting']} entries wait for entries this store lacks")
    return "\n".join(lines)


def _balance_text(report: dict[str, Any]) -> str:
    lines = [_verify_text(report).splitlines()[0]]
    if report["account"]:
        valid, invalid, timeout = report["reputation"]
        receipts = report["receipts"]
        rate = receipts["agreement_rate"]
        lines.append(
            f"account {report['account']}: {report['balance']} points"
            f" (+{report['held']} held), {report['jobs_done']} jobs"
        )
        lines.append(
            f"  reputation: {receipts['paid']} paid / {receipts['outvoted']} outvoted receipts, agreement "
            f"{'-' if rate is None else f'{rate * 100:.1f} %'} (as the wallet counts them); evidence "
            f"entries: {valid} valid / {invalid} invalid / {timeout} timeout"
        )
    lines += [f"  {key}  {points}" for key, points in report["balances"].items()]
    return "\n".join(lines)


def _history_text(report: dict[str, Any]) -> str:
    lines = [f"account {report['account']} on {report['network']}:"]
    for item in report["history"]:
        if item["kind"] == "transfer":  # both ways: sent (negative) and received (positive)
            way = "to" if item["delta"] < 0 else "from"
            memo = f' "{item["memo"]}"' if item["memo"] else ""
            lines.append(f"  {item['delta']:+d}  transfer {way} {item['counterparty']}{memo}")
            continue
        job = f" job {item['job']}" if item["job"] else ""
        lines.append(
            f"  {item['delta']:+d}  {item['kind']:<8} by {item['author'][:16]}… seq {item['seq']}{job}"
        )
    if not report["history"]:
        lines.append("  (no entries)")
    return "\n".join(lines)
