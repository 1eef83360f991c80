"""The conversation: one QTextBrowser document, the streaming reply re-rendered in place.

This layout measured as the smoothest for Qt Widgets (`bench/gui.py` times the first paint and
the stalls while a reply streams): the last ~100 messages are laid out first (older ones on
request), and only the message being streamed is replaced, at most every 50 ms (the controller
merges tokens). Actions under a message are `cleo:` links, so they are selectable text like the
rest and cost no widgets per message.

Everything in the document comes from models and imports, so the ids in its links and anchors
are percent-encoded (an imported id may hold any character), and the document loads no resource
it was not given: an `<img>` that got through would otherwise read any file it names.
"""

from __future__ import annotations

import html
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from PySide6.QtCore import QObject, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QGuiApplication, QImage, QTextCursor, QTextDocument
from PySide6.QtWidgets import QTextBrowser, QWidget

from app.render import LIGHT, Palette, render_markdown

if TYPE_CHECKING:
    from pygments.lexer import Lexer

    from engine import ConversationView, Message, RecalledItem

log = logging.getLogger(__name__)

FIRST_SHOWN = 100  # messages laid out when a conversation opens; older ones on request


def ref(identifier: str) -> str:
    """An id as it goes into a link or an anchor name: percent-encoded, so it is one inert path part."""
    return quote(identifier, safe="")


class SealedDocument(QTextDocument):
    """A document that loads nothing by itself. Resources Cleo makes are added with `addResource`
    and found before this is asked; any other URL comes from text and is refused (Qt would read a
    local file, or open a network share, for an `<img src=...>`). A refused image is answered with
    an empty picture: given nothing, Qt's image handler would go and load the file itself."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.refused = 0  # how many loads were refused, for the log

    def loadResource(self, kind: int, name: QUrl | str) -> Any:
        self.refused += 1
        if self.refused == 1:
            log.warning("the chat view refused to load %s (an image or style sheet named in a message)",
                        QUrl(name).toString()[:200])
        if kind == QTextDocument.ResourceType.ImageResource.value:
            nothing = QImage(1, 1, QImage.Format.Format_ARGB32)
            nothing.fill(Qt.GlobalColor.transparent)
            return nothing
        return None


@dataclass
class _Streaming:
    message_id: str
    start: int  # document position where the reply's block begins


class ChatView(QTextBrowser):
    regenerate_requested = Signal(str)  # reply id
    edit_requested = Signal(str)  # user message id
    alternative_requested = Signal(str, int)  # a message id, which of its alternatives to show (from 0)
    source_requested = Signal(str, str)  # conversation id, message id ("why this answer" links)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setDocument(SealedDocument(self))
        self.setOpenLinks(False)
        self.setOpenExternalLinks(False)
        self.anchorClicked.connect(self.on_anchor_clicked)
        self.setAccessibleName(self.tr("Conversation"))
        self.setAccessibleDescription(self.tr("The messages of the open chat; links under each reply copy, "
                                              "regenerate or explain it."))
        self.palette_ = LIGHT
        self.view: ConversationView | None = None
        self._shown_from = 0
        self._codes: list[str] = []
        self._streaming: _Streaming | None = None
        self._streaming_text = ""
        self.why: dict[str, tuple[RecalledItem, ...]] = {}  # reply id -> what memory added to its prompt
        self._why_open: set[str] = set()
        self.notices: dict[str, list[str]] = {}  # reply id -> notices shown above it
        self._lexers: dict[str, dict[int, Lexer]] = {}  # reply id -> its code blocks' guessed languages

    # --- what the controller calls ------------------------------------------------------------------

    def show_conversation(self, view: ConversationView | None, *, all_messages: bool = False) -> None:
        same = self.view is not None and view is not None and self.view.id == view.id
        self.view = view
        # guessed languages are kept for the messages still shown (and the reply streaming in), so
        # showing the chat again after a reply or a switch guesses nothing twice
        kept = {m.id for m in view.messages} if view is not None else set()
        kept |= {self._streaming.message_id} if self._streaming is not None else set()
        self._lexers = {k: v for k, v in self._lexers.items() if k in kept}
        self._streaming = None
        if view is None:
            self.setHtml(self._empty_html())
            return
        for message in view.messages:  # stored with the replies; a forgotten memory has left them
            if message.id in view.why:
                self.why[message.id] = view.why[message.id]
            else:
                self.why.pop(message.id, None)
        count = len(view.messages)
        self._shown_from = 0 if all_messages or (same and self._shown_from == 0) else max(0, count - FIRST_SHOWN)
        self._codes = []
        parts = []
        if self._shown_from:
            earlier = self.tr("Show %n earlier message(s)", "", self._shown_from)
            parts.append(f'<p align="center"><a href="cleo:earlier">{earlier}</a></p>')
        parts += [self._message_html(m) for m in view.messages[self._shown_from:]]
        self.setHtml("".join(parts))
        self.scroll_to_end()

    def begin_reply(self, reply_id: str) -> None:
        """A reply starts streaming into the open conversation: it goes at the end."""
        self.end_reply()
        cursor = QTextCursor(self.document())
        cursor.movePosition(QTextCursor.MoveOperation.End)
        self._streaming = _Streaming(reply_id, cursor.position())
        self._streaming_text = ""
        self.update_reply("")

    def update_reply(self, text: str) -> None:
        """Replace the streaming reply's text (called at most ~20 times a second)."""
        if self._streaming is None:
            return
        self._streaming_text = text
        at_end = self._at_end()
        cursor = QTextCursor(self.document())
        cursor.setPosition(self._streaming.start)
        cursor.movePosition(QTextCursor.MoveOperation.End, QTextCursor.MoveMode.KeepAnchor)
        cursor.insertHtml(self._reply_html(self._streaming.message_id, text, streaming=True))
        if at_end:
            self.scroll_to_end()

    def end_reply(self) -> None:
        self._streaming = None

    @property
    def streaming_text(self) -> str:
        """The reply streaming into this view so far; empty when none is."""
        return self._streaming_text if self._streaming is not None else ""

    def append_user_message(self, text: str) -> None:
        """The user's message, shown at once (before the engine has stored it)."""
        cursor = QTextCursor(self.document())
        cursor.movePosition(QTextCursor.MoveOperation.End)
        cursor.insertHtml(self._bubble("user", html.escape(text).replace("\n", "<br>"), time.time(), ""))
        self.scroll_to_end()

    def append_notice(self, text: str) -> None:
        cursor = QTextCursor(self.document())
        cursor.movePosition(QTextCursor.MoveOperation.End)
        cursor.insertHtml(f'<p style="color:{self.palette_.muted}"><i>{html.escape(text)}</i></p>')

    def set_palette(self, palette: Palette) -> None:
        self.palette_ = palette
        self.show_conversation(self.view)

    def scroll_to_end(self) -> None:
        bar = self.verticalScrollBar()
        bar.setValue(bar.maximum())

    def _at_end(self) -> bool:
        bar = self.verticalScrollBar()
        return bar.value() >= bar.maximum() - 4

    def scroll_to_message(self, message_id: str) -> None:
        if self.view is not None:
            ids = [m.id for m in self.view.messages]
            if message_id in ids and ids.index(message_id) < self._shown_from:
                self.show_conversation(self.view, all_messages=True)
        self.scrollToAnchor(f"m-{ref(message_id)}")

    # --- HTML ----------------------------------------------------------------------------------------------

    def _message_html(self, message: Message) -> str:
        if message.role == "assistant":
            return self._reply_html(message.id, message.content, finish_reason=message.finish_reason,
                                    created_at=message.created_at)
        actions = f'<a href="cleo:edit/{ref(message.id)}">{self.tr("Edit")}</a>' + self._alternatives(message.id)
        body = html.escape(message.content).replace("\n", "<br>")
        return self._bubble("user", body, message.created_at, actions, message.id)

    def _reply_html(self, message_id: str, text: str, *, streaming: bool = False, finish_reason: str = "",
                    created_at: float | None = None) -> str:
        rendered = render_markdown(text or ("…" if streaming else ""), self.palette_, first_code=len(self._codes),
                                   lexers=self._lexers.setdefault(message_id, {}))
        self._codes.extend(rendered.code_blocks)
        notices = "".join(f'<p style="color:{self.palette_.muted}"><i>{html.escape(n)}</i></p>'
                          for n in self.notices.get(message_id, []))
        if streaming:
            actions = ""
        else:
            state = {"stopped": self.tr("Stopped"), "error": self.tr("Interrupted by an error"),
                     "interrupted": self.tr("Interrupted"), "length": self.tr("Reached the length limit")}
            note = f"<i>{state[finish_reason]}</i> · " if finish_reason in state else ""
            actions = (note + f'<a href="cleo:copy/{ref(message_id)}">{self.tr("Copy")}</a> · '
                       f'<a href="cleo:regenerate/{ref(message_id)}">{self.tr("Regenerate")}</a>'
                       + self._alternatives(message_id) + self._why(message_id))
        return notices + self._bubble("assistant", rendered.html, created_at or time.time(), actions, message_id)

    def _alternatives(self, message_id: str) -> str:
        if self.view is None or message_id not in self.view.alternatives:
            return ""
        index, count = self.view.alternatives[message_id]
        return (f' · <a href="cleo:alt/{ref(message_id)}/-1">‹</a> {index}/{count} '
                f'<a href="cleo:alt/{ref(message_id)}/1">›</a>')

    def _why(self, message_id: str) -> str:
        items = self.why.get(message_id)
        if not items:
            return ""
        link = f' · <a href="cleo:why/{ref(message_id)}">{self.tr("Why this answer (%n)", "", len(items))}</a>'
        if message_id not in self._why_open:
            return link
        rows = []
        for item in items:
            when = time.strftime("%Y-%m-%d", time.localtime(item.created_at))
            what = self.tr("memory") if item.kind == "memory" else self.tr("from a chat")
            source = (f' <a href="cleo:source/{ref(item.conversation_id)}/{ref(item.message_id)}">{self.tr("open")}</a>'
                      if item.conversation_id and item.message_id else "")
            rows.append(f"<li>{html.escape(item.text[:300])} <span style=\"color:{self.palette_.muted}\">"
                        f"({what}, {when}){source}</span></li>")
        return link + "<ul>" + "".join(rows) + "</ul>"

    def _bubble(self, role: str, body: str, created_at: float, actions: str, message_id: str = "") -> str:
        who = self.tr("You") if role == "user" else "Cleo"
        when = time.strftime("%H:%M", time.localtime(created_at))
        background = f' bgcolor="{self.palette_.user_background}"' if role == "user" else ""
        anchor = f'<a name="m-{ref(message_id)}"></a>' if message_id else ""
        footer = f'<br><span style="color:{self.palette_.muted}">{actions}</span>' if actions else ""
        return (f'<table width="100%" cellpadding="6"{background}><tr><td>{anchor}'
                f'<b>{who}</b> <span style="color:{self.palette_.muted}">{when}</span><br>{body}{footer}'
                "</td></tr></table>")

    def _empty_html(self) -> str:
        return (f'<p align="center" style="color:{self.palette_.muted}"><br><br>'
                + self.tr("Ask Cleo anything. Everything stays on this computer.") + "</p>")

    # --- links ----------------------------------------------------------------------------------------------

    def on_anchor_clicked(self, url: QUrl) -> None:
        if url.scheme() in ("http", "https"):
            QDesktopServices.openUrl(url)
            return
        if url.scheme() != "cleo":
            return
        # each part of the path is one percent-encoded id (see `ref`), decoded only once split
        action, *parts = url.path(QUrl.ComponentFormattingOption.FullyEncoded).split("/")
        parts = [unquote(part) for part in parts]
        rest = parts[0] if len(parts) == 1 else ""
        if action == "earlier" and self.view is not None:
            self.show_conversation(self.view, all_messages=True)
        elif action == "copy-code" and rest.isdigit() and int(rest) < len(self._codes):
            QGuiApplication.clipboard().setText(self._codes[int(rest)])
        elif action == "copy":
            QGuiApplication.clipboard().setText(self.message_text(rest))
        elif action == "regenerate":
            self.regenerate_requested.emit(rest)
        elif action == "edit":
            self.edit_requested.emit(rest)
        elif action == "alt" and self.view is not None and len(parts) == 2 and parts[1] in ("-1", "1"):
            self._step_alternative(parts[0], int(parts[1]))
        elif action == "why":
            self._why_open ^= {rest}
            self.show_conversation(self.view)
            self.scroll_to_message(rest)
        elif action == "source" and len(parts) == 2:
            self.source_requested.emit(parts[0], parts[1])

    def message_text(self, message_id: str) -> str:
        if self._streaming is not None and self._streaming.message_id == message_id:
            return self._streaming_text
        for message in self.view.messages if self.view is not None else ():
            if message.id == message_id:
                return message.content
        return ""

    def _step_alternative(self, message_id: str, step: int) -> None:
        assert self.view is not None
        index, count = self.view.alternatives.get(message_id, (1, 1))
        target = index - 1 + step
        if 0 <= target < count:
            self.alternative_requested.emit(message_id, target)
