"""Cleo's window, offscreen, on the real engine and the default model (and scripted events only where
the point is the window's own logic)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QAbstractSpinBox,
    QComboBox,
    QInputDialog,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QTextEdit,
    QTreeWidgetItem,
    QWidget,
)
from pytestqt.qtbot import QtBot

from app.main_window import MainWindow
from app.memory_panel import MemoryPanel
from app.models_dialog import ModelsDialog
from app.render import LIGHT, render_markdown
from app.second_launch import SecondLaunches, bring_open_cleo_forward
from app.settings_dialog import PersonasEditor, SettingsDialog
from app.worker import EngineWorker
from engine.downloads import CatalogEntry
from engine.events import Done, Started, Token
from engine.paths import folders
from engine.profile_lock import default_database_path
from engine.session import open_memories
from engine.settings import Settings
from tests.conftest import DefaultModels

FAST = Settings(threads=1, context_size=1024, max_tokens=12, temperature=0.0, seed=1)


def _rows(sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the profile's database as another program would, while Cleo has it open."""
    path = folders().data / "cleo.db"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return conn.execute(sql, args).fetchall()


@pytest.fixture
def profile(default_models: DefaultModels, cleo_home: Path) -> Path:
    """A new user's profile: the default models and nothing else."""
    shutil.copytree(default_models.chat.parent, folders().models)
    return cleo_home


@pytest.fixture
def open_window(qtbot: QtBot, profile: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., MainWindow]]:
    errors: list[str] = []
    monkeypatch.setattr(QMessageBox, "warning", lambda parent, title, text: errors.append(text))
    windows: list[MainWindow] = []

    def make(settings: Settings = FAST, *, ready: bool = True) -> MainWindow:
        window = MainWindow(settings, EngineWorker(settings))
        window.errors = errors  # type: ignore[attr-defined]
        qtbot.addWidget(window)
        window.show()
        window.start()
        windows.append(window)
        if ready:
            qtbot.waitUntil(lambda: window.model_state is not None, timeout=60_000)
        return window

    yield make
    for window in windows:
        window.close()


def _send(qtbot: QtBot, window: MainWindow, text: str, *, wait: bool = True) -> None:
    window.composer.setPlainText(text)
    qtbot.keyClick(window.composer, Qt.Key.Key_Return)
    if wait:
        qtbot.waitUntil(lambda: window.controller.busy, timeout=10_000)
        _idle(qtbot, window)


def _record_paints(window: MainWindow) -> list[str]:
    """The texts the streaming reply is painted with, in order."""
    painted: list[str] = []
    paint = window.chat.update_reply

    def recording(text: str) -> None:
        painted.append(text)
        paint(text)

    window.chat.update_reply = recording  # type: ignore[method-assign]
    return painted


def _remembered(panel: MemoryPanel) -> dict[str, QTreeWidgetItem]:
    items = (panel.remembered.topLevelItem(i) for i in range(panel.remembered.topLevelItemCount()))
    return {item.text(1): item for item in items if item is not None}


def _idle(qtbot: QtBot, window: MainWindow) -> None:
    qtbot.waitUntil(lambda: window.controller.settled, timeout=60_000)


def test_a_message_streams_a_reply_generated_off_the_gui_thread_and_both_are_saved(
        qtbot: QtBot, open_window: Callable[..., MainWindow]) -> None:
    window = open_window()
    threads: set[int] = set()
    window.worker.turnEvent.connect(lambda *_: threads.add(threading.get_ident()), Qt.ConnectionType.DirectConnection)
    painted = _record_paints(window)

    _send(qtbot, window, "What is the capital of France?")

    assert threads and threading.get_ident() not in threads
    rows = _rows("SELECT role, content, finish_reason FROM messages ORDER BY created_at")
    assert [r[0] for r in rows] == ["user", "assistant"] and rows[0][1] == "What is the capital of France?"
    assert rows[1][1] and rows[1][2] in ("stop", "length")
    assert rows[1][1].strip()[:20] in window.chat.toPlainText()
    assert painted and painted[-1] == rows[1][1]  # streamed, ending on the saved text
    assert window.sidebar.count() == 1 and "tokens/s" in window.speed_label.text()


def test_enter_sends_shift_enter_breaks_the_line_and_blank_messages_are_not_sent(
        qtbot: QtBot, open_window: Callable[..., MainWindow]) -> None:
    window = open_window()
    window.composer.setPlainText("   \n ")
    qtbot.keyClick(window.composer, Qt.Key.Key_Return)
    qtbot.wait(200)
    assert not window.controller.busy and _rows("SELECT count(*) FROM messages") == [(0,)]

    window.composer.clear()
    qtbot.keyClicks(window.composer, "first line")
    qtbot.keyClick(window.composer, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(window.composer, "second line")
    assert window.composer.toPlainText() == "first line\nsecond line"
    qtbot.keyClick(window.composer, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: window.controller.busy, timeout=10_000)
    assert window.composer.toPlainText() == ""
    _idle(qtbot, window)
    assert _rows("SELECT content FROM messages WHERE role = 'user'") == [("first line\nsecond line",)]


def test_esc_stops_the_reply_and_keeps_what_was_written(qtbot: QtBot,
                                                         open_window: Callable[..., MainWindow]) -> None:
    window = open_window(FAST.updated(max_tokens=400))
    _send(qtbot, window, "Write a long story about a lighthouse keeper.", wait=False)
    qtbot.waitUntil(lambda: len(window.chat.streaming_text) > 10, timeout=30_000)
    qtbot.keyClick(window.composer, Qt.Key.Key_Escape)
    _idle(qtbot, window)
    [(content, reason)] = _rows("SELECT content, finish_reason FROM messages WHERE role = 'assistant'")
    assert reason == "stopped" and len(content) > 10
    assert "Stopped" in window.chat.toPlainText() and window.send_button.text() == "Send"


def test_regenerate_and_edit_keep_alternatives_to_page_through(qtbot: QtBot,
                                                               open_window: Callable[..., MainWindow]) -> None:
    window = open_window(FAST.updated(temperature=0.9, seed=-1))
    _send(qtbot, window, "Name a colour.")
    assert window.chat.view is not None
    user, first = window.chat.view.messages
    window.chat.anchorClicked.emit(QUrl(f"cleo:regenerate/{first.id}"))
    qtbot.waitUntil(lambda: window.controller.busy, timeout=10_000)
    _idle(qtbot, window)
    second = window.chat.view.messages[-1]
    assert second.id != first.id and window.chat.view.alternatives[second.id] == (2, 2)
    assert "2/2" in window.chat.toPlainText()

    window.chat.anchorClicked.emit(QUrl(f"cleo:alt/{second.id}/-1"))
    qtbot.waitUntil(lambda: window.chat.view is not None and window.chat.view.messages[-1].id == first.id)
    assert "1/2" in window.chat.toPlainText()

    window.controller.edit(user.id, "Name a fruit.")
    qtbot.waitUntil(lambda: window.controller.busy, timeout=10_000)
    _idle(qtbot, window)
    edited = window.chat.view.messages[0]
    assert edited.content == "Name a fruit." and window.chat.view.alternatives[edited.id] == (2, 2)
    assert _rows("SELECT count(*) FROM messages WHERE role = 'user'") == [(2,)]


def test_switching_chats_while_a_reply_streams_keeps_it_in_its_own_chat(
        qtbot: QtBot, open_window: Callable[..., MainWindow]) -> None:
    window = open_window(FAST.updated(max_tokens=60))
    _send(qtbot, window, "Say hello.")
    first_chat = window.controller.current
    window.controller.new_chat()
    _send(qtbot, window, "Tell me about the sea.", wait=False)
    qtbot.waitUntil(lambda: len(window.chat.streaming_text) > 5, timeout=30_000)
    second_chat = window.controller.current
    window.controller.open(first_chat)  # while the second reply streams
    qtbot.waitUntil(lambda: window.chat.view is not None and window.chat.view.id == first_chat, timeout=10_000)
    _idle(qtbot, window)
    assert "the sea" not in window.chat.toPlainText() and "Say hello." in window.chat.toPlainText()
    [(reply,)] = _rows("SELECT content FROM messages WHERE conversation_id = ? AND role = 'assistant'", second_chat)
    assert reply.strip() and reply.strip()[:15] not in window.chat.toPlainText()

    window.controller.open(second_chat)
    qtbot.waitUntil(lambda: window.chat.view is not None and window.chat.view.id == second_chat, timeout=10_000)
    assert reply.strip()[:15] in window.chat.toPlainText()


def test_search_shows_snippets_and_opens_the_hit(qtbot: QtBot, open_window: Callable[..., MainWindow]) -> None:
    window = open_window()
    _send(qtbot, window, "My axolotl is called Pancake.")
    found_in = window.controller.current
    window.controller.new_chat()
    qtbot.keyClicks(window.search_box, "axolotl")
    qtbot.waitUntil(lambda: window.sidebar.count() >= 1 and "axolotl" in window.sidebar.item(0).text(),
                    timeout=10_000)
    item = window.sidebar.item(0)
    window.sidebar.itemClicked.emit(item)
    qtbot.waitUntil(lambda: window.chat.view is not None and window.chat.view.id == found_in, timeout=10_000)
    assert "Pancake" in window.chat.toPlainText()


def test_approving_editing_and_forgetting_memories_reach_the_database(
        qtbot: QtBot, open_window: Callable[..., MainWindow], monkeypatch: pytest.MonkeyPatch) -> None:
    memories = open_memories()
    _, proposed = memories.book.add("The user plays the cello", "fact", propose=True)
    _, kept = memories.book.add("The user lives in Ghent", "profile")
    memories.close()
    window = open_window()
    panel = window.memory_panel
    qtbot.waitUntil(lambda: panel.inbox.count() == 1 and panel.remembered.topLevelItemCount() == 1)

    panel.inbox.setCurrentRow(0)
    panel.approve_button.click()
    qtbot.waitUntil(lambda: panel.inbox.count() == 0 and panel.remembered.topLevelItemCount() == 2)
    assert _rows("SELECT status FROM memories WHERE id = ?", proposed.id) == [("active",)]

    monkeypatch.setattr(QInputDialog, "getMultiLineText", lambda *a, **k: ("The user lives in Antwerp", True))
    panel.remembered.setCurrentItem(_remembered(panel)["The user lives in Ghent."])
    panel.edit_button.click()
    qtbot.waitUntil(lambda: "The user lives in Antwerp." in _remembered(panel))
    assert _rows("SELECT content FROM memories WHERE id = ?", kept.id) == [("The user lives in Antwerp.",)]

    panel.remembered.setCurrentItem(_remembered(panel)["The user plays the cello."])
    panel.forget_button.click()
    qtbot.waitUntil(lambda: panel.remembered.topLevelItemCount() == 1)
    assert _rows("SELECT count(*) FROM memories WHERE id = ? AND status = 'active'", proposed.id) == [(0,)]


def test_a_corrupt_model_is_explained_and_the_window_stays_usable(
        qtbot: QtBot, open_window: Callable[..., MainWindow], profile: Path) -> None:
    broken = profile / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    window = open_window(FAST.updated(chat_model=str(broken)), ready=False)
    errors: list[str] = window.errors  # type: ignore[attr-defined]
    qtbot.waitUntil(lambda: bool(errors), timeout=30_000)
    assert "broken.gguf" in errors[0]
    assert window.models_dialog is not None and window.models_dialog.isVisible()
    qtbot.waitUntil(lambda: window.models_dialog is not None and window.models_dialog.table.rowCount() >= 1,
                    timeout=10_000)
    window.composer.setPlainText("still typing")
    window.send()  # nothing to answer with yet: the message stays in the composer
    assert window.composer.toPlainText() == "still typing"

    # Choosing a working model in the manager starts Cleo.
    dialog = window.models_dialog
    row = next(i for i, m in enumerate(dialog.models) if m.path.name == "cleo-moe-4x135m-q4_1.gguf")
    dialog.table.selectRow(row)
    dialog.use_button.click()
    qtbot.waitUntil(lambda: window.model_state is not None, timeout=60_000)
    window.send()
    qtbot.waitUntil(lambda: window.controller.busy, timeout=10_000)
    _idle(qtbot, window)
    assert _rows("SELECT content FROM messages WHERE role = 'user'") == [("still typing",)]


def test_window_size_and_the_last_chat_come_back(qtbot: QtBot, open_window: Callable[..., MainWindow]) -> None:
    window = open_window()
    _send(qtbot, window, "Remember this window.")
    chat = window.controller.current
    window.resize(720, 520)  # within the offscreen screen (800 x 600)
    window.close()
    again = open_window()
    qtbot.waitUntil(lambda: again.controller.current == chat and again.chat.view is not None, timeout=10_000)
    assert (again.width(), again.height()) == (720, 520)
    assert "Remember this window." in again.chat.toPlainText()


def test_settings_explain_a_refused_value_and_keep_ok_disabled(qtbot: QtBot) -> None:
    dialog = SettingsDialog(Settings())
    qtbot.addWidget(dialog)
    prompt = dialog.editors["system_prompt"]
    prompt.setPlainText("x" * 20_001)  # type: ignore[attr-defined]
    assert dialog.errors["system_prompt"].isVisibleTo(dialog) and "20000" in dialog.errors["system_prompt"].text()
    ok = dialog.buttons.button(dialog.buttons.StandardButton.Ok)
    assert not ok.isEnabled()
    prompt.setPlainText("Be brief.")  # type: ignore[attr-defined]
    dialog.editors["temperature"].setValue(0.3)  # type: ignore[attr-defined]
    dialog.editors["theme"].setCurrentText("dark")  # type: ignore[attr-defined]
    assert ok.isEnabled()
    ok.click()
    assert (dialog.settings.system_prompt, dialog.settings.temperature, dialog.settings.theme) == (
        "Be brief.", 0.3, "dark")


def test_tokens_are_painted_at_most_twenty_times_a_second(qtbot: QtBot, profile: Path) -> None:
    """Pure window logic: a scripted stream of 100 tokens/s into the controller."""
    window = MainWindow(FAST, EngineWorker(FAST))  # its engine is never started
    qtbot.addWidget(window)
    paints = _record_paints(window)
    window.controller.current = "chat"
    window.controller._on_event("chat", Started("chat", "u", "r"))
    start = time.monotonic()
    for i in range(100):
        window.controller._on_event("chat", Token(f"w{i} "))
        qtbot.wait(10)
    window.controller._on_event("chat", Done("r", "stop"))
    seconds = time.monotonic() - start
    assert len(paints) <= 20 * seconds + 3
    assert paints[-1].endswith("w99 ")  # the last tokens are painted when the reply ends


def test_replies_render_markdown_and_code_without_running_markup() -> None:
    rendered = render_markdown("Use **this**:\n```python\nprint('<b>')\n```\n<script>alert(1)</script>", LIGHT)
    assert "<b>this</b>" in rendered.html and 'href="cleo:copy-code/0"' in rendered.html
    assert rendered.code_blocks == ["print('<b>')"]
    assert "<script>" not in rendered.html and "&lt;script&gt;" in rendered.html
    assert "color" in rendered.html  # pygments coloured the code
    table = render_markdown("Prices:\n\n| Fruit | Price |\n|---|--:|\n| Apple | **1** |\n| Pear | 2 |\n\nDone.", LIGHT)
    assert "<th>Fruit</th>" in table.html and "<td><b>1</b></td>" in table.html and "<p>Done.</p>" in table.html


def test_every_control_has_an_accessible_name(qtbot: QtBot, open_window: Callable[..., MainWindow]) -> None:
    window = open_window()
    window.memory_dock.show()
    window.open_models()
    assert window.models_dialog is not None
    dialog = SettingsDialog(window.settings, window)
    qtbot.addWidget(dialog)
    controls = (QAbstractButton, QLineEdit, QPlainTextEdit, QTextEdit, QAbstractItemView, QProgressBar, QComboBox,
                QAbstractSpinBox)

    def named(widget: QWidget) -> bool:  # a button's text is its name for screen readers
        return bool(widget.accessibleName() or (isinstance(widget, QAbstractButton) and widget.text()))

    unnamed = [type(w).__name__ for top in (window, window.models_dialog, dialog) for w in top.findChildren(QWidget)
               if isinstance(w, controls) and w.isVisibleTo(top) and not named(w)
               # the parts Qt builds inside a spin box, combo box or table (line edits, headers, corner button)
               and not isinstance(w.parent(), QAbstractSpinBox | QComboBox | QAbstractItemView)]
    assert unnamed == []


def test_shortcuts_start_a_chat_focus_search_and_copy_the_last_reply(
        qtbot: QtBot, open_window: Callable[..., MainWindow]) -> None:
    window = open_window()
    _send(qtbot, window, "Say something short.")
    reply = window.chat.view.messages[-1].content if window.chat.view else ""
    qtbot.keyClick(window, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert QGuiApplication.clipboard().text() == reply and reply
    qtbot.keyClick(window, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)
    assert window.controller.current == "" and window.title.text() == "New chat"
    qtbot.keyClick(window, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)
    assert window.search_box.hasFocus()


def test_a_profile_in_use_by_another_cleo_is_explained(qtbot: QtBot,
                                                       open_window: Callable[..., MainWindow]) -> None:
    other = open_memories()  # another Cleo holds the profile
    try:
        window = open_window(ready=False)
        errors: list[str] = window.errors  # type: ignore[attr-defined]
        qtbot.waitUntil(lambda: bool(errors), timeout=30_000)
        assert "in use" in errors[0].lower() or "another" in errors[0].lower()
        assert window.model_state is None and not window.send_button.isEnabled()
    finally:
        other.close()


def test_the_reply_can_be_copied_the_moment_it_ends(qtbot: QtBot, open_window: Callable[..., MainWindow]) -> None:
    # The engine sends the reloaded chat a moment after the reply ends; copying must not wait for it.
    window = open_window()
    copied: list[str] = []

    def copy_when_done(busy: bool) -> None:
        if not busy:
            copied.append(window.controller.last_reply())

    window.controller.busyChanged.connect(copy_when_done)
    _send(qtbot, window, "Say something short.")
    assert window.chat.view is not None
    reply = window.chat.view.messages[-1].content
    assert reply and copied == [reply]


def _launch_again(qtbot: QtBot) -> bool:
    """What a second launch does first, on a thread of its own while this event loop answers it."""
    answered: list[bool] = []
    second_launch = threading.Thread(target=lambda: answered.append(bring_open_cleo_forward(default_database_path())))
    second_launch.start()
    qtbot.waitUntil(lambda: bool(answered), timeout=10_000)
    second_launch.join()
    return answered == [True]


def test_launching_cleo_again_brings_the_minimised_window_back(qtbot: QtBot,
                                                                  open_window: Callable[..., MainWindow]) -> None:
    window = open_window()
    SecondLaunches(default_database_path(), window.bring_forward, parent=window)  # as app.gui wires it
    window.showMinimized()
    assert window.isMinimized()
    assert _launch_again(qtbot)
    assert window.isVisible() and not window.isMinimized()


def test_the_launchers_focus_token_goes_to_the_open_window(qtbot: QtBot, open_window: Callable[..., MainWindow],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # On Wayland a window takes the focus only with the token the launcher gave the new process.
    window = open_window()
    presented: list[str | None] = []
    SecondLaunches(default_database_path(), lambda: presented.append(os.environ.get("XDG_ACTIVATION_TOKEN")),
                   parent=window)
    monkeypatch.setenv("XDG_ACTIVATION_TOKEN", "launcher-token-7")
    assert _launch_again(qtbot) and presented == ["launcher-token-7"]
    assert "XDG_ACTIVATION_TOKEN" not in os.environ  # used once, and not left for anything Cleo starts


def test_a_megabyte_paste_is_sent_whole_and_shortened_for_the_model_with_a_notice(
        qtbot: QtBot, open_window: Callable[..., MainWindow]) -> None:
    window = open_window(FAST.updated(max_tokens=4))
    pasted = "All work and no play makes a dull day. " * 27_000  # ~1 MB
    window.composer.setPlainText(pasted)
    qtbot.keyClick(window.composer, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: window.controller.busy, timeout=30_000)
    _idle(qtbot, window)
    [(stored,)] = _rows("SELECT length(content) FROM messages WHERE role = 'user'")
    assert stored == len(pasted)
    assert window.chat.notices and any("shortened" in n.lower() or "cut" in n.lower() or "too long" in n.lower()
                                       for ns in window.chat.notices.values() for n in ns)


def test_the_model_manager_downloads_checks_and_reports_a_wrong_hash(qtbot: QtBot, profile: Path) -> None:
    from tests.engine.test_downloads import PAYLOAD, _entry, _Server

    server = _Server()
    try:
        good = _entry(server.url)
        bad = CatalogEntry("Tampered", "tampered.gguf", server.url, len(PAYLOAD), "0" * 64, "MIT")
        dialog = ModelsDialog(1024, (), catalog=[good, bad])
        qtbot.addWidget(dialog)
        dialog.downloads.selectRow(0)
        with qtbot.waitSignal(dialog.foldersChanged, timeout=30_000):  # the model list is refreshed
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


def test_a_persona_gives_a_new_chat_and_the_open_one_their_instructions(
        qtbot: QtBot, open_window: Callable[..., MainWindow]) -> None:
    window = open_window()
    concise = window.settings.personas[0]
    window.persona.setCurrentIndex(window.persona.findText(concise.name))
    window.persona.activated.emit(window.persona.currentIndex())
    _send(qtbot, window, "Hi!")
    chat = window.controller.current
    assert _rows("SELECT system_prompt FROM conversations WHERE id = ?", chat) == [(concise.instructions,)]
    assert window.persona.currentText() == concise.name  # shown again after the reply reloads the chat

    window.persona.setCurrentIndex(0)
    window.persona.activated.emit(0)
    qtbot.waitUntil(lambda: _rows("SELECT system_prompt FROM conversations WHERE id = ?", chat) == [(None,)])


def test_a_chat_can_use_its_own_model_and_the_others_keep_the_default(
        qtbot: QtBot, open_window: Callable[..., MainWindow], default_models: DefaultModels) -> None:
    window = open_window()
    default_name = window.model_label.text()
    _send(qtbot, window, "Hello")
    own = window.controller.current
    window.controller.use_model_in_chat(str(default_models.dense_base))
    qtbot.waitUntil(lambda: window.model_label.text() != default_name, timeout=30_000)
    assert _rows("SELECT model FROM conversations WHERE id = ?", own) == [(str(default_models.dense_base),)]

    window.controller.new_chat()
    _send(qtbot, window, "Hello again")
    assert window.model_label.text() == default_name
    window.controller.open(own)
    qtbot.waitUntil(lambda: window.chat.view is not None and window.chat.view.id == own)
    _send(qtbot, window, "And you?")
    assert window.model_label.text() != default_name


def test_personas_are_edited_in_the_settings_with_each_mistake_named(qtbot: QtBot) -> None:
    dialog = SettingsDialog(Settings())
    qtbot.addWidget(dialog)
    editor = dialog.editors["personas"]
    assert isinstance(editor, PersonasEditor)
    editor.table.item(0, 0).setText("")  # type: ignore[union-attr]
    assert "1 name" in dialog.errors["personas"].text()
    editor.table.item(0, 0).setText("Brief")  # type: ignore[union-attr]
    dialog.buttons.button(dialog.buttons.StandardButton.Ok).click()
    assert dialog.settings.personas[0].name == "Brief"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Windows and macOS always have a display")
def test_without_a_display_cleo_says_so_instead_of_crashing(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    result = subprocess.run([sys.executable, "-m", "app"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2 and "needs a desktop" in result.stderr and "cleo chat" in result.stderr
    # A display that is named but not there: Qt would abort (a core dump); Cleo explains instead.
    result = subprocess.run([sys.executable, "-m", "app"], capture_output=True, text=True, timeout=60,
                            env={**env, "DISPLAY": ":77", "CLEO_HOME": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    assert "could not open its window" in result.stderr and "DISPLAY=:77" in result.stderr
    assert "could not connect to display :77" in result.stderr and "cleo chat" in result.stderr


def test_a_missing_default_model_opens_the_model_manager_and_says_why(
        qtbot: QtBot, open_window: Callable[..., MainWindow], profile: Path) -> None:
    (folders().models / "cleo-moe-4x135m-q4_1.gguf").unlink()
    window = open_window(ready=False)
    errors: list[str] = window.errors  # type: ignore[attr-defined]
    qtbot.waitUntil(lambda: bool(errors), timeout=30_000)
    assert "cleo-moe-4x135m-q4_1.gguf does not exist" in errors[0] and "choose another model" in errors[0]
    assert window.models_dialog is not None and window.models_dialog.isVisible()


def test_a_message_sent_while_cleo_learns_waits_for_one_learning_step_not_all(
        qtbot: QtBot, open_window: Callable[..., MainWindow], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.worker._LEARN_WHEN_IDLE_MS", 50)
    window = open_window()
    assert window.worker.cleo is not None
    assistant = window.worker.cleo.assistant
    steps_done: list[float] = []

    class SlowLearning:  # scripted: the point is when the worker learns, not what it learns
        def __init__(self, memory: Any) -> None:
            self._memory, self.left = memory, 4

        def __getattr__(self, name: str) -> Any:
            return getattr(self._memory, name)

        @property
        def learning_pending(self) -> bool:
            return self.left > 0

        def learn(self, ask: Any, *, at_most: int | None = None) -> list[Any]:
            for _ in range(min(at_most or self.left, self.left)):
                time.sleep(0.4)  # one model call
                self.left -= 1
                steps_done.append(time.monotonic())
            return []

    learning = SlowLearning(assistant.memory)
    assistant.memory = learning
    replies_started: list[float] = []
    window.worker.busyChanged.connect(lambda busy: replies_started.append(time.monotonic()) if busy else None)
    _send(qtbot, window, "Hello")  # learning starts once the reply is done and the user is idle
    qtbot.waitUntil(lambda: len(steps_done) >= 1, timeout=10_000)
    sent = time.monotonic()
    _send(qtbot, window, "And another thing")
    assert sum(sent < t < replies_started[-1] for t in steps_done) <= 1  # at most the step under way
    qtbot.waitUntil(lambda: learning.left == 0, timeout=10_000)  # and the rest is learned afterwards
    assert len(steps_done) == 4


def test_learning_left_over_from_the_last_session_is_done_once_the_user_is_idle(
        qtbot: QtBot, open_window: Callable[..., MainWindow], monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.memory import MemoryHooks

    memories = open_memories()  # the last session: a turn ended, and Cleo closed before it learned
    hooks = MemoryHooks(memories.book, memories.recall, memories.store)
    chat = memories.store.create_conversation()
    user = memories.store.add_message(chat.id, "user", "I have a dog called Rex.", None)
    hooks.after_turn(chat.id, [user, memories.store.add_message(chat.id, "assistant", "Nice!", user.id)])
    memories.close()
    assert _rows("SELECT count(*) FROM learning_queue") == [(1,)]
    monkeypatch.setattr("app.worker._LEARN_WHEN_IDLE_MS", 50)
    open_window()
    qtbot.waitUntil(lambda: _rows("SELECT count(*) FROM learning_queue") == [(0,)], timeout=60_000)


def test_why_this_answer_is_kept_with_the_reply_and_a_forgotten_memory_leaves_it(
        qtbot: QtBot, open_window: Callable[..., MainWindow]) -> None:
    memories = open_memories()
    _, cat = memories.book.add("The user's cat is called Miso", "fact")
    memories.close()
    window = open_window()
    _send(qtbot, window, "What is my cat called?")
    reply = window.chat.view.messages[-1].id if window.chat.view else ""
    assert [item.text for item in window.chat.why[reply]] == ["The user's cat is called Miso."]
    window.close()

    again = open_window()  # Cleo reopened: the last chat comes back with its "Why this answer"
    qtbot.waitUntil(lambda: again.chat.view is not None and again.chat.view.messages[-1].id == reply, timeout=10_000)
    assert [item.memory_id for item in again.chat.why[reply]] == [cat.id]
    assert "Why this answer (1)" in again.chat.toPlainText()

    panel = again.memory_panel
    qtbot.waitUntil(lambda: "The user's cat is called Miso." in _remembered(panel))
    panel.remembered.setCurrentItem(_remembered(panel)["The user's cat is called Miso."])
    panel.forget_button.click()
    qtbot.waitUntil(lambda: reply not in again.chat.why, timeout=10_000)
    assert "Why this answer" not in again.chat.toPlainText(), again.chat.toPlainText()
