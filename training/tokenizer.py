"""Byte-level BPE tokenizers that cut text exactly as llama.cpp does.

A model trained here is run by llama.cpp, so training must see the very token ids llama.cpp
will feed the model at inference. `Tokenizer` therefore rebuilds a GGUF's `gpt2` tokenizer
(vocabulary, merges, token types, pre-tokenizer) on top of Hugging Face `tokenizers`, cutting
text as llama.cpp does for the file's `tokenizer.ggml.pre` (`training.pretokenizers`), and decodes
token by token with llama.cpp's rules for each token type. `TokenizerFields` carries what an
exporter writes back into a GGUF; `training.new_vocabulary` learns a new vocabulary.

    tok = Tokenizer.from_gguf(path)            # the tokenizer inside a model file
    ids = tok.encode("<|im_start|>user\\nHi")   # special tokens recognised, no start token added
    tok.decode(ids)                             # the text again
    tok.to_gguf_fields().write_to(writer)       # the tokenizer.* keys of a new GGUF
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gguf import GGUFWriter, TokenType
from tokenizers import AddedToken, models
from tokenizers import Tokenizer as HFTokenizer

from engine.errors import ModelFileInvalid
from engine.models.gguf_header import read_header
from training.pretokenizers import PRE_TOKENIZERS, supported_pres

SUPPORTED_MODELS = ("gpt2",)  # `tokenizer.ggml.model` values this module reads
MAX_TOKEN_BYTES = 32  # llama-cpp-python's detokenize drops pieces longer than its 32-byte buffer
CHATML_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# ChatML, the format of SmolLM2 and Qwen: each message is `<|im_start|>ROLE\nCONTENT<|im_end|>\n`.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Control tokens llama.cpp treats as "end of generation" by their text, besides the eos id.
END_OF_TURN_TEXTS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>",
                     "<|end_of_text|>", "</s>")


# --- what a GGUF stores --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizerFields:
    """A `gpt2` tokenizer as GGUF metadata stores it (`tokenizer.ggml.*`, `tokenizer.chat_template`).

    `tokens[i]` is the text of token i: byte-level text for normal tokens (a space is "Ġ"), the
    literal text for control and user-defined tokens. `token_types[i]` is a `gguf.TokenType`
    value. `merges` are "left right" strings, highest priority first. Treat the lists as read-only.
    """

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    unk_id: int | None = None
    add_bos: bool = False  # llama.cpp puts bos_id before every tokenized prompt
    add_eos: bool = False
    chat_template: str | None = None
    model: str = "gpt2"

    def to_metadata(self) -> dict[str, Any]:
        """The same keys as `write_to`, as GGUF key -> plain value (ids are ints, token types a list
        of ints, flags bools), for exporters that take metadata as a mapping."""
        metadata: dict[str, Any] = {
            "tokenizer.ggml.model": self.model, "tokenizer.ggml.pre": self.pre,
            "tokenizer.ggml.tokens": list(self.tokens), "tokenizer.ggml.token_type": list(self.token_types),
            "tokenizer.ggml.merges": list(self.merges),
        }
        for key, token_id in (("bos_token_id", self.bos_id), ("eos_token_id", self.eos_id),
                              ("padding_token_id", self.pad_id), ("unknown_token_id", self.unk_id)):
            if token_id is not None:
                metadata[f"tokenizer.ggml.{key}"] = token_id
        metadata["tokenizer.ggml.add_bos_token"] = self.add_bos
        metadata["tokenizer.ggml.add_eos_token"] = self.add_eos
        if self.chat_template:
            metadata["tokenizer.chat_template"] = self.chat_template
        return metadata

    def write_to(self, writer: GGUFWriter) -> None:
        """Add the tokenizer keys to a GGUF being written (call before `write_kv_data_to_file`).

        `add_bos_token` is always written: for some `pre` names (llama-bpe) llama.cpp adds a start
        token unless the file says otherwise.
        """
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        writer.add_token_merges(self.merges)
        for token_id, add in ((self.bos_id, writer.add_bos_token_id), (self.eos_id, writer.add_eos_token_id),
                              (self.pad_id, writer.add_pad_token_id), (self.unk_id, writer.add_unk_token_id)):
            if token_id is not None:
                add(token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


class UnsupportedTokenizer(ModelFileInvalid):
    """A model file's tokenizer is of a kind this module cannot reproduce exactly."""


# --- the tokenizer --------------------------------------------------------------------------------------------


class Tokenizer:
    """A GGUF `gpt2` byte-level BPE tokenizer giving llama.cpp's token ids, built on Hugging Face `tokenizers`."""

    def __init__(self, fields: TokenizerFields) -> None:
        if fields.model not in SUPPORTED_MODELS:
            raise ValueError(f"tokenizer model '{fields.model}' is not supported "
                             f"(supported: {', '.join(SUPPORTED_MODELS)})")
        if fields.pre not in PRE_TOKENIZERS:
            raise ValueError(f"pre-tokenizer '{fields.pre}' is not supported (supported: {supported_pres()})")
        if len(fields.token_types) != len(fields.tokens):
            raise ValueError(f"{len(fields.tokens)} tokens but {len(fields.token_types)} token types")
        self._fields = fields
        # A text stored twice maps to its last id, as in llama.cpp.
        self._ids = {text: i for i, text in enumerate(fields.tokens)}
        self._hf = self._build(encode_special=False)
        self._hf_plain: HFTokenizer | None = None  # built on first use of encode(special=False)
        self._pieces = [_piece(text, kind) for text, kind in zip(fields.tokens, fields.token_types, strict=True)]
        self._special = [kind in _SPECIAL_TYPES for kind in fields.token_types]

    # construction

    @classmethod
    def from_gguf(cls, path: Path | str) -> Tokenizer:
        """The tokenizer stored in the GGUF file at `path`.

        Raises `ModelMissing`/`ModelFileInvalid` for a missing or damaged file and
        `UnsupportedTokenizer` (a `ModelFileInvalid`) for a tokenizer other than gpt2 BPE or a
        pre-tokenizer this module does not know.
        """
        path = Path(path)
        metadata = read_header(path, skip_long_arrays=False).metadata  # bounds-checked, the vocabulary included
        model = metadata.get("tokenizer.ggml.model")
        if model is None:
            raise ModelFileInvalid(f"{path} has no tokenizer (no tokenizer.ggml.model key).",
                                   hint="Choose a model file that includes its vocabulary.")
        if model not in SUPPORTED_MODELS:
            raise UnsupportedTokenizer(
                f"{path} uses the '{model}' tokenizer, which Cleo's training cannot reproduce.",
                hint=f"Supported tokenizer models: {', '.join(SUPPORTED_MODELS)} (byte-level BPE).")
        pre = metadata.get("tokenizer.ggml.pre") or "default"  # llama.cpp's choice when the key is missing
        if pre not in PRE_TOKENIZERS:
            raise UnsupportedTokenizer(f"{path} uses the pre-tokenizer '{pre}', which Cleo's training does not know.",
                                       hint=f"Supported pre-tokenizers: {supported_pres()}.")
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            if not isinstance(metadata.get(key), list):
                raise ModelFileInvalid(f"{path} has a tokenizer without {key}.",
                                       hint="The file is incomplete; convert it again.")
        tokens = metadata["tokenizer.ggml.tokens"]
        merges = metadata["tokenizer.ggml.merges"]
        types = metadata.get("tokenizer.ggml.token_type", [int(TokenType.NORMAL)] * len(tokens))

        def token_id(key: str) -> int | None:
            value = metadata.get(key)
            return int(value) if isinstance(value, int) and 0 <= value < len(tokens) else None

        fields = TokenizerFields(
            tokens=[str(t) for t in tokens], token_types=[int(t) for t in types], merges=[str(m) for m in merges],
            pre=pre, bos_id=token_id("tokenizer.ggml.bos_token_id"), eos_id=token_id("tokenizer.ggml.eos_token_id"),
            pad_id=token_id("tokenizer.ggml.padding_token_id"), unk_id=token_id("tokenizer.ggml.unknown_token_id"),
            add_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
            add_eos=bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
            chat_template=metadata.get("tokenizer.chat_template"), model=model,
        )
        try:
            return cls(fields)
        except ValueError as exc:
            raise ModelFileInvalid(f"{path} has an inconsistent tokenizer ({exc}).") from exc

    def save(self, path: Path | str) -> None:
        """Write the tokenizer as JSON (its `TokenizerFields`), for `Tokenizer.load`."""
        Path(path).write_text(json.dumps({"format": "cleo-tokenizer", "version": 1, **asdict(self._fields)},
                                         ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: Path | str) -> Tokenizer:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.pop("format", None) != "cleo-tokenizer" or data.pop("version", None) != 1:
            raise ValueError(f"{path} is not a tokenizer written by Tokenizer.save")
        return cls(TokenizerFields(**data))

    # what it is

    @property
    def fields(self) -> TokenizerFields:
        return self._fields

    def to_gguf_fields(self) -> TokenizerFields:
        """Everything an exporter writes into a GGUF for this tokenizer; see `TokenizerFields.write_to`."""
        return self._fields

    @property
    def vocab_size(self) -> int:
        return len(self._fields.tokens)

    @property
    def pre(self) -> str:
        return self._fields.pre

    @property
    def bos_id(self) -> int | None:
        return self._fields.bos_id

    @property
    def eos_id(self) -> int | None:
        return self._fields.eos_id

    @property
    def pad_id(self) -> int | None:
        return self._fields.pad_id

    @property
    def add_bos(self) -> bool:
        """Whether llama.cpp starts every prompt with `bos_id` for this model."""
        return self._fields.add_bos and self._fields.bos_id is not None

    @property
    def chat_template(self) -> str | None:
        return self._fields.chat_template

    @property
    def end_of_turn_ids(self) -> frozenset[int]:
        """Tokens that end a reply: the eos token and the control tokens llama.cpp stops on by their text."""
        ids = {i for text in END_OF_TURN_TEXTS if (i := self._ids.get(text)) is not None and self._special[i]}
        if self._fields.eos_id is not None:
            ids.add(self._fields.eos_id)
        return frozenset(ids)

    @property
    def backend(self) -> HFTokenizer:
        """The Hugging Face tokenizer doing the work (special tokens recognised)."""
        return self._hf

    def token_id(self, text: str) -> int:
        """The id of the token whose stored text is `text` ("<|im_end|>"), or whose bytes are `text` ("Hello")."""
        found = self._ids.get(text)
        if found is None:
            found = self._ids.get(_to_byte_level(text.encode("utf-8")))
        if found is None:
            raise KeyError(f"{text!r} is not a single token of this vocabulary")
        return found

    def token_bytes(self, token_id: int, *, special: bool = True) -> bytes:
        """The bytes llama.cpp prints for one token (control tokens print only when `special`)."""
        if self._special[token_id] and not special:
            return b""
        return self._pieces[token_id]

    # encoding and decoding

    def encode(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids of `text` as llama.cpp's `llama_tokenize(..., add_special=False, parse_special=special)`.

        With `special`, control tokens written in the text ("<|im_start|>") become those tokens;
        without, they are ordinary text. User-defined tokens are recognised either way, as in llama.cpp.
        No start token is added: see `add_bos`.
        """
        return list(self._backend_for(special).encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str], *, special: bool = True) -> list[list[int]]:
        """`encode` for many texts at once (in parallel inside `tokenizers`)."""
        encodings = self._backend_for(special).encode_batch(list(texts), add_special_tokens=False)
        return [list(e.ids) for e in encodings]

    def decode_bytes(self, ids: Iterable[int], *, special: bool = True) -> bytes:
        return b"".join(self.token_bytes(i, special=special) for i in ids)

    def decode(self, ids: Iterable[int], *, special: bool = True) -> str:
        """The text of `ids`: the concatenated token pieces, invalid UTF-8 replaced by U+FFFD.

        With `special` (the default, so that `decode(encode(text)) == text`) control tokens are
        printed; without, they are left out, as llama-cpp-python's `detokenize()` does by default.
        """
        return self.decode_bytes(ids, special=special).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, pre={self.pre!r})"

    # internals

    def _backend_for(self, special: bool) -> HFTokenizer:
        if special:
            return self._hf
        if self._hf_plain is None:
            self._hf_plain = self._build(encode_special=True)
        return self._hf_plain

    def _build(self, *, encode_special: bool) -> HFTokenizer:
        fields = self._fields
        spec = PRE_TOKENIZERS[fields.pre]
        vocab = dict(self._ids)
        merges = []
        for line in fields.merges:
            # llama.cpp splits at the first space after the first character, so a left part may start with one.
            cut = line.find(" ", 1)
            left, right = line[:cut], line[cut + 1:]
            # Merges using or making a text the vocabulary lacks are left out: `tokenizers` refuses them,
            # and vocabularies converted from Hugging Face have none.
            if cut > 0 and left in vocab and right in vocab and left + right in vocab:
                merges.append((left, right))
        hf = HFTokenizer(models.BPE(vocab, merges, ignore_merges=spec.ignore_merges))
        hf.pre_tokenizer = spec.backend()
        # Control (and unknown) tokens are recognised in text only when asked; user-defined ones always.
        hf.add_special_tokens([AddedToken(text, special=True, normalized=False)
                               for text, kind in zip(fields.tokens, fields.token_types, strict=True)
                               if kind in _SPECIAL_TYPES and text])
        hf.add_tokens([AddedToken(text, special=False, normalized=False)
                       for text, kind in zip(fields.tokens, fields.token_types, strict=True)
                       if kind == TokenType.USER_DEFINED and text])
        hf.encode_special_tokens = encode_special
        return hf


_SPECIAL_TYPES = frozenset((int(TokenType.CONTROL), int(TokenType.UNKNOWN)))


# --- GPT-2's byte-level alphabet --------------------------------------------------------------------------------
# Every byte is shown as one printable character: bytes that are printable Latin-1 stand for
# themselves, the other 68 (controls, space, a few Latin-1 gaps) take the characters from U+0100 on.


def _byte_alphabet() -> tuple[list[str], dict[str, int]]:
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    to_char: list[str] = []
    shifted = 0
    for byte in range(256):
        if byte in printable:
            to_char.append(chr(byte))
        else:
            to_char.append(chr(0x100 + shifted))
            shifted += 1
    return to_char, {c: b for b, c in enumerate(to_char)}


_BYTE_TO_CHAR, _CHAR_TO_BYTE = _byte_alphabet()


def _to_byte_level(data: bytes) -> str:
    return "".join(_BYTE_TO_CHAR[b] for b in data)


def _from_byte_level(text: str) -> bytes:
    # A character outside the alphabet cannot come from training; keep its UTF-8 rather than fail.
    return b"".join(bytes((_CHAR_TO_BYTE[c],)) if c in _CHAR_TO_BYTE else c.encode("utf-8") for c in text)


def _piece(text: str, kind: int) -> bytes:
    """What llama.cpp's `token_to_piece` gives for a token of a gpt2 vocabulary (control tokens: their text)."""
    if kind == TokenType.NORMAL:
        return _from_byte_level(text)
    if kind == TokenType.BYTE and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
        return bytes((int(text[3:5], 16),))
    if kind == TokenType.UNUSED:
        return b""
    return text.encode("utf-8")  # control, unknown and user-defined tokens are stored as plain text
