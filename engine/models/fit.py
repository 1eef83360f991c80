"""Will a model fit? An estimate from GGUF metadata, made before anything is loaded.

A model that does not fit would make the machine swap until it is unusable, or crash. Cleo
refuses it up front and says how much memory it needs and how much there is, so the user can
pick a smaller model, quantization or context.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.errors import KnownError
from engine.models.catalog import ModelInfo

# Compute buffers and runtime overhead beyond weights and KV cache, measured on small models
# (llama.cpp reported ~100 MB of CPU compute buffer for a 135M model at 512 tokens).
_OVERHEAD_BYTES = 256 * 1024 * 1024
_KV_BYTES_PER_VALUE = 2  # the KV cache is F16 by default


class ModelTooLarge(KnownError):
    """The model and its context need more memory than the machine has free."""


@dataclass(frozen=True)
class MemoryNeed:
    weights: int
    kv_cache: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead


def estimate_need(info: ModelInfo, context_size: int) -> MemoryNeed:
    """Bytes needed to run `info` with `context_size` tokens of context on the CPU."""
    head_dim = info.embedding_length // info.head_count if info.head_count else 0
    kv = 2 * info.layers * context_size * info.head_count_kv * head_dim * _KV_BYTES_PER_VALUE  # K and V
    return MemoryNeed(weights=info.file_size, kv_cache=kv, overhead=_OVERHEAD_BYTES)


def available_memory() -> int | None:
    """Bytes of memory free for a new model now, or None when the OS does not tell."""
    if sys.platform.startswith("linux"):
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    if sys.platform == "win32":
        return _windows_available_memory()
    try:  # macOS and other Unixes: total physical memory, the best cheap figure they offer
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(info: ModelInfo, context_size: int, available: int | None = None) -> MemoryNeed:
    """The estimated need, or `ModelTooLarge` with both numbers when it exceeds free memory."""
    need = estimate_need(info, context_size)
    free = available_memory() if available is None else available
    if free is not None and need.total > free:
        raise ModelTooLarge(
            f"{info.path.name} needs about {_gb(need.total)} of memory with a {context_size}-token context "
            f"({_gb(need.weights)} of weights, {_gb(need.kv_cache)} of context cache), "
            f"but only {_gb(free)} is free.",
            hint="Close other programs, choose a smaller model or quantization, or lower the context size (with "
                 "the local API on, every parallel request holds a context of its own).",
        )
    return need


@dataclass(frozen=True)
class Gpu:
    """A GPU llama.cpp can use, as it reports it."""

    name: str
    free: int  # bytes
    total: int


@dataclass(frozen=True)
class GpuPlan:
    """How many layers go to the GPU, where the model runs (in the user's words), and what to tell them."""

    layers: int
    device: str
    notice: str = ""  # non-empty when the user expected a GPU and gets (partly) the CPU


def plan_gpu_layers(info: ModelInfo, context_size: int, requested: int, gpus: Sequence[Gpu]) -> GpuPlan:
    """Layers to offload: all when the GPU has room, else as many as fit, else none.

    `requested` is the setting: -1 chooses, 0 means the CPU, N asks for N layers. A rough figure
    from the file's size alone, for a model known by its metadata; a model about to be loaded is
    placed from its tensor table instead (`engine.models.placement`, experts apart for MoE).
    """
    if requested == 0:
        return GpuPlan(0, "CPU")
    if not gpus:
        if requested > 0:
            return GpuPlan(0, "CPU", f"GPU layers is set to {requested}, but this build of Cleo found no GPU it "
                                     "can use; the model runs on the CPU.")
        return GpuPlan(0, "CPU")
    gpu = max(gpus, key=lambda g: g.free)
    offloadable = info.layers + 1  # the repeating blocks and the output layer
    if requested > 0:
        layers = min(requested, offloadable)
        return GpuPlan(layers, _where(gpu, layers, offloadable))
    need = estimate_need(info, context_size)
    if need.total <= gpu.free:
        return GpuPlan(offloadable, _where(gpu, offloadable, offloadable))
    per_layer = (need.weights + need.kv_cache) / offloadable
    layers = max(0, min(offloadable - 1, int((gpu.free - need.overhead) // per_layer)))
    notice = (f"{info.path.name} needs about {_gb(need.total)} and {gpu.name} has {_gb(gpu.free)} free, so "
              + (f"{layers} of {offloadable} layers run on the GPU and the rest on the CPU, which is slower."
                 if layers else "it runs on the CPU, which is slower."))
    return GpuPlan(layers, _where(gpu, layers, offloadable), notice)


def _where(gpu: Gpu, layers: int, offloadable: int) -> str:
    if layers == 0:
        return "CPU"
    if layers >= offloadable:
        return f"GPU ({gpu.name})"
    return f"GPU ({gpu.name}, {layers}/{offloadable} layers) + CPU"


def _gb(n: int) -> str:
    return f"{n / 1024**3:.1f} GB"


def _windows_available_memory() -> int | None:
    class MemoryStatus(ctypes.Structure):
        _fields_ = [("length", ctypes.c_ulong), ("load", ctypes.c_ulong),
                    ("total_phys", ctypes.c_ulonglong), ("avail_phys", ctypes.c_ulonglong),
                    ("total_page", ctypes.c_ulonglong), ("avail_page", ctypes.c_ulonglong),
                    ("total_virtual", ctypes.c_ulonglong), ("avail_virtual", ctypes.c_ulonglong),
                    ("avail_extended", ctypes.c_ulonglong)]

    status = MemoryStatus()
    status.length = ctypes.sizeof(MemoryStatus)
    ok = ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status))  # type: ignore[attr-defined]
    return int(status.avail_phys) if ok else None
