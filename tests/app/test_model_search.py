"""The model manager's Hugging Face tab, offscreen, against a fake Hub on 127.0.0.1 serving real GGUF files."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QTimer, QUrl
from PySide6.QtWidgets import QFileDialog, QTableWidget, QTableWidgetItem
from pytestqt.qtbot import QtBot

from app.model_search import HubBrowser
from app.models_dialog import ModelsDialog
from engine import folders, list_models, suggestions
from tests.app.test_untrusted_text import OpenWatch, reads, red_image, red_pixels
from tests.helpers.fake_hub import MOE_REPO, SPLIT_NAME, FakeHub, hub_with_models
from tests.helpers.gui import FAST, OpenWindow
from tests.helpers.models import write_tiny_gguf

VERDICTS = ("fits on the GPU", "fits partly on the GPU", "fits in RAM only", "too large")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    fake = hub_with_models(tmp_path_factory.mktemp("hub"))
    tiny = fake.repos["someone/Model-0-GGUF"].commits[-1][1]
    for number in range(25):  # more than a page of results
        fake.add_repo(f"paging/Many-{number:02d}-GGUF", tiny, downloads=1000 + number,
                      last_modified=f"2024-02-{number + 1:02d}T00:00:00.000Z")
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def healthy(hub: FakeHub) -> Iterator[None]:
    yield
    hub.faults.api_status, hub.faults.seconds_per_chunk = 0, 0.0


@pytest.fixture
def manager(qtbot: QtBot, hub: FakeHub, cleo_home: Path) -> Iterator[ModelsDialog]:
    dialog = ModelsDialog(4096, (), catalog=[], hub=hub.url)
    qtbot.addWidget(dialog)
    dialog.tabs.setCurrentWidget(dialog.browser)
    dialog.show()
    yield dialog
    dialog.close_downloads()


def column(browser: HubBrowser, table: str, number: int) -> list[str]:
    shown = getattr(browser, table)
    return [shown.item(row, number).text() for row in range(shown.rowCount())]


def cell(table: QTableWidget, row: int, number: int) -> QTableWidgetItem:
    item = table.item(row, number)
    assert item is not None
    return item


def search_for(qtbot: QtBot, browser: HubBrowser, text: str) -> None:
    browser.query.setText(text)
    browser.search_button.click()
    qtbot.waitUntil(lambda: not browser.work.busy("search"), timeout=15_000)


def choose_repo(qtbot: QtBot, browser: HubBrowser, repo: str) -> None:
    browser.results.selectRow(column(browser, "results", 0).index(repo))
    qtbot.waitUntil(lambda: browser.listing is not None and browser.listing.repo == repo, timeout=15_000)


def choose_file(qtbot: QtBot, browser: HubBrowser, name: str) -> str:
    """Select `name` and wait until its header is read; what the manager says about it."""
    browser.files.selectRow(next(i for i, text in enumerate(column(browser, "files", 0)) if text.startswith(name)))
    qtbot.waitUntil(lambda: not browser.work.busy("header"), timeout=30_000)
    return browser.facts.text()


def test_with_the_search_box_empty_cleos_suggestions_show(manager: ModelsDialog) -> None:
    browser = manager.browser
    expected = suggestions()
    assert column(browser, "results", 0) == [s.repo for s in expected]
    assert column(browser, "results", 1) == [s.file for s in expected]
    kinds = column(browser, "results", 3)
    assert set(kinds) == {"MoE", "dense"}
    for memory in {s.memory_gb for s in expected}:  # within a machine size, MoE models come first
        shown = [k for k, s in zip(kinds, expected, strict=True) if s.memory_gb == memory]
        assert shown == sorted(shown, key=lambda k: k != "MoE")


def test_search_shows_results_by_downloads_or_recency_and_pages_with_more(qtbot: QtBot,
                                                                          manager: ModelsDialog) -> None:
    browser = manager.browser
    search_for(qtbot, browser, "many")
    assert browser.results.rowCount() == 20 and browser.more_button.isEnabled()
    downloads = [int(text.replace(",", "")) for text in column(browser, "results", 1)]
    assert downloads == sorted(downloads, reverse=True) and column(browser, "results", 0)[0] == "paging/Many-24-GGUF"
    assert column(browser, "results", 3)[0] == "2024-02-25" and set(column(browser, "results", 4)) == {"apache-2.0"}
    browser.more_button.click()
    qtbot.waitUntil(lambda: browser.results.rowCount() == 25, timeout=15_000)
    assert not browser.more_button.isEnabled() and len(set(column(browser, "results", 0))) == 25
    browser.sort.setCurrentIndex(1)  # recently updated first: searches again
    qtbot.waitUntil(lambda: column(browser, "results", 3)[:1] == ["2024-02-25"] and browser.results.rowCount() == 20,
                    timeout=15_000)
    search_for(qtbot, browser, "model-")
    assert column(browser, "results", 0)[0] == "someone/Model-1-GGUF"  # updated 2025-06-30
    browser.query.clear()
    browser.search_button.click()
    assert column(browser, "results", 0) == [s.repo for s in suggestions()]


def test_a_repository_lists_its_files_with_split_parts_grouped_and_projectors_marked(
        qtbot: QtBot, manager: ModelsDialog) -> None:
    browser = manager.browser
    search_for(qtbot, browser, "tiny")
    choose_repo(qtbot, browser, MOE_REPO)
    files = dict(zip(column(browser, "files", 0), column(browser, "files", 1), strict=True))
    assert files == {f"{SPLIT_NAME} (3 parts)": "model", "tiny-F32.gguf": "model", "tiny-moe-F32.gguf": "model",
                     "mmproj-tiny-F16.gguf": "vision projector, not a chat model", "README.md": "not a model"}
    assert column(browser, "files", 2)[0] == "Q8_0"
    # The first model file is chosen and its header read at once: every part's, of a split model.
    qtbot.waitUntil(lambda: column(browser, "files", 4)[0] in VERDICTS, timeout=30_000)
    assert "llama · dense" in browser.facts.text()
    choose_file(qtbot, browser, "README.md")
    assert browser.facts.text() == "README.md is not a model file." and not browser.download_button.isEnabled()


def test_a_files_header_facts_and_fit_show_before_downloading(qtbot: QtBot, manager: ModelsDialog,
                                                              hub: FakeHub) -> None:
    browser = manager.browser
    search_for(qtbot, browser, "tiny")
    choose_repo(qtbot, browser, MOE_REPO)
    before = hub.served
    facts = choose_file(qtbot, browser, "tiny-moe-F32.gguf")
    assert "qwen3moe · Mixture of Experts: 8 experts, 2 active per token" in facts
    assert "context 32,768 tokens · chat template: yes" in facts
    fit = facts.splitlines()[1]
    assert any(fit.lower().startswith(v.lower()) for v in VERDICTS)
    assert "GB" in fit and "with a 4096-token context" in fit
    row = column(browser, "files", 0).index("tiny-moe-F32.gguf")
    assert column(browser, "files", 4)[row] in VERDICTS
    size = browser.listing.find("tiny-moe-F32.gguf").size if browser.listing else 0
    assert hub.served - before < size  # only the header travelled, not the file
    assert not (folders().models / "tiny-moe-F32.gguf").exists()


def test_a_repository_of_thousands_of_files_is_listed_while_the_window_keeps_ticking(
        qtbot: QtBot, manager: ModelsDialog, hub: FakeHub) -> None:
    names = [f"shard-{i:04d}-Q4_K_M.gguf" for i in range(8000)]
    hub.add_repo("wide/Thousands-GGUF", dict.fromkeys(names, b"GGUF"))
    browser = manager.browser
    search_for(qtbot, browser, "thousands")
    arrived: list[float] = []  # when the list was fetched: from then on, only the window is at work
    browser.work.finished.connect(lambda _kind, _answer: arrived.append(time.perf_counter()),
                                  Qt.ConnectionType.DirectConnection)
    ticks = Ticks()
    choose_repo(qtbot, browser, "wide/Thousands-GGUF")
    qtbot.waitUntil(lambda: browser.files.item(len(names) - 1, 0) is not None, timeout=30_000)
    ticks.timer.stop()
    assert column(browser, "files", 0) == names
    stopped = ticks.worst_after(arrived[0])
    assert stopped < 0.1, f"the window stopped for {stopped * 1000:.0f} ms"  # ~0.3 s when filled in one go


def test_downloads_queue_show_progress_and_cancel(qtbot: QtBot, manager: ModelsDialog, hub: FakeHub) -> None:
    browser, downloads = manager.browser, manager.browser.download_list
    search_for(qtbot, browser, "tiny")
    choose_repo(qtbot, browser, MOE_REPO)
    choose_file(qtbot, browser, "tiny-moe-F32.gguf")
    hub.faults.seconds_per_chunk = 0.05  # about 6 s for this file
    browser.download_button.click()
    browser.download_button.click()  # the same file twice is one download
    assert "already being downloaded" in browser.status.text()
    choose_file(qtbot, browser, "tiny-F32.gguf")
    browser.download_button.click()  # a second one waits for the first
    slow, quick = downloads.jobs
    assert downloads.table.rowCount() == 2
    assert downloads.status(quick) == "Waiting…"
    qtbot.waitUntil(lambda: " MB/s" in downloads.status(slow) and " left" in downloads.status(slow), timeout=15_000)
    assert 0 < downloads.bar(slow).value() < 1000
    downloads.table.selectRow(0)
    downloads.cancel_button.click()
    qtbot.waitUntil(lambda: downloads.status(slow).startswith("Cancelled"), timeout=15_000)
    assert not (folders().models / "tiny-moe-F32.gguf").exists()
    assert (folders().models / "tiny-moe-F32.gguf.part").exists()  # it resumes from there
    qtbot.waitUntil(lambda: downloads.status(quick).startswith("Saved and checked"), timeout=15_000)
    assert downloads.bar(quick).value() == 1000 and (folders().models / "tiny-F32.gguf").is_file()


def test_a_downloaded_model_is_in_the_local_list_at_once(qtbot: QtBot, open_window: OpenWindow, hub: FakeHub) -> None:
    window = open_window(FAST.updated(hub_url=hub.url))
    window.open_models()
    dialog = window.models_dialog
    assert dialog is not None
    browser = dialog.browser
    search_for(qtbot, browser, "tiny")
    choose_repo(qtbot, browser, MOE_REPO)
    choose_file(qtbot, browser, "tiny-moe-F32.gguf")
    with qtbot.waitSignal(dialog.models_changed, timeout=30_000):
        browser.download_button.click()
    qtbot.waitUntil(lambda: "tiny-moe-F32.gguf" in [m.path.name for m in dialog.models], timeout=30_000)
    row = [m.path.name for m in dialog.models].index("tiny-moe-F32.gguf")
    assert cell(dialog.table, row, 2).text() == "2 of 8"  # the local list's experts column


def test_a_download_goes_to_the_folder_the_user_picks_and_is_listed_at_once(
        qtbot: QtBot, open_window: OpenWindow, hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    picked = tmp_path / "my models"
    picked.mkdir()
    asked: list[str] = []

    def choose(_parent: object, _title: str, start: str) -> str:
        asked.append(start)
        return str(picked)

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", choose)
    window = open_window(FAST.updated(hub_url=hub.url))
    window.open_models()
    dialog = window.models_dialog
    assert dialog is not None
    browser = dialog.browser
    assert browser.save_to.text() == f"Save to: {folders().models}"  # Cleo's models folder until one is chosen
    browser.change_folder_button.click()
    assert asked == [str(folders().models)] and browser.save_to.text() == f"Save to: {picked}"
    search_for(qtbot, browser, "tiny")
    choose_repo(qtbot, browser, MOE_REPO)
    choose_file(qtbot, browser, "tiny-moe-F32.gguf")
    browser.download_button.click()
    qtbot.waitUntil(lambda: "tiny-moe-F32.gguf" in [m.path.name for m in dialog.models], timeout=30_000)
    listed = next(m.path for m in dialog.models if m.path.name == "tiny-moe-F32.gguf")
    assert listed == picked / "tiny-moe-F32.gguf" and listed.is_file()
    assert not (folders().models / "tiny-moe-F32.gguf").exists()
    assert str(picked) in window.settings.model_folders  # listed from now on, as a folder added by hand

    dialog.close()  # the choice holds while Cleo runs: the manager opens again with it
    window.open_models()
    assert window.models_dialog is dialog and browser.save_to.text() == f"Save to: {picked}"
    browser.change_folder_button.click()
    assert asked[-1] == str(picked)


def test_offline_and_rate_limits_are_one_line_and_the_rest_keeps_working(qtbot: QtBot, hub: FakeHub,
                                                                         cleo_home: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{closed.getsockname()[1]}"
    dialog = ModelsDialog(4096, (), catalog=[], hub=nobody)
    qtbot.addWidget(dialog)
    browser = dialog.browser
    search_for(qtbot, browser, "qwen")
    said = browser.status.text()
    assert said.startswith("Hugging Face cannot be reached: ") and "\n" not in said
    assert browser.results.rowCount() == len(suggestions())  # what was shown stays
    browser.query.clear()
    browser.search()
    assert column(browser, "results", 0) == [s.repo for s in suggestions()]
    folders().models.mkdir(parents=True, exist_ok=True)  # the local list works as ever
    write_tiny_gguf(folders().models / "here.gguf")
    dialog.show_models(list_models(FAST))
    assert cell(dialog.table, 0, 0).text() == "here.gguf"

    browser.follow(hub.url, 4096)
    hub.faults.api_status = 429
    search_for(qtbot, browser, "tiny")
    assert "429 Too Many Requests" in browser.status.text() and "\n" not in browser.status.text()
    assert "Try again in 30 seconds" in reads(browser.status.toolTip())
    hub.faults.api_status = 0
    search_for(qtbot, browser, "tiny")  # once the Hub answers again, so does the manager
    assert MOE_REPO in column(browser, "results", 0)
    dialog.close_downloads()


def test_names_and_licences_from_the_hub_show_literally(qtbot: QtBot, manager: ModelsDialog, hub: FakeHub,
                                                        tmp_path: Path) -> None:
    canary = red_image(tmp_path)
    hostile = f'<img src="{QUrl.fromLocalFile(str(canary)).toString()}" width="60" height="60"><b>x</b>'
    hub.add_repo(f"evil/{hostile}", {"x.gguf": b"GGUF"}, licence=hostile, downloads=3)
    watch = OpenWatch(canary)
    try:
        browser = manager.browser
        search_for(qtbot, browser, "evil/")
        assert column(browser, "results", 0) == [f"evil/{hostile}"] and column(browser, "results", 4) == [hostile]
        assert reads(cell(browser.results, 0, 0).toolTip()) == f"evil/{hostile}"
        browser.results.selectRow(0)  # not a repository name Cleo sends anywhere: refused, and said literally
        qtbot.waitUntil(lambda: "is not a Hugging Face repository name" in browser.status.text(), timeout=15_000)
        assert hostile in browser.status.text()
        qtbot.wait(100)
        assert red_pixels(manager) == 0 and not watch.opened()
    finally:
        watch.close()


class StallingHub:
    """A Hub that answers a search only once `release` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.asked = threading.Event()
        stalling = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stalling.asked.set()
                stalling.release.wait(timeout=30)
                body = json.dumps([{"id": "late/Answer-GGUF", "downloads": 1, "likes": 0, "tags": []}]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class Ticks:
    """A 10 ms timer on the GUI thread, and the longest it went without ticking."""

    def __init__(self) -> None:
        self.count, self.worst, self._last = 0, 0.0, time.perf_counter()
        self.gaps: list[tuple[float, float]] = []  # (from, to) of every gap
        self.timer = QTimer()
        self.timer.timeout.connect(self.tick)
        self.timer.start(10)

    def tick(self) -> None:
        now = time.perf_counter()
        self.count += 1
        self.gaps.append((self._last, now))
        self.worst, self._last = max(self.worst, now - self._last), now

    def worst_after(self, moment: float) -> float:
        """The longest gap that ended after `moment`."""
        return max((end - start for start, end in self.gaps if end > moment), default=0.0)


def test_the_window_keeps_ticking_while_the_hub_stalls_and_closing_cancels(qtbot: QtBot, hub: FakeHub,
                                                                           cleo_home: Path) -> None:
    stalling = StallingHub()
    try:
        dialog = ModelsDialog(4096, (), catalog=[], hub=stalling.url)
        qtbot.addWidget(dialog)
        dialog.show()
        browser = dialog.browser
        browser.query.setText("qwen")
        ticks = Ticks()
        browser.search_button.click()
        assert stalling.asked.wait(10)
        qtbot.wait(1500)
        assert ticks.count > 50 and ticks.worst < 0.5  # the search waits; the window does not
        assert browser.status.text().startswith("Searching")

        browser.follow(hub.url, 4096)  # meanwhile, on a Hub that answers: a slow download runs
        search_for(qtbot, browser, "tiny")
        choose_repo(qtbot, browser, MOE_REPO)
        choose_file(qtbot, browser, "tiny-moe-F32.gguf")
        hub.faults.seconds_per_chunk = 0.05
        browser.download_button.click()
        job = browser.download_list.jobs[0]
        ticks.worst = 0.0
        qtbot.waitUntil(lambda: browser.download_list.bar(job).value() > 100, timeout=15_000)
        assert ticks.worst < 0.5

        browser.follow(stalling.url, 4096)  # a search that stalls again; then the manager is closed
        assert browser.work.busy("search")
        dialog.reject()
        assert not browser.work.busy("search")
        qtbot.waitUntil(lambda: browser.download_list.status(job).startswith("Cancelled"), timeout=15_000)
        stalling.release.set()
        qtbot.waitUntil(lambda: browser.work.running == 0, timeout=15_000)
        qtbot.wait(100)
        assert "late/Answer-GGUF" not in column(browser, "results", 0)  # the late answer is dropped
        ticks.timer.stop()
        dialog.close_downloads()
    finally:
        stalling.close()
