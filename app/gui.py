"""Opening Cleo's window: the Qt application, the window, the engine's thread; closing them in order."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections import deque
from types import TracebackType

from PySide6.QtCore import QEvent, QMessageLogContext, QObject, QTimer, QtMsgType, qInstallMessageHandler
from PySide6.QtWidgets import QApplication, QMessageBox

from app.main_window import MainWindow
from app.second_launch import SecondLaunches, bring_open_cleo_forward
from app.widgets import message_box, warn
from app.worker import EngineWorker
from engine import KnownError, default_database_path, load_settings, setup_logging

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
    app_started = qt_messages_to_the_log()
    # A double-clicked app has no terminal: whatever stops it from starting (a bad CLEO_* variable,
    # a settings file it cannot read, a folder it cannot write) is told in a dialog, not lost.
    try:
        return _open_window(argv, app_started)
    except KnownError as exc:
        log.warning("Cleo could not start: %s", exc.user_text())
        _tell_why_not_started(argv, app_started, exc.user_text())
        return 2
    except Exception:
        details = traceback.format_exc()
        log.error("bug while starting:\n%s", details)
        _tell_why_not_started(argv, app_started, "Cleo could not start because of a bug inside it. The details are "
                              "below, and in the log folder if it could be written.", details)
        return 1


def _open_window(argv: list[str] | None, app_started: list[bool]) -> int:
    setup_logging()
    database = default_database_path()
    if bring_open_cleo_forward(database):
        log.info("Cleo was already open; its window was asked to come forward")
        print("Cleo is already open: its window was brought forward.")
        return 0
    app = _application(argv, app_started)
    settings, warnings = load_settings()
    window = MainWindow(settings, EngineWorker(settings))
    SecondLaunches(database, window.bring_forward, parent=window)  # before the engine takes the profile
    sys.excepthook = _reporting_bugs(window)
    if os.environ.get(FIRST_PAINT_VARIABLE):
        _quit_after_first_paint(app, window)
    window.show()
    for warning in warnings:
        warn(window, warning)
    window.start()
    code = app.exec()
    window.close()  # however the loop ended, the engine's thread is closed before Python exits
    return code


def _application(argv: list[str] | None, app_started: list[bool]) -> QApplication:
    app = QApplication.instance() or QApplication(argv or sys.argv[:1])
    assert isinstance(app, QApplication)
    if not app_started:
        app_started.append(True)
        app.setApplicationName("Cleo")
        app.setStyle("Fusion")
    return app


def _tell_why_not_started(argv: list[str] | None, app_started: list[bool], text: str, details: str = "") -> None:
    print(text if not details else f"{text}\n{details}", file=sys.stderr, flush=True)
    _application(argv, app_started)
    box = message_box(QMessageBox.Icon.Critical, "Cleo cannot start", text)
    if details:
        box.setDetailedText(details)
    box.exec()


def qt_messages_to_the_log() -> list[bool]:
    """Send Qt's messages to Cleo's log: a double-clicked app has no terminal. Qt ends a fatal
    message with abort(), a core dump; before the application exists that means no display Qt
    could use (DISPLAY names a dead X server, a Wayland socket is gone, a library is missing), so
    say that plainly, with Qt's reasons, and exit 2 instead. Returns a list to append to once
    the application exists."""
    qt_log = logging.getLogger("qt")
    recent: deque[str] = deque(maxlen=6)
    started: list[bool] = []

    def handle(kind: QtMsgType, _context: QMessageLogContext, text: str) -> None:
        if kind != QtMsgType.QtFatalMsg:
            recent.append(text)
            qt_log.log(logging.DEBUG if kind == QtMsgType.QtDebugMsg else logging.WARNING, text)
            return
        qt_log.critical(text)
        if started:
            message = f"Cleo stopped on an error inside Qt: {text}"
        else:
            where = ", ".join(f"{name}={os.environ.get(name) or '(unset)'}" for name in ("DISPLAY", "WAYLAND_DISPLAY"))
            reasons = "\n".join(f"  {line}" for line in (*recent, text.splitlines()[0]))
            message = (f"Cleo could not open its window: no display it could use was found ({where}).\n{reasons}\n"
                       "Run Cleo from your desktop session, or use `cleo chat` in this terminal.")
        print(message, file=sys.stderr, flush=True)
        logging.shutdown()
        os._exit(2)  # returning would let Qt abort()

    qInstallMessageHandler(handle)
    return started


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
