"""Settings: saved and loaded, overridden from the environment, and bad values refused clearly."""

from __future__ import annotations

import json
import os
import stat

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


def test_a_settings_file_that_is_a_folder_is_named_with_what_to_do() -> None:
    path = settings_file()
    path.mkdir(parents=True)
    with pytest.raises(SettingsInvalid) as caught:
        load_settings()
    assert str(path) in caught.value.message and "move away" in caught.value.hint
    with pytest.raises(SettingsInvalid) as saving:
        save_settings(Settings())
    assert str(path) in saving.value.message


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions that bind the user")
def test_an_unreadable_settings_file_is_named_with_what_to_do() -> None:
    path = settings_file()
    save_settings(Settings())
    path.chmod(0)
    try:
        with pytest.raises(SettingsInvalid) as caught:
            load_settings()
    finally:
        path.chmod(0o600)
    assert str(path) in caught.value.message


@pytest.mark.parametrize(("variable", "value"), [("CLEO_CONTEXT_SIZE", "lots"), ("CLEO_MEMORY_ENABLED", "maybe"),
                                                  ("CLEO_THEME", "purple"), ("CLEO_MODEL_FOLDERS", "[1, 2")])
def test_every_kind_of_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsInvalid) as caught:
        load_settings()
    assert variable in caught.value.message and "Unset that variable" in caught.value.hint


def test_a_misspelled_variable_is_named_in_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLEO_TEMPRATURE", "0.1")
    monkeypatch.setenv("CLEO_HOME_EXTRA", "unrelated")
    settings, warnings = load_settings()
    assert settings.temperature == Settings().temperature
    assert warnings == ["The variable CLEO_TEMPRATURE is not a setting and was ignored; did you mean CLEO_TEMPERATURE?"]


@pytest.mark.skipif(os.name != "posix", reason="modes are POSIX")
def test_settings_are_saved_readable_by_the_user_alone_whatever_the_umask() -> None:
    previous = os.umask(0o022)
    try:
        path = save_settings(Settings())
        path.with_name("settings.json.bad").unlink(missing_ok=True)
        path.write_text("{oops")
        path.chmod(0o644)
        load_settings()  # the damaged file is kept aside
    finally:
        os.umask(previous)
    assert oct(stat.S_IMODE(path.with_name("settings.json.bad").stat().st_mode)) == oct(0o600)
    save_settings(Settings())
    assert oct(stat.S_IMODE(path.stat().st_mode)) == oct(0o600)
    assert sorted(p.name for p in path.parent.iterdir()) == ["settings.json", "settings.json.bad"]  # no leftovers
