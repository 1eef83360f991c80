"""Conversations' KV caches set aside, so switching back to a chat costs what a follow-up costs.

llama.cpp holds one conversation's keys and values at a time. When the user switches chats, the
assistant snapshots the one it leaves and keeps the snapshots here, least recently used dropped
first once they exceed the memory budget (setting `kv_cache_budget_mb`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class KvSnapshot:
    """One conversation's cache, set aside: its tokens and llama.cpp's keys and values for them."""

    tokens: tuple[int, ...]
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens `a` and `b` share from their start."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class SnapshotCache:
    """Snapshots by conversation id, within a byte budget."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._snapshots: OrderedDict[str, KvSnapshot] = OrderedDict()

    def __len__(self) -> int:
        return len(self._snapshots)

    def __contains__(self, conversation_id: object) -> bool:
        return conversation_id in self._snapshots

    @property
    def size(self) -> int:
        return sum(s.size for s in self._snapshots.values())

    def put(self, conversation_id: str, snapshot: KvSnapshot) -> None:
        self._snapshots.pop(conversation_id, None)
        if snapshot.size > self.budget_bytes:
            return  # larger than the whole budget: keeping it would evict everything else for nothing
        self._snapshots[conversation_id] = snapshot
        while self.size > self.budget_bytes:
            self._snapshots.popitem(last=False)

    def get(self, conversation_id: str) -> KvSnapshot | None:
        snapshot = self._snapshots.get(conversation_id)
        if snapshot is not None:
            self._snapshots.move_to_end(conversation_id)
        return snapshot

    def clear(self) -> None:
        self._snapshots.clear()
