"""Network work for the model manager, off the GUI thread and off the engine's thread.

A search, a repository's file list or a remote header read is a few blocking requests (the
engine's `hub` and `remote_header` functions); each runs on a thread of a small pool of this
manager's own, so it never waits behind a reply being written (the engine's thread) and the
window never waits for the Hub. The pool keeps its threads for a while: starting a Python thread
makes the starting thread wait until the new one runs, a stall the GUI thread should not take
for every search. A request stuck on a silent server holds its thread (until the engine's
timeout), so the pool grows when every thread is busy.

Results come back to the GUI thread as queued signals. A request of the same kind made later
replaces the earlier one: the earlier one is cancelled and whatever it still returns is dropped,
so a slow answer never overwrites a newer one.

Downloads go through the engine's `DownloadQueue` (its own thread, one download after the
other); its callbacks are turned into queued signals here too, and progress is passed on at most
ten times a second so a fast download cannot flood the GUI thread.

The threads are daemon threads, like the queue's: a request stuck on a silent server never holds
up quitting Cleo.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from engine import DownloadProgress, DownloadQueue, HubCancelled, KnownError, QueuedDownload, RepoFiles

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 0.1  # the least time between two progress updates of one download
IDLE_SECONDS = 60.0  # a pool thread with nothing to do for this long ends


class HubWork(QObject):
    """Runs `call(cancelled)` on a thread; `finished` or `failed` arrive on the GUI thread with its kind."""

    finished = Signal(str, object)  # kind, what the call returned
    failed = Signal(str, object)  # kind, a ShownError to show in one line

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._current: dict[str, tuple[int, threading.Event]] = {}
        self._tickets = 0
        self._running = 0
        self._idle = 0  # pool threads waiting for a request and not yet promised one
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()

    @property
    def running(self) -> int:
        """Requests whose threads have not ended yet (cancelled ones included)."""
        with self._lock:
            return self._running

    def busy(self, kind: str) -> bool:
        return kind in self._current

    def run(self, kind: str, call: Callable[[threading.Event], Any]) -> None:
        """Start `call`; an earlier request of this kind is cancelled and its answer dropped."""
        self.cancel(kind)
        self._tickets += 1
        ticket, cancelled = self._tickets, threading.Event()
        self._current[kind] = (ticket, cancelled)
        with self._lock:
            self._running += 1
            grow = self._idle == 0
            if not grow:
                self._idle -= 1  # that thread is promised this request
        self._requests.put(lambda: self._work(kind, ticket, call, cancelled))
        if grow:
            threading.Thread(target=self._serve, name="hub-requests", daemon=True).start()

    def cancel(self, kind: str | None = None) -> None:
        """Stop the request of `kind` (every request when None); what they return is dropped."""
        for name in [kind] if kind is not None else list(self._current):
            found = self._current.pop(name, None)
            if found is not None:
                found[1].set()

    def _serve(self) -> None:
        while True:
            try:
                request = self._requests.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # no request is promised to this thread: it may end
                        self._idle -= 1
                        return
                continue
            request()
            with self._lock:
                self._idle += 1

    def _work(self, kind: str, ticket: int, call: Callable[[threading.Event], Any],
              cancelled: threading.Event) -> None:
        try:
            result: object = call(cancelled)
            signal = self.finished
        except HubCancelled:
            return
        except KnownError as exc:
            result, signal = exc, self.failed
        except Exception:  # a bug: logged with its traceback; the manager says so in its one line
            log.exception("hub request %s failed", kind)
            result, signal = KnownError("That request stopped because of a problem inside Cleo; the details "
                                        "are in the log."), self.failed
        finally:
            with self._lock:
                self._running -= 1
        if cancelled.is_set():
            return
        with contextlib.suppress(RuntimeError):  # the manager was deleted while the request ran: nobody to tell
            self._deliver(signal, kind, ticket, result)

    def _deliver(self, signal: Any, kind: str, ticket: int, result: object) -> None:
        # Emitted from this thread to a receiver on the GUI thread: Qt queues it. The ticket is
        # checked again there (`accept`), since a newer request may start before it arrives.
        signal.emit(kind, _Answer(ticket, result))

    def accept(self, kind: str, answer: object) -> object | None:
        """The result inside `answer` if it answers the current request of `kind` (then it is done), else None."""
        if not isinstance(answer, _Answer):
            return None
        current = self._current.get(kind)
        if current is None or current[0] != answer.ticket:
            return None
        del self._current[kind]
        return answer.result


class _Answer:
    __slots__ = ("result", "ticket")

    def __init__(self, ticket: int, result: object) -> None:
        self.ticket, self.result = ticket, result


class Downloads(QObject):
    """The engine's download queue, with its callbacks as signals on the GUI thread."""

    progressed = Signal(object, object)  # QueuedDownload, DownloadProgress
    ended = Signal(object, object)  # QueuedDownload, the model's Path or the ShownError that ended it

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._queue: DownloadQueue | None = None  # its thread starts with the first download
        self._reported: dict[int, float] = {}
        self.jobs: list[QueuedDownload] = []  # waiting or running

    def add(self, files: RepoFiles, name: str, folder: Path) -> QueuedDownload:
        if self._queue is None:
            self._queue = DownloadQueue(self._on_progress, self._on_done)
        job = self._queue.add(files, name, folder)
        self.jobs.append(job)
        return job

    def cancel_all(self) -> None:
        for job in self.jobs:
            job.cancel()

    def close(self, timeout: float = 5.0) -> None:
        """Cancel every download and stop the queue's thread (resumable: the `.part` files stay)."""
        self.cancel_all()
        if self._queue is not None:
            self._queue.close(timeout)
            self._queue = None

    def _on_progress(self, job: QueuedDownload, progress: DownloadProgress) -> None:
        now = time.monotonic()
        if progress.done < progress.total and now - self._reported.get(id(job), 0.0) < PROGRESS_SECONDS:
            return
        self._reported[id(job)] = now
        with contextlib.suppress(RuntimeError):  # the manager is gone
            self.progressed.emit(job, progress)

    def _on_done(self, job: QueuedDownload, result: object) -> None:
        self._reported.pop(id(job), None)
        with contextlib.suppress(RuntimeError):
            self.ended.emit(job, result)

    def finish(self, job: QueuedDownload) -> None:
        """Forget `job` once the GUI thread has shown how it ended."""
        self.jobs = [j for j in self.jobs if j is not job]
