"""Shared fixtures. Every test runs with CLEO_HOME in a fresh temporary folder; helpers live in `tests/helpers/`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# Qt must never look for a display in tests; set before any QApplication exists.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

from engine.paths import DEFAULT_CHAT_MODEL_FILE, DEFAULT_EMBEDDING_MODEL_FILE
from tests.helpers.models import DefaultModels


@pytest.fixture(autouse=True)
def cleo_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private CLEO_HOME per test, and no CLEO_* settings leaking in from the shell."""
    for name in list(os.environ):
        if name.startswith("CLEO_"):
            monkeypatch.delenv(name)
    home = tmp_path / "cleo-home"
    monkeypatch.setenv("CLEO_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def default_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DefaultModels]:
    from training import defaults

    home = tmp_path_factory.mktemp("session-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLEO_HOME", str(home))
        defaults.prepare(report=lambda line: None)
        base = defaults.base_chat_model()
    models = home / "data" / "models"
    yield DefaultModels(home, models / DEFAULT_CHAT_MODEL_FILE, models / DEFAULT_EMBEDDING_MODEL_FILE, base)


@pytest.fixture(scope="session")
def moe_model(default_models: DefaultModels) -> Iterator[object]:
    from engine.runtime.chat_model import LlamaChatModel

    model = LlamaChatModel(default_models.chat, context_size=1024, threads=1)
    yield model
    model.close()


@pytest.fixture(scope="session")
def dense_model(default_models: DefaultModels) -> Iterator[object]:
    from engine.runtime.chat_model import LlamaChatModel

    model = LlamaChatModel(default_models.dense_base, context_size=1024, threads=1)
    yield model
    model.close()


@pytest.fixture(scope="session")
def embedder(default_models: DefaultModels) -> Iterator[object]:
    from engine.runtime.embedder import Embedder

    model = Embedder(default_models.embedder, threads=1)
    yield model
    model.close()
