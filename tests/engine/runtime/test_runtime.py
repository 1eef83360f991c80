"""The llama.cpp runtime on the real default MoE: streaming, stopping, cache reuse, snapshots, GPU plans."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.errors import ChatTemplateInvalid, ModelFileInvalid, ProcessorUnsupported
from engine.models.catalog import read_model_info
from engine.models.fit import Gpu, plan_gpu_layers
from engine.runtime.chat_model import LlamaChatModel, ReplyStats
from engine.runtime.llama import gpus
from engine.runtime.sampling import Sampling
from tests.helpers.bad_models import UNSAFE_TEMPLATES
from tests.helpers.models import DefaultModels, write_tiny_gguf

GREEDY = Sampling(temperature=0.0, max_tokens=24)
QUESTION = [{"role": "system", "content": "You are Cleo."},
            {"role": "user", "content": "What is the capital of France?"}]


def _stream(model: LlamaChatModel, messages: list[dict[str, str]], sampling: Sampling = GREEDY,
            stop: threading.Event | None = None) -> tuple[str, ReplyStats]:
    stats = ReplyStats()
    text = "".join(model.stream(model.chat_tokens(messages), sampling, stop, stats))
    return text, stats


def test_reply_streams_in_pieces_that_add_up(moe_model: LlamaChatModel) -> None:
    moe_model.forget()
    pieces = list(moe_model.stream(moe_model.chat_tokens(QUESTION), GREEDY))
    assert len(pieces) > 3
    assert "Paris" in "".join(pieces)


def test_follow_up_reuses_the_cached_prefix(moe_model: LlamaChatModel) -> None:
    moe_model.forget()
    first, before = _stream(moe_model, QUESTION)
    assert before.cached_tokens == 0
    follow_up = [*QUESTION, {"role": "assistant", "content": first}, {"role": "user", "content": "And of Italy?"}]
    second, stats = _stream(moe_model, follow_up)
    # The first prompt and the reply are reused; only the new message is computed.
    assert stats.cached_tokens >= before.prompt_tokens + before.completion_tokens - 1
    assert "Rome" in second


def test_reply_with_reused_cache_equals_a_fresh_models(moe_model: LlamaChatModel,
                                                       default_models: DefaultModels) -> None:
    moe_model.forget()
    first, _ = _stream(moe_model, QUESTION)
    follow_up = [*QUESTION, {"role": "assistant", "content": first}, {"role": "user", "content": "And Spain?"}]
    reused, stats = _stream(moe_model, follow_up, Sampling(temperature=0.8, seed=7, max_tokens=24))
    assert stats.cached_tokens > 0
    fresh_model = LlamaChatModel(default_models.chat, context_size=1024, threads=1)
    try:
        fresh, stats = _stream(fresh_model, follow_up, Sampling(temperature=0.8, seed=7, max_tokens=24))
    finally:
        fresh_model.close()
    assert stats.cached_tokens == 0
    assert reused == fresh


def _stop_after(stop: threading.Event, pieces: Iterator[str], n: int) -> tuple[list[str], float]:
    """Consume `pieces`, asking to stop after `n` of them; the seconds from the request to the end."""
    got: list[str] = []
    asked = 0.0
    for piece in pieces:
        got.append(piece)
        if len(got) == n:
            stop.set()
            asked = time.perf_counter()
    return got, time.perf_counter() - asked


def test_stop_ends_the_reply_within_100_ms_and_the_next_reply_is_normal(
    moe_model: LlamaChatModel, default_models: DefaultModels
) -> None:
    moe_model.forget()
    stop = threading.Event()
    story = [{"role": "user", "content": "Write a long story about a lighthouse."}]
    stats = ReplyStats()
    got, latency = _stop_after(stop, moe_model.stream(moe_model.chat_tokens(story), Sampling(max_tokens=400), stop,
                                                       stats), 5)
    assert len(got) == 5 and stats.finish_reason == "stopped"
    assert latency < 0.1

    stop.clear()
    after_stop, _ = _stream(moe_model, QUESTION, Sampling(temperature=0.8, seed=3, max_tokens=24), stop)
    fresh_model = LlamaChatModel(default_models.chat, context_size=1024, threads=1)
    try:
        fresh, _ = _stream(fresh_model, QUESTION, Sampling(temperature=0.8, seed=3, max_tokens=24))
    finally:
        fresh_model.close()
    assert after_stop == fresh


def test_stop_interrupts_reading_a_long_prompt(moe_model: LlamaChatModel) -> None:
    moe_model.forget()
    long_prompt = moe_model.chat_tokens([{"role": "user", "content": "word " * 900}])
    stop = threading.Event()
    stats = ReplyStats()
    timer = threading.Timer(0.3, stop.set)
    started = time.perf_counter()
    timer.start()
    pieces = list(moe_model.stream(long_prompt, GREEDY, stop, stats))
    elapsed = time.perf_counter() - started
    timer.join()
    assert pieces == [] and stats.finish_reason == "stopped"
    assert elapsed < 0.3 + 0.1  # reading all of it takes seconds
    assert len(moe_model.cached_tokens) < len(long_prompt)  # the unread part was not kept
    stop.clear()
    assert "Paris" in _stream(moe_model, QUESTION)[0]


def test_snapshot_brings_a_conversation_back(moe_model: LlamaChatModel) -> None:
    moe_model.forget()
    first, _ = _stream(moe_model, QUESTION)
    snapshot = moe_model.snapshot()
    assert snapshot.tokens == moe_model.cached_tokens and snapshot.size > 0
    _stream(moe_model, [{"role": "user", "content": "Name a fruit."}])  # another chat takes the cache
    assert moe_model.restore(snapshot)
    follow_up = [*QUESTION, {"role": "assistant", "content": first}, {"role": "user", "content": "And of Italy?"}]
    second, stats = _stream(moe_model, follow_up)
    assert stats.cached_tokens >= len(snapshot.tokens) - 4
    assert "Rome" in second


@pytest.mark.parametrize("template", UNSAFE_TEMPLATES)
def test_template_reaching_python_internals_is_refused(tmp_path: Path, template: str) -> None:
    path = write_tiny_gguf(tmp_path / "evil.gguf", chat_template=template)
    with pytest.raises(ChatTemplateInvalid) as caught:
        LlamaChatModel(path, context_size=512, threads=1)
    assert str(path) in caught.value.message and "must not touch" in caught.value.message


def test_gpu_failure_falls_back_to_the_cpu_and_says_so(default_models: DefaultModels) -> None:
    from engine.runtime import llama

    attempts: list[int] = []

    def loader(path: Path, **params: Any) -> Any:
        attempts.append(params["n_gpu_layers"])
        if params["n_gpu_layers"]:  # what a driver or out-of-memory failure looks like from here
            raise ModelFileInvalid(f"llama.cpp could not load {path} (failed to allocate CUDA buffer).")
        return llama.load_gguf(path, **params)

    big_gpu = [Gpu("Test GPU", free=16 * 1024**3, total=16 * 1024**3)]
    model = LlamaChatModel(default_models.chat, context_size=512, threads=1, gpus_found=big_gpu, loader=loader)
    try:
        assert attempts == [31, 0]
        assert model.device == "CPU"
        assert any("on the GPU failed" in n and "CUDA buffer" in n for n in model.notices)
        assert "Paris" in _stream(model, QUESTION)[0]
    finally:
        model.close()


def test_gpu_layers_are_planned_from_free_memory(default_models: DefaultModels) -> None:
    info = read_model_info(default_models.chat)  # 30 layers + output, about 0.35 GB at 4096 tokens
    gib = 1024**3
    assert plan_gpu_layers(info, 4096, -1, [Gpu("Big", 8 * gib, 8 * gib)]).layers == 31
    partial = plan_gpu_layers(info, 4096, -1, [Gpu("Small", 400 * 1024**2, gib)])
    assert 0 < partial.layers < 31 and "layers run on the GPU" in partial.notice
    assert plan_gpu_layers(info, 4096, -1, [Gpu("Tiny", 100 * 1024**2, gib)]).layers == 0
    assert plan_gpu_layers(info, 4096, 0, [Gpu("Big", 8 * gib, 8 * gib)]).device == "CPU"
    asked = plan_gpu_layers(info, 4096, 12, [])
    assert asked.layers == 0 and "found no GPU" in asked.notice
    assert plan_gpu_layers(info, 4096, -1, []).notice == ""  # no GPU, nothing was expected


def test_this_build_reports_its_gpus_truthfully() -> None:
    import llama_cpp

    assert bool(gpus()) == bool(llama_cpp.llama_supports_gpu_offload())


# /proc/cpuinfo of a Celeron N4020 (Gemini Lake, 2019): SSE4.2, no AVX of any kind.
_CELERON_N4020 = """processor	: 0
model name	: Intel(R) Celeron(R) N4020 CPU @ 1.10GHz
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi mmx fxsr \
sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc art arch_perfmon pebs bts rep_good nopl xtopology \
tsc_reliable nonstop_tsc cpuid aperfmperf tsc_known_freq pni pclmulqdq dtes64 monitor ds_cpl vmx est tm2 ssse3 \
sdbg cx16 xtpr pdcm sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave rdrand lahf_lm 3dnowprefetch \
cpuid_fault cat_l2 pti cdp_l2 ssbd ibrs ibpb stibp ibrs_enhanced tpr_shadow flexpriority ept vpid ept_ad fsgsbase \
tsc_adjust smep erms mpx rdt_a rdseed smap clflushopt intel_pt sha_ni xsaveopt xsavec xgetbv1 xsaves dtherm ida \
arat pln pts umip rdpid md_clear arch_capabilities
"""


def test_a_processor_without_the_instructions_llama_cpp_uses_is_refused_before_it_crashes(
        default_models: DefaultModels, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.runtime import cpu_features, llama

    celeron = cpu_features.linux_processor(_CELERON_N4020)
    assert celeron["SSSE3"] and not celeron["AVX"] and not celeron["AVX2"]
    needed = cpu_features.built_for("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | "
                                    "BMI2 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |")
    assert needed == {"SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2"}
    assert cpu_features.missing_features(needed, celeron) == ["AVX", "AVX2", "BMI2", "F16C", "FMA"]
    assert cpu_features.missing_features(needed, {}) == []  # an OS that does not say: no refusal

    import llama_cpp

    this_build = cpu_features.built_for(llama_cpp.llama_print_system_info().decode("utf-8", errors="replace"))
    missing_on_celeron = cpu_features.missing_features(this_build, celeron)
    if not missing_on_celeron:
        pytest.skip("this llama.cpp build needs nothing the Celeron lacks (an ARM build, say)")
    monkeypatch.setattr(llama, "_processor_checked", False)
    monkeypatch.setattr(cpu_features, "this_processor", lambda: celeron)
    with pytest.raises(ProcessorUnsupported) as refused:
        LlamaChatModel(default_models.chat, context_size=256, threads=1)
    message = refused.value.message
    assert "processor lacks" in message and all(name in message for name in missing_on_celeron)
    assert "GGML_NATIVE=ON" in refused.value.hint
    monkeypatch.undo()  # this machine's own processor runs the build it was built on
    monkeypatch.setattr(llama, "_processor_checked", False)
    LlamaChatModel(default_models.chat, context_size=256, threads=1).close()
