"""GGUF import and export, checked against llama.cpp itself on the same token ids.

Measured on this machine (llama-cpp-python 0.3.36, 1 thread; logits std in brackets):
- SmolLM2-135M Q4_1 and the upcycled 4-expert MoE, imported: top-1 100%, max |diff| 1.36, mean 0.195
  (6.6), the same for both. The gap is llama.cpp's, not the importer's: for Q4_1 matmuls it rounds
  the activations to 8 bits (Q8_1 blocks). The same dequantized weights exported as F32 agree to 7e-5.
- Tiny random models exported (0.8): F32 to 7e-6, F16 to 4e-3 (llama.cpp rounds the activations to
  F16 for F16 matmuls too), Q8_0 mean |diff| 0.008-0.025, Q4_K_M 0.04-0.14, top-1 >= 98%.
llama.cpp's default F16 KV cache adds about 1e-3 by itself (0.02 on SmolLM2's 30 layers), so the
comparisons that judge the file use an F32 cache.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from engine.errors import KnownError, ModelFileInvalid, ModelMissing
from engine.models.gguf_header import read_header
from tests.helpers.bad_models import bad_headers
from tests.helpers.models import DefaultModels, write_tiny_gguf
from training.gguf_io import GGUFModelInfo, UnsupportedArchitecture, load_gguf, save_gguf
from training.model import Decoder, ModelConfig
from training.quantize import quantize

TEXT = ("The capital of France is Paris. It is known for the Eiffel Tower, museums such as the Louvre, "
        "and its cafes. Every year millions of visitors walk along the Seine, eat croissants and "
        "climb the hill of Montmartre to look over the city at sunset.")
GGML_TYPE_F32 = 0  # for llama.cpp's type_k / type_v


# Where llama.cpp's two best next tokens are nearer than this, either pick is right: which one wins
# is decided by rounding, which moves with the CPU's kernels. Twice the largest logit error the F16
# comparison allows, and far below the logits' spread (std 0.5 to 6.6) that a wrong export disturbs.
TIE = 1e-2


@dataclass(frozen=True)
class Parity:
    max_abs: float
    mean_abs: float
    top1: float  # share of positions where both pick the same next token, or llama.cpp scores ours within TIE
    logit_std: float

    @staticmethod
    def of(ours: np.ndarray, theirs: np.ndarray) -> Parity:  # both [T, V]
        diff = np.abs(ours - theirs)
        ours_pick_there = np.take_along_axis(theirs, ours.argmax(-1)[:, None], -1)[:, 0]  # [T]
        same_pick = theirs.max(-1) - ours_pick_there <= TIE
        return Parity(float(diff.max()), float(diff.mean()), float(same_pick.mean()), float(theirs.std()))

    def __str__(self) -> str:
        return (f"max |diff| {self.max_abs:.2e}, mean {self.mean_abs:.2e}, top-1 {self.top1:.1%} "
                f"(logits std {self.logit_std:.2f})")


def _llama_cpp_logits(path: Path, tokens: list[int], *, f32_cache: bool = False) -> np.ndarray:
    """llama.cpp's logits at every position of `tokens`: [T, V]."""
    cache = GGML_TYPE_F32 if f32_cache else None  # None: llama.cpp's default, F16
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=1, logits_all=True, verbose=False,
                          type_k=cache, type_v=cache)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()


def _torch_logits(model: Decoder, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()  # [T, V]


def _tokenize(path: Path, text: str) -> list[int]:
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return list(llm.tokenize(text.encode("utf-8"), add_bos=True))
    finally:
        llm.close()


@pytest.fixture(scope="module")
def smollm2(default_models: DefaultModels) -> tuple[Decoder, GGUFModelInfo]:
    model, info = load_gguf(default_models.dense_base)
    return model.eval(), info


@pytest.fixture(scope="module")
def tokens(default_models: DefaultModels) -> list[int]:
    ids = _tokenize(default_models.dense_base, TEXT)
    assert 50 <= len(ids) <= 100
    return ids


# --- real models ---------------------------------------------------------------------------------

def test_imported_smollm2_predicts_what_llama_cpp_predicts(smollm2: tuple[Decoder, GGUFModelInfo],
                                                            default_models: DefaultModels, tokens: list[int]) -> None:
    model, info = smollm2
    c = model.config
    assert (c.architecture, c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim) == \
        ("llama", 30, 576, 9, 3, 64)
    assert c.tie_embeddings and not c.is_moe and c.vocab_size == 49152 and c.rope_theta == 100000.0
    assert info.file_type == "Q4_1" and "<|im_start|>" in info.chat_template
    assert info.tokenizer["tokenizer.ggml.pre"].value == "smollm"
    parity = Parity.of(_torch_logits(model, tokens), _llama_cpp_logits(default_models.dense_base, tokens))
    print(f"SmolLM2 Q4_1 imported: {parity}")
    # Tolerance about twice what llama.cpp's 8-bit activations cost here (max 1.36, mean 0.195).
    assert parity.top1 >= 0.99 and parity.max_abs < 2.5 and parity.mean_abs < 0.3, parity


def test_imported_upcycled_moe_predicts_what_llama_cpp_predicts(default_models: DefaultModels,
                                                                tokens: list[int]) -> None:
    # Its router is zero, so every expert ties; they are identical copies, so whichever pair torch and
    # llama.cpp pick gives the same output.
    model, info = load_gguf(default_models.chat)
    assert model.config.num_experts == 4 and model.config.experts_per_token == 2
    assert info.name.startswith("Cleo MoE")
    parity = Parity.of(_torch_logits(model.eval(), tokens), _llama_cpp_logits(default_models.chat, tokens))
    print(f"Cleo MoE Q4_1 imported: {parity}")
    assert parity.top1 >= 0.99 and parity.max_abs < 2.5 and parity.mean_abs < 0.3, parity


def test_imported_weights_exported_as_f32_match_llama_cpp_exactly(smollm2: tuple[Decoder, GGUFModelInfo],
                                                                   tokens: list[int], tmp_path: Path) -> None:
    """With no activation rounding left, what remains is float32 summation order."""
    model, info = smollm2
    path = save_gguf(model, info, tmp_path / "smollm2-f32.gguf", dtype="f32")
    parity = Parity.of(_torch_logits(model, tokens), _llama_cpp_logits(path, tokens, f32_cache=True))
    print(f"SmolLM2 re-exported as F32: {parity}")
    assert parity.top1 == 1.0 and parity.max_abs < 2e-3, parity
    assert _tokenize(path, TEXT) == tokens  # the vocabulary, merges and pre-tokenizer came along


# --- tiny random models --------------------------------------------------------------------------

# SmolLM2's vocabulary, and widths that fill whole 256-value K-quant blocks so that Q4_K_M applies to
# every matrix (llama.cpp falls back to Q5_0/Q8_0 for rows that do not, e.g. SmolLM2's 576).
_TINY_DENSE = ModelConfig(architecture="llama", vocab_size=49152, hidden_size=256, intermediate_size=512,
                          num_layers=2, num_heads=4, num_kv_heads=2, head_dim=64, context_length=512,
                          tie_embeddings=True)
TINY = {
    "llama-dense": _TINY_DENSE,
    "llama-moe": dataclasses.replace(_TINY_DENSE, num_experts=4, experts_per_token=2, tie_embeddings=False),
    "qwen3moe": dataclasses.replace(_TINY_DENSE, architecture="qwen3moe", num_experts=4, experts_per_token=2),
}
# For what llama.cpp is never asked to run: errors and exact round trips.
SMALL = ModelConfig(architecture="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1,
                    num_heads=4, num_kv_heads=2, head_dim=8)


def _peaked_random_model(config: ModelConfig, seed: int = 0) -> Decoder:
    """A random model whose next-token distributions are peaked, as a trained model's are.

    With the default initialisation the logits are a flat Gaussian cloud whose top two differ by
    about 0.2 standard deviations, less than Q4_K_M's rounding moves them, so top-1 agreement would
    measure luck. Here the residual stream keeps a strong component of the current token's
    embedding (small embeddings, block outputs scaled down) and the output reads it back, which
    makes one token clearly likeliest while the blocks still move every logit (std ~0.5). That token
    is mostly the current one, so top-1 here says little; the logit bounds carry the checks. Norm
    weights are randomised so that a norm written to the wrong place would show.
    """
    torch.manual_seed(seed)
    model = Decoder(config).eval()
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() == 1:
                weight.normal_(1.0, 0.1)
            elif name == "embed.weight":
                weight.normal_(0.0, 0.05)
            elif name.endswith(("attn.out.weight", "ffn.down.weight", "ffn.down")):
                weight.mul_(0.15)
        if model.output is not None:
            model.output.weight.copy_(model.embed.weight + 0.02 * torch.randn_like(model.embed.weight))
    return model


def _tensor_types(path: Path) -> dict[str, GGMLQuantizationType]:
    return {t.name: t.type for t in read_header(path).tensors}


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_model_exports_run_in_llama_cpp(name: str, smollm2: tuple[Decoder, GGUFModelInfo],
                                             tokens: list[int], tmp_path: Path) -> None:
    _, info = smollm2
    config = TINY[name]
    model = _peaked_random_model(config)
    ours = _torch_logits(model, tokens)
    f32 = save_gguf(model, info, tmp_path / "tiny-f32.gguf", dtype="f32", name="tiny")
    f16 = save_gguf(model, info, tmp_path / "tiny-f16.gguf", dtype="f16", name="tiny")
    files = {"F32": f32, "F16": f16,
             "Q8_0": quantize(f32, tmp_path / "tiny-q8_0.gguf", "Q8_0", threads=1),
             "Q4_K_M": quantize(f32, tmp_path / "tiny-q4_k_m.gguf", "Q4_K_M", threads=1)}
    parity = {kind: Parity.of(ours, _llama_cpp_logits(path, tokens, f32_cache=True)) for kind, path in files.items()}
    for kind, result in parity.items():
        print(f"{name} {kind}: {result}")
    assert parity["F32"].max_abs < 2e-3 and parity["F32"].top1 == 1.0, parity["F32"]
    assert parity["F16"].max_abs < 5e-3 and parity["F16"].top1 == 1.0, parity["F16"]
    # Bounds about twice the measured error; the spread of the logits sets the scale.
    for kind, bound in (("Q8_0", 0.05), ("Q4_K_M", 0.3)):
        assert parity[kind].top1 >= 0.95 and parity[kind].mean_abs < bound * parity[kind].logit_std, parity[kind]

    for kind, path in files.items():
        types = _tensor_types(path)
        kept_f32 = [n for n in types if "norm" in n or "ffn_gate_inp" in n]
        assert all(types[n] == GGMLQuantizationType.F32 for n in kept_f32), kind
        if kind == "F16":
            assert types["blk.0.attn_q.weight"] == GGMLQuantizationType.F16
    assert GGMLQuantizationType.Q4_K in _tensor_types(files["Q4_K_M"]).values()

    # Round trip: importing the F32 export gives back the very same model.
    again, again_info = load_gguf(f32)
    assert again.config == config and again_info.name == "tiny"
    assert again_info.tokenizer["tokenizer.ggml.tokens"].value == info.tokenizer["tokenizer.ggml.tokens"].value
    assert again_info.chat_template == info.chat_template
    mine = dict(model.named_parameters())
    for parameter, weight in again.named_parameters():
        assert torch.equal(weight, mine[parameter]), parameter


def test_f16_round_trip_keeps_norms_and_routers_exact(tmp_path: Path) -> None:
    config = dataclasses.replace(SMALL, architecture="qwen3moe", num_experts=4, experts_per_token=2)
    model = _peaked_random_model(config)
    again, _ = load_gguf(save_gguf(model, _small_vocabulary(64), tmp_path / "m.gguf", dtype="f16"))
    for (parameter, weight), (_, back) in zip(model.named_parameters(), again.named_parameters(), strict=True):
        expected = weight if weight.dim() == 1 or "router" in parameter else weight.half().float()
        assert torch.equal(back, expected), parameter


# --- errors --------------------------------------------------------------------------------------

def _small_vocabulary(n: int) -> dict[str, object]:
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": [f"t{i}" for i in range(n)],
            "tokenizer.ggml.token_type": [1] * n}


def _small_dense(tmp_path: Path) -> Path:
    return save_gguf(Decoder(SMALL), _small_vocabulary(64), tmp_path / "small.gguf", dtype="f32", name="small")


def test_unsupported_architecture_is_named_with_the_supported_ones(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "gpt2.gguf", arch="gpt2")
    with pytest.raises(UnsupportedArchitecture) as caught:
        load_gguf(path)
    assert isinstance(caught.value, KnownError)
    assert str(path) in caught.value.message and "'gpt2'" in caught.value.message
    assert "llama, qwen3moe" in caught.value.message


def test_missing_or_damaged_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ModelMissing, match="does not exist"):
        load_gguf(tmp_path / "nowhere.gguf")
    path = _small_dense(tmp_path)
    path.write_bytes(path.read_bytes()[:-100])  # a download cut short
    with pytest.raises(ModelFileInvalid, match="cut off") as caught:
        load_gguf(path)
    assert str(path) in caught.value.message


def test_the_header_reader_gives_whole_arrays_with_their_types_only_when_asked(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.gguf")  # 100 tokens: longer than the engine keeps
    skipped, whole = read_header(path), read_header(path, skip_long_arrays=False)
    assert "tokenizer.ggml.tokens" not in skipped.metadata and skipped.array_lengths["tokenizer.ggml.tokens"] == 100
    assert whole.metadata["tokenizer.ggml.tokens"] == [f"t{i}" for i in range(100)]
    assert whole.value_types == skipped.value_types
    assert whole.value_types["tokenizer.ggml.tokens"] == (GGUFValueType.ARRAY, GGUFValueType.STRING)
    assert whole.value_types["llama.context_length"] == (GGUFValueType.UINT32, None)


def test_whole_arrays_are_read_as_carefully_as_the_rest(tmp_path: Path) -> None:
    """Training reads the vocabulary of files a user points it at: a damaged one must fail clearly."""
    for case, path, _ in bad_headers(tmp_path):
        outcomes = []
        for skip in (True, False):
            try:
                read_header(path, skip_long_arrays=skip)
                outcomes.append("read")
            except KnownError as exc:
                outcomes.append(exc.message)
        assert outcomes[0] == outcomes[1], case
    good = write_tiny_gguf(tmp_path / "source.gguf").read_bytes()
    mutant = tmp_path / "mutant.gguf"
    vocabulary = good.index(b"t0")
    for position in range(vocabulary - 24, vocabulary + 120):  # the array's type, length and first strings
        for value in (0x00, 0x7F, 0xFF):
            mutant.write_bytes(good[:position] + bytes([value]) + good[position + 1:])
            try:
                read_header(mutant, skip_long_arrays=False)
            except KnownError as exc:
                assert str(mutant) in exc.message


def test_tensors_that_do_not_fit_the_metadata_are_listed(tmp_path: Path) -> None:
    """A dense llama file that claims to have experts: nothing is silently left random."""
    dense = _small_dense(tmp_path)
    reader = GGUFReader(dense)
    claims_moe = tmp_path / "claims-moe.gguf"
    writer = GGUFWriter(claims_moe, arch="llama")
    for key, entry in reader.fields.items():
        if not key.startswith(("GGUF.", "general.architecture")):
            vtype = entry.types[0]
            item_type = entry.types[-1] if vtype == GGUFValueType.ARRAY else None
            writer.add_key_value(key, entry.contents(), vtype, item_type)
    writer.add_expert_count(4)
    writer.add_expert_used_count(2)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.array(tensor.data), raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelFileInvalid) as caught:
        load_gguf(claims_moe)
    message = caught.value.message
    assert "lacks blk.0.ffn_down_exps.weight" in message and "does not use: blk.0.ffn_down.weight" in message


def test_export_refuses_what_llama_cpp_could_not_load_and_leaves_no_file(tmp_path: Path) -> None:
    model = Decoder(SMALL)
    target = tmp_path / "out.gguf"
    with pytest.raises(ValueError, match="63 tokens but the model's vocabulary has 64"):
        save_gguf(model, _small_vocabulary(63), target)
    with pytest.raises(ValueError, match=r"lack tokenizer\.ggml\.model"):
        save_gguf(model, {"tokenizer.ggml.tokens": ["a"] * 64}, target)
    with torch.no_grad():
        model.get_parameter("blocks.0.attn.q.weight")[0, 0] = 1e6  # beyond F16
    with pytest.raises(ValueError, match="beyond F16's range"):
        save_gguf(model, _small_vocabulary(64), target, dtype="f16")
    assert list(tmp_path.iterdir()) == []  # neither the file nor its .partial


def test_quantize_refuses_unknown_kinds_and_quantized_sources(default_models: DefaultModels, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Q8_0, "):
        quantize(default_models.dense_base, tmp_path / "x.gguf", "Q3_XL")
    with pytest.raises(ModelFileInvalid, match="already quantized"):
        quantize(default_models.dense_base, tmp_path / "x.gguf", "Q8_0")
    with pytest.raises(ModelMissing):
        quantize(tmp_path / "nowhere.gguf", tmp_path / "x.gguf")
    assert list(tmp_path.iterdir()) == []


def test_config_extra_carries_unknown_architecture_keys(tmp_path: Path) -> None:
    config = dataclasses.replace(SMALL, extra={"llama.rope.scaling.type": "none", "llama.expert_count": 8,
                                               "qwen3moe.x": 1})
    path = save_gguf(Decoder(config), _small_vocabulary(64), tmp_path / "m.gguf")
    again, _ = load_gguf(path)
    # Keys the config owns come from the config (this model is dense), other families' keys are dropped.
    assert again.config.extra == {"llama.rope.scaling.type": "none"} and again.config == config


def test_files_that_need_what_the_decoder_lacks_are_refused(tmp_path: Path) -> None:
    yarn = dataclasses.replace(SMALL, extra={"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0})
    path = save_gguf(Decoder(yarn), _small_vocabulary(64), tmp_path / "yarn.gguf")
    with pytest.raises(ModelFileInvalid, match=r"RoPE scaling \(yarn, factor 4\.0\)"):
        load_gguf(path)
