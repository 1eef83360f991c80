"""A Cleo export names each chat's model by its path on the computer that wrote it; importing one
must never make Cleo load a model the user did not choose. Run through the Session (real profile,
real SQLite, real model files) with a scripted model in place of llama.cpp."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.chat.model import ChatModel
from engine.events import Failed, Token
from engine.profile import open_profile
from engine.session import Session
from engine.settings import Settings
from tests.helpers.models import write_tiny_gguf
from tests.helpers.scripted_model import ScriptedChatModel

START = 1_700_000_000.0


class Loader:
    """Loads scripted models and remembers which files it was asked to load."""

    def __init__(self) -> None:
        self.loaded: list[Path] = []

    def __call__(self, path: Path, settings: Settings) -> ChatModel:
        self.loaded.append(path)
        return ScriptedChatModel(path=path, fallback=f"Written by {path.stem}.")


@pytest.mark.parametrize("planted", ["evil.gguf (absolute)", "../../evil.gguf", "evil.gguf"])
def test_an_imported_chat_keeps_the_model_the_user_chose(tmp_path: Path, planted: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = write_tiny_gguf(tmp_path / "chosen.gguf")
    evil = write_tiny_gguf(tmp_path / "evil.gguf")  # a real, loadable model: only the import stands in the way
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # so that "../../evil.gguf" and a bare name would reach it too
    model = str(evil) if planted.endswith("(absolute)") else planted
    document = {"format": "cleo-conversations", "version": 1, "conversations": [
        {"id": "c1", "title": "Planted", "created_at": START, "model": model, "current_leaf_id": "m1",
         "messages": [{"id": "m1", "parent_id": None, "role": "user", "content": "Hi", "created_at": START}]}]}
    backup = tmp_path / "backup.json"
    backup.write_text(json.dumps(document), encoding="utf-8")
    loader = Loader()
    settings = Settings(ask_before_remembering=False, chat_model=str(chosen))
    session = Session(open_profile(embedder_path=Path("no-embedder.gguf")), loader(chosen, settings), settings,
                      load_model=loader)
    try:
        report, _ = session.import_chats("cleo", backup)
        assert report.conversations_added == 1
        assert session.view("c1").model == ""

        events = list(session.run(session.send("c1", "Who writes this?")))

        assert not [e for e in events if isinstance(e, Failed)]
        assert "".join(e.text for e in events if isinstance(e, Token)) == "Written by chosen."
        assert loader.loaded == [chosen]
    finally:
        session.close()
