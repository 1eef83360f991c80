"""Many replies written at once by one llama.cpp context: continuous batching.

Each reply is a `Lane` on one of the context's sequences (the chat's cache is sequence 0, the
local API's requests take the others). A step puts one token of every lane that is writing into
one llama.cpp batch, decodes it once and samples each lane's next token from its own row of
logits; then it reads the next part of a prompt of a lane that just joined. Lanes join between
steps and leave when they end, so a long reply never holds up a short one, and eight replies cost
little more time per step than one: the model's weights are read once per step, whatever the
number of lanes.

Whoever wants a lane's next token calls `next_token`; when none is ready it runs a step, which
advances every other lane too. All of it runs on the thread that owns the model.
"""

from __future__ import annotations

import ctypes
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from engine.errors import GenerationFailed

_NO_ABORT = llama_cpp.ggml_abort_callback()  # a null callback: nothing to check
_ABORTED = 2  # llama_decode's status when the abort callback said stop


@dataclass(eq=False)
class Lane:
    """One reply being read and written in one sequence of the context."""

    sequence: int
    tokens: list[int]  # in the cache for this sequence, from position 0
    unread: list[int]  # to put in the cache next: the rest of the prompt, or the token just written
    chain: Any  # llama.cpp's sampler chain, owned by the caller; None: read the prompt, write nothing
    stop: threading.Event | None
    max_tokens: int
    context: int  # positions this sequence may hold
    written: int = 0
    ready: deque[int] = field(default_factory=deque)  # written, not yet taken by `next_token`
    finish: str = ""  # "" while writing; then "stop" (the model ended), "length", "stopped", "read"
    failure: GenerationFailed | None = None
    row: int = -1  # this lane's row of logits in the last batch decoded, -1 if it had none

    @property
    def ended(self) -> bool:
        return bool(self.finish) or self.failure is not None


@dataclass(frozen=True)
class _Entry:
    lane: Lane
    taken: int  # tokens of `lane.unread` in this batch
    row: int  # where its logits are, -1 if it needs none


class Batcher:
    """The lanes of one llama.cpp context and the steps that write them."""

    def __init__(self, ctx: Any, vocab: Any, n_batch: int, name: str) -> None:
        self._ctx = ctx
        self._vocab = vocab
        self._memory = llama_cpp.llama_get_memory(ctx)
        self._name = name  # the model's file name, for errors
        self.n_batch = n_batch
        self._lanes: list[Lane] = []
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._tokens: Any = (llama_cpp.llama_token * n_batch).from_address(ctypes.addressof(self._batch.token.contents))
        self._positions: Any = (llama_cpp.llama_pos * n_batch).from_address(ctypes.addressof(self._batch.pos.contents))
        self._wants_logits = (ctypes.c_int8 * n_batch).from_address(ctypes.addressof(self._batch.logits.contents))
        self._sequence_of = [self._batch.seq_id[i] for i in range(n_batch)]  # each points to one id
        for i in range(n_batch):
            self._batch.n_seq_id[i] = 1
        self._aborting: list[Lane] = []
        self._abort = llama_cpp.ggml_abort_callback(self._should_abort)  # kept alive with the batcher

    def join(self, lane: Lane) -> Lane:
        """Add `lane`, whose `tokens` are already in the cache; it is read and written from the next step."""
        if any(other.sequence == lane.sequence for other in self._lanes):
            raise ValueError(f"sequence {lane.sequence} already has a lane")
        self._lanes.append(lane)
        return lane

    def leave(self, lane: Lane) -> None:
        """Take `lane` out; the tokens it wrote but had not read yet are not in the cache."""
        if lane in self._lanes:
            self._lanes.remove(lane)

    @property
    def busy_sequences(self) -> set[int]:
        return {lane.sequence for lane in self._lanes}

    def next_token(self, lane: Lane) -> int | None:
        """The next token `lane` writes, stepping every lane until it has one; None when it has ended
        (`lane.finish` says why). Raises the `GenerationFailed` of a batch that llama.cpp refused."""
        while not lane.ready:
            if lane.stop is not None and lane.stop.is_set() and not lane.finish:
                lane.finish = "stopped"
            if lane.ended:
                break
            self.step()
        if lane.failure is not None:
            raise lane.failure
        return lane.ready.popleft() if lane.ready else None

    def read(self, lane: Lane) -> bool:
        """Step until `lane` (one without a sampler) has read its prompt; False if it was stopped.
        Its logits are then at row `lane.row` until the next step."""
        while lane.unread and not lane.ended:
            self.step()
        if lane.failure is not None:
            raise lane.failure
        return not lane.unread

    def step(self) -> None:
        """One token for every writing lane, in one llama.cpp batch; then the next part of one prompt
        (the lane that joined first), in a batch of its own.

        A prompt never shares a batch with another sequence's tokens: with a cache per sequence,
        llama.cpp 0.3.36 splits such a batch into equal shares per sequence, and a sequence whose
        share ended first then read wrong logits (seen with cached prefixes; tests/engine/runtime/
        test_batch.py). One token each is always an equal share."""
        waiting = [lane for lane in self._lanes if lane.unread and not lane.ended]
        writers = sorted((lane for lane in waiting if len(lane.unread) == 1), key=lambda lane: lane.sequence)
        if writers:
            # In sequence order: llama.cpp puts consecutive sequences in one pass over the weights.
            self._run([(lane, 1) for lane in writers[:self.n_batch]])
        prompt = next((lane for lane in waiting if len(lane.unread) > 1 and not lane.ended), None)
        if prompt is not None:
            self._run([(prompt, min(len(prompt.unread), self.n_batch))])

    def _run(self, parts: Sequence[tuple[Lane, int]]) -> None:
        """Decode the first `taken` unread tokens of each lane, then let the lanes that read all
        theirs write (or hand back their logits)."""
        entries: list[_Entry] = []
        n = 0
        for lane, take in parts:
            start = len(lane.tokens)
            self._tokens[n:n + take] = lane.unread[:take]
            self._positions[n:n + take] = list(range(start, start + take))
            for i in range(n, n + take):
                self._sequence_of[i][0] = lane.sequence
                self._wants_logits[i] = 0
            row = -1
            if take == len(lane.unread):  # read to its end: it writes, or hands back its logits
                row = n + take - 1
                self._wants_logits[row] = 1
            entries.append(_Entry(lane, take, row))
            n += take
        self._batch.n_tokens = n
        status = self._decode(entries)
        if status != 0:
            self._undo(entries, status)
            return
        for entry in entries:
            lane = entry.lane
            lane.tokens.extend(lane.unread[:entry.taken])
            del lane.unread[:entry.taken]
            lane.row = entry.row
            if entry.row >= 0:
                self._write(lane)

    def _decode(self, entries: Sequence[_Entry]) -> int:
        # A stop aborts a batch that reads a prompt (which can take seconds); one token is never aborted.
        self._aborting = [e.lane for e in entries if e.lane.stop is not None and e.taken > 1]
        if self._aborting:
            llama_cpp.llama_set_abort_callback(self._ctx, self._abort, None)
        try:
            return int(llama_cpp.llama_decode(self._ctx, self._batch))
        finally:
            if self._aborting:  # checked per graph node, so only while it matters
                llama_cpp.llama_set_abort_callback(self._ctx, _NO_ABORT, None)
                self._aborting = []

    def _should_abort(self, _data: ctypes.c_void_p) -> bool:
        return any(lane.stop is not None and lane.stop.is_set() for lane in self._aborting)

    def _write(self, lane: Lane) -> None:
        """Sample `lane`'s next token from its row of logits, or end it."""
        if lane.chain is None:
            lane.finish = "read"
        elif lane.stop is not None and lane.stop.is_set():
            lane.finish = "stopped"
        elif lane.written >= lane.max_tokens or len(lane.tokens) >= lane.context:
            lane.finish = "length"
        else:
            token = llama_cpp.llama_sampler_sample(lane.chain, self._ctx, lane.row)
            if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                lane.finish = "stop"
            else:
                lane.written += 1
                lane.ready.append(token)
                lane.unread.append(token)  # read at the next step, so the cache holds the whole reply

    def _undo(self, entries: Sequence[_Entry], status: int) -> None:
        """A batch llama.cpp aborted or refused may leave part of itself in the cache: take it out.
        Aborted, the stopped lanes end and the others go on at the next step; refused, they all fail."""
        for entry in entries:
            lane = entry.lane
            if not llama_cpp.llama_memory_seq_rm(self._memory, lane.sequence, len(lane.tokens), -1):
                # Some caches only drop whole sequences: this one reads its tokens again.
                llama_cpp.llama_memory_seq_rm(self._memory, lane.sequence, -1, -1)
                lane.unread[:0] = lane.tokens
                lane.tokens.clear()
            if status == _ABORTED:
                if lane.stop is not None and lane.stop.is_set():
                    lane.finish = "stopped"
            else:
                lane.failure = GenerationFailed(
                    f"llama.cpp could not process {sum(e.taken for e in entries)} tokens with {self._name} "
                    f"(status {status}).", hint="Details are in the log file; try a new chat.")

    def close(self) -> None:
        self._lanes.clear()
        llama_cpp.llama_batch_free(self._batch)
