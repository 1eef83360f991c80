"""The window's responsiveness, offscreen, on this machine. Prints JSON lines (`"bench": "gui"`).

(1) First paint of a 1,000-message conversation: from `show_conversation` until the chat view has
    painted (target <= 200 ms); a 10-message conversation is measured in the same run as the
    baseline.
(2) The GUI thread's worst stall while a reply streams, with the 1,000-message conversation open:
    a 2 ms heartbeat timer on the GUI thread records the longest gap between its ticks.
    (a) a scripted stream: a plain thread emits 100 tokens a second through the worker's own
        `turn_advanced` signal, queued to the window as the engine's thread does; (b) the real
        default model through the real `EngineWorker` (its speed is whatever this machine gives).
        Target <= 25 ms for both; the heartbeat's gap with nothing streaming is the baseline.
    (c) The model manager's Hugging Face tab at work, against a fake Hub on 127.0.0.1 (its file
        host slowed to ~1.3 MB/s): a search, a repository's files, a remote header read, then a
        download with a new search every half second until the download is saved and checked.
        Same target; it runs after (b), so llama.cpp is already loaded, as in a window in use.

Run with `QT_QPA_PLATFORM=offscreen python -m bench.gui` (needs the default models: `make models`).
`--only hub` runs (c) alone, several times with `--runs N`, with the engine not started (no model
needed); it prints one row per run and a summary of the worst and the median.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QCoreApplication, QTimer
from PySide6.QtWidgets import QApplication

from app.chat_view import ChatView
from app.main_window import MainWindow
from app.worker import EngineWorker
from engine import ConversationView, Done, Message, Settings, Started, Token

FIRST_PAINT_TARGET_MS = 200.0
STALL_TARGET_MS = 25.0
HEARTBEAT_MS = 2


def emit(**row: object) -> None:
    print(json.dumps({"bench": "gui", **row}), flush=True)


def conversation(count: int) -> ConversationView:
    messages = []
    for i in range(count):
        if i % 2 == 0:
            text = f"Question {i}: how do I sort a list of dicts by a key in Python?"
        else:
            text = (f"Answer {i}: use **sorted** with a key function.\n\n```python\nrows = sorted(rows, "
                    f"key=lambda r: r['age'])\n```\n\n- it returns a new list\n- `list.sort` sorts in place")
        messages.append(Message(f"m{i}", "c", "user" if i % 2 == 0 else "assistant", text,
                                f"m{i - 1}" if i else None, 1.7e9 + i, "stop" if i % 2 else ""))
    return ConversationView("c", "A long chat", tuple(messages))


def first_paint_ms(view: ChatView, chat: ConversationView) -> float:
    view.show_conversation(None)
    QCoreApplication.processEvents()
    start = time.perf_counter()
    view.show_conversation(chat)
    view.viewport().repaint()
    QCoreApplication.processEvents()
    return (time.perf_counter() - start) * 1000


class Heartbeat:
    """The longest gap between ticks of a GUI-thread timer, beyond its own interval."""

    def __init__(self) -> None:
        self.timer = QTimer()
        self.timer.setInterval(HEARTBEAT_MS)
        self.timer.timeout.connect(self.on_timer_timeout)
        self.worst = 0.0
        self._last = 0.0

    def on_timer_timeout(self) -> None:
        now = time.perf_counter()
        if self._last:
            self.worst = max(self.worst, (now - self._last) * 1000 - HEARTBEAT_MS)
        self._last = now

    def run_until(self, done: Callable[[], bool], timeout: float) -> float:
        self.worst, self._last = 0.0, 0.0
        self.timer.start()
        end = time.monotonic() + timeout
        while not done() and time.monotonic() < end:
            QCoreApplication.processEvents()
            time.sleep(0.0005)
        self.timer.stop()
        return self.worst


def scripted_stall(window: MainWindow, tokens: int = 300, rate: float = 100.0) -> float:
    stream = window.worker.turn_advanced  # its engine is not started yet: only this thread emits
    finished = threading.Event()

    def produce() -> None:  # queued to the GUI thread, since it emits from another thread
        stream.emit("c", Started("c", "u", "r"))
        for i in range(tokens):
            time.sleep(1 / rate)
            stream.emit("c", Token(f"word{i} " if i % 12 else f"word{i}\n\n"))
        stream.emit("c", Done("r", "stop"))
        finished.set()

    producer = threading.Thread(target=produce)
    producer.start()
    worst = Heartbeat().run_until(finished.is_set, timeout=30)
    producer.join()
    return worst


def hub_stall(window: MainWindow, folder: Path) -> dict[str, object]:
    """The worst heartbeat gap while the model manager searches the (fake) Hub and downloads from it."""
    from tests.helpers.fake_hub import MOE_REPO, hub_with_models

    hub = hub_with_models(folder / "hub")
    window.open_models()
    dialog = window.models_dialog
    assert dialog is not None
    browser = dialog.browser
    dialog.tabs.setCurrentWidget(browser)
    browser.folder = folder / "downloads"  # never the user's models folder
    browser.follow(hub.url, window.settings.context_size)
    state = {"step": 0, "searches": 0, "asked_at": 0.0}
    queries = ("model", "many", "tiny", "gguf")

    def rows(table_name: str) -> list[str]:
        table = getattr(browser, table_name)
        return [table.item(i, 0).text() for i in range(table.rowCount())]

    def advance() -> bool:  # one step of what a user does, each once the last one's answer is shown
        step, work = state["step"], browser.work
        if step == 0:
            browser.query.setText("tiny")
            browser.search()
        elif step == 1 and MOE_REPO in rows("results") and not work.busy("search"):
            browser.results.selectRow(rows("results").index(MOE_REPO))
        elif step == 2 and browser.listing is not None and not work.busy("files"):
            browser.files.selectRow(rows("files").index("tiny-moe-F32.gguf"))
        elif step == 3 and not work.busy("header"):
            hub.faults.seconds_per_chunk = 0.05
            browser.download()
        elif step == 4:
            downloads = browser.download_list
            if not downloads.running():
                return True
            if time.monotonic() - float(state["asked_at"]) > 0.5:
                browser.query.setText(queries[int(state["searches"]) % len(queries)])
                browser.search()
                state["searches"] = int(state["searches"]) + 1
                state["asked_at"] = time.monotonic()
            return False
        else:
            return False
        state["step"] = int(state["step"]) + 1
        return False

    started = time.perf_counter()
    worst = Heartbeat().run_until(advance, timeout=120)
    seconds = time.perf_counter() - started
    saved = browser.download_list.status(browser.download_list.jobs[0]) if browser.download_list.jobs else ""
    dialog.close_downloads()
    hub.close()
    return {"worst_ms": round(worst, 1), "seconds": round(seconds, 1), "searches_during_download": state["searches"],
            "download": saved.split(":")[0]}


def hub_only(window: MainWindow, runs: int) -> None:
    """(c) alone, `runs` times: the engine is not started, so no model is needed."""
    worst: list[float] = []
    for run in range(1, runs + 1):
        with tempfile.TemporaryDirectory(prefix="cleo-bench-hub-") as folder:
            hub = hub_stall(window, Path(folder))
        emit(measure="gui_stall", stream="none; search and download running", run=run, **hub)
        worst.append(float(str(hub["worst_ms"])))
    ordered = sorted(worst)
    emit(measure="summary", stall_hub_worst_ms=ordered[-1], stall_hub_median_ms=ordered[len(ordered) // 2],
         runs=runs, stall_target_ms=STALL_TARGET_MS, stall_met=ordered[-1] <= STALL_TARGET_MS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("hub",), help="run one case alone (hub: the model manager at work)")
    parser.add_argument("--runs", type=int, default=1, help="how many times to run the case of --only")
    args = parser.parse_args()
    app = QApplication.instance() or QApplication([])
    settings = Settings(threads=1, context_size=2048, max_tokens=200, temperature=0.7, seed=3)
    window = MainWindow(settings, EngineWorker(settings))
    window.resize(1100, 720)
    window.show()
    QCoreApplication.processEvents()
    if args.only == "hub":
        hub_only(window, max(args.runs, 1))
        window.close()
        app.quit()
        return

    long_chat, short_chat = conversation(1000), conversation(10)
    for name, chat in (("10_messages", short_chat), ("1000_messages", long_chat)):
        runs = sorted(first_paint_ms(window.chat, chat) for _ in range(5))
        emit(measure="first_paint", conversation=name, median_ms=round(runs[2], 1), worst_ms=round(runs[-1], 1))
        if name == "1000_messages":
            paint = runs[2]

    window.chat.show_conversation(long_chat)
    window.controller.current = "c"
    idle = Heartbeat().run_until(lambda: False, timeout=2)
    emit(measure="gui_stall", stream="none (baseline)", worst_ms=round(idle, 1))
    scripted = scripted_stall(window)
    emit(measure="gui_stall", stream="scripted, 100 tokens/s", worst_ms=round(scripted, 1))

    window.start()  # the real engine on its thread
    heartbeat = Heartbeat()
    heartbeat.run_until(lambda: window.model_state is not None, timeout=120)
    window.controller.new_chat()
    QCoreApplication.processEvents()
    started = time.perf_counter()
    window.controller.send("Write a short story about a lighthouse keeper and a storm.")
    heartbeat.run_until(lambda: window.controller.busy, timeout=10)
    real = heartbeat.run_until(lambda: not window.controller.busy, timeout=120)
    seconds = time.perf_counter() - started
    words = len(window.controller.last_reply().split())
    emit(measure="gui_stall", stream="real default model", worst_ms=round(real, 1), reply_words=words,
         seconds=round(seconds, 1), speed=window.status_line.speed_label.text())
    with tempfile.TemporaryDirectory(prefix="cleo-bench-hub-") as folder:
        hub = hub_stall(window, Path(folder))
    emit(measure="gui_stall", stream="none; search and download running", **hub)
    hub_worst = float(str(hub["worst_ms"]))
    window.close()
    emit(measure="summary", first_paint_1000_ms=round(paint, 1), first_paint_target_ms=FIRST_PAINT_TARGET_MS,
         first_paint_met=paint <= FIRST_PAINT_TARGET_MS, stall_scripted_ms=round(scripted, 1),
         stall_real_ms=round(real, 1), stall_hub_ms=round(hub_worst, 1), stall_target_ms=STALL_TARGET_MS,
         stall_met=max(scripted, real, hub_worst) <= STALL_TARGET_MS)
    app.quit()


if __name__ == "__main__":
    main()
