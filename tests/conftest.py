"""Shared fixtures. Every test runs with CLEO_HOME in a fresh temporary folder."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Qt must never look for a display in tests; set before any QApplication exists.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

from engine.paths import DEFAULT_CHAT_MODEL_FILE, DEFAULT_EMBEDDING_MODEL_FILE


@pytest.fixture(autouse=True)
def cleo_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private CLEO_HOME per test, and no CLEO_* settings leaking in from the shell."""
    for name in list(os.environ):
        if name.startswith("CLEO_"):
            monkeypatch.delenv(name)
    home = tmp_path / "cleo-home"
    monkeypatch.setenv("CLEO_HOME", str(home))
    return home


@dataclass(frozen=True)
class DefaultModels:
    """The real default models, built once per test session by `training.defaults`."""

    home: Path
    chat: Path
    embedder: Path
    dense_base: Path

    def copy_home_to(self, home: Path) -> None:
        """Give `home` its own copy of everything setup produced (safe to damage)."""
        shutil.copytree(self.home, home, dirs_exist_ok=True)


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


def write_tiny_gguf(path: Path, arch: str = "llama", tensors: bool = True, chat_template: str = "") -> Path:
    """A small valid GGUF (name, context, 100-token vocabulary, two F32 tensors) to break or stretch."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(path, arch=arch)
    writer.add_name("tiny")
    writer.add_context_length(64)
    writer.add_token_list([f"t{i}" for i in range(100)])
    if chat_template:
        writer.add_chat_template(chat_template)
    if tensors:
        writer.add_tensor("token_embd.weight", np.ones((100, 32), dtype=np.float32))
        writer.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def moe_model(default_models: DefaultModels) -> Iterator[object]:
    from engine.llama_backend import ChatModel

    model = ChatModel(default_models.chat, context_size=1024, threads=1)
    yield model
    model.close()


@pytest.fixture(scope="session")
def dense_model(default_models: DefaultModels) -> Iterator[object]:
    from engine.llama_backend import ChatModel

    model = ChatModel(default_models.dense_base, context_size=1024, threads=1)
    yield model
    model.close()


@pytest.fixture(scope="session")
def embedder(default_models: DefaultModels) -> Iterator[object]:
    from engine.llama_backend import Embedder

    model = Embedder(default_models.embedder, threads=1)
    yield model
    model.close()
