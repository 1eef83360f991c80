"""The model manager: local models with what they are and whether they fit, folders to add, downloads.

The "Find on Hugging Face" tab (`app.model_search`) searches the Hub, shows a file's experts,
context and fit before it is downloaded, and queues downloads. Catalog downloads run on a thread
of their own (the engine's thread may be busy writing a reply) and resume, report progress, can
be cancelled, and are checked against the catalog's sha256 before the model is listed (the
engine's `download` does all of that).
"""

from __future__ import annotations

import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Qt, QThread, Signal, SignalInstance, Slot
from PySide6.QtWidgets import (
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QProgressBar,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.hub_work import PROGRESS_SECONDS
from app.model_search import HubBrowser
from app.widgets import button, plain_label, tooltip
from engine import (
    KnownError,
    available_memory,
    download,
    estimate_need,
    folders,
    hub_address,
    load_settings,
    read_catalog,
)

if TYPE_CHECKING:
    from engine import CatalogEntry, ModelInfo, ModelList

_PATH = Qt.ItemDataRole.UserRole


def fit_hint(info: ModelInfo, context_size: int, available: int | None) -> str:
    need = estimate_need(info, context_size).total
    if available is None:
        return f"needs ~{need / 2**30:.1f} GB"
    verdict = "fits" if need <= available else "too large"
    return f"{verdict}: needs ~{need / 2**30:.1f} GB of {available / 2**30:.1f} GB free"


class DownloadWorker(QObject):
    progressed = Signal(str, int, int)  # file name, bytes so far, bytes in all
    finished = Signal(str, str)  # file name, path of the checked file
    failed = Signal(str, object)  # file name, KnownError

    def __init__(self) -> None:
        super().__init__()
        self.cancelled = threading.Event()

    @Slot(object, str)
    def fetch(self, entry: CatalogEntry, folder: str) -> None:
        reported_at = 0.0

        def progress(done: int, total: int) -> None:
            # The downloader reports every 256 KiB: on a fast connection, hundreds of updates a second
            # for the GUI thread to draw. Ten a second show the same progress.
            nonlocal reported_at
            now = time.monotonic()
            if done < total and now - reported_at < PROGRESS_SECONDS:
                return
            reported_at = now
            self.progressed.emit(entry.file_name, done, total)

        try:
            path = download(entry, Path(folder), cancelled=self.cancelled, progress=progress)
        except KnownError as exc:
            self.failed.emit(entry.file_name, exc)
            return
        except Exception:
            self.failed.emit(entry.file_name, KnownError(f"Downloading {entry.name} hit a bug.",
                                                         hint=traceback.format_exc(limit=3)))
            return
        self.finished.emit(entry.file_name, str(path))


class ModelsDialog(QDialog):
    use_requested = Signal(str)  # model path: for every chat that has no model of its own
    use_in_chat_requested = Signal(str)  # model path: for the open chat only
    folders_changed = Signal(object)  # tuple of folders/files to list models from
    models_changed = Signal()  # a model was downloaded into a listed folder: list the models again
    _download_requested = Signal(object, str)  # catalog entry, folder: to the download thread

    def __init__(self, context_size: int, extra: tuple[str, ...], parent: QWidget | None = None, *,
                 catalog: list[CatalogEntry] | None = None, hub: str | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(self.tr("Models"))
        self.setAccessibleName(self.tr("Models"))
        self.context_size = context_size
        self.extra = extra
        self.models: list[ModelInfo] = []
        self.tabs = QTabWidget(self)
        self.table = QTableWidget(0, 7)
        self.table.setHorizontalHeaderLabels([self.tr(h) for h in (
            "Name", "Architecture", "Experts", "Size", "Quantization", "Context", "Fit")])
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setAccessibleName(self.tr("Local models"))
        self.message = plain_label()  # names broken files and what their headers say
        self.message.setWordWrap(True)
        add_file = button(self.tr("Add file…"), self.tr("List a GGUF file kept anywhere"),
                          self.on_add_file_button_clicked)
        add_folder = button(self.tr("Add folder…"), self.tr("List every GGUF in a folder, e.g. LM Studio's "
                                                            "or GPT4All's"), self.on_add_folder_button_clicked)
        self.use_button = button(self.tr("Use by default"), self.tr("Chat with the selected model from now on"),
                                 self.on_use_button_clicked)
        self.use_in_chat_button = button(self.tr("Use in this chat"),
                                         self.tr("Only the open chat uses the selected model"),
                                         self.on_use_in_chat_button_clicked)
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.addWidget(self.message)
        layout.addWidget(self.table)
        row = QHBoxLayout()
        for b in (add_file, add_folder, self.use_button, self.use_in_chat_button):
            row.addWidget(b)
        layout.addLayout(row)
        self.tabs.addTab(page, self.tr("On this computer"))
        self.browser = HubBrowser(hub_address(load_settings()[0]) if hub is None else hub, context_size)
        self.browser.saved.connect(self.models_changed)
        self.browser.folder_chosen.connect(self.on_browser_folder_chosen)
        self.tabs.addTab(self.browser, self.tr("Find on Hugging Face"))

        try:
            self.catalog = read_catalog() if catalog is None else catalog
            catalog_note = "" if self.catalog else self.tr("This build's catalog lists no downloads.")
        except KnownError as exc:
            self.catalog, catalog_note = [], exc.user_text()
        self.downloads = QTableWidget(len(self.catalog), 4)
        self.downloads.setHorizontalHeaderLabels([self.tr(h) for h in ("Name", "Size", "Licence", "Progress")])
        self.downloads.setAccessibleName(self.tr("Models to download"))
        self.progress: dict[str, QProgressBar] = {}
        for i, entry in enumerate(self.catalog):
            for j, text in enumerate((entry.name, f"{entry.size / 2**30:.2f} GB", entry.licence)):
                item = QTableWidgetItem(text)
                item.setToolTip(tooltip(entry.description or entry.url))
                self.downloads.setItem(i, j, item)
            bar = QProgressBar()
            bar.setRange(0, 1000)
            bar.setValue(0)
            self.downloads.setCellWidget(i, 3, bar)
            self.progress[entry.file_name] = bar
        self.download_button = button(self.tr("Download"), self.tr("Download the selected model"),
                                      self.on_download_button_clicked)
        self.cancel_button = button(self.tr("Cancel"), self.tr("Stop the download; it resumes later"),
                                    self.on_cancel_button_clicked)
        page = QWidget()
        layout = QVBoxLayout(page)
        self.download_note = plain_label(catalog_note)
        self.download_note.setWordWrap(True)
        layout.addWidget(self.download_note)
        layout.addWidget(self.downloads)
        row = QHBoxLayout()
        row.addWidget(self.download_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        self.tabs.addTab(page, self.tr("Download"))
        outer = QVBoxLayout(self)
        outer.addWidget(self.tabs)
        self.resize(1260, 660)

        self._thread = QThread(self)
        self.fetcher = DownloadWorker()
        self.fetcher.moveToThread(self._thread)
        self._download_requested.connect(self.fetcher.fetch)
        self.fetcher.progressed.connect(self.on_fetcher_progressed)
        self.fetcher.finished.connect(self.on_fetcher_finished)
        self.fetcher.failed.connect(self.on_fetcher_failed)
        self._thread.start()
        self.finished.connect(self.on_finished)

    def show_models(self, listed: ModelList) -> None:
        self.models = list(listed.models)
        available = available_memory()
        self.table.setRowCount(len(self.models))
        for i, info in enumerate(self.models):
            experts = f"{info.experts_used} of {info.experts}" if info.is_moe else "—"
            cells = (info.path.name, info.architecture, experts, f"{info.file_size / 2**30:.2f} GB",
                     info.quantization, str(info.context_length), fit_hint(info, self.context_size, available))
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(_PATH, str(info.path))
                item.setToolTip(tooltip(str(info.path)))
                self.table.setItem(i, j, item)
        self.table.resizeColumnsToContents()
        broken = [f"{u.path.name}: {u.problem}" for u in listed.unusable]
        self.message.setText(self.tr("Not usable: ") + "; ".join(broken) if broken else "")

    def follow(self, hub: str, context_size: int) -> None:
        """The settings changed: the Hub to search and the context the fit is estimated for."""
        self.context_size = context_size
        self.browser.follow(hub, context_size)

    def close_downloads(self) -> None:
        self.browser.stop()
        self.browser.download_list.close_queue()
        self.fetcher.cancelled.set()
        self._thread.quit()
        self._thread.wait(5000)

    def on_finished(self, _result: int) -> None:
        # Closing the manager cancels a download (it resumes later); the thread lives as long as
        # the dialog, which the window keeps and shows again. Searches and Hub downloads stop too.
        self.fetcher.cancelled.set()
        self.browser.stop()

    def on_use_button_clicked(self) -> None:
        self._use(self.use_requested)

    def on_use_in_chat_button_clicked(self) -> None:
        self._use(self.use_in_chat_requested)

    def _use(self, signal: SignalInstance) -> None:
        row = self.table.currentRow()
        if 0 <= row < len(self.models):
            signal.emit(str(self.models[row].path))

    def on_add_file_button_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, self.tr("Add a model file"), str(Path.home()),
                                              self.tr("GGUF models (*.gguf)"))
        if path:
            self.add_places(path)

    def on_add_folder_button_clicked(self) -> None:
        path = QFileDialog.getExistingDirectory(self, self.tr("Add a folder of models"), str(Path.home()))
        if path:
            self.add_places(path)

    def add_places(self, *paths: str) -> None:
        self.extra = tuple(dict.fromkeys((*self.extra, *paths)))
        self.folders_changed.emit(self.extra)

    @Slot(str)
    def on_browser_folder_chosen(self, folder: str) -> None:
        """Downloads go to `folder` from now on: unless models are listed from there already, they will be,
        as for a folder added with "Add folder…", so a model saved there is listed at once."""
        chosen = Path(folder).resolve()
        listed = [folders().models, *(Path(p) for p in self.extra)]
        if not any(chosen.is_relative_to(place.resolve()) for place in listed):
            self.add_places(folder)

    def on_download_button_clicked(self) -> None:
        row = self.downloads.currentRow()
        if 0 <= row < len(self.catalog) and self.download_button.isEnabled():
            self.download_note.setText(self.tr("Downloading %1…").replace("%1", self.catalog[row].name))
            # One download at a time, until it ends however it ends. The flag is cleared here, not
            # on the download's thread, so a Cancel pressed before that thread starts still counts.
            self.download_button.setEnabled(False)
            self.fetcher.cancelled.clear()
            self._download_requested.emit(self.catalog[row], str(folders().models))

    def on_cancel_button_clicked(self) -> None:
        self.fetcher.cancelled.set()

    @Slot(str, int, int)
    def on_fetcher_progressed(self, name: str, done: int, total: int) -> None:
        if name in self.progress and total:
            self.progress[name].setValue(int(1000 * done / total))

    @Slot(str, str)
    def on_fetcher_finished(self, name: str, path: str) -> None:
        self.download_button.setEnabled(True)
        self.download_note.setText(self.tr("Downloaded and checked: %1").replace("%1", path))
        self.folders_changed.emit(self.extra)
        self.models_changed.emit()  # lists it

    @Slot(str, object)
    def on_fetcher_failed(self, name: str, error: KnownError) -> None:
        self.download_button.setEnabled(True)
        self.download_note.setText(error.user_text())
