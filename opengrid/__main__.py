"""``python -m opengrid`` runs the command line (the demo starts its nodes this way)."""

import sys

try:
    from opengrid.cli.main import main
except KeyboardInterrupt:  # Ctrl-C while the command line is still being imported: stop without a traceback
    sys.exit(130)

sys.exit(main())
