"""The model manager on its own: downloads are checked against the catalog, and survive closing it."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pytestqt.qtbot import QtBot

from app.models_dialog import ModelsDialog
from engine import CatalogEntry, folders


def test_the_model_manager_downloads_checks_and_reports_a_wrong_hash(qtbot: QtBot, profile: Path) -> None:
    from tests.helpers.downloads import PAYLOAD, FileServer, catalog_entry

    server = FileServer()
    try:
        good = catalog_entry(server.url)
        bad = CatalogEntry("Tampered", "tampered.gguf", server.url, len(PAYLOAD), "0" * 64, "MIT")
        dialog = ModelsDialog(1024, (), catalog=[good, bad])
        qtbot.addWidget(dialog)
        dialog.downloads.selectRow(0)
        with qtbot.waitSignal(dialog.folders_changed, timeout=30_000):  # the model list is refreshed
            dialog.download_button.click()
            assert not dialog.download_button.isEnabled()  # one download at a time
        assert dialog.download_button.isEnabled()
        assert dialog.progress["model.gguf"].value() == 1000
        assert (folders().models / "model.gguf").read_bytes() == PAYLOAD

        dialog.reject()  # closing the manager and opening it again keeps downloads working
        dialog.show()
        dialog.downloads.selectRow(1)
        dialog.download_button.click()
        assert not dialog.download_button.isEnabled()
        qtbot.waitUntil(lambda: "sha256" in dialog.download_note.text(), timeout=30_000)
        assert dialog.download_button.isEnabled()  # a failed download can be tried again
        assert not (folders().models / "tampered.gguf").exists()
        dialog.close_downloads()
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


class StallingServer:
    """Serves the start of a file on 127.0.0.1, then goes silent until `release` is set."""

    def __init__(self, size: int = 8 * 2**20, first: int = 64 * 1024) -> None:
        self.release = threading.Event()
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                self.wfile.write(b"\0" * first)
                self.wfile.flush()
                server.release.wait(timeout=30)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/big.gguf"
        self.entry = CatalogEntry("Big model", "big.gguf", self.url, size, hashlib.sha256(b"").hexdigest(), "MIT")
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_is_disabled_while_a_download_runs_and_comes_back_after_cancel(qtbot: QtBot, profile: Path) -> None:
    server = StallingServer()
    try:
        dialog = ModelsDialog(1024, (), catalog=[server.entry])
        qtbot.addWidget(dialog)
        dialog.downloads.selectRow(0)
        dialog.download_button.click()
        assert not dialog.download_button.isEnabled()
        dialog.download_button.click()  # a second click while it runs starts nothing
        qtbot.waitUntil(lambda: server.requests == 1, timeout=10_000)
        dialog.cancel_button.click()
        server.release.set()  # whether or not the download notices Cancel mid-read, it ends now
        qtbot.waitUntil(dialog.download_button.isEnabled, timeout=30_000)
        assert "cancelled" in dialog.download_note.text() and server.requests == 1
        dialog.close_downloads()
    finally:
        server.close()
