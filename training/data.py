"""Training data: chat files and plain text turned into fixed, resumable batches of token ids.

    examples, reports = read_chat_data(paths)              # files -> Example(id, messages), cleaned
    train, held_out = split_examples(examples, seed=0)     # fixed by content and seed
    template = ChatTemplate.for_tokenizer(tokenizer)
    rows = pack_examples(encode_chats([e.messages for e in train], tokenizer, template), T, pad_id=pad)
    batches = PackedBatches(rows, batch_size=B, seed=0)
    batch = batches.batch(step, rank, world_size)          # dict of [B, T] tensors

Each step has a module of its own: `readers` (the file formats), `identity` (no answer claiming
another assistant's identity), `split` (the held-out split and the shuffles), `loss_mask`
(templates, tokens, and which tokens are learnt), `packing` (rows of T + 1 tokens) and `batches`
(rows by step, rank and world size). This module runs them all: `chat_data` and `text_data`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from training.batches import PackedBatches
from training.identity import ASSISTANT_NAME, clean_examples
from training.loss_mask import ChatTemplate, document_end_id, encode_chats, encode_texts
from training.packing import PackedRows, pack_examples, pack_stream
from training.readers import DataError, Example, ReadReport, read_chat_file
from training.split import is_held_out_text, split_examples
from training.tokenizer import Tokenizer


def read_chat_data(paths: Iterable[Path | str], *, skip_bad: bool = False, identity: bool = True,
                   assistant_name: str = ASSISTANT_NAME) -> tuple[list[Example], list[ReadReport]]:
    """Every conversation in `paths` (see `read_chat_file`), with `clean_identity` applied unless told not to."""
    examples: list[Example] = []
    reports = []
    for path in paths:
        found, report = read_chat_file(path, skip_bad=skip_bad)
        if identity:
            found = clean_examples(found, report, assistant_name)
        examples += found
        reports.append(report)
    return examples, reports


@dataclass
class TrainingData:
    """Training and held-out batches made from one set of sources, with what was read and dropped."""

    train: PackedBatches
    held_out: PackedBatches | None
    reports: list[ReadReport] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)


def chat_data(paths: Iterable[Path | str], tokenizer: Tokenizer, *, seq_len: int, batch_size: int, seed: int = 0,
              held_out_fraction: float = 0.05, skip_bad: bool = False, identity: bool = True,
              system_prompt: str | None = None, limit: int | None = None) -> TrainingData:
    """Chat files -> cleaned conversations -> fixed split -> masked tokens -> packed rows -> batches.

    `system_prompt`, when given, is put first in conversations that have no system message (the
    template may otherwise insert the base model's own, such as SmolLM2's "You are ... SmolLM").
    `limit` keeps only the first conversations read (for quick runs). The split is made before the
    system prompt is added, so that it depends on the data and the seed only.
    """
    examples, reports = read_chat_data(paths, skip_bad=skip_bad, identity=identity)
    if limit is not None:
        examples = examples[:limit]
    train, held_out = split_examples(examples, fraction=held_out_fraction, seed=seed)
    if system_prompt:
        system = {"role": "system", "content": system_prompt}
        train, held_out = ([e if e.messages[0]["role"] == "system" else Example(e.id, [system, *e.messages])
                            for e in part] for part in (train, held_out))
    template = ChatTemplate.for_tokenizer(tokenizer)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else document_end_id(tokenizer)

    def packed_batches(part: list[Example], shuffle: bool) -> tuple[PackedBatches | None, PackedRows | None]:
        if not part:
            return None, None
        rows = pack_examples(encode_chats([e.messages for e in part], tokenizer, template), seq_len,
                             pad_id=pad, seed=seed)
        return PackedBatches(rows, batch_size, seed=seed, shuffle=shuffle), rows

    train_batches, train_rows = packed_batches(train, True)
    held_batches, _ = packed_batches(held_out, False)
    if train_batches is None or train_rows is None:
        raise DataError("No training conversations are left after reading, cleaning and the held-out split.")
    stats = {"conversations": len(examples), "train": len(train), "held_out": len(held_out),
             "rows": len(train_rows), "truncated": train_rows.truncated, "dropped": train_rows.dropped,
             "target_tokens": int(train_rows.targets.sum())}
    return TrainingData(train_batches, held_batches, reports, stats)


def text_data(documents: Iterable[str], tokenizer: Tokenizer, *, seq_len: int, batch_size: int, seed: int = 0,
              held_out_fraction: float = 0.01) -> TrainingData:
    """Plain-text documents for pretraining -> tokens (loss everywhere) -> fixed split -> cut rows -> batches."""
    kept = [d for d in documents if d.strip()]
    held = [is_held_out_text(d, fraction=held_out_fraction, seed=seed) for d in kept]
    encoded = encode_texts(kept, tokenizer)
    train = [e for e, h in zip(encoded, held, strict=True) if not h]
    held_out = [e for e, h in zip(encoded, held, strict=True) if h]
    if not train:
        raise DataError("No training documents: every document was empty or held out.")
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else document_end_id(tokenizer)
    train_rows = pack_stream(train, seq_len, pad_id=pad, seed=seed)
    held_batches = (PackedBatches(pack_stream(held_out, seq_len, pad_id=pad, seed=seed), batch_size, shuffle=False)
                    if held_out else None)
    stats = {"documents": len(train) + len(held_out), "train": len(train), "held_out": len(held_out),
             "rows": len(train_rows), "target_tokens": int(train_rows.targets.sum())}
    return TrainingData(PackedBatches(train_rows, batch_size, seed=seed), held_batches, [], stats)


