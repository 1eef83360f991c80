"""Text from model files and imports shows as the characters it is: never as markup, and never
making Qt load a file it names (an `<img src=...>` reads any local file, or a network share)."""

from __future__ import annotations

import ctypes
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PySide6 import QtGui
from PySide6.QtCore import QPoint, Qt, QUrl
from PySide6.QtGui import QColor, QImage, QTextDocument
from PySide6.QtWidgets import QApplication, QLabel, QMessageBox, QToolTip, QWidget
from pytestqt.qtbot import QtBot

from app.chat_view import ChatView
from app.main_window import MainWindow
from app.models_dialog import ModelsDialog
from app.worker import EngineWorker
from engine import (
    ConversationSummary,
    ConversationView,
    MemoryState,
    Message,
    ModelState,
    RecalledItem,
    folders,
    list_models,
    open_profile,
)
from engine.errors import ChatTemplateInvalid
from tests.helpers.gui import FAST, ReaderWatch

HOSTILE = {
    "image": '<img src="{image}" width="60" height="60">',
    "link": '<a href="file:///etc/passwd">your passwords</a>',
    "bold": "<b>bold</b> &amp; <i>loud</i>",
}


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    return red_image(tmp_path)


@pytest.fixture(params=sorted(HOSTILE))
def hostile(request: pytest.FixtureRequest, canary: Path) -> str:
    """A string with markup in it; its image, if Qt ever loaded it, paints a red square."""
    return HOSTILE[request.param].format(image=QUrl.fromLocalFile(str(canary)).toString())


def red_image(folder: Path) -> Path:
    image = QImage(60, 60, QImage.Format.Format_RGB32)
    image.fill(QColor(255, 0, 0))
    path = folder / "canary.png"
    image.save(str(path))
    return path


class OpenWatch:
    """Whether anything opened a file since the watch began, as the kernel saw it (Linux's
    inotify); elsewhere it sees nothing, and the red pixels are the only check."""

    _IN_OPEN = 0x20

    def __init__(self, path: Path) -> None:
        self._fd = -1
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            self._fd = libc.inotify_init1(os.O_NONBLOCK)
            assert self._fd >= 0 and libc.inotify_add_watch(self._fd, str(path).encode(), self._IN_OPEN) >= 0

    def opened(self) -> bool:
        if self._fd < 0:
            return False
        try:
            return bool(os.read(self._fd, 4096))  # the only events asked for are opens
        except BlockingIOError:
            return False

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)


@pytest.fixture
def image_opened(canary: Path) -> Iterator[OpenWatch]:
    """Watches the canary image: nothing Cleo shows may open it."""
    watch = OpenWatch(canary)
    yield watch
    watch.close()


@pytest.fixture
def boxes(monkeypatch: pytest.MonkeyPatch) -> list[QMessageBox]:
    """The message boxes shown, kept instead of waiting for a click (answered No)."""
    shown: list[QMessageBox] = []

    def record(box: QMessageBox) -> int:
        shown.append(box)
        return QMessageBox.StandardButton.No.value

    monkeypatch.setattr(QMessageBox, "exec", record)
    return shown


def red_pixels(widget: QWidget) -> int:
    """How much of `widget`, as painted now, is the canary image's red."""
    image = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    rows = np.frombuffer(image.constBits(), np.uint8).reshape(image.height(), image.bytesPerLine())
    pixels = rows[:, :image.width() * 3].reshape(image.height(), image.width(), 3)
    return int(np.count_nonzero((pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)))


def reads(text: str, text_format: Qt.TextFormat = Qt.TextFormat.AutoText) -> str:
    """What the user reads where Qt shows `text` in `text_format` (tooltips always guess: AutoText)."""
    rich = text_format == Qt.TextFormat.RichText or (
        text_format == Qt.TextFormat.AutoText and QtGui.Qt.mightBeRichText(text))
    if not rich:
        return text
    document = QTextDocument()
    document.setHtml(text)
    return document.toPlainText()


def label_reads(label: QLabel) -> str:
    return reads(label.text(), label.textFormat())


def box_reads(box: QMessageBox) -> str:
    return reads(box.text(), box.textFormat())


def tooltip_red_pixels(text: str) -> int:
    """Show `text` as Qt shows a tooltip, and look at it."""
    QToolTip.showText(QPoint(10, 10), text)
    try:
        tips = [w for w in QApplication.topLevelWidgets() if w.objectName() == "qtooltip_label" and w.isVisible()]
        assert tips, "no tooltip was shown"
        return red_pixels(tips[0])
    finally:
        QToolTip.hideText()


def imported(hostile: str) -> tuple[list[ConversationSummary], MemoryState]:
    """A Cleo export whose chat title is `hostile`, imported for real, and a memory that quotes it."""
    export = folders().data.parent / "export.json"
    export.parent.mkdir(parents=True, exist_ok=True)
    export.write_text(json.dumps({"format": "cleo-conversations", "version": 1, "conversations": [
        {"id": "c1", "title": f"chat {hostile}", "created_at": 1.7e9,
         "messages": [{"id": "m1", "role": "user", "content": "hello", "created_at": 1.7e9}]}]}), encoding="utf-8")
    profile = open_profile(keywords_only=True)
    try:
        profile.import_chats("cleo", export)
        profile.book.add(f"memory {hostile}")
        memories = MemoryState(tuple(profile.book.memories()), tuple(profile.book.inbox()))
        return list(profile.store.conversations()), memories
    finally:
        profile.close()


def test_model_names_chat_titles_memories_and_errors_show_literally(
        qtbot: QtBot, hostile: str, image_opened: OpenWatch, boxes: list[QMessageBox]) -> None:
    conversations, memories = imported(hostile)
    window = MainWindow(FAST, EngineWorker(FAST))  # not started: no model is needed to show these
    qtbot.addWidget(window)
    window.show()
    window.on_worker_model_loaded(ModelState(f"model {hostile}", "/models/x.gguf", f"GPU {hostile}", 1024))
    window.on_worker_conversations_changed(conversations)
    window.on_controller_current_changed(ConversationView("c1", f"chat {hostile}", ()))
    window.on_worker_memories_changed(memories)
    window.memory_dock.show()
    qtbot.wait(50)  # laid out and painted

    assert label_reads(window.status_line.model_label) == f"model {hostile}"
    assert label_reads(window.status_line.device_label) == f"GPU {hostile}"
    assert label_reads(window.header.title) == f"chat {hostile}"
    assert window.sidebar.chats.item(0).text() == f"chat {hostile}"
    memory_row = window.memory_panel.remembered.topLevelItem(0)
    assert memory_row is not None
    remembered = memory_row.text(1)  # as the memory book stored it (it ends sentences with a full stop)
    assert remembered.startswith(f"memory {hostile}") and reads(memory_row.toolTip(1)) == remembered
    assert red_pixels(window) == 0 and tooltip_red_pixels(memory_row.toolTip(1)) == 0

    window.show_error(ChatTemplateInvalid(f"The chat template of x.gguf failed: {hostile}"))
    window.sidebar.delete(window.sidebar.conversations[0])
    assert len(boxes) == 2
    assert box_reads(boxes[0]) == f"The chat template of x.gguf failed: {hostile}"
    assert f"“chat {hostile}”" in box_reads(boxes[1])
    assert all(red_pixels(box) == 0 for box in boxes)
    assert not image_opened.opened()


def write_gguf(path: Path, *, arch: str = "llama", name: str = "tiny") -> Path:
    """A small GGUF whose architecture and name are what a downloaded file might say."""
    from gguf import GGUFWriter

    writer = GGUFWriter(path, arch=arch)
    writer.add_name(name)
    writer.add_context_length(64)
    writer.add_token_list([f"t{i}" for i in range(100)])
    writer.add_tensor("token_embd.weight", np.ones((100, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_metadata_shows_literally_in_the_models_dialog(
        qtbot: QtBot, hostile: str, image_opened: OpenWatch) -> None:
    folders().models.mkdir(parents=True)
    write_gguf(folders().models / "named.gguf", name=hostile)
    write_gguf(folders().models / "strange.gguf", arch=hostile)
    dialog = ModelsDialog(1024, (), catalog=[])
    qtbot.addWidget(dialog)
    dialog.show_models(list_models(FAST))
    dialog.show()
    qtbot.wait(50)
    dialog.close_downloads()  # its download thread ends before the dialog goes
    assert [m.path.name for m in dialog.models] == ["named.gguf"]
    assert f"holds a '{hostile}' model" in label_reads(dialog.message)  # the unusable file, and why
    for column in range(dialog.table.columnCount()):
        item = dialog.table.item(0, column)
        assert item is not None
        assert reads(item.toolTip()) == str(folders().models / "named.gguf")
    assert red_pixels(dialog) == 0 and not image_opened.opened()


def test_ids_from_an_import_stay_inert_in_the_chat_view(qtbot: QtBot, hostile: str,
                                                         image_opened: OpenWatch) -> None:
    chat, asked, answer = f"c{hostile}/x", f'u"{hostile}', f"a'{hostile}"
    view = ChatView()
    qtbot.addWidget(view)
    view.resize(700, 500)
    view.show()
    recalled = RecalledItem("message", "said before", 1.0, 1.7e9, chat, asked)
    messages = (Message(asked, chat, "user", "question", None, 1.7e9),
                Message(answer, chat, "assistant", "answer", asked, 1.7e9, "stop"))
    view.show_conversation(ConversationView(chat, "t", messages, why={answer: (recalled,)}))
    view.on_anchor_clicked(QUrl(f"cleo:why/{ref_of(answer)}"))  # open "Why this answer" and its source link
    qtbot.wait(50)

    shown = view.toPlainText()
    assert "question" in shown and "said before" in shown and "open" in shown  # "Why this answer" is open
    assert not any(part in shown for part in ("<", ">", "bold", "loud", "passwords"))
    assert red_pixels(view) == 0 and not image_opened.opened()
    clicked: list[tuple[str, ...]] = []
    view.edit_requested.connect(lambda m: clicked.append(("edit", m)))
    view.regenerate_requested.connect(lambda m: clicked.append(("regenerate", m)))
    view.source_requested.connect(lambda c, m: clicked.append(("source", c, m)))
    for href in links(view.document()):
        view.on_anchor_clicked(QUrl(href))
    assert ("edit", asked) in clicked and ("regenerate", answer) in clicked and ("source", chat, asked) in clicked
    assert view.message_text(answer) == "answer"
    names = anchor_names(view.document())
    assert f"m-{ref_of(asked)}" in names and f"m-{ref_of(answer)}" in names


def ref_of(identifier: str) -> str:
    from app.chat_view import ref

    return ref(identifier)


def links(document: QTextDocument) -> list[str]:
    found = []
    block = document.begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            href = it.fragment().charFormat().anchorHref()
            if href and href not in found:
                found.append(href)
            it += 1
        block = block.next()
    return found


def anchor_names(document: QTextDocument) -> set[str]:
    names: set[str] = set()
    block = document.begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            names.update(it.fragment().charFormat().anchorNames())
            it += 1
        block = block.next()
    return names


@pytest.mark.skipif(not hasattr(os, "mkfifo") or sys.platform == "darwin", reason="a FIFO stands for a file that "
                    "never ends (/dev/zero) or a network share; POSIX only")
def test_the_chat_view_loads_no_image_that_markup_names(qtbot: QtBot, tmp_path: Path) -> None:
    # Markdown is escaped, so no message can put an <img> in the view; should one ever get through,
    # the view still loads nothing: neither a picture nor a file that never ends.
    fifo = tmp_path / "endless"
    os.mkfifo(fifo)
    view = ChatView()
    qtbot.addWidget(view)
    view.resize(500, 400)
    view.show()
    watch = ReaderWatch(fifo)
    view.setHtml(f'<p>look</p><img src="{QUrl.fromLocalFile(str(red_image(tmp_path))).toString()}">'
                 f'<img src="{QUrl.fromLocalFile(str(fifo)).toString()}"><img src="{fifo}">')
    qtbot.wait(50)
    assert red_pixels(view) == 0
    assert not watch.stop(), "the chat view opened a file named in markup"
