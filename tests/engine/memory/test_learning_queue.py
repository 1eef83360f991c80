"""The learning queue keeps a turn until what it taught is saved, and gives up on one that always fails.

On a real database, without an embedder (memory search on keywords): the point is the queue.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlean

from engine.memory.book import MemoryBook
from engine.memory.recall import Recall
from engine.memory.turn_memory import LongTermMemory
from engine.storage.conversations import SqliteConversationStore
from engine.storage.database import Database, DiskFull, open_database


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    database = open_database(tmp_path / "cleo.db")
    yield database
    database.close()


def _memory(database: Database) -> LongTermMemory:
    return LongTermMemory(MemoryBook(database, None), Recall(database, None), SqliteConversationStore(database),
                          ask_before_remembering=False)


def _a_finished_turn(memory: LongTermMemory) -> None:
    chat = memory.store.create_conversation()
    said = memory.store.add_message(chat.id, "user", "I keep bees in my garden.", None)
    memory.after_turn(chat.id, [said, memory.store.add_message(chat.id, "assistant", "How lovely.", said.id)])


def test_a_turn_stays_queued_until_what_it_taught_is_saved(database: Database, tmp_path: Path) -> None:
    memory = _memory(database)
    _a_finished_turn(memory)
    # Long enough to need pages that a full disk does not have.
    fact = {"action": "ADD", "memory_id": "", "kind": "fact", "content": "The user keeps bees" + " and honey" * 5000}

    def answer(messages: list[dict[str, str]], schema: dict[str, Any]) -> Any:
        return fact

    database.conn.execute(f"PRAGMA max_page_count = {database.conn.execute('PRAGMA page_count').fetchone()[0]}")
    with pytest.raises(DiskFull):
        memory.learn(answer)
    assert memory.learning_pending and memory.book.memories() == []
    database.close()  # Cleo closes (or dies) before the disk has room again

    reopened = open_database(tmp_path / "cleo.db")
    try:
        again = _memory(reopened)
        assert again.learning_pending
        assert [u.action for u in again.learn(answer)] == ["added"]
        assert not again.learning_pending and [m.kind for m in again.book.memories()] == ["fact"]
    finally:
        reopened.close()


def test_learning_that_fails_every_time_is_tried_three_times_then_given_up(
        database: Database, caplog: pytest.LogCaptureFixture) -> None:
    memory = _memory(database)
    _a_finished_turn(memory)

    def broken(messages: list[dict[str, str]], schema: dict[str, Any]) -> Any:
        raise RuntimeError("a bug while learning")

    for _ in range(3):
        with pytest.raises(RuntimeError):
            memory.learn(broken)
        assert memory.learning_pending
    assert memory.learn(broken) == [] and not memory.learning_pending
    assert "gave up learning from a turn" in caplog.text


def test_a_lesson_and_its_removal_from_the_queue_are_saved_together_or_not_at_all(database: Database) -> None:
    """Before, the memory was saved, then the removal failed: the turn stayed queued and was learned again."""
    memory = _memory(database)
    _a_finished_turn(memory)

    def answer(messages: list[dict[str, str]], schema: dict[str, Any]) -> Any:
        return {"action": "ADD", "memory_id": "", "kind": "fact", "content": "The user keeps bees"}

    database.conn.execute("CREATE TEMP TRIGGER refuse BEFORE DELETE ON learning_queue "
                          "BEGIN SELECT RAISE(ABORT, 'the queue cannot be written'); END")
    with pytest.raises(sqlean.IntegrityError, match="the queue cannot be written"):
        memory.learn(answer)
    assert memory.learning_pending and memory.book.memories() == []

    database.conn.execute("DROP TRIGGER temp.refuse")
    assert [u.action for u in memory.learn(answer)] == ["added"]
    assert not memory.learning_pending and [m.content for m in memory.book.memories()] == ["The user keeps bees."]


@pytest.mark.parametrize("summary", [False, True], ids=["a turn", "a summary"])
def test_learning_interrupted_by_the_user_is_not_counted_as_a_failed_attempt(database: Database,
                                                                             summary: bool) -> None:
    memory = _memory(database)
    _a_finished_turn(memory)
    if summary:
        chat = memory.store.conversations()[0].id
        memory.learning.queue_summary(chat, memory.store.branch(memory.store.latest_message_id(chat)))

    def interrupted(messages: list[dict[str, str]], schema: dict[str, Any]) -> Any:
        raise KeyboardInterrupt  # Ctrl-C in the terminal while the model thinks

    for _ in range(5):
        with pytest.raises(KeyboardInterrupt):
            memory.learn(interrupted)

    def answer(messages: list[dict[str, str]], schema: dict[str, Any]) -> Any:
        if schema.get("required") == ["summary"]:
            return {"summary": "The user talked about their bees and garden."}
        return {"action": "ADD", "memory_id": "", "kind": "fact", "content": "The user keeps bees"}

    assert len(memory.learn(answer)) == (2 if summary else 1)
    assert not memory.learning_pending
