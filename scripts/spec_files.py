"""Write generated spec files, or (``--check``) say which differ from what the code generates.

Shared by scripts/gen_schemas.py and scripts/gen_vectors.py.
"""

from __future__ import annotations

import argparse
import pathlib
import sys


def write_or_check(
    files: dict[str, str], directory: pathlib.Path, root: pathlib.Path, *, what: str, script: str
) -> int:
    """Parse ``--check``; write ``files`` (name -> text) under ``directory``, or report the stale ones.
    Returns the process exit status: 1 when checking found stale files."""
    parser = argparse.ArgumentParser(description=f"generate spec/{directory.name} from the code")
    parser.add_argument(
        "--check", action="store_true", help=f"compare with spec/{directory.name}, write nothing"
    )
    args = parser.parse_args()
    stale = []
    for name, text in files.items():
        path = directory / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(root)}")
    if stale:
        print(f"stale {what}: {', '.join(stale)}; run python scripts/{script}", file=sys.stderr)
        return 1
    return 0
