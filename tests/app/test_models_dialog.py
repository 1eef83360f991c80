"""The model manager on its own: downloads are checked against the catalog, and survive closing it."""

from __future__ import annotations

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
        assert dialog.progress["model.gguf"].value() == 1000
        assert (folders().models / "model.gguf").read_bytes() == PAYLOAD

        dialog.reject()  # closing the manager and opening it again keeps downloads working
        dialog.show()
        dialog.downloads.selectRow(1)
        dialog.download_button.click()
        qtbot.waitUntil(lambda: "sha256" in dialog.download_note.text(), timeout=30_000)
        assert not (folders().models / "tampered.gguf").exists()
        dialog.close_downloads()
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
