#!/usr/bin/env bash
# Run the test suite (and the static checks) in .venv; extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest -q "$@"
rc=$?
if [ "$rc" = 5 ]; then echo "no tests were collected"; rc=0; fi
[ "$rc" = 0 ] || exit "$rc"
.venv/bin/ruff check . && .venv/bin/mypy
