"""How the next token is picked: `Sampling`, llama.cpp's sampler chain for it, and JSON grammars."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import llama_cpp
from llama_cpp import llama_grammar

_PENALTY_LAST_N = 64  # llama.cpp's default window for the repeat penalty
_RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp picks a random seed


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked. `seed` -1 means a fresh random seed every reply."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    max_tokens: int = 1024
    seed: int = -1
    grammar: str = ""  # GBNF the reply must follow (e.g. from `json_grammar`); empty for free text
    # OpenAI's penalties, over the whole reply so far: each token already written loses `presence_penalty`
    # from its logit once, and `frequency_penalty` for every time it was written.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


def json_grammar(schema: dict[str, Any]) -> str:
    """A GBNF grammar that only lets the model write JSON matching `schema`."""
    return str(llama_grammar.json_schema_to_gbnf(json.dumps(schema)))


def sampler_chain(sampling: Sampling, n_vocab: int, vocab: Any) -> Any:
    """llama.cpp's own sampler chain for `sampling`; the caller frees it (`llama_sampler_free`)."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

    def add(sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(chain, sampler)

    if sampling.grammar:  # first, so every later step only sees tokens the grammar allows
        grammar = llama_cpp.llama_sampler_init_grammar(vocab, sampling.grammar.encode(), b"root")
        if not grammar:
            llama_cpp.llama_sampler_free(chain)
            raise ValueError("llama.cpp rejected the grammar")
        add(grammar)

    if sampling.repeat_penalty != 1.0:
        add(llama_cpp.llama_sampler_init_penalties(n_vocab, _PENALTY_LAST_N, sampling.repeat_penalty, 0.0, 0.0))
    if sampling.presence_penalty or sampling.frequency_penalty:
        # A window as long as the reply can be, so they count every token written, as OpenAI's do.
        add(llama_cpp.llama_sampler_init_penalties(n_vocab, max(sampling.max_tokens, 1), 1.0,
                                                   sampling.frequency_penalty, sampling.presence_penalty))
    if sampling.temperature <= 0.0:
        add(llama_cpp.llama_sampler_init_greedy())
        return chain
    if sampling.top_k > 0:
        add(llama_cpp.llama_sampler_init_top_k(sampling.top_k))
    add(llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
    add(llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1))
    add(llama_cpp.llama_sampler_init_temp(sampling.temperature))
    add(llama_cpp.llama_sampler_init_dist(sampling.seed if sampling.seed >= 0 else _RANDOM_SEED))
    return chain
