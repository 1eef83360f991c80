"""Starting the window with something wrong around it: the double-clicked app has no terminal, so
what stops it is told in a dialog, and a bug is logged with its traceback as well."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QMessageBox

from app import gui
from engine import folders


@dataclass(frozen=True)
class Shown:
    icon: QMessageBox.Icon
    text: str
    details: str
    plain: bool


@pytest.fixture
def dialogs(qapp: QApplication, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Shown]]:
    """The message boxes Cleo shows, recorded instead of waiting for a click."""
    shown: list[Shown] = []

    def record(box: QMessageBox) -> int:
        shown.append(Shown(box.icon(), box.text(), box.detailedText(), box.textFormat() == Qt.TextFormat.PlainText))
        return QMessageBox.StandardButton.Ok.value

    monkeypatch.setattr(QMessageBox, "exec", record)
    handlers = list(logging.getLogger().handlers)
    yield shown
    for handler in logging.getLogger().handlers:  # the log file `run` opened belongs to this test's home
        if handler not in handlers:
            logging.getLogger().removeHandler(handler)
            handler.close()


def _settings_folder_in_the_way(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (folders().config / "settings.json").mkdir(parents=True)


def _bad_variable(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLEO_THREADS", "lots")


def _home_is_a_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home.parent.mkdir(parents=True, exist_ok=True)
    home.write_text("not a folder", encoding="utf-8")


@pytest.mark.parametrize(("break_it", "named"), [(_bad_variable, "CLEO_THREADS"),
                                                 (_settings_folder_in_the_way, "settings.json"),
                                                 (_home_is_a_file, "cleo-home")],
                         ids=["bad CLEO_ variable", "settings.json is a folder", "CLEO_HOME is a file"])
def test_what_stops_cleo_from_starting_is_shown_in_a_dialog(
        dialogs: list[Shown], cleo_home: Path, monkeypatch: pytest.MonkeyPatch,
        break_it: object, named: str) -> None:
    break_it(cleo_home, monkeypatch)  # type: ignore[operator]
    assert gui.run() == 2
    assert len(dialogs) == 1 and named in dialogs[0].text, dialogs
    assert dialogs[0].icon == QMessageBox.Icon.Critical and dialogs[0].plain and not dialogs[0].details


def test_a_bug_while_starting_is_logged_and_shown_with_its_details(
        dialogs: list[Shown], monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise RuntimeError("settings reader exploded")

    monkeypatch.setattr(gui, "load_settings", broken)
    assert gui.run() == 1
    assert len(dialogs) == 1 and "bug" in dialogs[0].text
    assert "RuntimeError: settings reader exploded" in dialogs[0].details
    log_text = (folders().logs / "cleo.log").read_text(encoding="utf-8")
    assert "bug while starting" in log_text and "RuntimeError: settings reader exploded" in log_text
