"""Tokenized examples laid out in rows of T + 1 tokens, the unit a batch is made of.

Chat examples are packed whole (no answer loses its question); plain text is concatenated and cut.
Each row records where its documents start, so that attention stops at a document's start and
positions restart there, as if each document were alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from training.loss_mask import TokenizedExample
from training.split import permutation


@dataclass(frozen=True)
class PackedRows:
    """Examples laid out in N rows of T + 1 tokens; a row gives T inputs and their T next-token labels."""

    tokens: np.ndarray  # int32 [N, T+1]
    targets: np.ndarray  # bool [N, T+1]: the token is learnt (predicted from the tokens before it)
    segments: np.ndarray  # int32 [N, T+1]: 1, 2, ... for the documents in the row, 0 for padding
    positions: np.ndarray  # int32 [N, T+1]: position within its document (restarting at each row)
    truncated: int = 0  # examples longer than a row, cut to fit
    dropped: int = 0  # examples with no target left after the cut

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1]) - 1


def _empty_rows(n: int, width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (np.full((n, width), pad_id, np.int32), np.zeros((n, width), bool), np.zeros((n, width), np.int32),
            np.zeros((n, width), np.int32))


def pack_examples(examples: Sequence[TokenizedExample], seq_len: int, *, pad_id: int, seed: int = 0,
                  open_rows: int = 64) -> PackedRows:
    """Whole examples packed into rows of `seq_len` + 1 tokens (for chat: no answer loses its question).

    The examples are taken in an order fixed by `seed` and put in the first of the last
    `open_rows` rows with room (first fit over a window, so packing stays fast on large sets);
    the rest of a row is padding. An example longer than a row keeps its first `seq_len` + 1 tokens.
    """
    width = seq_len + 1
    order = permutation(len(examples), seed, salt=1)
    rows: list[list[int]] = []  # example indices per row
    free: list[int] = []
    window: list[int] = []  # rows still open, oldest first
    truncated = dropped = 0
    for i in order:
        length = len(examples[i])
        if length > width:
            truncated += 1
            if not any(examples[i].targets[:width]):
                dropped += 1
                continue
            length = width
        target = next((r for r in window if free[r] >= length), None)
        if target is None:
            target = len(rows)
            rows.append([])
            free.append(width)
            window.append(target)
            if len(window) > open_rows:
                window.pop(0)
        rows[target].append(int(i))
        free[target] -= length
    tokens, targets, segments, positions = _empty_rows(len(rows), width, pad_id)
    for r, members in enumerate(rows):
        offset = 0
        for segment, i in enumerate(members, 1):
            example = examples[i]
            n = min(len(example), width)
            tokens[r, offset:offset + n] = example.ids[:n]
            targets[r, offset:offset + n] = example.targets[:n]
            targets[r, offset] = False  # nothing in the row before it belongs to its document
            segments[r, offset:offset + n] = segment
            positions[r, offset:offset + n] = np.arange(n)
            offset += n
    return PackedRows(tokens, targets, segments, positions, truncated, dropped)


def pack_stream(examples: Sequence[TokenizedExample], seq_len: int, *, pad_id: int, seed: int = 0) -> PackedRows:
    """Examples concatenated (in an order fixed by `seed`) and cut into rows of `seq_len` + 1 tokens.

    Row k holds tokens k*T ... k*T + T of the stream, so each row's last token starts the next row
    and every token but the first is a label exactly once. For pretraining on plain text.
    """
    order = permutation(len(examples), seed, salt=2)
    if not len(order):
        return PackedRows(*_empty_rows(0, seq_len + 1, pad_id))
    ids = np.concatenate([np.asarray(examples[i].ids, np.int32) for i in order])  # [S]
    learn = np.concatenate([np.asarray(examples[i].targets, bool) for i in order])  # [S]
    lengths = np.array([len(examples[i]) for i in order])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # [D] where each document begins in the stream
    doc = np.repeat(np.arange(len(order)), lengths)  # [S] document of each stream position
    n_rows = max(1, -(-(len(ids) - 1) // seq_len))
    tokens, targets, segments, positions = _empty_rows(n_rows, seq_len + 1, pad_id)
    for r in range(n_rows):
        lo = r * seq_len
        hi = min(lo + seq_len + 1, len(ids))
        n = hi - lo
        tokens[r, :n] = ids[lo:hi]
        targets[r, :n] = learn[lo:hi]
        targets[r, 0] = False  # it was the previous row's last label
        row_docs = doc[lo:hi]
        segments[r, :n] = row_docs - row_docs[0] + 1
        # Positions count from the document's start, or from the row's start for a document already under way.
        positions[r, :n] = np.arange(lo, hi) - np.maximum(starts[row_docs], lo)
    return PackedRows(tokens, targets, segments, positions)

