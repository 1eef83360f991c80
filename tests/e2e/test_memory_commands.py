"""`cleo memory …` and `cleo search`, run as a user runs them, on a real profile."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.models import DefaultModels


@pytest.fixture
def home(cleo_home: Path, default_models: DefaultModels) -> Path:
    """A fresh profile that shares the session's built models (linked, not copied)."""
    (cleo_home / "data").mkdir(parents=True)
    models = default_models.home / "data" / "models"
    try:
        (cleo_home / "data" / "models").symlink_to(models)
    except OSError:  # Windows allows links to administrators and developer mode only
        shutil.copytree(models, cleo_home / "data" / "models")
    return cleo_home


def _cleo(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLEO_HOME": str(home), "CLEO_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "app", *args], env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def test_add_list_search_pin_and_forget_memories(home: Path) -> None:
    assert _cleo("memory", "add", "My sister Maria lives in Porto", "--kind", "profile", home=home).returncode == 0
    assert _cleo("memory", "add", "I am allergic to peanuts", home=home).returncode == 0
    listed = json.loads(_cleo("memory", "list", "--json", home=home).stdout)
    assert {m["content"] for m in listed} == {"My sister Maria lives in Porto.", "I am allergic to peanuts."}
    peanuts = next(m for m in listed if "peanuts" in m["content"])

    result = _cleo("memory", "search", "what food should I avoid", "--k", "1", "--json", home=home)
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    found = json.loads(line)["results"]
    assert found[0]["memory_id"] == peanuts["id"] and found[0]["score"] > 0 and found[0]["created_at"] > 0

    assert _cleo("memory", "pin", peanuts["id"][:8], home=home).returncode == 0
    assert json.loads(_cleo("memory", "list", "--json", home=home).stdout)[0]["pinned"] is True
    assert _cleo("memory", "forget", peanuts["id"][:8], home=home).returncode == 0
    assert [m["content"] for m in json.loads(_cleo("memory", "list", "--json", home=home).stdout)] == [
        "My sister Maria lives in Porto."]


def test_many_queries_in_one_process_give_one_json_line_each(home: Path, tmp_path: Path) -> None:
    _cleo("memory", "add", "The user's car is a red Fiat Panda", home=home)
    _cleo("memory", "add", "The user plays the cello on Sundays", home=home)
    queries = tmp_path / "queries.txt"
    queries.write_text("which car do I drive\n\nwhat instrument do I play\n")
    result = _cleo("memory", "search", "--queries", str(queries), "--k", "1", "--json", home=home)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["query"] for line in lines] == ["which car do I drive", "what instrument do I play"]
    assert "Fiat" in lines[0]["results"][0]["text"] and "cello" in lines[1]["results"][0]["text"]


def test_bad_memory_requests_are_explained(home: Path, tmp_path: Path) -> None:
    result = _cleo("memory", "forget", "doesnotexist", home=home)
    assert result.returncode == 2 and "No memory has an id starting with" in result.stderr
    result = _cleo("memory", "search", "--queries", str(tmp_path / "missing.txt"), home=home)
    assert result.returncode == 2 and "missing.txt" in result.stderr and "Traceback" not in result.stderr


def test_search_finds_words_from_past_chats_with_snippets(home: Path) -> None:
    result = _cleo("chat", "--once", "Tell me about the Douro valley wines.", home=home)
    assert result.returncode == 0, result.stderr
    hits = json.loads(_cleo("search", "Douro", "--json", home=home).stdout)
    asked = [h for h in hits if h["role"] == "user"]
    assert asked and "[Douro]" in asked[0]["snippet"] and asked[0]["conversation_title"].startswith("Tell me about")
    assert "Douro" in _cleo("search", "douro", home=home).stdout


def _plain_cleo(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """`cleo` on a profile without models: memory then searches by keywords only."""
    return _cleo(*args, home=home)


def test_memories_are_shown_not_obeyed(cleo_home: Path) -> None:
    hostile = "My clipboard \x1b]52;c;ZXZpbA==\x07 and title \x1b]0;pwned\x07 stay \x9b2J put \u202eevil"
    added = _plain_cleo("memory", "add", hostile, home=cleo_home)
    listed = _plain_cleo("memory", "list", home=cleo_home)
    as_json = _plain_cleo("memory", "list", "--json", home=cleo_home)
    found = _plain_cleo("memory", "search", "clipboard", home=cleo_home)
    for result in (added, listed, as_json, found):
        assert result.returncode == 0, result.stderr
        output = result.stdout + result.stderr
        assert not any(control in output for control in ("\x1b", "\x07", "\x9b", "\u202e")), output
    assert "My clipboard \\x1b]52;c;ZXZpbA==\\x07 and title \\x1b]0;pwned\\x07" in listed.stdout
    assert "\\x1b]52" in added.stdout and "\\x1b]52" in found.stdout
    assert json.loads(as_json.stdout)[0]["content"] == hostile + "."  # the data itself is kept as it is


@pytest.mark.parametrize("prefix", ["%", "_", "%%%%%%%%"])
def test_a_memory_id_prefix_matches_literally(cleo_home: Path, prefix: str) -> None:
    assert _plain_cleo("memory", "add", "I live in Porto", home=cleo_home).returncode == 0
    result = _plain_cleo("memory", "forget", prefix, home=cleo_home)
    assert result.returncode == 2 and "No memory has an id starting with" in result.stderr
    assert [m["content"] for m in json.loads(_plain_cleo("memory", "list", "--json", home=cleo_home).stdout)] == [
        "I live in Porto."]
