"""The user's data opened: the database and everything that reads and writes it, without a chat model.

`cleo memory …`, `cleo search` and `cleo import/export` need only this; a `Session` opens one and
adds the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import transfer
from engine.errors import KnownError
from engine.memory.book import MemoryBook
from engine.memory.recall import Recall
from engine.paths import default_embedding_model
from engine.storage.conversations import SqliteConversationStore
from engine.storage.database import Database, open_database

if TYPE_CHECKING:
    from engine.runtime.embedder import Embedder

log = logging.getLogger(__name__)


@dataclass
class Profile:
    database: Database
    store: SqliteConversationStore  # the conversations
    embedder: Embedder | None  # None: memory search runs on keywords only
    book: MemoryBook  # the memories
    recall: Recall

    def close(self) -> None:
        if self.embedder is not None:
            self.embedder.close()
        self.database.close()

    def import_chats(self, source: str, path: Path) -> transfer.ImportReport:
        """Add the chats in `path`, a ChatGPT export (`source` "chatgpt") or a Cleo one ("cleo"):
        all of them, or none when the file is refused."""
        if source == "chatgpt":
            return transfer.import_chatgpt(self.database, path)
        if source == "cleo":
            return transfer.import_cleo_file(self.database, path)
        raise ValueError(f"unknown import source {source!r}")

    def export_chat(self, conversation_id: str, form: str = "markdown") -> str | dict[str, Any]:
        """One chat: its current branch as Markdown, or ("json") every branch, to import again."""
        if form == "json":
            return transfer.export_json(self.store, conversation_id)
        return transfer.export_markdown(self.store, conversation_id)

    def export_everything(self) -> dict[str, Any]:
        """Every chat but temporary ones, every branch, as one Cleo JSON document."""
        return transfer.export_everything(self.database)


def open_profile(database_path: Path | None = None, *, embedder_path: Path | None = None,
                 keywords_only: bool = False) -> Profile:
    """Open (check, lock, migrate) the profile's database and what works on it. `keywords_only`
    skips loading the embedder, for commands that search nothing (import, export)."""
    database = open_database(database_path)
    try:
        store = SqliteConversationStore(database)
        store.recover_after_crash()
        embedder = None if keywords_only else _open_embedder(embedder_path or default_embedding_model())
        book = MemoryBook(database, embedder)
        if embedder is not None:
            book.embed_missing()  # rows a crash or an import left without vectors
        return Profile(database, store, embedder, book, Recall(database, embedder))
    except BaseException:
        database.close()
        raise


def _open_embedder(path: Path) -> Embedder | None:
    """The embedder, or None (recall then uses keywords only) when its file is missing or broken."""
    from engine.runtime.embedder import Embedder

    try:
        return Embedder(path, threads=1)
    except KnownError as exc:
        log.warning("memory search runs on keywords only: %s", exc.message)
        return None
