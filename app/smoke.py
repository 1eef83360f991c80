"""`cleo --smoke-test`: proof that a build works, run by the build script on the frozen app.

Offscreen, against a temporary profile: the real window starts, loads the default model (the
bundled one in a frozen app), streams a reply that stores a memory ("Remember that …"), then a
second reply whose prompt must recall it. Prints one JSON line; exits 0 only if every step
worked. Qt's own messages go to the log, so anything on stderr is a real problem.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

FACT = "my favourite colour is teal"


def run() -> int:
    from engine import BUNDLED_MODELS, default_chat_model, default_embedding_model, ensure, folders

    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    # A frozen app uses the models it carries; a checkout lends the temporary profile its own.
    lent = [p for p in (default_chat_model(), default_embedding_model())
            if p.exists() and BUNDLED_MODELS not in p.parents]
    with tempfile.TemporaryDirectory(prefix="cleo-smoke-") as home:
        os.environ["CLEO_HOME"] = home
        for path in lent:
            _lend(path, ensure(folders().models) / path.name)
        ok, report = _run(Path(home))
    print(json.dumps({"smoke_test": "passed" if ok else "failed", **report}), flush=True)
    return 0 if ok else 1


def _lend(model: Path, to: Path) -> None:
    try:
        to.symlink_to(model)
    except OSError:  # Windows allows links to administrators and developer mode only
        shutil.copyfile(model, to)


def _run(home: Path) -> tuple[bool, dict[str, object]]:
    from PySide6.QtCore import QCoreApplication
    from PySide6.QtWidgets import QApplication

    from app.gui import qt_messages_to_the_log
    from app.main_window import MainWindow
    from app.worker import EngineWorker
    from engine import MemoryUpdated, Recalled, Settings, setup_logging

    setup_logging()
    app_started = qt_messages_to_the_log()
    app = QApplication.instance() or QApplication([sys.argv[0]])
    app_started.append(True)
    settings = Settings(threads=1, max_tokens=24, temperature=0.0, seed=1, ask_before_remembering=False)
    window = MainWindow(settings, EngineWorker(settings))
    window.show_error = lambda error: None  # type: ignore[method-assign]  # no one is there to close a dialog
    events: list[object] = []
    window.worker.turn_advanced.connect(lambda _, event: events.append(event))
    errors: list[str] = []
    window.worker.request_failed.connect(lambda error: errors.append(error.user_text()))
    window.worker.start_failed.connect(lambda error: errors.append(error.user_text()))
    window.worker.bug_reported.connect(errors.append)
    window.show()
    start = time.monotonic()
    window.start()
    report: dict[str, object] = {"profile": str(home)}

    def wait(done: Callable[[], bool], seconds: float) -> bool:
        end = time.monotonic() + seconds
        while not done() and not errors and time.monotonic() < end:
            QCoreApplication.processEvents()
            time.sleep(0.005)
        return done() and not errors

    try:
        if not wait(lambda: window.model_state is not None, 120):
            return False, {**report, "step": "load the model", "errors": errors}
        assert window.model_state is not None
        report.update(model=window.model_state.name, device=window.model_state.device,
                      load_s=round(time.monotonic() - start, 2))
        for step, text in (("remember", f"Remember that {FACT}."), ("recall", "What is my favourite colour?")):
            if not window.controller.send(text) or not wait(lambda: window.controller.busy, 30) or \
                    not wait(lambda: not window.controller.busy, 120):
                return False, {**report, "step": step, "errors": errors}
            report[f"{step}_reply"] = window.controller.last_reply()
        remembered = [e.text for e in events if isinstance(e, MemoryUpdated)]
        recalled = [item.text for e in events if isinstance(e, Recalled) for item in e.items]
        report.update(remembered=remembered, recalled=recalled)
        report["sorting"] = _sorting()
        ok = any("teal" in t for t in remembered) and any("teal" in t for t in recalled) and \
            all(report[f"{s}_reply"] for s in ("remember", "recall")) and report["sorting"] == "ok"
        return ok, {**report, "errors": errors}
    finally:
        window.close()
        app.processEvents()


def _sorting() -> str:
    """Names sort the way people read them, per language (QCollator, i.e. the ICU collation data
    the Linux build keeps in its slimmed ICU; file dialogs sort with it). Without that data Qt
    compares code points: "Banana" before "apple", "chat 10" before "chat 2", "å" after "z"."""
    from functools import cmp_to_key

    from PySide6.QtCore import QCollator, QLocale

    names = ["zebra", "chat 10", "ångström", "Banana", "chat 2", "apple"]
    expected = {"en_US": ["ångström", "apple", "Banana", "chat 2", "chat 10", "zebra"],
                "sv_SE": ["apple", "Banana", "chat 2", "chat 10", "zebra", "ångström"]}
    for locale, order in expected.items():
        collator = QCollator(QLocale(locale))
        collator.setNumericMode(True)
        got = sorted(names, key=cmp_to_key(collator.compare))
        if got != order:
            return f"{locale} sorts {got}"
    return "ok"
