"""Settings: saved and loaded, overridden from the environment, and bad values refused clearly."""

from __future__ import annotations

import json

import pytest

from engine.errors import SettingsInvalid
from engine.settings import Settings, load_settings, save_settings, settings_file


def test_saved_settings_come_back_unchanged() -> None:
    chosen = Settings().updated(context_size=8192, temperature=0.2, theme="dark", system_prompt="Be terse.")
    save_settings(chosen)
    loaded, warnings = load_settings()
    assert loaded == chosen
    assert warnings == []


def test_every_setting_has_a_description_and_a_valid_default() -> None:
    defaults = Settings()
    for name, field in Settings.model_fields.items():
        assert field.description, name
        assert getattr(defaults, name) == field.default


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    save_settings(Settings().updated(context_size=8192, memory_enabled=True))
    monkeypatch.setenv("CLEO_CONTEXT_SIZE", "2048")
    monkeypatch.setenv("CLEO_MEMORY_ENABLED", "false")
    loaded, _ = load_settings()
    assert loaded.context_size == 2048
    assert loaded.memory_enabled is False


def test_out_of_range_value_is_refused_naming_the_key_and_limit() -> None:
    with pytest.raises(SettingsInvalid) as caught:
        Settings().updated(context_size=10**9)
    assert "context_size" in caught.value.message
    assert "262144" in caught.value.message


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLEO_TEMPERATURE", "9")
    with pytest.raises(SettingsInvalid) as caught:
        load_settings()
    assert "CLEO_TEMPERATURE" in caught.value.message
    assert "2" in caught.value.message


def test_unknown_key_in_file_is_named_and_the_good_entries_survive() -> None:
    path = settings_file()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"font_size": 14, "colour_sceme": "blue", "top_k": -5}))
    loaded, warnings = load_settings()
    assert loaded.font_size == 14
    assert loaded.top_k == Settings().top_k
    text = "\n".join(warnings)
    assert "colour_sceme" in text
    assert "top_k" in text and "greater than or equal to 0" in text
    assert (path.parent / "settings.json.bad").exists()


def test_corrupt_settings_file_is_kept_aside_and_defaults_are_used() -> None:
    path = settings_file()
    path.parent.mkdir(parents=True)
    path.write_text('{"context_size": 8192,,, oops')
    loaded, warnings = load_settings()
    assert loaded == Settings()
    assert len(warnings) == 1 and "settings.json.bad" in warnings[0]
    assert (path.parent / "settings.json.bad").read_text() == '{"context_size": 8192,,, oops'
