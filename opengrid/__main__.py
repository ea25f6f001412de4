"""The ``opengrid`` console script and ``python -m opengrid`` (the demo starts its nodes this way)."""

from __future__ import annotations

import sys
from typing import NoReturn

from opengrid.cli.interrupt import exit_at_once_on_ctrl_c


def run() -> NoReturn:
    """Run the command line; a Ctrl-C before a command handles it exits at once (opengrid.cli.interrupt)."""
    exit_at_once_on_ctrl_c()  # before the heavy imports below
    from opengrid.cli.main import main

    sys.exit(main())


if __name__ == "__main__":
    run()
