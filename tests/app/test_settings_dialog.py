"""The settings dialog on its own: a refused value is named under its field, and OK waits for a fix; the
Local API group, its token buttons, and the warning that goes with listening beyond this computer."""

from __future__ import annotations

import pytest
from PySide6.QtWidgets import QFormLayout, QLabel, QMessageBox
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


def test_the_local_api_settings_are_one_group_with_where_apps_connect_and_the_token_buttons(
        qtbot: QtBot, monkeypatch: pytest.MonkeyPatch) -> None:
    dialog = SettingsDialog(Settings())
    qtbot.addWidget(dialog)
    group = dialog.groups["Local API"]
    api_fields = [name for name in Settings.model_fields if name.startswith("api_")]
    assert api_fields and all(group.isAncestorOf(dialog.editors[name]) for name in api_fields)
    assert not any(group.isAncestorOf(editor) for name, editor in dialog.editors.items() if name not in api_fields)
    assert group.isAncestorOf(dialog.copy_token_button) and group.isAncestorOf(dialog.new_token_button)

    dialog.editors["api_port"].setValue(9123)  # type: ignore[attr-defined]
    assert "http://127.0.0.1:9123/v1" in dialog.api_address.text()

    assert not dialog.network_warning.isVisibleTo(dialog)
    dialog.editors["api_listen_on_network"].setChecked(True)  # type: ignore[attr-defined]
    assert dialog.network_warning.isVisibleTo(dialog) and "token" in dialog.network_warning.text()

    with qtbot.waitSignal(dialog.copy_token_requested, timeout=1000):
        dialog.copy_token_button.click()


@pytest.mark.parametrize("answer", ["Ok", "Cancel"])
def test_a_new_token_is_made_only_once_the_user_confirmed(
        qtbot: QtBot, monkeypatch: pytest.MonkeyPatch, answer: str) -> None:
    dialog = SettingsDialog(Settings())
    qtbot.addWidget(dialog)
    asked: list[str] = []

    def reply(box: QMessageBox) -> int:
        asked.append(box.text())
        return getattr(QMessageBox.StandardButton, answer).value

    monkeypatch.setattr(QMessageBox, "exec", reply)
    made: list[bool] = []
    dialog.new_token_requested.connect(lambda: made.append(True))
    dialog.new_token_button.click()
    assert len(asked) == 1 and "stops working" in asked[0]
    assert made == ([True] if answer == "Ok" else [])


def test_where_models_are_found_is_its_own_group_and_refuses_what_is_no_web_address(qtbot: QtBot) -> None:
    dialog = SettingsDialog(Settings())
    qtbot.addWidget(dialog)
    group = dialog.groups["Finding models"]
    assert [name for name, editor in dialog.editors.items() if group.isAncestorOf(editor)] == ["hub_url"]
    form = group.layout()
    assert isinstance(form, QFormLayout)
    holder = dialog.editors["hub_url"].parentWidget()
    assert holder is not None
    label = form.labelForField(holder)
    assert isinstance(label, QLabel) and label.text() == "Model source"
    dialog.editors["hub_url"].setText("file:///etc/passwd")  # type: ignore[attr-defined]
    assert "not a web address" in dialog.errors["hub_url"].text()
    assert not dialog.buttons.button(dialog.buttons.StandardButton.Ok).isEnabled()
    dialog.editors["hub_url"].setText("https://hf-mirror.example.org")  # type: ignore[attr-defined]
    dialog.buttons.button(dialog.buttons.StandardButton.Ok).click()
    assert dialog.settings.hub_url == "https://hf-mirror.example.org"
