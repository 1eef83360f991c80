"""Recall's search shortcuts on real SQLite + sqlite-vec: they must not change what is found."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import engine.memory.vectors as vectors
from engine.memory.recall import Recall, vector_bytes
from engine.storage.conversations import SqliteConversationStore
from engine.storage.database import Database, open_database
from engine.storage.migrations import EMBEDDING_DIMENSION


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    database = open_database(tmp_path / "cleo.db")
    yield database
    database.close()


def _chat(store: SqliteConversationStore, *texts: str) -> str:
    conversation = store.create_conversation()
    parent = None
    for i, text in enumerate(texts):
        parent = store.add_message(conversation.id, "user" if i % 2 == 0 else "assistant", text, parent).id
    return conversation.id


def test_an_everyday_word_neither_hides_the_rare_one_nor_leaves_a_search_of_it_empty(database: Database) -> None:
    store = SqliteConversationStore(database)
    for day in range(20):
        _chat(store, f"Good morning! Day {day} of the diet.", "Good to hear, keep going.")
    _chat(store, "I started oboe lessons", "The oboe is a good choice, it is hard but rewarding.")
    recall = Recall(database, None)

    # "good" is in nearly every message and left out of the query; "oboe" decides.
    found = recall.search("is the oboe good for beginners", k=3, mode="bm25", memories=False)
    assert {item.text for item in found} == {"I started oboe lessons",
                                             "The oboe is a good choice, it is hard but rewarding."}
    # A search made only of everyday words still finds them.
    assert len(recall.search("good", k=3, mode="bm25", memories=False)) == 3


def test_a_search_split_across_cores_ranks_like_one_product(database: Database,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    matrix = rng.normal(size=(400, EMBEDDING_DIMENSION)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    with database.write() as conn:
        conn.executemany("INSERT INTO message_vectors(rowid, embedding) VALUES (?, ?)",
                         [(i + 1, vector_bytes(v)) for i, v in enumerate(matrix)])
    monkeypatch.setattr(vectors, "_ROWS_PER_PART", 50)
    monkeypatch.setattr(vectors, "_cores", lambda: 4)
    query = matrix[123] + 0.5 * matrix[321]
    scores = matrix @ query  # row id i + 1 is row i
    found = vectors.vector_index(database, "message_vectors").search(query, 20)
    # The parts may round their products differently from one product (another summation order), so
    # rows may trade places only where their scores tie to within rounding; the closest two here are
    # 1.4e-5 apart, and rounding moves a score by about 1e-7.
    np.testing.assert_allclose(scores[np.array(found) - 1], np.sort(scores)[::-1][:20], rtol=0, atol=1e-6)
