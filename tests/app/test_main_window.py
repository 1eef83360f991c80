"""Cleo's window as a whole, offscreen, on the real engine and the default model: sending, stopping,
switching chats, errors the user must see, shortcuts, accessibility, and what comes back at the next start."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QAbstractSpinBox,
    QComboBox,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QTextEdit,
    QWidget,
)
from pytestqt.qtbot import QtBot

from app.settings_dialog import SettingsDialog
from engine import folders, open_profile
from tests.helpers.gui import FAST, DefaultModelFiles, OpenWindow, idle, record_paints, rows, send


def test_a_message_streams_a_reply_generated_off_the_gui_thread_and_both_are_saved(
        qtbot: QtBot, open_window: OpenWindow) -> None:
    window = open_window()
    threads: set[int] = set()
    window.worker.turn_advanced.connect(lambda *_: threads.add(threading.get_ident()),
                                        Qt.ConnectionType.DirectConnection)
    painted = record_paints(window)

    send(qtbot, window, "What is the capital of France?")

    assert threads and threading.get_ident() not in threads
    saved = rows("SELECT role, content, finish_reason FROM messages ORDER BY created_at")
    assert [r[0] for r in saved] == ["user", "assistant"] and saved[0][1] == "What is the capital of France?"
    assert saved[1][1] and saved[1][2] in ("stop", "length")
    assert saved[1][1].strip()[:20] in window.chat.toPlainText()
    assert painted and painted[-1] == saved[1][1]  # streamed, ending on the saved text
    assert window.sidebar.chats.count() == 1 and "tokens/s" in window.status_line.speed_label.text()


def test_enter_sends_shift_enter_breaks_the_line_and_blank_messages_are_not_sent(
        qtbot: QtBot, open_window: OpenWindow) -> None:
    window = open_window()
    window.composer.setPlainText("   \n ")
    qtbot.keyClick(window.composer, Qt.Key.Key_Return)
    qtbot.wait(200)  # long enough for a send to show; the point is that none happens
    assert not window.controller.busy and rows("SELECT count(*) FROM messages") == [(0,)]

    window.composer.clear()
    qtbot.keyClicks(window.composer, "first line")
    qtbot.keyClick(window.composer, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(window.composer, "second line")
    assert window.composer.toPlainText() == "first line\nsecond line"
    qtbot.keyClick(window.composer, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: window.controller.busy, timeout=10_000)
    assert window.composer.toPlainText() == ""
    idle(qtbot, window)
    assert rows("SELECT content FROM messages WHERE role = 'user'") == [("first line\nsecond line",)]


def test_esc_stops_the_reply_and_keeps_what_was_written(qtbot: QtBot, open_window: OpenWindow) -> None:
    window = open_window(FAST.updated(max_tokens=400))
    send(qtbot, window, "Write a long story about a lighthouse keeper.", wait=False)
    qtbot.waitUntil(lambda: len(window.chat.streaming_text) > 10, timeout=30_000)
    qtbot.keyClick(window.composer, Qt.Key.Key_Escape)
    idle(qtbot, window)
    [(content, reason)] = rows("SELECT content, finish_reason FROM messages WHERE role = 'assistant'")
    assert reason == "stopped" and len(content) > 10
    assert "Stopped" in window.chat.toPlainText() and window.send_button.text() == "Send"


def test_switching_chats_while_a_reply_streams_keeps_it_in_its_own_chat(
        qtbot: QtBot, open_window: OpenWindow) -> None:
    window = open_window(FAST.updated(max_tokens=60))
    send(qtbot, window, "Say hello.")
    first_chat = window.controller.current
    window.controller.new_chat()
    send(qtbot, window, "Tell me about the sea.", wait=False)
    qtbot.waitUntil(lambda: len(window.chat.streaming_text) > 5, timeout=30_000)
    second_chat = window.controller.current
    window.controller.open(first_chat)  # while the second reply streams
    qtbot.waitUntil(lambda: window.chat.view is not None and window.chat.view.id == first_chat, timeout=10_000)
    idle(qtbot, window)
    assert "the sea" not in window.chat.toPlainText() and "Say hello." in window.chat.toPlainText()
    [(reply,)] = rows("SELECT content FROM messages WHERE conversation_id = ? AND role = 'assistant'", second_chat)
    assert reply.strip() and reply.strip()[:15] not in window.chat.toPlainText()

    window.controller.open(second_chat)
    qtbot.waitUntil(lambda: window.chat.view is not None and window.chat.view.id == second_chat, timeout=10_000)
    assert reply.strip()[:15] in window.chat.toPlainText()


def test_a_corrupt_model_is_explained_and_the_window_stays_usable(
        qtbot: QtBot, open_window: OpenWindow, profile: Path) -> None:
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
    idle(qtbot, window)
    assert rows("SELECT content FROM messages WHERE role = 'user'") == [("still typing",)]


def test_a_missing_default_model_opens_the_model_manager_and_says_why(
        qtbot: QtBot, open_window: OpenWindow, profile: Path) -> None:
    (folders().models / "cleo-moe-4x135m-q4_1.gguf").unlink()
    window = open_window(ready=False)
    errors: list[str] = window.errors  # type: ignore[attr-defined]
    qtbot.waitUntil(lambda: bool(errors), timeout=30_000)
    assert "cleo-moe-4x135m-q4_1.gguf does not exist" in errors[0] and "choose another model" in errors[0]
    assert window.models_dialog is not None and window.models_dialog.isVisible()


def test_a_profile_in_use_by_another_cleo_is_explained(qtbot: QtBot, open_window: OpenWindow) -> None:
    other = open_profile()  # another Cleo holds the profile
    try:
        window = open_window(ready=False)
        errors: list[str] = window.errors  # type: ignore[attr-defined]
        qtbot.waitUntil(lambda: bool(errors), timeout=30_000)
        assert "in use" in errors[0].lower() or "another" in errors[0].lower()
        assert window.model_state is None and not window.send_button.isEnabled()
    finally:
        other.close()


def test_window_size_and_the_last_chat_come_back(qtbot: QtBot, open_window: OpenWindow) -> None:
    window = open_window()
    send(qtbot, window, "Remember this window.")
    chat = window.controller.current
    window.resize(720, 520)  # within the offscreen screen (800 x 600)
    window.close()
    again = open_window()
    qtbot.waitUntil(lambda: again.controller.current == chat and again.chat.view is not None, timeout=10_000)
    assert (again.width(), again.height()) == (720, 520)
    assert "Remember this window." in again.chat.toPlainText()


def test_the_reply_can_be_copied_the_moment_it_ends(qtbot: QtBot, open_window: OpenWindow) -> None:
    # The engine sends the reloaded chat a moment after the reply ends; copying must not wait for it.
    window = open_window()
    copied: list[str] = []

    def copy_when_done(busy: bool) -> None:
        if not busy:
            copied.append(window.controller.last_reply())

    window.controller.busy_changed.connect(copy_when_done)
    send(qtbot, window, "Say something short.")
    assert window.chat.view is not None
    reply = window.chat.view.messages[-1].content
    assert reply and copied == [reply]


def test_shortcuts_start_a_chat_focus_search_and_copy_the_last_reply(qtbot: QtBot, open_window: OpenWindow) -> None:
    window = open_window()
    send(qtbot, window, "Say something short.")
    reply = window.chat.view.messages[-1].content if window.chat.view else ""
    qtbot.keyClick(window, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert QGuiApplication.clipboard().text() == reply and reply
    qtbot.keyClick(window, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)
    assert window.controller.current == "" and window.header.title.text() == "New chat"
    qtbot.keyClick(window, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)
    assert window.sidebar.search_box.hasFocus()


def test_a_megabyte_paste_is_sent_whole_and_shortened_for_the_model_with_a_notice(
        qtbot: QtBot, open_window: OpenWindow) -> None:
    window = open_window(FAST.updated(max_tokens=4))
    pasted = "All work and no play makes a dull day. " * 27_000  # ~1 MB
    window.composer.setPlainText(pasted)
    qtbot.keyClick(window.composer, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: window.controller.busy, timeout=30_000)
    idle(qtbot, window)
    [(stored,)] = rows("SELECT length(content) FROM messages WHERE role = 'user'")
    assert stored == len(pasted)
    assert window.chat.notices and any("shortened" in n.lower() or "cut" in n.lower() or "too long" in n.lower()
                                       for ns in window.chat.notices.values() for n in ns)


def test_a_chat_can_use_its_own_model_and_the_others_keep_the_default(
        qtbot: QtBot, open_window: OpenWindow, default_models: DefaultModelFiles) -> None:
    window = open_window()
    model_label = window.status_line.model_label
    default_name = model_label.text()
    send(qtbot, window, "Hello")
    own = window.controller.current
    window.controller.use_model_in_chat(str(default_models.dense_base))
    qtbot.waitUntil(lambda: model_label.text() != default_name, timeout=30_000)
    assert rows("SELECT model FROM conversations WHERE id = ?", own) == [(str(default_models.dense_base),)]

    window.controller.new_chat()
    send(qtbot, window, "Hello again")
    assert model_label.text() == default_name
    window.controller.open(own)
    qtbot.waitUntil(lambda: window.chat.view is not None and window.chat.view.id == own)
    send(qtbot, window, "And you?")
    assert model_label.text() != default_name


def test_every_control_has_an_accessible_name(qtbot: QtBot, open_window: OpenWindow) -> None:
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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Windows and macOS always have a display")
def test_without_a_display_cleo_says_so_instead_of_crashing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    result = subprocess.run([sys.executable, "-m", "app"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2 and "needs a desktop" in result.stderr and "cleo chat" in result.stderr
    # A display that is named but not there: Qt would abort (a core dump); Cleo explains instead.
    result = subprocess.run([sys.executable, "-m", "app"], capture_output=True, text=True, timeout=60,
                            env={**env, "DISPLAY": ":77", "CLEO_HOME": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    assert "could not open its window" in result.stderr and "DISPLAY=:77" in result.stderr
    assert "could not connect to display :77" in result.stderr and "cleo chat" in result.stderr


def test_a_model_folder_is_added_while_a_reply_streams_and_other_settings_wait(
        qtbot: QtBot, open_window: OpenWindow, tmp_path: Path) -> None:
    window = open_window(FAST.updated(max_tokens=400))
    send(qtbot, window, "Write a long story about a lighthouse keeper.", wait=False)
    qtbot.waitUntil(lambda: len(window.chat.streaming_text) > 10, timeout=30_000)
    errors: list[object] = []
    window.controller.worker.request_failed.connect(errors.append)
    folder = str(tmp_path / "downloads")
    window.controller.apply_settings(window.settings.updated(model_folders=(*window.settings.model_folders, folder)))
    qtbot.waitUntil(lambda: folder in window.settings.model_folders, timeout=10_000)
    window.controller.apply_settings(window.settings.updated(temperature=0.1))
    qtbot.waitUntil(lambda: bool(errors), timeout=10_000)
    assert "still writing" in str(errors[0]) and window.settings.temperature != 0.1
    qtbot.keyClick(window.composer, Qt.Key.Key_Escape)
    idle(qtbot, window)
