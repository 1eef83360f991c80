"""The model catalog reads GGUF headers without loading weights, and refuses bad files clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGUFReader
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import KnownError
from engine.models.catalog import ModelCatalog, read_model_info
from tests.helpers.bad_models import bad_headers
from tests.helpers.models import DefaultModels, write_tiny_gguf


def test_default_model_is_reported_as_moe_without_loading_it(default_models: DefaultModels) -> None:
    info = read_model_info(default_models.chat)
    assert (info.architecture, info.experts, info.experts_used) == ("llama", 4, 2)
    assert info.is_moe and info.has_chat_template and not info.is_embedding_model
    assert info.name.startswith("Cleo MoE 4x135M")
    assert info.quantization == "Q4_1"
    assert info.context_length == 8192 and info.layers == 30 and info.vocabulary_size == 49152
    reader = GGUFReader(default_models.chat)
    assert info.parameters == sum(int(t.n_elements) for t in reader.tensors)
    assert info.file_size == default_models.chat.stat().st_size


def test_embedder_is_recognised_as_an_embedding_model(default_models: DefaultModels) -> None:
    info = read_model_info(default_models.embedder)
    assert info.is_embedding_model and not info.is_moe and info.embedding_length == 384


def test_catalog_lists_models_and_names_unusable_files(default_models: DefaultModels, tmp_path: Path) -> None:
    other_app = tmp_path / "lm-studio" / "models" / "someone"
    other_app.mkdir(parents=True)
    (other_app / "notes.gguf").write_text("not a model")
    (other_app / "embedder.gguf").write_bytes(default_models.embedder.read_bytes())
    default_models.copy_home_to(tmp_path / "cleo-home")
    models, unusable = ModelCatalog([tmp_path / "lm-studio"]).scan()
    assert {m.path.name for m in models} == {"cleo-moe-4x135m-q4_1.gguf", "all-minilm-l6-v2-f16.gguf", "embedder.gguf"}
    assert [u.path.name for u in unusable] == ["notes.gguf"]
    assert "not a GGUF model" in unusable[0].problem


def test_every_kind_of_bad_file_gets_a_clear_known_error(tmp_path: Path) -> None:
    files = bad_headers(tmp_path)
    assert len(files) >= 30
    for case, path, words in files:
        with pytest.raises(KnownError) as caught:
            read_model_info(path)
        assert str(path) in caught.value.message, case
        assert words in caught.value.message, f"{case}: {caught.value.message}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0, max_value=400), value=st.integers(0, 255))
def test_a_corrupted_byte_never_escapes_as_a_bug(tmp_path: Path, position: int, value: int) -> None:
    path = tmp_path / "mutant.gguf"
    good = write_tiny_gguf(tmp_path / "source.gguf").read_bytes()
    path.write_bytes(good[:position] + bytes([value]) + good[position + 1:])
    try:
        read_model_info(path)  # parsing is allowed when the byte was in an unimportant place
    except KnownError as exc:
        assert str(path) in exc.message
