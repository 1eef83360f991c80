"""Cleo's look: light or dark (as the settings say, or following the OS), and the chat's text size."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication

from app.chat_view import ChatView
from app.render import DARK, LIGHT

if TYPE_CHECKING:
    from engine import Settings


def dark_palette() -> QPalette:
    palette = QPalette()
    colours = {
        QPalette.ColorRole.Window: "#202124", QPalette.ColorRole.WindowText: "#e8eaed",
        QPalette.ColorRole.Base: "#17181a", QPalette.ColorRole.AlternateBase: "#2a2b2e",
        QPalette.ColorRole.Text: "#e8eaed", QPalette.ColorRole.Button: "#2d2e31",
        QPalette.ColorRole.ButtonText: "#e8eaed", QPalette.ColorRole.Highlight: "#3d6fb6",
        QPalette.ColorRole.HighlightedText: "#ffffff", QPalette.ColorRole.Link: "#8ab4f8",
        QPalette.ColorRole.ToolTipBase: "#2d2e31", QPalette.ColorRole.ToolTipText: "#e8eaed",
        QPalette.ColorRole.PlaceholderText: "#9aa0a6",
    }
    for role, colour in colours.items():
        palette.setColor(role, QColor(colour))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor("#7f8388"))
    return palette


class Theme(QObject):
    """Applies the settings' theme and text size, and follows the OS when the theme is "system"."""

    def __init__(self, chat: ChatView, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._chat = chat
        self._theme = "system"  # the settings' choice: "system", "light" or "dark"
        QGuiApplication.styleHints().colorSchemeChanged.connect(self.on_style_hints_color_scheme_changed)

    def apply(self, settings: Settings) -> None:
        self._theme = settings.theme  # before the scheme changes below: that change calls back at once
        hints = QGuiApplication.styleHints()
        scheme = {"light": Qt.ColorScheme.Light, "dark": Qt.ColorScheme.Dark}.get(settings.theme,
                                                                                  Qt.ColorScheme.Unknown)
        if hasattr(hints, "setColorScheme"):
            hints.setColorScheme(scheme)
        self._follow_scheme()
        font = self._chat.font()
        font.setPointSize(settings.font_size)
        self._chat.setFont(font)
        self._chat.document().setDefaultFont(font)

    def on_style_hints_color_scheme_changed(self, _scheme: Qt.ColorScheme) -> None:
        self._follow_scheme()

    def _follow_scheme(self) -> None:
        dark = QGuiApplication.styleHints().colorScheme() == Qt.ColorScheme.Dark
        if self._theme != "system":
            dark = self._theme == "dark"
        # Not every platform applies a forced scheme to the widgets' colours: set them directly.
        app = QApplication.instance()
        if isinstance(app, QApplication):
            app.setPalette(dark_palette() if dark else app.style().standardPalette())
        self._chat.set_palette(DARK if dark else LIGHT)
