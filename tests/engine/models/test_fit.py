"""Models too large for this machine are refused before loading, with the numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.models.catalog import read_model_info
from engine.models.fit import ModelTooLarge, available_memory, check_fits, estimate_need
from engine.runtime.chat_model import LlamaChatModel
from tests.helpers.bad_models import SPARSE_FILES, sparse_giant
from tests.helpers.models import DefaultModels


def test_kv_cache_estimate_follows_the_model_shape(default_models: DefaultModels) -> None:
    info = read_model_info(default_models.chat)
    need = estimate_need(info, 4096)
    # 30 layers x 4096 tokens x 3 KV heads x 64 dims x (K and V) x 2 bytes = 90 MiB
    assert need.kv_cache == 30 * 4096 * 3 * 64 * 2 * 2
    assert need.weights == info.file_size
    assert estimate_need(info, 8192).kv_cache == 2 * need.kv_cache


def test_too_little_memory_is_refused_with_both_numbers(default_models: DefaultModels) -> None:
    info = read_model_info(default_models.chat)
    with pytest.raises(ModelTooLarge) as caught:
        check_fits(info, 4096, available=100 * 1024**2)
    assert "0.1 GB is free" in caught.value.message
    assert "needs about 0.6 GB" in caught.value.message
    assert check_fits(info, 4096, available=8 * 1024**3).total < 8 * 1024**3


@pytest.mark.skipif(not SPARSE_FILES, reason="no sparse files here to fake a 1 TiB model with")
def test_giant_model_is_refused_before_loading(tmp_path: Path) -> None:
    giant = sparse_giant(tmp_path / "giant.gguf")
    free = available_memory()
    assert free is not None and free < 2**40
    with pytest.raises(ModelTooLarge) as caught:
        LlamaChatModel(giant, context_size=512, threads=1)
    assert "giant.gguf needs about 1024.3 GB" in caught.value.message
