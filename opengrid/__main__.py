"""``python -m opengrid`` runs the command line (the demo starts its nodes this way)."""

import sys

from opengrid.cli.main import main

sys.exit(main())
