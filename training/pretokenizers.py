"""How llama.cpp cuts text into pieces before BPE, per `tokenizer.ggml.pre` name, as `tokenizers` pre-tokenizers.

A GGUF names its pre-tokenizer; llama.cpp maps families of names to one set of regexes. The
tokenizer rebuilt for training, and a vocabulary trained here, must cut text the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Regex, pre_tokenizers

# The regexes are llama.cpp's (src/llama-vocab.cpp, `llm_tokenizer_bpe`), which are the ones in the
# models' tokenizer.json with `(?i:...)` spelled out. Each regex splits every piece left by the one
# before; matches and the text between matches both become pieces.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


@dataclass(frozen=True)
class PreTokenizer:
    """How llama.cpp cuts text into pieces before BPE, for one family of `tokenizer.ggml.pre` names."""

    regexes: tuple[str, ...]
    # llama.cpp first looks a whole piece up in the vocabulary and only merges when it is absent.
    ignore_merges: bool = False

    def backend(self) -> pre_tokenizers.PreTokenizer:
        """The same cuts for `tokenizers`, then its byte-level mapping (without GPT-2's own regex)."""
        return pre_tokenizers.Sequence([
            *(pre_tokenizers.Split(Regex(regex), behavior="isolated") for regex in self.regexes),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ])


_PRE_GPT2 = PreTokenizer((_GPT2,))
_PRE_DIGITS_GPT2 = PreTokenizer((r"\p{N}", _GPT2))  # every digit is its own piece
_PRE_LLAMA3 = PreTokenizer((_LLAMA3,), ignore_merges=True)
_PRE_QWEN2 = PreTokenizer((_QWEN2,))
_PRE_DEFAULT = PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]"))

# `tokenizer.ggml.pre` name -> behaviour, for the names llama.cpp maps to these behaviours. GPT-2's own
# pre-tokenizer is called "gpt-2" there: a file saying "gpt2" (the tokenizer *model* name) does not load.
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": _PRE_DEFAULT,
    **dict.fromkeys(("gpt-2", "phi-2", "mpt", "olmo"), _PRE_GPT2),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"),
                    _PRE_DIGITS_GPT2),
    **dict.fromkeys(("llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral"), _PRE_LLAMA3),
    **dict.fromkeys(("dbrx", "smaug-bpe"), PreTokenizer((_LLAMA3,))),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"), _PRE_QWEN2),
}
# What `train_bpe` uses unless told otherwise. llama.cpp implements this regex natively (not through
# std::regex); numbers are cut into groups of at most three digits (GPT-2's regex keeps any run of
# digits whole); contractions match in any case; runs of newlines get pieces of their own, apart
# from indentation, which suits code. llama.cpp adds a start token for this name unless the file
# says not to, which `TokenizerFields.write_to` always does.
DEFAULT_TRAIN_PRE = "llama-bpe"


def supported_pres() -> str:
    return ", ".join(sorted(PRE_TOKENIZERS))
