"""The model catalog reads GGUF headers without loading weights, and refuses bad files clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGUFReader
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import KnownError
from engine.models.catalog import ModelCatalog, ModelInfo, Unusable, read_model_info
from tests.helpers.bad_models import bad_headers
from tests.helpers.fake_hub import write_split_gguf
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


# --- split models ---------------------------------------------------------------------------------


def _split_copy(source: Path, folder: Path, parts: int) -> list[Path]:
    """`source` rewritten as a split model of `parts` files, every key and tensor as it was, in the
    layout llama.cpp's gguf-split writes (split.no, split.count, split.tensors.count; -0000K-of-0000N)."""
    from gguf import GGUFValueType, GGUFWriter

    reader = GGUFReader(source)
    folder.mkdir(parents=True, exist_ok=True)
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(folder / source.name, arch=arch, split_max_tensors=-(-len(reader.tensors) // parts))
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue  # the writer writes these itself
        item_type = GGUFValueType(field.types[-1]) if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=item_type)
    for tensor in reader.tensors:
        data = tensor.data
        writer.add_tensor_info(tensor.name, data.shape, data.dtype, data.nbytes, tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data)
    writer.close()
    written = sorted(folder.glob(f"{source.stem}-*-of-*.gguf"))
    assert len(written) == parts
    return written


def _tensor_elements(path: Path) -> int:
    return sum(int(t.n_elements) for t in GGUFReader(path).tensors)


def _in(folder: Path, found: tuple[list[ModelInfo], list[Unusable]]) -> tuple[list[ModelInfo], list[Unusable]]:
    """What a scan found in `folder` (Cleo's own models folder is always scanned too)."""
    models, unusable = found
    return [m for m in models if m.path.parent == folder], [u for u in unusable if u.path.parent == folder]


def test_a_split_model_is_one_entry_counting_every_part(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    parts = write_split_gguf(folder, "split-model-Q8_0")
    models, unusable = _in(folder, ModelCatalog([folder]).scan())
    assert unusable == []
    [model] = models
    assert model.path == parts[0]  # where llama.cpp loads it from
    assert model.file_size == sum(p.stat().st_size for p in parts)
    assert model.parameters == sum(_tensor_elements(p) for p in parts) > _tensor_elements(parts[0])
    # The first part added on its own finds its other parts beside it, as llama.cpp does.
    assert _in(folder, ModelCatalog([parts[0]]).scan()) == ([model], [])
    assert read_model_info(parts[0]) == model


@pytest.mark.parametrize("missing", [1, 2, 3])
def test_a_missing_part_makes_the_split_model_unusable_and_says_which(tmp_path: Path, missing: int) -> None:
    folder = tmp_path / "models"
    parts = write_split_gguf(folder, "split-model-Q8_0")
    parts.pop(missing - 1).unlink()
    models, unusable = _in(folder, ModelCatalog([folder]).scan())
    assert models == []
    [problem] = unusable  # one problem for the model, not one per part
    assert problem.path == parts[0]
    assert f"part {missing} of 3 is missing" in problem.problem
    assert f"split-model-Q8_0-{missing:05d}-of-00003.gguf" in problem.problem


def test_a_later_part_chosen_alone_names_the_first_part(tmp_path: Path) -> None:
    parts = write_split_gguf(tmp_path, "split-model-Q8_0")
    with pytest.raises(KnownError) as caught:
        read_model_info(parts[1])
    assert "part 2 of 3" in caught.value.message and parts[0].name in caught.value.message
    models, unusable = _in(tmp_path, ModelCatalog([parts[1]]).scan())
    assert models == [] and [u.path for u in unusable] == [parts[1]]


def test_parts_that_do_not_belong_together_are_refused(tmp_path: Path) -> None:
    parts = write_split_gguf(tmp_path, "split-model-Q8_0")
    parts[1].write_bytes(parts[2].read_bytes())  # a part 3 in the place of part 2
    with pytest.raises(KnownError) as caught:
        read_model_info(parts[0])
    assert f"{parts[1]} should be part 2 of 3" in caught.value.message
    assert "part 3 of 3" in caught.value.message


def test_a_split_model_loads_in_llama_cpp_from_its_first_part_with_the_counted_parameters(
        default_models: DefaultModels, tmp_path: Path) -> None:
    from engine.runtime.llama import load_gguf

    folder = tmp_path / "models"
    parts = _split_copy(default_models.chat, folder, 3)
    [model], unusable = _in(folder, ModelCatalog([folder]).scan())
    assert unusable == []
    whole = read_model_info(default_models.chat)
    assert model.parameters == whole.parameters and model.file_size == sum(p.stat().st_size for p in parts)
    assert (model.experts, model.experts_used, model.quantization) == (whole.experts, whole.experts_used,
                                                                        whole.quantization)
    llama = load_gguf(model.path, n_ctx=64, n_threads=1, n_gpu_layers=0)
    try:
        assert llama._model.n_params() == model.parameters  # llama.cpp read every part from the first
    finally:
        llama.close()
