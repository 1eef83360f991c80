"""Downloading a model found on the Hub: pinned, checked for space, measured, queued.

Every byte travels through `engine.models.downloads.download`, the one hardened downloader
(https only, resumable `.part` files, never past the announced size, sha256 checked before the
file gets its name, Cancel within a read). This module decides what to fetch and wraps it:

- the URL is pinned to the commit the file list came from, and the size and sha256 are the
  tree's (or the pinned ones of a suggestion, which must agree with the tree);
- a split model is every part, downloaded one after the other into one folder, where llama.cpp
  finds the later parts beside the first;
- the free disk space is checked before anything is fetched;
- progress counts all parts together, with the speed over the last seconds and the time left.
"""

from __future__ import annotations

import collections
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import InternalError, KnownError, ShownError
from engine.models.downloads import CatalogEntry, download
from engine.models.hub import RepoFiles, pinned

log = logging.getLogger(__name__)

SPACE_MARGIN = 256 * 2**20  # room left after a download for the profile, logs and the system
_SPEED_WINDOW = 5.0  # seconds of progress the speed is measured over


class NotEnoughSpace(KnownError):
    """The download would not fit on the disk."""


@dataclass(frozen=True)
class DownloadProgress:
    file_name: str  # the part being fetched now
    part: int  # 1-based
    parts: int
    done: int  # bytes held, all parts together
    total: int
    bytes_per_second: float  # 0.0 until measured
    seconds_left: float | None  # None until the speed is known


Progress = Callable[[DownloadProgress], None]


def plan_download(files: RepoFiles, name: str) -> tuple[CatalogEntry, ...]:
    """What downloading `name` from `files` fetches: one entry per part, pinned and with a known sha256."""
    file = files.find(name)
    if file.kind == "other":
        raise KnownError(f"{file.name} is not a model file (GGUF).", hint="Choose one of the .gguf files.")
    if file.missing_parts:
        raise KnownError(f"{file.name} is part of a split model missing {file.missing_parts} part(s) in "
                         f"{files.repo}.", hint="Choose another file.")
    entries = []
    for part in file.parts:
        if not part.sha256 or part.size <= 0:
            raise KnownError(f"Hugging Face gives no sha256 for {part.path}, so Cleo cannot check the download.",
                             hint="Choose another file.")
        known = pinned(files.repo, part.path)
        if known is not None and (known.sha256, known.size) != (part.sha256, part.size):
            raise KnownError(f"{files.repo}/{part.path} at {files.commit[:12]} is not the file Cleo knows "
                             f"({part.size} bytes, sha256 {part.sha256}; expected {known.size} bytes, sha256 "
                             f"{known.sha256}).", hint="Report this; Cleo does not download it.")
        entries.append(CatalogEntry(f"{files.repo}/{part.path}", part.file_name, files.file_url(part), part.size,
                                    part.sha256, ""))
    return tuple(entries)


def download_model(files: RepoFiles, name: str, folder: Path, *, progress: Progress | None = None,
                   cancelled: threading.Event | None = None) -> Path:
    """Fetch `name` (all its parts) into `folder`; returns the file to load (the first part)."""
    entries = plan_download(files, name)
    waiting = [e for e in entries if not _already_there(folder / e.file_name, e.size)]
    check_space(folder, waiting)
    meter = _Meter(sum(e.size for e in entries), progress)
    held = sum(e.size for e in entries if e not in waiting)
    for number, entry in enumerate(entries, start=1):
        if entry in waiting:
            def report(have: int, _size: int, entry: CatalogEntry = entry, number: int = number,
                       before: int = held) -> None:
                meter.update(entry.file_name, number, len(entries), before + have)

            download(entry, folder, progress=report, cancelled=cancelled)
            held += entry.size
        meter.update(entry.file_name, number, len(entries), held)
    return folder / entries[0].file_name


def check_space(folder: Path, entries: list[CatalogEntry]) -> None:
    """`NotEnoughSpace` unless the rest of `entries` (less what their `.part` files hold) fits in `folder`."""
    needed = sum(e.size - _part_size(folder / (e.file_name + ".part"), e.size) for e in entries)
    if not needed:
        return
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed + SPACE_MARGIN > free:
        raise NotEnoughSpace(f"Not enough disk space: the download needs {_gb(needed)} more and {existing} has "
                             f"{_gb(free)} free (Cleo keeps {_gb(SPACE_MARGIN)} spare).",
                             hint="Free some space, or choose another folder or a smaller quantization.")


class _Meter:
    """Turns the downloader's byte counts into progress with a speed and a time left."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total, self.progress = total, progress
        self.samples: collections.deque[tuple[float, int]] = collections.deque()

    def update(self, file_name: str, part: int, parts: int, done: int) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[0][0] > _SPEED_WINDOW:
            self.samples.popleft()
        first_time, first = self.samples[0]
        span = now - first_time
        speed = (done - first) / span if span >= 0.5 else 0.0
        left = (self.total - done) / speed if speed > 0 else None
        self.progress(DownloadProgress(file_name, part, parts, done, self.total, speed, left))


@dataclass
class QueuedDownload:
    """One download waiting or running in a `DownloadQueue`; `cancel()` stops it (or keeps it from starting)."""

    files: RepoFiles
    name: str
    folder: Path
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class DownloadQueue:
    """Downloads run one after the other on a thread of their own, so any number can be queued.

    `on_progress` and `on_done` are called on that thread: a window hands them to its GUI thread
    (a queued signal). `on_done` gets the model's path, or the error that ended it (`KnownError`,
    `DownloadCancelled` among them, or `InternalError` for a bug)."""

    def __init__(self, on_progress: Callable[[QueuedDownload, DownloadProgress], None],
                 on_done: Callable[[QueuedDownload, Path | ShownError], None]) -> None:
        self.on_progress, self.on_done = on_progress, on_done
        self.waiting: queue.Queue[QueuedDownload | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="model-downloads", daemon=True)
        self.thread.start()

    def add(self, files: RepoFiles, name: str, folder: Path) -> QueuedDownload:
        job = QueuedDownload(files, name, folder)
        self.waiting.put(job)
        return job

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking work; the running download should be cancelled first, or this waits for it."""
        self.waiting.put(None)
        self.thread.join(timeout)

    def _run(self) -> None:
        while (job := self.waiting.get()) is not None:
            result: Path | ShownError
            try:
                result = download_model(job.files, job.name, job.folder, cancelled=job.cancelled,
                                        progress=lambda p, job=job: self.on_progress(job, p))  # type: ignore[misc]
            except KnownError as exc:
                result = exc
            except Exception:  # a bug: logged with its traceback, and the queue goes on with the next
                log.exception("download of %s %s failed", job.files.repo, job.name)
                result = InternalError(f"The download of {job.name} stopped because of a problem inside Cleo; "
                                       "the details are in the log.")
            self.on_done(job, result)


def _already_there(path: Path, size: int) -> bool:
    """A finished file of the right size: it was checked before it got its name, so it is not fetched again."""
    return path.is_file() and path.stat().st_size == size


def _part_size(path: Path, size: int) -> int:
    held = path.stat().st_size if path.is_file() else 0
    return held if held <= size else 0


def _gb(n: int) -> str:
    return f"{n / 1024**3:.1f} GB"
