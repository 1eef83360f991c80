"""`training.tokenizer` gives llama.cpp's token ids: on the real SmolLM2 vocabulary and on vocabularies it trains."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import pytest
import yaml  # type: ignore[import-untyped]
from gguf import GGUFWriter

from engine.errors import ModelFileInvalid
from engine.models.gguf_header import read_header
from engine.runtime.chat_model import LlamaChatModel
from tests.helpers.data import needs_shared_data
from tests.helpers.models import DefaultModels, write_tiny_gguf
from training.finetune import SHARED_DATA
from training.new_vocabulary import train_bpe
from training.tokenizer import CHATML_SPECIAL_TOKENS, CHATML_TEMPLATE, MAX_TOKEN_BYTES, Tokenizer, UnsupportedTokenizer

DATA = SHARED_DATA

# Text that tokenizers get wrong first: scripts, combining marks, emoji sequences, digits of
# every kind, unusual whitespace, contractions, control characters, special-token spellings.
EDGE_CASES = [
    "", " ", "  ", "\n", "\n\n\n", "\t", "\r\n", " \n ", "a  b   c    d", "trailing   ", "   leading",
    "Café déjà vu, naïve façade, Ångström, Øresund, straße, İstanbul, ŁÓDŹ",
    "e\u0301 (e + combining acute), n\u0303, a\u0308\u0301", "ﬁ ﬂ ligatures, ½ ¾ ² ³ Ⅻ ⅷ ① ⑳",
    "中文分词测试，日本語のテキスト、한국어 텍스트", "Ελληνικά, Русский текст, עברית, العربية ١٢٣ ٤٥",
    "emoji 😀👍🏽 🇫🇷 🏳️‍🌈 👨‍👩‍👧‍👦 ❤️", "math: ∑∫√∞ ≠ ≤ ≥ ± × ÷ → ⇒",
    "12345678901234567890", "3.14159 2,718 1e-10 -42 +7 0x1F 1_000_000 $1,000.00 €5 ¥300 50%",
    "phone 555-0100, date 2024-01-31T12:00:00Z, time 23:59:59", "v1.2.3-rc.4+build.5",
    "I'm you're it's we've they'll he'd don't WON'T I'LL SHE'S 'quoted' ''double''",
    "\u00a0non-breaking\u00a0space \u2003em\u2003space \u3000ideographic \u2028line\u2029para \u0085nel",
    "zero\u200bwidth\u200cjoiner\u200dtest \ufeffbom", "\x00\x01\x02\x1b[31m\x7f control chars",
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n", "<|im_end|><|im_end|><|endoftext|>",
    "<|im_start|", "<|im_start|>>", "<<|im_end|>", "text<|im_end|>text",
    "    def f(x):\n        return x ** 2\n\n\n", "\tif (a && b) { return; }\r\n}",
    "https://example.com/path?q=1&r=2#frag", "user@example.com", "C:\\Users\\name\\file.txt",
    "!!!???...,,,;;;:::", "---===___***", "`code` **bold** _it_ ~~s~~ > quote", "#!/usr/bin/env python3",
    "ALLCAPS WORDS AND MiXeD cAsE", "a" * 300, " " * 100, "😀" * 40, "ab" * 150 + " " + "9" * 70,
]


def _sample_strings() -> list[str]:
    """≥ 1,000 strings from the shared chat data (prose, instructions, code lines, short chats) plus edge cases."""
    fastchat = json.loads((DATA / "fastchat_dummy_conversation.json").read_text(encoding="utf-8"))
    roleplay = json.loads((DATA / "gpteacher_roleplay.json").read_text(encoding="utf-8"))
    codegen = json.loads((DATA / "gpteacher_codegen.json").read_text(encoding="utf-8"))
    strings: list[str] = []
    strings += sorted({turn["value"] for record in fastchat for turn in record["conversations"]})
    strings += [r["instruction"] for r in roleplay[:250]] + [r["response"] for r in roleplay[:100]]
    strings += [r["instruction"] for r in codegen[:150]] + [r["input"] for r in codegen[:150] if r["input"]]
    strings += [line for r in codegen[:120] for line in r["response"].splitlines() if line.strip()][:300]
    strings += [r["response"] for r in codegen[200:260]]
    for name in ("ai.yml", "emotion.yml", "trivia.yml", "coding.yml"):
        corpus = yaml.load((DATA / "chatterbot" / name).read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
        strings += [s for conversation in corpus["conversations"][:40] if isinstance(conversation, list)
                    for s in conversation]
    return strings + EDGE_CASES


STRINGS = _sample_strings()


def _vocab_only(path: Path) -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


def _write_vocab_gguf(tokenizer: Tokenizer, path: Path) -> Path:
    """A GGUF with nothing but an architecture and the tokenizer: enough for llama.cpp's vocab_only load."""
    writer = GGUFWriter(path, arch="llama")
    writer.add_context_length(512)
    tokenizer.to_gguf_fields().write_to(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def smollm(default_models: DefaultModels) -> Tokenizer:
    return Tokenizer.from_gguf(default_models.dense_base)


@pytest.fixture(scope="module")
def smollm_llama(default_models: DefaultModels) -> Iterator[llama_cpp.Llama]:
    llm = _vocab_only(default_models.dense_base)
    yield llm
    llm.close()


# --- the real SmolLM2 vocabulary ---------------------------------------------------------------------------------


def test_there_are_enough_test_strings() -> None:
    assert len(STRINGS) >= 1000
    assert len(set(STRINGS)) >= 1000


def test_token_ids_equal_llama_cpp_on_smollm2(smollm: Tokenizer, dense_model: LlamaChatModel) -> None:
    tokenize = dense_model.tokenize
    different = [s for s in STRINGS if smollm.encode(s) != tokenize(s, add_start=False)]
    assert different == [], f"{len(different)} of {len(STRINGS)} strings differ, e.g. {different[:3]!r}"


def test_without_special_tokens_their_spelling_is_text_as_in_llama_cpp(smollm: Tokenizer,
                                                                       smollm_llama: llama_cpp.Llama) -> None:
    different = [s for s in STRINGS
                 if smollm.encode(s, special=False) != smollm_llama.tokenize(s.encode(), add_bos=False, special=False)]
    assert different == []
    assert smollm.encode("<|im_end|>") == [smollm.token_id("<|im_end|>")]
    assert len(smollm.encode("<|im_end|>", special=False)) > 1


def test_decoding_round_trips_and_equals_llama_cpp(smollm: Tokenizer, dense_model: LlamaChatModel) -> None:
    detokenize = dense_model.detokenize
    compared = 0
    for s in STRINGS:
        ids = smollm.encode(s)
        assert smollm.decode(ids) == s
        if any(len(smollm.token_bytes(i)) > 32 for i in ids):
            continue  # llama-cpp-python's detokenize drops those (see the next test)
        # llama-cpp-python leaves control tokens out by default; so does decode(special=False).
        assert smollm.decode(ids, special=False) == detokenize(ids)
        compared += 1
    assert compared >= 1000


def test_llama_cpp_python_drops_tokens_over_32_bytes_in_detokenize(smollm: Tokenizer,
                                                                    dense_model: LlamaChatModel) -> None:
    # Why train_bpe caps its tokens: SmolLM2 has 47 such tokens (runs of spaces, dashes), and
    # llama-cpp-python's detokenize() prints nothing for them.
    long = [i for i in range(smollm.vocab_size) if len(smollm.token_bytes(i)) > 32]
    assert len(long) == 47
    assert dense_model.detokenize([long[0]]) == ""
    assert len(smollm.decode([long[0]])) > 32


def test_metadata_comes_from_the_gguf(smollm: Tokenizer) -> None:
    assert smollm.vocab_size == 49152
    assert smollm.pre == "smollm"
    assert (smollm.bos_id, smollm.eos_id) == (smollm.token_id("<|im_start|>"), smollm.token_id("<|im_end|>"))
    assert smollm.token_id("<|im_end|>") in smollm.end_of_turn_ids
    assert not smollm.add_bos
    assert smollm.chat_template and "<|im_start|>" in smollm.chat_template
    assert smollm.token_id("Hello") == smollm.encode("Hello")[0]
    with pytest.raises(KeyError):
        smollm.token_id("not one token at all")


def test_gguf_fields_write_back_unchanged(smollm: Tokenizer, tmp_path: Path) -> None:
    path = _write_vocab_gguf(smollm, tmp_path / "vocab.gguf")
    again = Tokenizer.from_gguf(path)
    assert again.to_gguf_fields() == smollm.to_gguf_fields()
    header = read_header(path)
    assert header.metadata["tokenizer.ggml.pre"] == "smollm"
    assert header.metadata["tokenizer.ggml.add_bos_token"] is False
    # The mapping form carries the same keys and values, for exporters that take a mapping.
    mapping = smollm.to_gguf_fields().to_metadata()
    assert set(mapping) == (set(header.metadata) | set(header.array_lengths)) - {"general.architecture",
                                                                              "llama.context_length"}
    for key, value in mapping.items():
        if isinstance(value, list):
            assert header.array_lengths[key] == len(value)
        else:
            assert header.metadata[key] == value


def test_save_and_load_round_trip(smollm: Tokenizer, tmp_path: Path) -> None:
    smollm.save(tmp_path / "tokenizer.json")
    loaded = Tokenizer.load(tmp_path / "tokenizer.json")
    assert loaded.to_gguf_fields() == smollm.to_gguf_fields()
    assert loaded.encode(STRINGS[0]) == smollm.encode(STRINGS[0])


# --- files it cannot read ----------------------------------------------------------------------------------------


def _gguf_with_tokenizer(path: Path, model: str, pre: str | None = None) -> Path:
    writer = GGUFWriter(path, arch="llama")
    writer.add_tokenizer_model(model)
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(["a", "b", "ab"])
    writer.add_token_types([1, 1, 1])
    writer.add_token_merges(["a b"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_an_unsupported_tokenizer_model_is_named_with_the_supported_ones(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedTokenizer) as caught:
        Tokenizer.from_gguf(_gguf_with_tokenizer(tmp_path / "spm.gguf", "llama"))
    assert "'llama' tokenizer" in caught.value.message and "spm.gguf" in caught.value.message
    assert "gpt2" in caught.value.hint


def test_an_unknown_pre_tokenizer_is_named_with_the_supported_ones(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedTokenizer) as caught:
        Tokenizer.from_gguf(_gguf_with_tokenizer(tmp_path / "odd.gguf", "gpt2", pre="tekken"))
    assert "'tekken'" in caught.value.message
    assert "llama-bpe" in caught.value.hint and "smollm" in caught.value.hint


def test_a_gguf_without_pre_tokenizer_uses_llama_cpp_default(tmp_path: Path) -> None:
    assert Tokenizer.from_gguf(_gguf_with_tokenizer(tmp_path / "old.gguf", "gpt2")).pre == "default"


def test_a_file_without_tokenizer_or_gguf_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFileInvalid, match="no tokenizer"):
        Tokenizer.from_gguf(write_tiny_gguf(tmp_path / "tiny.gguf"))
    (tmp_path / "text.gguf").write_text("not a model", encoding="utf-8")
    with pytest.raises(ModelFileInvalid, match="GGUF"):
        Tokenizer.from_gguf(tmp_path / "text.gguf")


def test_gpt2_is_a_model_name_not_a_pre_tokenizer_name() -> None:
    # llama.cpp calls GPT-2's pre-tokenizer "gpt-2"; a file saying "gpt2" would not load there.
    with pytest.raises(ValueError, match="gpt-2"):
        train_bpe(["some text"], 300, pre="gpt2")


# --- trained vocabularies ------------------------------------------------------------------------------------------


def _training_texts() -> list[str]:
    roleplay = json.loads((DATA / "gpteacher_roleplay.json").read_text(encoding="utf-8"))
    codegen = json.loads((DATA / "gpteacher_codegen.json").read_text(encoding="utf-8"))
    return [r["response"] for r in roleplay[300:1300]] + [r["response"] for r in codegen[300:1300]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tokenizer, Path]:
    tokenizer = train_bpe(_training_texts(), 2000)
    return tokenizer, _write_vocab_gguf(tokenizer, tmp_path_factory.mktemp("trained") / "vocab.gguf")


@needs_shared_data
def test_a_trained_vocabulary_has_chatml_and_the_chosen_pre_tokenizer(trained: tuple[Tokenizer, Path]) -> None:
    tokenizer, _ = trained
    assert tokenizer.vocab_size == 2000
    assert tokenizer.pre == "llama-bpe"
    assert tokenizer.fields.tokens[:3] == list(CHATML_SPECIAL_TOKENS)
    assert tokenizer.fields.token_types[:3] == [3, 3, 3] and set(tokenizer.fields.token_types[3:]) == {1}
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (1, 2, 0)
    assert tokenizer.chat_template == CHATML_TEMPLATE
    assert tokenizer.encode("<|im_start|>user\n") == [1, *tokenizer.encode("user\n")]


@needs_shared_data
def test_a_trained_vocabulary_loads_vocab_only_in_llama_cpp_with_the_same_ids(trained: tuple[Tokenizer, Path]) -> None:
    tokenizer, path = trained
    llm = _vocab_only(path)
    try:
        assert llm.n_vocab() == tokenizer.vocab_size
        different = [s for s in STRINGS if tokenizer.encode(s) != llm.tokenize(s.encode(), add_bos=False, special=True)]
        assert different == [], f"{len(different)} of {len(STRINGS)} strings differ, e.g. {different[:3]!r}"
        for s in STRINGS:
            ids = tokenizer.encode(s)
            assert tokenizer.decode(ids) == s
            assert tokenizer.decode_bytes(ids, special=False) == llm.detokenize(ids)
        assert llm.metadata["tokenizer.chat_template"] == CHATML_TEMPLATE
        assert llm.token_eos() == tokenizer.eos_id
    finally:
        llm.close()


@needs_shared_data
def test_trained_tokens_are_at_most_32_bytes(trained: tuple[Tokenizer, Path]) -> None:
    tokenizer, _ = trained
    assert MAX_TOKEN_BYTES == 32
    assert max(len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)) <= 32


def test_the_32_byte_cap_holds_where_the_data_asks_for_longer_tokens() -> None:
    texts = ["=" * 200, " " * 100 + "x", "abcdefghijklmnopqrstuvwxyz" * 3, "é" * 60] * 30
    capped = train_bpe(texts, 600, min_frequency=1)
    assert max(len(capped.token_bytes(i)) for i in range(capped.vocab_size)) <= 32
    uncapped = train_bpe(texts, 600, min_frequency=1, max_token_bytes=64)
    assert max(len(uncapped.token_bytes(i)) for i in range(uncapped.vocab_size)) > 32


@needs_shared_data
@pytest.mark.parametrize("pre", ["gpt-2", "smollm", "qwen2", "default"])
def test_other_pre_tokenizers_match_llama_cpp_too(pre: str, tmp_path: Path) -> None:
    tokenizer = train_bpe(_training_texts()[::4], 1000, pre=pre)
    llm = _vocab_only(_write_vocab_gguf(tokenizer, tmp_path / f"{pre}.gguf"))
    try:
        sample = STRINGS[::3]
        assert [tokenizer.encode(s) for s in sample] == [llm.tokenize(s.encode(), add_bos=False, special=True)
                                                        for s in sample]
    finally:
        llm.close()


def test_train_bpe_refuses_a_vocabulary_with_no_room_for_merges() -> None:
    with pytest.raises(ValueError, match="no room"):
        train_bpe(["text"], 200)
