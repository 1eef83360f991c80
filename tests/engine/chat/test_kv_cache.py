"""Snapshots of other conversations' caches stay within their memory budget, oldest use dropped first."""

from __future__ import annotations

from engine.chat.kv_cache import KvSnapshot, SnapshotCache, common_prefix


def _snapshot(n_bytes: int) -> KvSnapshot:
    return KvSnapshot(tokens=(1, 2, 3), data=bytes(n_bytes))


def test_least_recently_used_snapshot_leaves_first() -> None:
    cache = SnapshotCache(budget_bytes=300)
    cache.put("a", _snapshot(100))
    cache.put("b", _snapshot(100))
    cache.put("c", _snapshot(100))
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("d", _snapshot(100))
    assert "b" not in cache and {"a", "c", "d"} == {k for k in "abcd" if k in cache}
    assert cache.size <= 300


def test_replacing_a_conversations_snapshot_counts_it_once() -> None:
    cache = SnapshotCache(budget_bytes=250)
    cache.put("a", _snapshot(100))
    cache.put("a", _snapshot(120))
    cache.put("b", _snapshot(100))
    assert len(cache) == 2 and cache.size == 220


def test_a_snapshot_bigger_than_the_budget_is_not_kept() -> None:
    cache = SnapshotCache(budget_bytes=100)
    cache.put("a", _snapshot(50))
    cache.put("b", _snapshot(500))
    assert "b" not in cache and "a" in cache
    assert SnapshotCache(budget_bytes=0).get("a") is None


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2]) == 2
