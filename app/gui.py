"""Opening Cleo's window: the Qt application, the window, the engine's thread; closing them in order."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from types import TracebackType

from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from app.main_window import MainWindow
from app.worker import EngineWorker
from engine.errors import KnownError
from engine.logs import setup_logging
from engine.settings import load_settings

log = logging.getLogger(__name__)


def has_display() -> bool:
    """Whether Qt can open a window here (Linux without X11 or Wayland cannot)."""
    if os.environ.get("QT_QPA_PLATFORM", "").startswith(("offscreen", "minimal")):
        return True
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def run(argv: list[str] | None = None) -> int:
    if not has_display():
        print("Cleo needs a desktop to open its window, and none was found (DISPLAY and WAYLAND_DISPLAY are "
              "unset). Run it from your desktop session, or use `cleo chat` in this terminal.", file=sys.stderr)
        return 2
    setup_logging()
    app = QApplication.instance() or QApplication(argv or sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setApplicationName("Cleo")
    app.setStyle("Fusion")
    settings, warnings = load_settings()
    window = MainWindow(settings, EngineWorker(settings))
    sys.excepthook = _reporting_bugs(window)
    if os.environ.get(FIRST_PAINT_VARIABLE):
        _quit_after_first_paint(app, window)
    window.show()
    for warning in warnings:
        QMessageBox.warning(window, "Cleo", warning)
    window.start()
    code = app.exec()
    window.close()  # however the loop ended, the engine's thread is closed before Python exits
    return code


FIRST_PAINT_VARIABLE = "CLEO_QUIT_AFTER_FIRST_PAINT"  # for bench/bundle.py: print "painted" and quit


class _FirstPaint(QObject):
    def __init__(self, app: QApplication, window: MainWindow) -> None:
        super().__init__(window)  # owned by the window, so it lives as long as the window
        self._app = app

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Paint:
            print("painted", flush=True)
            QTimer.singleShot(0, self._app.quit)
            watched.removeEventFilter(self)
        return False


def _quit_after_first_paint(app: QApplication, window: MainWindow) -> None:
    window.installEventFilter(_FirstPaint(app, window))


def _reporting_bugs(window: MainWindow):  # type: ignore[no-untyped-def]
    """An exception escaping a Qt callback on the GUI thread: log it, tell the user once, keep running."""
    def hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        if isinstance(error, KnownError):
            window.show_error(error)
            return
        details = "".join(traceback.format_exception(kind, error, tb))
        log.error("bug on the GUI thread:\n%s", details)
        window.report_bug(details)
    return hook
