"""Placement: which layers and experts go to the GPU, planned from real GGUF tensor tables and pretend GPUs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.models.catalog import ModelInfo, read_model_info
from engine.models.fit import Gpu
from engine.models.gguf_header import TensorInfo
from engine.models.placement import Placement, layer_sizes, model_tensors, plan_placement
from tests.helpers.models import DefaultModels

MIB = 1024**2
CELLS = 4096


def _gpu(free_mb: float, name: str = "Test GPU") -> list[Gpu]:
    return [Gpu(name, free=int(free_mb * MIB), total=24 * 1024 * MIB)]


def _plan(path: Path, free_mb: float | None, *, requested: int = -1, budget_mb: int = 0,
          cells: int = CELLS) -> Placement:
    info = read_model_info(path)
    return plan_placement(info, model_tensors(path), cells, requested=requested,
                          gpus=_gpu(free_mb) if free_mb is not None else [], budget_mb=budget_mb)


def _kept_on_cpu(placement: Placement, tensors: tuple[TensorInfo, ...]) -> set[str]:
    """The tensors llama.cpp keeps in CPU memory for `placement` (it searches each name for each pattern)."""
    return {t.name for t in tensors if any(re.search(p, t.name) for p in placement.cpu_tensors)}


def _write_model(path: Path, *, layers: int, experts: int = 0, dense_first: int = 0, tied: bool = False) -> Path:
    """A small llama-architecture GGUF with a real tensor table: `layers` blocks, MoE with `experts`
    experts per layer (after `dense_first` dense layers) or dense, and its own output matrix unless `tied`."""
    import numpy as np
    from gguf import GGUFWriter

    embedding, ffn, vocabulary = 32, 64, 100
    writer = GGUFWriter(path, arch="llama")
    writer.add_name("placement test")
    writer.add_context_length(4096)
    writer.add_block_count(layers)
    writer.add_embedding_length(embedding)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    if experts:
        writer.add_expert_count(experts)
        writer.add_expert_used_count(2)
    writer.add_token_list([f"t{i}" for i in range(vocabulary)])
    writer.add_tensor("token_embd.weight", np.zeros((vocabulary, embedding), dtype=np.float32))
    for layer in range(layers):
        for name, shape in (("attn_norm", (embedding,)), ("attn_q", (embedding, embedding)),
                            ("attn_k", (16, embedding)), ("attn_v", (16, embedding)),
                            ("attn_output", (embedding, embedding)), ("ffn_norm", (embedding,))):
            writer.add_tensor(f"blk.{layer}.{name}.weight", np.zeros(shape, dtype=np.float32))
        if experts and layer >= dense_first:
            writer.add_tensor(f"blk.{layer}.ffn_gate_inp.weight", np.zeros((experts, embedding), dtype=np.float32))
            for name, shape in (("gate", (ffn, embedding)), ("up", (ffn, embedding)), ("down", (embedding, ffn))):
                writer.add_tensor(f"blk.{layer}.ffn_{name}_exps.weight",
                                  np.zeros((experts, *shape), dtype=np.float16))
        else:
            for name, shape in (("gate", (ffn, embedding)), ("up", (ffn, embedding)), ("down", (embedding, ffn))):
                writer.add_tensor(f"blk.{layer}.ffn_{name}.weight", np.zeros(shape, dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(embedding, dtype=np.float32))
    if not tied:
        writer.add_tensor("output.weight", np.zeros((vocabulary, embedding), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_model_that_fits_goes_all_on_the_gpu(default_models: DefaultModels) -> None:
    placement = _plan(default_models.chat, 8 * 1024)
    assert (placement.gpu_layers, placement.layers, placement.cpu_tensors) == (31, 31, ())
    assert placement.device == "GPU (Test GPU)"
    assert placement.notice == ""
    assert placement.explanation.startswith("all on Test GPU: it needs about 0.7 GB, with 8.0 GB of VRAM free")


def test_moe_experts_go_to_the_cpu_first_and_come_back_with_more_vram(default_models: DefaultModels) -> None:
    path = default_models.chat
    tensors = model_tensors(path)
    need_mb = _plan(path, 8 * 1024).gpu_need // MIB
    seen = []
    for free_mb in range(need_mb - 200, need_mb + 11, 10):
        placement = _plan(path, free_mb)
        seen.append(placement.experts_on_cpu)
        if placement.gpu_layers == 31 and placement.experts_on_cpu:
            # Attention, norms, router and output all on the GPU; the experts of the first layers not.
            on_cpu = placement.experts_on_cpu
            assert _kept_on_cpu(placement, tensors) == {f"blk.{layer}.ffn_{part}_exps.weight"
                                                         for layer in range(on_cpu) for part in ("gate", "up", "down")}
            assert placement.explanation.startswith(f"experts of {on_cpu} of 30 layers on the CPU, everything else "
                                                    f"on Test GPU: {free_mb / 1024:.1f} GB of VRAM free")
            assert placement.device == f"GPU (Test GPU, experts of {on_cpu}/30 layers on the CPU) + CPU"
            assert "runs partly on the CPU, which is slower" in placement.notice
    assert seen == sorted(seen, reverse=True)  # more VRAM, never more experts on the CPU
    assert seen[-1] == 0 and 0 < seen[len(seen) // 2] < 30  # some sizes put only some experts on the CPU
    assert len(set(seen)) > 5


def test_moe_gpu_too_small_for_all_attention_keeps_experts_on_the_cpu_and_offloads_what_fits(
        default_models: DefaultModels) -> None:
    path = default_models.chat
    fits_without_experts = next(mb for mb in range(100, 2000, 5) if _plan(path, mb).gpu_layers == 31)
    smaller = _plan(path, fits_without_experts - 20)
    assert 0 < smaller.gpu_layers < 31
    assert smaller.experts_on_cpu == 30 and _kept_on_cpu(smaller, model_tensors(path)) >= {
        "blk.29.ffn_up_exps.weight", "blk.0.ffn_down_exps.weight"}
    assert smaller.device == f"GPU (Test GPU, {smaller.gpu_layers}/31 layers, experts on the CPU) + CPU"
    nothing = _plan(path, 64)
    assert (nothing.gpu_layers, nothing.device, nothing.cpu_tensors) == (0, "CPU", ())
    assert "too little for any layer" in nothing.notice


def test_a_longer_context_leaves_less_room_for_experts(default_models: DefaultModels) -> None:
    # The model is loaded with context_size x (parallel + 1) cells; the caller passes that total.
    short = _plan(default_models.chat, 600, cells=4096)
    long = _plan(default_models.chat, 600, cells=4 * 4096)
    assert short.experts_on_cpu < long.experts_on_cpu


def test_the_budget_caps_the_vram_cleo_uses(default_models: DefaultModels) -> None:
    capped = _plan(default_models.chat, 8 * 1024, budget_mb=550)
    assert capped.experts_on_cpu == _plan(default_models.chat, 550).experts_on_cpu > 0
    assert "0.5 GB of VRAM that the GPU memory budget allows (8.0 GB free)" in capped.explanation
    assert _plan(default_models.chat, 8 * 1024, budget_mb=4096).experts_on_cpu == 0
    assert _plan(default_models.chat, 550, budget_mb=8 * 1024).experts_on_cpu > 0  # no more than is free


def test_the_gpu_layers_setting_still_decides(default_models: DefaultModels) -> None:
    forced = _plan(default_models.chat, 300, requested=12)
    assert (forced.gpu_layers, forced.cpu_tensors, forced.notice) == (12, (), "")
    assert forced.explanation == "12 of 31 layers on Test GPU, as the GPU layers setting (12) asks"
    assert _plan(default_models.chat, 300, requested=99).gpu_layers == 31
    cpu = _plan(default_models.chat, 8 * 1024, requested=0)
    assert (cpu.gpu_layers, cpu.device, cpu.notice) == (0, "CPU", "")


def test_without_a_gpu_the_model_runs_on_the_cpu(default_models: DefaultModels) -> None:
    plain = _plan(default_models.chat, None)
    assert (plain.gpu_layers, plain.device, plain.notice) == (0, "CPU", "")
    assert "found no GPU" in plain.explanation
    asked = _plan(default_models.chat, None, requested=12)
    assert asked.gpu_layers == 0 and "GPU layers is set to 12, but this build of Cleo found no GPU" in asked.notice


def test_the_gpu_with_the_most_free_vram_is_used(default_models: DefaultModels) -> None:
    info = read_model_info(default_models.chat)
    gpus = [Gpu("Small", 200 * MIB, 1024 * MIB), Gpu("Big", 8 * 1024 * MIB, 8 * 1024 * MIB)]
    assert plan_placement(info, model_tensors(default_models.chat), CELLS, requested=-1, gpus=gpus).gpu == "Big"


def test_dense_model_gets_as_many_top_layers_as_fit(default_models: DefaultModels) -> None:
    path = default_models.dense_base
    info = read_model_info(path)
    previous = -1
    partial = []
    need_mb = _plan(path, 8 * 1024).gpu_need // MIB
    for free_mb in range(need_mb - 150, need_mb + 6, 5):
        placement = _plan(path, free_mb)
        assert placement.cpu_tensors == () and placement.experts_on_cpu == 0
        assert placement.gpu_layers >= previous
        previous = placement.gpu_layers
        if 0 < placement.gpu_layers < info.layers + 1:
            partial.append(placement)
    assert previous == info.layers + 1
    assert len({p.gpu_layers for p in partial}) > 5
    example = partial[len(partial) // 2]
    assert example.explanation.startswith(f"{example.gpu_layers} of {info.layers + 1} layers on Test GPU, the rest "
                                          "on the CPU")
    assert example.device == f"GPU (Test GPU, {example.gpu_layers}/{info.layers + 1} layers) + CPU"


def test_sizes_follow_where_llama_cpp_puts_each_tensor(tmp_path: Path) -> None:
    moe = _write_model(tmp_path / "moe.gguf", layers=6, experts=8, dense_first=1)
    info = read_model_info(moe)
    sizes = layer_sizes(model_tensors(moe), info.layers)
    expert_bytes = 3 * 8 * 32 * 64 * 2  # gate, up and down of 8 experts, F16
    assert sizes.experts == (0, *[expert_bytes] * 5)
    assert sizes.expert_layers == (1, 2, 3, 4, 5)
    assert sizes.output == 100 * 32 * 4 + 32 * 4  # output matrix and norm; the input embeddings stay on the CPU
    tied = _write_model(tmp_path / "tied.gguf", layers=2, tied=True)
    tied_sizes = layer_sizes(model_tensors(tied), 2)
    assert tied_sizes.output == 100 * 32 * 4 + 32 * 4  # the embeddings, loaded again as the output
    assert tied_sizes.experts == (0, 0)


def test_leading_dense_layers_never_count_as_expert_layers(tmp_path: Path) -> None:
    path = _write_model(tmp_path / "moe.gguf", layers=48, experts=8, dense_first=3)
    info: ModelInfo = read_model_info(path)
    tensors = model_tensors(path)
    need_mb = _plan(path, 8 * 1024).gpu_need / MIB
    counts = []
    for step in range(40):
        placement = _plan(path, need_mb - 6 + step * 0.2)
        counts.append(placement.experts_on_cpu)
        if placement.experts_on_cpu and placement.gpu_layers == info.layers + 1:
            first = sorted(int(n.split(".")[1]) for n in _kept_on_cpu(placement, tensors))
            assert first[0] == 3 and len(set(first)) == placement.experts_on_cpu  # from the first MoE layer on
            assert "of 45 layers on the CPU" in placement.explanation
    assert counts == sorted(counts, reverse=True) and counts[-1] == 0 and len(set(counts)) > 3


@pytest.mark.parametrize("free_mb", [0, 1])
def test_no_free_vram_at_all_is_the_cpu(tmp_path: Path, free_mb: int) -> None:
    path = _write_model(tmp_path / "dense.gguf", layers=4)
    placement = _plan(path, free_mb)
    assert (placement.gpu_layers, placement.device) == (0, "CPU")
