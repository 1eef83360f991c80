"""The model manager's downloads from Hugging Face: queued, with progress, speed and time left, cancellable.

Any number can be queued; they run one after the other on the engine's `DownloadQueue` thread
(`app.hub_work.Downloads`). A finished model was checked against its sha256 and size before it
got its name, so it is listed at once (`saved`). A cancelled download keeps its `.part` file and
resumes where it stopped when it is asked for again.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import QHBoxLayout, QProgressBar, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from app.hub_work import Downloads
from app.widgets import button, tooltip
from engine import DownloadCancelled, DownloadProgress, InternalError, KnownError, QueuedDownload, RepoFiles

_BAR_STEPS = 1000


class DownloadList(QWidget):
    saved = Signal(str)  # the path of a model downloaded and checked
    said = Signal(str)  # one line for the manager's status line (a refusal)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.downloads = Downloads(self)
        self.downloads.progressed.connect(self.on_downloads_progressed)
        self.downloads.ended.connect(self.on_downloads_ended)
        self.jobs: list[QueuedDownload] = []  # one per row, in the table's order
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels([self.tr("Download"), self.tr("Progress"), self.tr("Status")])
        self.table.setAccessibleName(self.tr("Downloads"))
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().hide()
        self.cancel_button = button(self.tr("Cancel download"),
                                    self.tr("Stop the selected download; asked for again, it resumes"),
                                    self.on_cancel_button_clicked)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)

    def add(self, files: RepoFiles, name: str, folder: Path) -> QueuedDownload | None:
        """Queue `name` from `files`; None (and a line said) when it is already waiting or running."""
        if any((j.files.repo, j.name) == (files.repo, name) for j in self.downloads.jobs):
            self.said.emit(self.tr("%1 is already being downloaded.").replace("%1", name))
            return None
        job = self.downloads.add(files, name, folder)
        self.jobs.append(job)
        row = self.table.rowCount()
        self.table.insertRow(row)
        item = QTableWidgetItem(f"{files.repo} / {name}")  # Hub text: items show it literally
        item.setToolTip(tooltip(f"{files.repo} at {files.commit}\n{name}\n→ {folder}"))
        self.table.setItem(row, 0, item)
        bar = QProgressBar()
        bar.setRange(0, _BAR_STEPS)
        bar.setValue(0)
        bar.setAccessibleName(self.tr("Progress of %1").replace("%1", name))
        self.table.setCellWidget(row, 1, bar)
        self._status(row, self.tr("Waiting…") if len(self.downloads.jobs) > 1 else self.tr("Starting…"))
        self.table.resizeColumnToContents(0)
        return job

    def bar(self, job: QueuedDownload) -> QProgressBar:
        widget = self.table.cellWidget(self._row(job), 1)
        assert isinstance(widget, QProgressBar)
        return widget

    def status(self, job: QueuedDownload) -> str:
        item = self.table.item(self._row(job), 2)
        return item.text() if item is not None else ""

    def running(self) -> bool:
        return bool(self.downloads.jobs)

    def stop(self) -> None:
        """Cancel every download (the manager closed); each row says so once its download has stopped."""
        self.downloads.cancel_all()

    def close_queue(self, timeout: float = 5.0) -> None:
        self.downloads.close(timeout)

    def on_cancel_button_clicked(self) -> None:
        row = self.table.currentRow()
        if 0 <= row < len(self.jobs) and any(j is self.jobs[row] for j in self.downloads.jobs):
            self.jobs[row].cancel()
            self._status(row, self.tr("Cancelling…"))

    @Slot(object, object)
    def on_downloads_progressed(self, job: QueuedDownload, progress: DownloadProgress) -> None:
        row = self._row(job)
        if row < 0 or job.cancelled.is_set():
            return
        self.bar(job).setValue(int(_BAR_STEPS * progress.done / max(progress.total, 1)))
        self._status(row, progress_text(progress))

    @Slot(object, object)
    def on_downloads_ended(self, job: QueuedDownload, result: Path | KnownError | InternalError) -> None:
        self.downloads.finish(job)
        row = self._row(job)
        if row < 0:
            return
        if isinstance(result, Path):
            self.bar(job).setValue(_BAR_STEPS)
            self._status(row, self.tr("Saved and checked: %1").replace("%1", str(result)))
            self.saved.emit(str(result))
        elif isinstance(result, DownloadCancelled) or job.cancelled.is_set():
            self._status(row, self.tr("Cancelled; asked for again, it resumes where it stopped."))
        else:
            self._status(row, result.message, result.user_text())

    def _row(self, job: QueuedDownload) -> int:
        return next((i for i, j in enumerate(self.jobs) if j is job), -1)

    def _status(self, row: int, text: str, more: str = "") -> None:
        item = QTableWidgetItem(text)
        item.setToolTip(tooltip(more or text))
        self.table.setItem(row, 2, item)


def progress_text(progress: DownloadProgress) -> str:
    """"1.20 of 18.56 GB · 45.3 MB/s · 7 min left · part 1 of 3", in the user's words."""
    text = f"{_gb(progress.done)} of {_gb(progress.total)} GB"
    if progress.bytes_per_second:
        text += f" · {progress.bytes_per_second / 1e6:.1f} MB/s"
    if progress.seconds_left is not None:
        text += f" · {duration(progress.seconds_left)} left"
    if progress.parts > 1:
        text += f" · part {progress.part} of {progress.parts}"
    return text


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def _gb(n: int) -> str:
    return f"{n / 2**30:.2f}"  # the manager's unit, as in the local list and the fit
