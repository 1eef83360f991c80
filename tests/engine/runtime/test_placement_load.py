"""A placement reaches llama.cpp: experts kept in CPU memory by name, and the model still answers.

This build of llama.cpp has no GPU, so every layer lands in CPU memory whatever is asked; what
shows that the plan was applied is llama.cpp's own log of each tensor it kept on the CPU by pattern.
"""

from __future__ import annotations

import logging
import re

import llama_cpp
import pytest

from engine.models.catalog import read_model_info
from engine.models.fit import Gpu
from engine.models.placement import MIB, model_tensors, plan_placement
from engine.runtime.chat_model import LlamaChatModel
from engine.runtime.sampling import Sampling
from tests.helpers.models import DefaultModels

QUESTION = [{"role": "system", "content": "You are Cleo."},
            {"role": "user", "content": "What is the capital of France?"}]
_OVERRIDDEN = re.compile(r"^tensor (\S+) .* buffer type overridden to CPU")


def test_experts_kept_on_the_cpu_by_the_budget_load_and_answer(default_models: DefaultModels,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    path = default_models.chat
    big_gpu = [Gpu("Test GPU", free=8 * 1024 * MIB, total=8 * 1024 * MIB)]
    need = plan_placement(read_model_info(path), model_tensors(path), 512, requested=-1, gpus=big_gpu).gpu_need
    budget_mb = (need - 30 * MIB) // MIB  # room for all but a few layers' experts
    default_params = llama_cpp.llama_cpp.llama_model_default_params
    with caplog.at_level(logging.DEBUG, logger="llama.cpp"):
        model = LlamaChatModel(path, context_size=512, threads=1, gpus_found=big_gpu, gpu_memory_budget_mb=budget_mb)
    try:
        placement = model.placement
        assert placement.gpu_layers == 31 and 0 < placement.experts_on_cpu < 30
        kept = {found[1] for record in caplog.records if (found := _OVERRIDDEN.match(record.getMessage()))}
        assert kept == {f"blk.{layer}.ffn_{part}_exps.weight"
                        for layer in range(placement.experts_on_cpu) for part in ("gate", "up", "down")}
        assert llama_cpp.llama_cpp.llama_model_default_params is default_params  # the patch ends with the load
        assert model.device == f"GPU (Test GPU, experts of {placement.experts_on_cpu}/30 layers on the CPU) + CPU"
        assert any(placement.explanation in notice and "GPU memory budget" in notice for notice in model.notices)
        model.forget()
        reply = "".join(model.stream(model.chat_tokens(QUESTION), Sampling(temperature=0.0, max_tokens=24)))
        assert "Paris" in reply
    finally:
        model.close()
