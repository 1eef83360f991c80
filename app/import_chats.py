"""Importing chats in the window: choosing the export file, and telling which kind of export it is.

The file is chosen on the GUI thread; the worker finds its kind (`export_source`) and imports it
on the engine's thread. An import adds all of a file's chats or none: a file the engine refuses
shows its reason and changes nothing.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QFileDialog, QWidget

_SNIFF_BYTES = 4096  # enough to pass a BOM and the whitespace before the first bracket
_BLANK = b"\xef\xbb\xbf \t\r\n"


def choose_export(parent: QWidget) -> str:
    """Ask for a ChatGPT export (its .zip, or conversations.json) or a Cleo export (.json); "" if none."""
    filters = ";;".join((parent.tr("Chat exports (*.zip *.json)"),
                         parent.tr("ChatGPT data export (*.zip conversations.json)"),
                         parent.tr("Cleo export (*.json)")))
    path, _chosen = QFileDialog.getOpenFileName(parent, parent.tr("Import chats"), str(Path.home()), filters)
    return path


def export_source(path: Path) -> str:
    """"chatgpt" for a ChatGPT data export (a .zip, or its conversations.json: a JSON list), else
    "cleo" (a Cleo export is a JSON object). Only a regular file is read: a pipe named x.json would
    never answer. What cannot be read is left to the import, which names the problem."""
    if path.suffix.lower() == ".zip" or path.name.lower() == "conversations.json":
        return "chatgpt"
    try:
        if not path.is_file():
            return "cleo"
        with path.open("rb") as file:
            start = file.read(_SNIFF_BYTES)
    except OSError:
        return "cleo"
    return "chatgpt" if start.lstrip(_BLANK)[:1] == b"[" else "cleo"
