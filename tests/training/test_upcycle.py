"""The upcycled GGUF's layout and metadata, read back with `gguf`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from engine.errors import ModelFileInvalid
from tests.helpers.models import DefaultModels
from training.defaults import CLEO_MOE_CARD
from training.upcycle import upcycle_gguf


@pytest.fixture(scope="module")
def moe(default_models: DefaultModels) -> GGUFReader:
    return GGUFReader(default_models.chat)


def _value(reader: GGUFReader, key: str) -> object:
    field = reader.get_field(key)
    assert field is not None, key
    return field.contents()


def test_metadata_names_the_model_its_base_and_licence(moe: GGUFReader) -> None:
    assert _value(moe, "general.architecture") == "llama"
    assert _value(moe, "llama.expert_count") == 4
    assert _value(moe, "llama.expert_used_count") == 2
    assert _value(moe, "general.name") == "Cleo MoE 4x135M, upcycled from SmolLM2-135M-Instruct"
    assert _value(moe, "general.base_model.0.name") == "SmolLM2-135M-Instruct"
    assert _value(moe, "general.license") == "apache-2.0"
    assert "<|im_start|>" in str(_value(moe, "tokenizer.chat_template"))


def test_experts_are_stacked_copies_of_the_dense_ffn(moe: GGUFReader, default_models: DefaultModels) -> None:
    dense = GGUFReader(default_models.dense_base)
    dense_tensors = {t.name: t for t in dense.tensors}
    moe_tensors = {t.name: t for t in moe.tensors}
    assert not any(name.endswith(("ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")) for name in moe_tensors)
    for block in (0, 29):
        for part in ("ffn_gate", "ffn_up", "ffn_down"):
            stacked = moe_tensors[f"blk.{block}.{part}_exps.weight"]
            original = dense_tensors[f"blk.{block}.{part}.weight"]
            assert list(stacked.shape) == [*original.shape, 4]
            for expert in range(4):
                assert np.array_equal(stacked.data[expert], original.data)
        router = moe_tensors[f"blk.{block}.ffn_gate_inp.weight"]
        assert list(router.shape) == [576, 4]
        assert not np.any(router.data)


def test_router_noise_is_optional_and_seeded(default_models: DefaultModels, tmp_path: Path) -> None:
    out = tmp_path / "noisy.gguf"
    upcycle_gguf(default_models.dense_base, out, card=CLEO_MOE_CARD, router_noise=0.02, seed=7,
                 report=lambda line: None)
    router = {t.name: t for t in GGUFReader(out).tensors}["blk.0.ffn_gate_inp.weight"].data
    assert 0.01 < float(np.std(router)) < 0.03


def test_only_dense_llama_models_can_be_upcycled(default_models: DefaultModels, tmp_path: Path) -> None:
    with pytest.raises(ModelFileInvalid, match="architecture 'bert'") as caught:
        upcycle_gguf(default_models.embedder, tmp_path / "x.gguf", card=CLEO_MOE_CARD, report=lambda line: None)
    assert "Supported architectures: llama" in caught.value.user_text()
    with pytest.raises(ModelFileInvalid, match="already a Mixture-of-Experts"):
        upcycle_gguf(default_models.chat, tmp_path / "y.gguf", card=CLEO_MOE_CARD, report=lambda line: None)
