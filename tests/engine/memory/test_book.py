"""The memory book's ids: a prefix the user types matches literally."""

from __future__ import annotations

from pathlib import Path

from engine.memory.book import MemoryBook
from engine.storage.database import open_database


def test_an_id_prefix_matches_literally_wildcards_included(tmp_path: Path) -> None:
    database = open_database(tmp_path / "cleo.db")
    book = MemoryBook(database, None)
    _, tea = book.add("The user drinks green tea")
    _, bees = book.add("The user keeps bees")
    assert book.ids_starting_with(tea.id[:6]) == [tea.id]
    assert book.ids_starting_with("") == sorted([tea.id, bees.id])
    for wildcard in ("%", "_", "%%", tea.id[:2] + "%", "_" * 6, tea.id[:5] + "_"):
        assert book.ids_starting_with(wildcard) == [], wildcard
    # Ids that hold the wildcards themselves (Cleo's own are hex) match only their own prefix.
    with database.write() as conn:
        conn.execute("UPDATE memories SET id = 'ab_c%d' WHERE id = ?", (tea.id,))
        conn.execute("UPDATE memories SET id = 'abxcyd' WHERE id = ?", (bees.id,))
    assert book.ids_starting_with("ab_") == ["ab_c%d"]
    assert book.ids_starting_with("ab_c%") == ["ab_c%d"]
    assert book.ids_starting_with("abx") == ["abxcyd"]
    database.close()
