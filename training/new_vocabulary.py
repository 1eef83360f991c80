"""A new byte-level BPE vocabulary learnt from text, for a model trained from scratch.

The vocabulary is cut with a pre-tokenizer llama.cpp knows and comes out as a `Tokenizer`, so
that the exported GGUF tokenizes in llama.cpp exactly as here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from gguf import TokenType
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, trainers

from training.pretokenizers import DEFAULT_TRAIN_PRE, PRE_TOKENIZERS, PreTokenizer, supported_pres
from training.tokenizer import CHATML_SPECIAL_TOKENS, CHATML_TEMPLATE, MAX_TOKEN_BYTES, Tokenizer, TokenizerFields


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    *,
    pre: str = DEFAULT_TRAIN_PRE,
    min_frequency: int = 2,
    max_token_bytes: int = MAX_TOKEN_BYTES,
    special_tokens: Sequence[str] = CHATML_SPECIAL_TOKENS,
    chat_template: str = CHATML_TEMPLATE,
) -> Tokenizer:
    """A byte-level BPE vocabulary of at most `vocab_size` tokens learnt from `texts`.

    The pre-tokenizer is the one llama.cpp applies for `pre` (default "llama-bpe": llama.cpp
    implements its regex natively; digits go in groups of at most three), so the exported GGUF
    tokenizes in llama.cpp exactly as here. Normal tokens are at most `max_token_bytes` bytes
    (llama-cpp-python drops longer pieces when detokenizing). `special_tokens` take the first ids
    as control tokens; with the default ChatML set, `<|im_start|>` is bos, `<|im_end|>` eos (what
    ends a reply) and `<|endoftext|>` pad and document separator, as in SmolLM2. `texts` should be
    plain text: special-token spellings inside them are learnt as ordinary text.
    """
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"pre-tokenizer '{pre}' is not supported (supported: {supported_pres()})")
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(f"vocab_size {vocab_size} leaves no room for merges: the 256 bytes and "
                         f"{len(special_tokens)} special tokens come first")
    tokens, merges = _train(texts, vocab_size, PRE_TOKENIZERS[pre], min_frequency, max_token_bytes, special_tokens)
    specials = set(special_tokens)
    types = [int(TokenType.CONTROL if t in specials else TokenType.NORMAL) for t in tokens]
    ids = {t: i for i, t in enumerate(tokens)}
    chatml = all(t in ids for t in CHATML_SPECIAL_TOKENS)
    fields = TokenizerFields(
        tokens=tokens, token_types=types, merges=merges, pre=pre,
        bos_id=ids["<|im_start|>"] if chatml else None,
        eos_id=ids["<|im_end|>"] if chatml else None,
        pad_id=ids["<|endoftext|>"] if chatml else None,
        add_bos=False, chat_template=chat_template,
    )
    return Tokenizer(fields)


def _train(texts: Iterable[str], vocab_size: int, spec: PreTokenizer, min_frequency: int, max_token_bytes: int,
           special_tokens: Sequence[str]) -> tuple[list[str], list[str]]:
    """The trained vocabulary (index = id) and merges ("left right", by priority)."""
    hf = HFTokenizer(models.BPE(ignore_merges=spec.ignore_merges))
    hf.pre_tokenizer = spec.backend()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
        special_tokens=list(special_tokens), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        # In the byte-level alphabet one character is one byte, so this caps tokens in bytes.
        max_token_length=max_token_bytes,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    vocab = hf.get_vocab(with_added_tokens=True)
    tokens = [""] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
    if "" in tokens:
        raise RuntimeError("the trained vocabulary has gaps in its ids")
    model = json.loads(hf.to_str())["model"]
    # `tokenizers` writes merges as [left, right] pairs (older versions: "left right" strings).
    merges = [m if isinstance(m, str) else f"{m[0]} {m[1]}" for m in model["merges"]]
    return tokens, merges
