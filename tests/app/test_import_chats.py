"""Importing chats from the window's menu: a ChatGPT or Cleo export adds its chats to the sidebar and says
how many; a damaged or hostile file is refused in a dialog that says why, and nothing changes.
Real window offscreen, real engine, real files; only the file dialog is answered by the test."""

from __future__ import annotations

import json
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QFileDialog
from pytestqt.qtbot import QtBot

from app.main_window import MainWindow
from tests.helpers.gui import OpenWindow, rows, send

START = 1_700_000_000.0


def cleo_chat(conversation_id: str, title: str, created_at: Any = START) -> dict[str, Any]:
    return {"id": conversation_id, "title": title, "created_at": created_at, "current_leaf_id": f"{conversation_id}-a",
            "messages": [
                {"id": f"{conversation_id}-u", "parent_id": None, "role": "user", "content": f"About {title}?",
                 "created_at": START + 1},
                {"id": f"{conversation_id}-a", "parent_id": f"{conversation_id}-u", "role": "assistant",
                 "content": f"All about {title}.", "created_at": START + 2}]}


def cleo_export(*chats: dict[str, Any]) -> str:
    return json.dumps({"format": "cleo-conversations", "version": 1, "exported_at": START,
                       "conversations": list(chats)})


def chatgpt_chat(conversation_id: str, title: str, create_time: Any = START) -> dict[str, Any]:
    def message(key: str, role: str, text: str) -> dict[str, Any]:
        return {"id": key, "author": {"role": role}, "create_time": START + 1,
                "content": {"content_type": "text", "parts": [text]}}
    return {"id": conversation_id, "title": title, "create_time": create_time, "update_time": START + 9,
            "current_node": "a", "mapping": {
                "root": {"id": "root", "message": None, "parent": None, "children": ["u"]},
                "u": {"id": "u", "message": message("u", "user", f"About {title}?"), "parent": "root",
                      "children": ["a"]},
                "a": {"id": "a", "message": message("a", "assistant", f"All about {title}."), "parent": "u",
                      "children": []}}}


def chatgpt_zip(path: Path, text: str) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("conversations.json", text)
    return path


def import_from_menu(qtbot: QtBot, window: MainWindow, monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Chat → Import chats…, choosing `path` in the file dialog; until the window has said how it went."""
    asked: list[str] = []

    def choose(*args: Any, **kwargs: Any) -> tuple[str, str]:
        asked.append(threading.current_thread().name)
        return str(path), ""

    monkeypatch.setattr(QFileDialog, "getOpenFileName", choose)
    [action] = [a for a in window.findChildren(QAction) if a.text() == "Import chats…"]
    said = len(window.errors)  # type: ignore[attr-defined]
    action.trigger()
    assert asked == [threading.main_thread().name]
    qtbot.waitUntil(lambda: len(window.errors) > said, timeout=60_000)  # type: ignore[attr-defined]


def titles(window: MainWindow) -> list[str]:
    chats = window.sidebar.chats
    return sorted(item.text() for item in (chats.item(i) for i in range(chats.count())) if item is not None)


@pytest.mark.parametrize("form", ["cleo .json", "chatgpt .zip", "chatgpt conversations.json under another name"])
def test_an_export_imported_from_the_menu_adds_its_chats_to_the_sidebar_and_says_how_many(
        qtbot: QtBot, open_window: OpenWindow, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, form: str) -> None:
    window = open_window()
    if form == "cleo .json":
        path = tmp_path / "cleo-backup.json"
        path.write_text(cleo_export(cleo_chat("c1", "Gardening"), cleo_chat("c2", "Tides")), encoding="utf-8")
    else:
        text = "\n " + json.dumps([chatgpt_chat("c1", "Gardening"), chatgpt_chat("c2", "Tides")])
        path = chatgpt_zip(tmp_path / "export.zip", text) if form == "chatgpt .zip" else tmp_path / "chatgpt.json"
        if form != "chatgpt .zip":
            path.write_text(text, encoding="utf-8")

    import_from_menu(qtbot, window, monkeypatch, path)

    said = window.errors[-1]  # type: ignore[attr-defined]
    assert path.name in said and "2 conversation(s) added" in said, said
    qtbot.waitUntil(lambda: len(titles(window)) == 2, timeout=10_000)
    assert [t for t in titles(window) if "Gardening" in t] and [t for t in titles(window) if "Tides" in t]
    assert sorted(r[0] for r in rows("SELECT content FROM messages WHERE role = 'user'")) == [
        "About Gardening?", "About Tides?"]


def _raw(document: str, placeholder: str, raw: str) -> str:
    """`document` with the quoted `placeholder` replaced by `raw`, JSON that `json.dumps` will not write."""
    return document.replace(json.dumps(placeholder), raw)


HOSTILE = {  # file name, text
    "cleo created_at Infinity": ("x.json", _raw(cleo_export(cleo_chat("c1", "Fine"), cleo_chat("c2", "Bad", "T")),
                                                "T", "Infinity")),
    "chatgpt create_time Infinity": ("conversations.json", _raw(json.dumps(
        [chatgpt_chat("c1", "Fine"), chatgpt_chat("c2", "Bad", "T")]), "T", "Infinity")),
    "chatgpt create_time NaN in a .zip": ("export.zip", _raw(json.dumps([chatgpt_chat("c1", "Bad", "T")]), "T", "NaN")),
    "5000-digit number": ("x.json", _raw(cleo_export(cleo_chat("c1", "Fine", "T")), "T", "9" * 5000)),
    "markup in an id": ("x.json", cleo_export(cleo_chat('<img src="/dev/zero">', "Fine"))),
    "not an export at all": ("x.json", '{"hello": "world"}'),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_damaged_or_hostile_export_is_refused_in_a_dialog_and_nothing_changes(
        qtbot: QtBot, open_window: OpenWindow, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, case: str) -> None:
    window = open_window()
    send(qtbot, window, "Hello")  # something in the profile that must stay as it is
    before = (rows("SELECT * FROM conversations ORDER BY id"), rows("SELECT * FROM messages ORDER BY id"))
    shown_before = titles(window)
    name, text = HOSTILE[case]
    path = tmp_path / name
    if path.suffix == ".zip":
        chatgpt_zip(path, text)
    else:
        path.write_text(text, encoding="utf-8")

    import_from_menu(qtbot, window, monkeypatch, path)

    said = window.errors[-1]  # type: ignore[attr-defined]
    assert said.startswith("Cleo cannot import") and "Nothing from" in said, said
    assert len(said) < 2000  # it quotes the value, not the file
    qtbot.wait(200)  # long enough for a sidebar refresh to arrive; the point is that none does
    assert titles(window) == shown_before
    assert (rows("SELECT * FROM conversations ORDER BY id"), rows("SELECT * FROM messages ORDER BY id")) == before
    send(qtbot, window, "Still here?")  # and the window goes on as before
    assert rows("SELECT count(*) FROM messages WHERE role = 'assistant'") == [(2,)]


def test_cancelling_the_file_dialog_imports_nothing(
        qtbot: QtBot, open_window: OpenWindow, monkeypatch: pytest.MonkeyPatch) -> None:
    window = open_window()
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *args, **kwargs: ("", ""))
    [action] = [a for a in window.findChildren(QAction) if a.text() == "Import chats…"]
    action.trigger()
    qtbot.wait(200)
    assert window.errors == [] and titles(window) == []  # type: ignore[attr-defined]
