"""The OpenGrid wallet, a Textual app that reads a node through the SDK (``opengrid wallet``)."""

from opengrid.tui.app import WalletApp
from opengrid.tui.source import SdkWalletSource, WalletSource

__all__ = ["SdkWalletSource", "WalletApp", "WalletSource"]
