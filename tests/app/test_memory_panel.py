"""The memory panel in the window: approving, editing and forgetting memories reach the database."""

from __future__ import annotations

import pytest
from PySide6.QtWidgets import QInputDialog
from pytestqt.qtbot import QtBot

from engine import open_profile
from tests.helpers.gui import OpenWindow, remembered, rows


def test_approving_editing_and_forgetting_memories_reach_the_database(
        qtbot: QtBot, open_window: OpenWindow, monkeypatch: pytest.MonkeyPatch) -> None:
    memories = open_profile()
    _, proposed = memories.book.add("The user plays the cello", "fact", propose=True)
    _, kept = memories.book.add("The user lives in Ghent", "profile")
    memories.close()
    window = open_window()
    panel = window.memory_panel
    qtbot.waitUntil(lambda: panel.inbox.count() == 1 and panel.remembered.topLevelItemCount() == 1)

    panel.inbox.setCurrentRow(0)
    panel.approve_button.click()
    qtbot.waitUntil(lambda: panel.inbox.count() == 0 and panel.remembered.topLevelItemCount() == 2)
    assert rows("SELECT status FROM memories WHERE id = ?", proposed.id) == [("active",)]

    monkeypatch.setattr(QInputDialog, "getMultiLineText", lambda *a, **k: ("The user lives in Antwerp", True))
    panel.remembered.setCurrentItem(remembered(panel)["The user lives in Ghent."])
    panel.edit_button.click()
    qtbot.waitUntil(lambda: "The user lives in Antwerp." in remembered(panel))
    assert rows("SELECT content FROM memories WHERE id = ?", kept.id) == [("The user lives in Antwerp.",)]

    panel.remembered.setCurrentItem(remembered(panel)["The user plays the cello."])
    panel.forget_button.click()
    qtbot.waitUntil(lambda: panel.remembered.topLevelItemCount() == 1)
    assert rows("SELECT count(*) FROM memories WHERE id = ? AND status = 'active'", proposed.id) == [(0,)]
