"""The settings dialog on its own: a refused value is named under its field, and OK waits for a fix."""

from __future__ import annotations

from pytestqt.qtbot import QtBot

from app.settings_dialog import PersonasEditor, SettingsDialog
from engine import Settings


def test_settings_explain_a_refused_value_and_keep_ok_disabled(qtbot: QtBot) -> None:
    dialog = SettingsDialog(Settings())
    qtbot.addWidget(dialog)
    prompt = dialog.editors["system_prompt"]
    prompt.setPlainText("x" * 20_001)  # type: ignore[attr-defined]
    assert dialog.errors["system_prompt"].isVisibleTo(dialog) and "20000" in dialog.errors["system_prompt"].text()
    ok = dialog.buttons.button(dialog.buttons.StandardButton.Ok)
    assert not ok.isEnabled()
    prompt.setPlainText("Be brief.")  # type: ignore[attr-defined]
    dialog.editors["temperature"].setValue(0.3)  # type: ignore[attr-defined]
    dialog.editors["theme"].setCurrentText("dark")  # type: ignore[attr-defined]
    assert ok.isEnabled()
    ok.click()
    assert (dialog.settings.system_prompt, dialog.settings.temperature, dialog.settings.theme) == (
        "Be brief.", 0.3, "dark")


def test_personas_are_edited_in_the_settings_with_each_mistake_named(qtbot: QtBot) -> None:
    dialog = SettingsDialog(Settings())
    qtbot.addWidget(dialog)
    editor = dialog.editors["personas"]
    assert isinstance(editor, PersonasEditor)
    editor.table.item(0, 0).setText("")  # type: ignore[union-attr]
    assert "1 name" in dialog.errors["personas"].text()
    editor.table.item(0, 0).setText("Brief")  # type: ignore[union-attr]
    dialog.buttons.button(dialog.buttons.StandardButton.Ok).click()
    assert dialog.settings.personas[0].name == "Brief"
