"""What llama.cpp can run on here: the ggml backends that loaded, their devices, and the CPU's features.

ggml registers a backend (CPU, CUDA, Vulkan, Metal, ...) per library it has, and each backend
lists its devices with a type and their memory. A GPU backend that could not load is simply
missing from the list, so this is what to look at when a GPU is not used (`cleo devices`).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import llama_cpp
from llama_cpp import _ggml

# enum ggml_backend_dev_type, in order.
DEVICE_TYPES = ("CPU", "GPU", "integrated GPU", "accelerator", "meta")


@dataclass(frozen=True)
class Device:
    """One device of a ggml backend, as it reports itself."""

    name: str  # ggml's name, e.g. "CPU", "CUDA0", "Vulkan0"
    description: str  # the hardware, e.g. the processor's or the graphics card's name
    type: str  # one of DEVICE_TYPES
    backend: str  # the backend it belongs to
    free: int  # bytes of memory free now
    total: int

    @property
    def is_gpu(self) -> bool:
        return self.type in ("GPU", "integrated GPU")


@dataclass(frozen=True)
class DeviceReport:
    """Everything `cleo devices` shows."""

    backends: tuple[str, ...]
    devices: tuple[Device, ...]
    cpu_features: tuple[str, ...]  # instruction sets and options llama.cpp's CPU code uses here
    gpu_offload: bool  # whether this build can put layers on a GPU at all

    def as_json(self) -> dict[str, Any]:
        return {"backends": list(self.backends), "cpu_features": list(self.cpu_features),
                "gpu_offload": self.gpu_offload,
                "devices": [{"name": d.name, "description": d.description, "type": d.type, "backend": d.backend,
                             "free_bytes": d.free, "total_bytes": d.total} for d in self.devices]}


def device_report() -> DeviceReport:
    """The backends and devices ggml has loaded now, and what the CPU backend uses."""
    lib = _bound()
    backends = tuple(_text(lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)))
                     for i in range(lib.ggml_backend_reg_count()))
    devices = tuple(_device(lib, lib.ggml_backend_dev_get(i)) for i in range(lib.ggml_backend_dev_count()))
    system_info = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace")
    return DeviceReport(backends, devices, cpu_features(system_info), bool(llama_cpp.llama_supports_gpu_offload()))


def cpu_features(system_info: str) -> tuple[str, ...]:
    """The features the CPU backend reports as on, from llama.cpp's system-info line
    ("CPU : SSE3 = 1 | AVX2 = 1 | ... | REPACK = 1 |"); other backends' parts are left out."""
    features: list[str] = []
    backend = ""
    for part in system_info.split("|"):
        head, colon, rest = part.rpartition(":")
        if colon:
            backend, part = head.strip(), rest
        name, _, value = part.partition("=")
        if backend == "CPU" and value.strip() == "1":
            features.append(name.strip())
    return tuple(features)


def _device(lib: Any, device: int) -> Device:
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    lib.ggml_backend_dev_memory(device, ctypes.byref(free), ctypes.byref(total))
    kind = lib.ggml_backend_dev_type(device)
    backend = lib.ggml_backend_dev_backend_reg(device)
    return Device(name=_text(lib.ggml_backend_dev_name(device)),
                  description=_text(lib.ggml_backend_dev_description(device)),
                  type=DEVICE_TYPES[kind] if 0 <= kind < len(DEVICE_TYPES) else f"type {kind}",
                  backend=_text(lib.ggml_backend_reg_name(backend)) if backend else "",
                  free=int(free.value), total=int(total.value))


def _text(value: bytes | None) -> str:
    return (value or b"").decode("utf-8", errors="replace")


def _bound() -> Any:
    """libggml with the signatures of the registry functions used here."""
    lib = _ggml.libggml
    pointer, size, text = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
    for name, arguments, result in (
        ("ggml_backend_reg_count", [], size), ("ggml_backend_reg_get", [size], pointer),
        ("ggml_backend_reg_name", [pointer], text), ("ggml_backend_dev_count", [], size),
        ("ggml_backend_dev_get", [size], pointer), ("ggml_backend_dev_name", [pointer], text),
        ("ggml_backend_dev_description", [pointer], text), ("ggml_backend_dev_type", [pointer], ctypes.c_int),
        ("ggml_backend_dev_backend_reg", [pointer], pointer),
        ("ggml_backend_dev_memory", [pointer, ctypes.POINTER(size), ctypes.POINTER(size)], None),
    ):
        function = getattr(lib, name)
        function.argtypes, function.restype = arguments, result
    return lib
