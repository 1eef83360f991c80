"""The model manager's Hugging Face tab: search GGUF models, see a file's experts, context and fit, download.

With the search box empty it shows the models Cleo suggests (resources/catalog.json). A search
lists repositories (most downloaded or most recently updated first, a page at a time); choosing
one lists its GGUF files pinned to one commit (split parts grouped, vision projectors and other
files marked); choosing a file reads its header over the network (the first megabytes only) and
shows what the model is and whether it fits this machine, before anything large is fetched.
Downloads go to Cleo's models folder or to one the user picks ("Save to"), whose models the
manager then lists with the others.

Every request runs off the GUI thread (`app.hub_work.HubWork`); when the Hub cannot be reached,
is rate-limiting or answers nonsense, one line says so and the rest of the manager keeps
working. Everything the Hub sends (names, licences) is shown as the characters it is: table
items are literal, labels are plain text, tooltips are escaped.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLineEdit, QSplitter, QVBoxLayout, QWidget

from app.download_list import DownloadList
from app.hub_tables import RowFiller, hub_table
from app.hub_work import HubWork
from app.widgets import button, plain_label, tooltip
from engine import (
    HubUnreachable,
    KnownError,
    describe_remote,
    folders,
    gpus,
    repo_files,
    search,
    search_next,
    suggestions,
)

if TYPE_CHECKING:
    from engine import HubFile, HubModel, RemoteModel, RepoFiles, SearchPage, Suggestion

SORTS = (("downloads", "Most downloaded"), ("recent", "Recently updated"))
_KINDS = {"model": "model", "mmproj": "vision projector, not a chat model", "other": "not a model"}


@dataclass(frozen=True)
class _Listed:
    """One row of the results table: a search result or a suggestion."""

    repo: str
    revision: str = "main"
    file: str = ""  # the suggested file, chosen once the files are listed


class HubBrowser(QWidget):
    saved = Signal(str)  # a model was downloaded and checked: the local list should show it
    folder_chosen = Signal(str)  # the user chose where downloads go: models there should be listed

    def __init__(self, hub: str, context_size: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.hub, self.context_size = hub, context_size
        self.folder: Path | None = None  # where downloads go; None for Cleo's models folder
        self.work = HubWork(self)
        self.work.finished.connect(self.on_work_finished)
        self.work.failed.connect(self.on_work_failed)
        self.rows = RowFiller(self)  # long lists go into the tables a batch at a time
        self.page: SearchPage | None = None
        self.listed: list[_Listed] = []
        self.listing: RepoFiles | None = None
        self.read: dict[tuple[str, str, str], RemoteModel | str] = {}  # (repo, commit, file) -> header or why not

        self.query = QLineEdit()
        self.query.setPlaceholderText(self.tr("Search Hugging Face for GGUF models, e.g. qwen3 moe"))
        self.query.setAccessibleName(self.tr("Search Hugging Face"))
        self.query.setClearButtonEnabled(True)
        self.query.returnPressed.connect(self.search)
        self.sort = QComboBox()
        self.sort.setAccessibleName(self.tr("Order"))
        for key, label in SORTS:
            self.sort.addItem(self.tr(label), key)
        self.sort.currentIndexChanged.connect(self.on_sort_current_index_changed)
        self.search_button = button(self.tr("Search"), self.tr("Find GGUF models on Hugging Face"), self.search)
        self.status = plain_label()  # one line: what is happening, or why the Hub cannot be used now
        self.status.setAccessibleName(self.tr("Hub status"))

        self.results = hub_table(self.tr("Search results"), ("Repository", "Downloads", "Likes", "Updated", "Licence"))
        self.results.itemSelectionChanged.connect(self.on_results_item_selection_changed)
        self.more_button = button(self.tr("More results"), self.tr("Show the next page of results"), self.more)
        self.more_button.setEnabled(False)
        self.files = hub_table(self.tr("Files of the repository"), ("File", "Kind", "Quantization", "Size", "Fit"))
        self.files.itemSelectionChanged.connect(self.on_files_item_selection_changed)
        self.facts = plain_label()  # the selected file's header facts and fit
        self.facts.setWordWrap(True)
        self.facts.setAccessibleName(self.tr("About the selected file"))
        self.download_button = button(self.tr("Download"), self.tr("Download the selected file (every part of a "
                                                                   "split model) into the folder shown beside"),
                                      self.download)
        self.download_button.setEnabled(False)
        self.save_to = plain_label()  # where downloads go: a path, shown as the characters it is
        self.save_to.setAccessibleName(self.tr("Downloads are saved to"))
        self.save_to.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.change_folder_button = button(self.tr("Change…"), self.tr("Choose the folder downloads are saved to; "
                                                                       "the models in it are listed with yours"),
                                           self.choose_folder)
        self.download_list = DownloadList()
        self.download_list.saved.connect(self.saved)
        self.download_list.said.connect(self.say)

        top = QHBoxLayout()
        top.addWidget(self.query, 1)
        top.addWidget(self.sort)
        top.addWidget(self.search_button)
        left, right = QWidget(), QWidget()
        column = QVBoxLayout(left)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(self.results)
        column.addWidget(self.more_button, 0, Qt.AlignmentFlag.AlignLeft)
        column = QVBoxLayout(right)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(self.files, 1)
        column.addWidget(self.facts)
        row = QHBoxLayout()
        row.addWidget(self.save_to, 1)
        row.addWidget(self.change_folder_button)
        row.addWidget(self.download_button)
        column.addLayout(row)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setSizes([590, 640])
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.status)
        layout.addWidget(split, 3)
        layout.addWidget(self.download_list, 1)
        self.show_folder()
        self.show_suggestions()

    # --- what the user does -------------------------------------------------------------------------------

    def follow(self, hub: str, context_size: int) -> None:
        """The settings changed: another Hub starts afresh; the fit is estimated for the new context."""
        changed = hub != self.hub
        self.hub, self.context_size = hub, context_size
        if changed:
            self.work.cancel()
            self.read.clear()
            self.search()

    def search(self) -> None:
        query = self.query.text().strip()
        if not query:
            self.show_suggestions()
            return
        hub, sort = self.hub, self.sort.currentData()
        self.say(self.tr("Searching for “%1”…").replace("%1", query))
        self.work.run("search", lambda cancelled: search(hub, query, sort=sort, cancelled=cancelled))

    def more(self) -> None:
        page = self.page
        if page is not None and page.next_url:
            self.more_button.setEnabled(False)
            self.say(self.tr("Loading more results…"))
            self.work.run("search", lambda cancelled: search_next(page, cancelled=cancelled))

    def show_suggestions(self) -> None:
        self.work.cancel("search")
        self.page = None
        self.more_button.setEnabled(False)
        try:
            found: tuple[Suggestion, ...] = suggestions()
        except KnownError as exc:
            found = ()
            self.say(exc.message, exc.user_text())
        else:
            self.say(self.tr("Models Cleo suggests, by the memory of the computer they suit; search for any other."))
        self.results.setHorizontalHeaderLabels([self.tr(h) for h in ("Repository", "File", "Memory", "Kind",
                                                                     "Licence")])
        self.listed = [_Listed(s.repo, s.revision, s.file) for s in found]
        self.rows.fill(self.results, len(found), lambda i: (_suggestion_cells(found[i]), found[i].description))

    def download(self) -> None:
        file, listing = self.selected_file(), self.listing
        if file is None or listing is None or file.kind == "other":
            return
        folder = self.folder or folders().models
        if self.download_list.add(listing, file.name, folder) is not None:
            self.say(self.tr("Downloading %1 into %2.").replace("%1", file.name).replace("%2", str(folder)))

    def choose_folder(self) -> None:
        """Ask where downloads go; the choice holds until Cleo quits (the manager is kept meanwhile)."""
        chosen = QFileDialog.getExistingDirectory(self, self.tr("Save downloaded models to"),
                                                  str(self.folder or folders().models))
        if chosen:
            self.folder = Path(chosen)
            self.show_folder()
            self.say(self.tr("Downloads are saved to %1; the models there are listed with yours.")
                     .replace("%1", chosen))
            self.folder_chosen.emit(chosen)

    def show_folder(self) -> None:
        folder = str(self.folder or folders().models)
        self.save_to.setText(self.tr("Save to: %1").replace("%1", folder))
        self.save_to.setToolTip(tooltip(folder))

    def stop(self) -> None:
        """The manager closed: every search, file list, header read and download stops."""
        self.work.cancel()
        self.download_list.stop()

    def say(self, line: str, more: str = "") -> None:
        self.status.setText(line.splitlines()[0] if line else "")
        self.status.setToolTip(tooltip(more or line))

    def selected_file(self) -> HubFile | None:
        row = self.files.currentRow()
        if self.listing is None or not 0 <= row < len(self.listing.files):
            return None
        return self.listing.files[row]

    @Slot(int)
    def on_sort_current_index_changed(self, _index: int) -> None:
        if self.query.text().strip():
            self.search()

    @Slot()
    def on_results_item_selection_changed(self) -> None:
        row = self.results.currentRow()
        if not 0 <= row < len(self.listed):
            return
        chosen, hub = self.listed[row], self.hub
        self.work.cancel("header")
        self.listing = None
        self.rows.clear(self.files)
        self.facts.setText("")
        self.download_button.setEnabled(False)
        self.say(self.tr("Listing the files of %1…").replace("%1", chosen.repo))
        self.work.run("files", lambda cancelled: (chosen, repo_files(hub, chosen.repo, chosen.revision,
                                                                      cancelled=cancelled)))

    @Slot()
    def on_files_item_selection_changed(self) -> None:
        file, listing = self.selected_file(), self.listing
        self.work.cancel("header")
        if file is None or listing is None:
            self.download_button.setEnabled(False)
            return
        self.download_button.setEnabled(file.kind != "other" and not file.missing_parts)
        key = (listing.repo, listing.commit, file.name)
        if file.kind == "other":
            self.facts.setText(self.tr("%1 is not a model file.").replace("%1", file.name))
        elif key in self.read:
            self._show_read(file, self.read[key])
        else:
            context, chosen = self.context_size, file
            self.facts.setText(self.tr("Reading the header of %1 (only its first megabytes)…")
                               .replace("%1", file.name))

            def read(cancelled: threading.Event) -> tuple[tuple[str, str, str], RemoteModel | str]:
                try:
                    return key, describe_remote(listing, chosen, context_size=context, gpus=gpus(),
                                                cancelled=cancelled)
                except HubUnreachable:  # the Hub's trouble, not the file's: said in the one line, tried again later
                    raise
                except KnownError as exc:  # a damaged or hostile header: remembered beside the file
                    return key, exc.message

            self.work.run("header", read)

    # --- what comes back ----------------------------------------------------------------------------------

    @Slot(str, object)
    def on_work_finished(self, kind: str, answer: object) -> None:
        result = self.work.accept(kind, answer)
        if result is None:
            return  # a request replaced since
        if kind == "search":
            self._show_page(cast("SearchPage", result))
        elif kind == "files":
            self._show_files(*cast("tuple[_Listed, RepoFiles]", result))
        elif kind == "header":
            key, remote = cast("tuple[tuple[str, str, str], RemoteModel | str]", result)
            self.read[key] = remote
            self._header_read(key)

    @Slot(str, object)
    def on_work_failed(self, kind: str, answer: object) -> None:
        error = self.work.accept(kind, answer)
        if not isinstance(error, KnownError):
            return
        if kind == "header":  # this file's trouble: said beside it; the Hub's, also in the one line
            self.facts.setText(error.message)
        if kind == "search":
            self.more_button.setEnabled(bool(self.page and self.page.next_url))
        self.say(error.message, error.user_text())

    def _show_page(self, page: SearchPage) -> None:
        first = page.page == 1
        if first:
            self.listed = []
            self.results.setHorizontalHeaderLabels([self.tr(h) for h in ("Repository", "Downloads", "Likes",
                                                                         "Updated", "Licence")])
        self.page = page
        self.listed += [_Listed(m.repo) for m in page.models]
        models = page.models
        self.rows.fill(self.results, len(models), lambda i: (_result_cells(models[i]), models[i].repo),
                       append=not first)
        self.more_button.setEnabled(bool(page.next_url))
        shown = len(self.listed)
        if not shown:
            self.say(self.tr("No GGUF models match “%1”.").replace("%1", page.query))
        else:
            more = self.tr("; more with “More results”") if page.next_url else ""
            self.say(self.tr("Repositories shown: %1%2.").replace("%1", str(shown)).replace("%2", more))

    def _show_files(self, chosen: _Listed, listing: RepoFiles) -> None:
        self.listing = listing
        files, read = listing.files, self.read

        def row(i: int) -> tuple[tuple[str, ...], str]:  # made when shown: with the header if it was read by then
            file = files[i]
            return (_file_cells(file, read.get((listing.repo, listing.commit, file.name))),
                    f"{file.name}\n" + "\n".join(f"{p.path}: {p.size:,} bytes, sha256 {p.sha256 or 'unknown'}"
                                                  for p in file.parts))

        self.rows.fill(self.files, len(files), row)
        models = listing.models
        self.say(self.tr("%1 at %2: %3 model file(s).").replace("%1", listing.repo)
                 .replace("%2", listing.commit[:12]).replace("%3", str(len(models))))
        wanted = next((i for i, f in enumerate(listing.files) if chosen.file and chosen.file in (f.name, f.file_name)),
                      next((i for i, f in enumerate(listing.files) if f.kind == "model"), -1))
        if wanted >= 0:
            self.files.selectRow(wanted)  # its header is read at once

    def _header_read(self, key: tuple[str, str, str]) -> None:
        listing = self.listing
        if listing is None or key[:2] != (listing.repo, listing.commit):
            return
        row = next((i for i, f in enumerate(listing.files) if f.name == key[2]), -1)
        if row < 0:
            return
        file, read = listing.files[row], self.read[key]
        self.rows.set_row(self.files, row, _file_cells(file, read))
        self.files.resizeColumnsToContents()
        selected = self.selected_file()
        if selected is not None and selected.name == key[2]:
            self._show_read(file, read)

    def _show_read(self, file: HubFile, read: RemoteModel | str) -> None:
        self.facts.setText(read if isinstance(read, str) else facts_text(read))


def facts_text(remote: RemoteModel) -> str:
    """What the header says, in a few words, and the fit with its numbers."""
    info = remote.info
    experts = (f"Mixture of Experts: {info.experts} experts, {info.experts_used} active per token" if info.is_moe
               else "dense")
    template = "chat template: yes" if info.has_chat_template else "chat template: none (cannot chat)"
    fit = remote.fit.text[:1].upper() + remote.fit.text[1:]
    return (f"{info.architecture} · {experts} · {_count(info.parameters)} parameters · {info.quantization} · "
            f"context {info.context_length:,} tokens · {template}\n{fit}.")


def _suggestion_cells(s: Suggestion) -> tuple[str, ...]:
    return s.repo, s.file, f"{s.memory_gb} GB", "MoE" if s.moe else "dense", s.licence


def _result_cells(model: HubModel) -> tuple[str, ...]:
    return model.repo, f"{model.downloads:,}", f"{model.likes:,}", model.updated[:10], model.licence


def _file_cells(file: HubFile, read: RemoteModel | str | None) -> tuple[str, ...]:
    parts = f" ({len(file.parts)} parts)" if len(file.parts) > 1 else ""
    missing = f", {file.missing_parts} part(s) missing" if file.missing_parts else ""
    fit = "unreadable" if isinstance(read, str) else read.fit.verdict if read is not None else ""
    return (file.name + parts, _KINDS[file.kind] + missing, file.quantization, size_text(file.size), fit)


def size_text(n: int) -> str:
    """In the units the rest of the manager and the fit use (GB of 2**30 bytes)."""
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB" if n >= 2**17 else f"{n:,} bytes"


def _count(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


