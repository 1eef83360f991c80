"""The held-out split and the data's shuffles: fixed by content and seed, the same on every machine.

Written out rather than taken from `hash` or numpy's generators: `hash` changes between processes,
and numpy does not promise its streams across versions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import numpy as np

from training.readers import Conversation, Example


def stable_hash(text: str, salt: str = "") -> int:
    """A 64-bit hash that is the same in every process and on every machine (unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=b"cleo-data",
                                          salt=salt.encode()[:16]).digest(), "little")


def content_key(messages: Conversation) -> str:
    """The conversation's content as one canonical string (what the split hashes)."""
    return json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False, separators=(",", ":"))


def is_held_out(messages: Conversation, *, fraction: float, seed: int = 0) -> bool:
    """Whether the conversation belongs to the held-out split; fixed by its content and `seed`.

    Hashing the content, not the position or id, keeps the split when files are reordered or
    grow, and puts identical conversations (FastChat repeats many) on the same side.
    """
    return is_held_out_text(content_key(messages), fraction=fraction, seed=seed)


def is_held_out_text(text: str, *, fraction: float, seed: int = 0) -> bool:
    """Whether a text (a plain-text document, or a conversation's `content_key`) is held out."""
    return stable_hash(text, salt=f"split{seed}") < fraction * 2**64


def split_examples(examples: Iterable[Example], *, fraction: float = 0.05,
                   seed: int = 0) -> tuple[list[Example], list[Example]]:
    """(training, held-out) examples; see `is_held_out`."""
    train: list[Example] = []
    held_out: list[Example] = []
    for example in examples:
        (held_out if is_held_out(example.messages, fraction=fraction, seed=seed) else train).append(example)
    return train, held_out


_MASK64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays: a fixed, well-mixed function, the same on every platform."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def permutation(n: int, seed: int, salt: int) -> np.ndarray:
    """A permutation of range(n) that depends only on (n, seed, salt): indices sorted by a keyed hash.

    `salt` keeps the orders of different uses (packing, each epoch's batches) independent.
    """
    key = stable_hash(f"{seed}:{salt}") & _MASK64
    keys = _splitmix64(np.arange(n, dtype=np.uint64) ^ np.uint64(key))
    return np.argsort(keys, kind="stable")
