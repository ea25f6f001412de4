"""Generated models are written safely on a fresh machine: into a directory that does not exist yet, by
several writers at once (workers of one machine starting together), without a half-written file or a
collision between their temporary files (issue 16: FileNotFoundError on ``.tiny-swap-seed1.….tmp``)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import threading

from opengrid.engines.models import resolve_model
from opengrid.engines.tiny_model import write_tiny_gguf

WRITERS = 4

_CHILD = (
    "import pathlib, sys\n"
    "from opengrid.engines.tiny_model import write_tiny_gguf\n"
    "print('ready', flush=True)\n"
    "sys.stdin.readline()\n"
    "write_tiny_gguf(pathlib.Path(sys.argv[1]), seed=1)\n"
)


def _reference(tmp_path: pathlib.Path) -> bytes:
    return write_tiny_gguf(tmp_path / "reference" / "m.gguf", seed=1).read_bytes()


def _leftovers(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_threads_racing_into_a_missing_directory(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "cache" / "opengrid" / "models" / "tiny-swap-seed1.gguf"
    barrier = threading.Barrier(WRITERS, timeout=60)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            barrier.wait()
            write_tiny_gguf(target, seed=1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert target.read_bytes() == _reference(tmp_path)
    assert _leftovers(target.parent) == []


def test_processes_racing_into_a_missing_directory(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "cache" / "opengrid" / "models" / "tiny-swap-seed1.gguf"
    root = pathlib.Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "sdk"), str(root / "ledger")])}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(target)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(WRITERS)
    ]
    try:
        for child in children:  # all imported and waiting: release them together
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = [child.communicate(timeout=60) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)
    assert [c.returncode for c in children] == [0] * WRITERS, [err for _, err in results]
    assert target.read_bytes() == _reference(tmp_path)
    assert _leftovers(target.parent) == []


def test_tiny_model_resolves_into_a_missing_cache_dir(tmp_path: pathlib.Path) -> None:
    info = resolve_model("tiny", cache_dir=tmp_path / "not" / "yet")
    assert info.path.parent == tmp_path / "not" / "yet" and info.path.is_file()
