"""``opengrid wallet``'s flags and the SDK source's plain-words errors, without a network."""

from __future__ import annotations

import argparse
import pathlib

import pytest

from opengrid.cli import wallet
from opengrid.errors import ConfigError
from opengrid.node.config import DEFAULT_NETWORK
from opengrid.tui import source as wallet_source
from opengrid.tui.source import SdkWalletSource


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="opengrid")
    wallet.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["wallet", *argv])


def test_flags_parse_with_their_defaults(tmp_path: pathlib.Path) -> None:
    args = parse("--data-dir", str(tmp_path))
    assert (args.command, args.data_dir, args.node, args.network, args.refresh) == (
        "wallet",
        tmp_path,
        None,
        None,
        2.0,
    )
    args = parse("--node", "/ip4/127.0.0.1/tcp/1/p2p/X", "--network", "n", "--refresh", "0.5")
    assert (args.node, args.network, args.refresh) == ("/ip4/127.0.0.1/tcp/1/p2p/X", "n", 0.5)


def test_data_dir_and_node_exclude_each_other(tmp_path: pathlib.Path) -> None:
    with pytest.raises(SystemExit):
        parse("--data-dir", str(tmp_path), "--node", "/ip4/127.0.0.1/tcp/1")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "give --data-dir DIR"),
        (("--node", "/ip4/127.0.0.1/tcp/1", "--refresh", "0"), "--refresh must be > 0"),
        (("--data-dir", "/nonexistent/opengrid"), "is not a directory"),
    ],
)
def test_bad_arguments_are_refused_in_words(
    argv: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert wallet.run(parse(*argv)) == 2
    assert message in capsys.readouterr().err


def test_a_data_dir_without_a_started_node_says_to_start_one(tmp_path: pathlib.Path) -> None:
    source = SdkWalletSource.for_data_dir(tmp_path)
    with pytest.raises(ConfigError, match="start the node first"):
        source.status()
    assert "identity.key" in (source.control_unavailable or "")
    source.close()


def test_a_node_address_is_read_only_and_says_why() -> None:
    source = SdkWalletSource.for_node("/ip4/127.0.0.1/tcp/1/p2p/X")
    assert "--data-dir" in (source.control_unavailable or "")
    with pytest.raises(ConfigError, match="read-only"):
        source.control("pause")


def test_the_default_network_matches_the_nodes() -> None:
    assert wallet_source.DEFAULT_NETWORK == DEFAULT_NETWORK


def test_the_wallet_reads_through_the_sdk_not_node_internals() -> None:
    root = pathlib.Path(wallet_source.__file__).parent
    for path in [*root.glob("*.py"), pathlib.Path(wallet.__file__)]:
        text = path.read_text(encoding="utf-8")
        assert "opengrid.node" not in text.replace("``opengrid.node.config.DEFAULT_NETWORK``", ""), path


def test_send_parses_and_keeps_the_wallet_s_flags(tmp_path: pathlib.Path) -> None:
    args = parse("send", "ab" * 32, "25", "--memo", "thanks", "--yes", "--data-dir", str(tmp_path))
    assert (args.wallet_command, args.to, args.points, args.memo, args.yes) == (
        "send",
        "ab" * 32,
        "25",
        "thanks",
        True,
    )
    assert args.data_dir == tmp_path and not args.new_recipient and args.identity is None
    args = parse("--data-dir", str(tmp_path), "send", "ab" * 32, "1")  # the wallet's --data-dir is kept
    assert args.data_dir == tmp_path
    assert parse("--data-dir", str(tmp_path)).wallet_command is None  # no action: the TUI


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (("send", "not-a-key", "1"), 2, "neither an account key"),
        (("send", "ab" * 32, "five"), 2, "whole number"),
        (("send", "ab" * 32, "0"), 2, "from 1 to"),
        (("send", "ab" * 32, "1", "--memo", "x" * 257), 2, "257 characters"),
        (("send", "ab" * 32, "1", "--identity", "/nonexistent/key"), 2, "--identity needs --bootstrap"),
        (("send", "ab" * 32, "1", "--data-dir", "/nonexistent/opengrid"), 1, "start the node first"),
    ],
)
def test_send_refuses_bad_input_before_anything_is_sent(
    argv: tuple[str, ...], status: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert wallet.run(parse(*argv)) == status
    assert message in capsys.readouterr().err
