"""Model files for tests: the real default models as the session built them, and tiny GGUF files to break."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DefaultModels:
    """The real default models, built once per test session by `training.defaults`."""

    home: Path
    chat: Path
    embedder: Path
    dense_base: Path

    def copy_home_to(self, home: Path) -> None:
        """Give `home` its own copy of everything setup produced (safe to damage), without a profile:
        tests that run Cleo in the shared home leave chats there, which recall would bring into
        another test's prompts."""
        shutil.copytree(self.home, home, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("cleo.db*", "backups", "*.lock"))


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
