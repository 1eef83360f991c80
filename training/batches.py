"""Packed rows served as batches fixed by (seed, step, rank, world size): resuming needs only the step.

A batch holds, for rank r at step s, the rows s*B*W + r*B ... + B - 1 of an endless sequence of
epochs, each a permutation fixed by (seed, epoch), so the same step gives the same rows on any
machine. `labels[b, t]` is the token that must follow `input_ids[b, t]` (already shifted), or
`IGNORE_INDEX` where nothing is learnt.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from training.packing import PackedRows
from training.split import permutation

IGNORE_INDEX = -100  # label of a position that is not learnt (torch's cross_entropy default)


class PackedBatches:
    """Batches of packed rows fixed by (seed, step, rank, world_size).

    Global row position p = step*B*W + rank*B + i (i < B) is row `perm_e[p mod N]` of epoch
    e = p div N, where perm_e is a permutation fixed by (seed, e). Ranks of one step get disjoint
    rows (while B*W <= N); a job resumed at step s sees what it would have seen. Keeping B*W the
    same, a different number of processes reads the same rows at each step.
    """

    def __init__(self, rows: PackedRows, batch_size: int, *, seed: int = 0, shuffle: bool = True) -> None:
        if len(rows) == 0:
            raise ValueError("no packed rows: the data is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.rows = rows
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self._epoch_order: tuple[int, np.ndarray] | None = None  # the last epoch's permutation, reused

    def __len__(self) -> int:
        return len(self.rows)

    def steps_per_epoch(self, world_size: int = 1) -> int:
        return max(1, len(self.rows) // (self.batch_size * world_size))

    def row_indices(self, step: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """Which rows the batch (step, rank) holds, in order: int64 [B]."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        n = len(self.rows)
        positions = step * self.batch_size * world_size + rank * self.batch_size + np.arange(self.batch_size)
        epochs, within = np.divmod(positions, n)
        if not self.shuffle:
            return within
        out = np.empty(self.batch_size, np.int64)
        for epoch in np.unique(epochs):
            chosen = epochs == epoch
            out[chosen] = self._order(int(epoch))[within[chosen]]
        return out

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
        """The batch for `rank` at `step`, as int64 tensors [B, T]:
        `input_ids`; `labels` (the next token, or -100 where it is not learnt); `position_ids`
        (restarting at each document); `segment_ids` (document number in the row, 0 = padding),
        from which a model may build a block-diagonal attention mask."""
        return self._tensors(self.row_indices(step, rank, world_size))

    def sequential(self, rank: int = 0, world_size: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        """Every row once, in order, split across ranks (for evaluation); the last batch may be shorter."""
        mine = np.arange(rank, len(self.rows), world_size)
        for lo in range(0, len(mine), self.batch_size):
            yield self._tensors(mine[lo:lo + self.batch_size])

    def _order(self, epoch: int) -> np.ndarray:
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            self._epoch_order = (epoch, permutation(len(self.rows), self.seed, salt=1000 + epoch))
        return self._epoch_order[1]

    def _tensors(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        tokens = self.rows.tokens[rows]  # [B, T+1]
        labels = np.where(self.rows.targets[rows, 1:], tokens[:, 1:], IGNORE_INDEX)  # [B, T]
        return {
            "input_ids": torch.from_numpy(tokens[:, :-1].astype(np.int64)),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "position_ids": torch.from_numpy(self.rows.positions[rows, :-1].astype(np.int64)),
            "segment_ids": torch.from_numpy(self.rows.segments[rows, :-1].astype(np.int64)),
        }

