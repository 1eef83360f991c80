"""Everything one profile needs, opened together on the thread that will use it.

`open_cleo` opens the database (checked, locked, migrated), the conversation store, the
embedder, memory and the chat model, and wires them into an `Assistant`. The GUI's worker, the
terminal commands and the smoke test all start here, so they cannot disagree about how.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from engine.assistant import Assistant, NoMemory
from engine.database import Database, open_database
from engine.errors import KnownError, ModelMissing
from engine.llama_backend import ChatModel, Embedder
from engine.memory import MemoryBook, MemoryHooks
from engine.paths import default_chat_model, default_embedding_model
from engine.recall import Recall
from engine.settings import Settings
from engine.store import SqliteConversationStore

log = logging.getLogger(__name__)


@dataclass
class Memories:
    """The database and what reads and writes it, without a chat model (for `cleo memory ...`)."""

    database: Database
    store: SqliteConversationStore
    embedder: Embedder | None
    book: MemoryBook
    recall: Recall

    def close(self) -> None:
        if self.embedder is not None:
            self.embedder.close()
        self.database.close()


@dataclass
class Cleo:
    memories: Memories
    hooks: MemoryHooks
    assistant: Assistant

    def close(self) -> None:
        self.assistant.model.close()
        self.memories.close()


def open_memories(database_path: Path | None = None, *, embedder_path: Path | None = None) -> Memories:
    database = open_database(database_path)
    try:
        store = SqliteConversationStore(database)
        store.recover_after_crash()
        embedder = _open_embedder(embedder_path or default_embedding_model())
        book = MemoryBook(database, embedder)
        book.embed_missing()  # rows a crash or an import left without vectors
        return Memories(database, store, embedder, book, Recall(database, embedder))
    except BaseException:
        database.close()
        raise


def open_cleo(settings: Settings, *, model_path: Path | None = None, database_path: Path | None = None) -> Cleo:
    path = chat_model_path(settings, model_path)
    memories = open_memories(database_path)
    try:
        model = ChatModel(path, context_size=settings.context_size, threads=settings.threads or None,
                          gpu_layers=settings.gpu_layers)
    except BaseException:
        memories.close()
        raise
    hooks = MemoryHooks(memories.book, memories.recall, memories.store,
                        ask_before_remembering=settings.ask_before_remembering)
    # With memory switched off in the settings, chats are still saved and searchable; nothing is
    # recalled or learned.
    memory = hooks if settings.memory_enabled else NoMemory()
    assistant = Assistant(model, settings, store=memories.store, memory=memory)
    return Cleo(memories, hooks, assistant)


def chat_model_path(settings: Settings, model_path: Path | None = None) -> Path:
    default = default_chat_model()
    path = model_path or (Path(settings.chat_model) if settings.chat_model else default)
    if path == default and not path.exists():
        rebuild = ("Reinstall Cleo to get it back" if getattr(sys, "frozen", False)
                   else "Build it with `python -m training.defaults` (or `make run`)")
        raise ModelMissing(f"Cleo's default model {path} does not exist.",
                           hint=f"{rebuild}, or choose another model (Models in the window, --model PATH in the "
                                "terminal).")
    return path


def _open_embedder(path: Path) -> Embedder | None:
    """The embedder, or None (recall then uses keywords only) when its file is missing or broken."""
    try:
        return Embedder(path, threads=1)
    except KnownError as exc:
        log.warning("memory search runs on keywords only: %s", exc.message)
        return None
