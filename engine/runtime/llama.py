"""Loading a GGUF file into llama.cpp, and what every load needs first.

`load_gguf` is the one place a `llama_cpp.Llama` is made: it checks once that this processor has
the instruction sets llama.cpp was compiled for, routes llama.cpp's own log to Python logging
(logger `llama.cpp`, never the user's terminal) and turns a failed load into `ModelFileInvalid`.
It also answers what a load is planned from: the GPUs this build can offload to (`gpus`) and how
many threads to use (`physical_cores`, `default_threads`). What `Llama` takes no parameter for
(several sequences, tensors kept in CPU memory by name) is given to it through llama.cpp's
defaults while it is made.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import _ggml

from engine.errors import ModelFileInvalid, ProcessorUnsupported
from engine.models.fit import Gpu
from engine.runtime import cpu_features

log = logging.getLogger("llama.cpp")

# ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 continues the previous record.
_GGML_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
# enum ggml_backend_dev_type: CPU, GPU, IGPU (integrated, host memory), ACCEL, META
_DEVICE_GPU, _DEVICE_IGPU = 1, 2
_DEVICE_CPU = 0


def physical_cores() -> int:
    """Physical CPU cores; hyper-threads share a core's arithmetic units, so they do not count."""
    if sys.platform.startswith("linux"):
        try:
            cores = set()
            physical = ""
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "physical id":
                    physical = value.strip()
                elif key.strip() == "core id":
                    cores.add((physical, value.strip()))
            if cores:
                return len(cores)
        except OSError:
            pass
    return os.cpu_count() or 1


def default_threads() -> int:
    """Physical cores minus one, so the GUI keeps a core (all cores busy measured 3-10x slower)."""
    return max(1, physical_cores() - 1)


def gpus() -> list[Gpu]:
    """The GPUs llama.cpp can offload to in this build, with their free memory now."""
    lib = _ggml.libggml
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_description.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_description.restype = ctypes.c_char_p
    lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                            ctypes.POINTER(ctypes.c_size_t)]
    found = []
    for index in range(lib.ggml_backend_dev_count()):
        device = lib.ggml_backend_dev_get(index)
        if lib.ggml_backend_dev_type(device) not in (_DEVICE_GPU, _DEVICE_IGPU):
            continue
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        lib.ggml_backend_dev_memory(device, ctypes.byref(free), ctypes.byref(total))
        name = (lib.ggml_backend_dev_description(device) or b"GPU").decode("utf-8", "replace")
        found.append(Gpu(name=name, free=int(free.value), total=int(total.value)))
    return found


def check_processor(has: dict[str, bool] | None = None) -> None:
    """Raise `ProcessorUnsupported` if this processor (or `has`, for tests) lacks an instruction set
    llama.cpp was compiled to use: running it anyway ends the app with "illegal instruction"."""
    needed = cpu_features.built_for(llama_cpp.llama_print_system_info().decode("utf-8", errors="replace"))
    missing = cpu_features.missing_features(needed, cpu_features.this_processor() if has is None else has)
    if missing:
        names = " and ".join([", ".join(missing[:-1]), missing[-1]] if len(missing) > 1 else missing)
        raise ProcessorUnsupported(
            f"This computer's processor lacks {names}, which Cleo's engine (llama.cpp) was built to use, "
            "so it cannot run a model here (most Intel Core and AMD processors made since 2015 have them; "
            "many Celeron, Pentium and Atom chips do not).",
            hint="Run Cleo from its source on this computer, with llama.cpp rebuilt for this processor: "
                 f'CMAKE_ARGS="-DGGML_NATIVE=ON" pip install --force-reinstall --no-cache-dir '
                 f"llama-cpp-python=={llama_cpp.__version__} (see the README).")


def load_gguf(path: Path, *, sequences: int = 1, cpu_tensors: Sequence[str] = (), **params: Any) -> llama_cpp.Llama:
    """`path` loaded by llama.cpp with `params` (`n_ctx`, `n_gpu_layers`, `embedding`, ...).

    With `sequences` > 1 the context holds that many sequences, each with `n_ctx / sequences`
    positions of its own cache (engine.runtime.batch writes them at once). Tensors whose names
    match a pattern of `cpu_tensors` (regular expressions, searched) stay in CPU memory whatever
    `n_gpu_layers` says. The `Llama` it returns is not thread-safe: it belongs to the thread that loads it.
    """
    _route_logs_to_python()
    global _processor_checked
    if not _processor_checked:
        check_processor()
        _processor_checked = True
    try:
        # One load at a time: another (an embedder's) must not read the defaults adjusted for this one.
        with _defaults_lock, _context_params(sequences), _tensors_on_cpu(cpu_tensors):
            llm = llama_cpp.Llama(model_path=str(path), verbose=False, **params)
        llm.model_params.tensor_buft_overrides = None  # read during the load only; its array is gone now
        return llm
    except ValueError as exc:
        raise ModelFileInvalid(
            f"llama.cpp could not load {path} ({exc}).",
            hint="The file may be damaged or use an architecture this version of Cleo does not run; "
                 "details are in the log file.",
        ) from exc


@contextmanager
def _context_params(sequences: int) -> Iterator[None]:
    """`Llama` takes no sequence count for a chat model (only embedding models get several), so its
    context defaults are given one while it is made. Separate caches per sequence: a shared one
    would make every sequence's attention read every other sequence's tokens."""
    if sequences <= 1:
        yield
        return

    def adjust(params: Any) -> None:
        params.n_seq_max = sequences
        params.kv_unified = False
    with _llama_defaults("llama_context_default_params", adjust):
        yield


class _TensorOverride(ctypes.Structure):
    """llama.cpp's `llama_model_tensor_buft_override`: tensors matching `pattern` go to buffer type `buft`."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


@contextmanager
def _tensors_on_cpu(patterns: Sequence[str]) -> Iterator[None]:
    """`Llama` takes no tensor buffer-type overrides, so its model defaults are given them while it
    is made: every pattern maps to the CPU's buffer type (what llama.cpp's `-ot PATTERN=CPU` does).
    The array and its patterns live until the load is over; llama.cpp reads them only then."""
    if not patterns:
        yield
        return
    overrides = (_TensorOverride * (len(patterns) + 1))()  # the last one, all zeros, ends the list
    cpu = cpu_buffer_type()
    kept = [pattern.encode("utf-8") for pattern in patterns]  # the array points into these bytes
    for override, pattern in zip(overrides, kept, strict=False):
        override.pattern, override.buft = pattern, cpu

    def adjust(params: Any) -> None:
        params.tensor_buft_overrides = ctypes.addressof(overrides)
    with _llama_defaults("llama_model_default_params", adjust):
        yield


@contextmanager
def _llama_defaults(name: str, adjust: Callable[[Any], None]) -> Iterator[None]:
    """While a `Llama` is made, the llama.cpp defaults it reads from `llama_cpp.llama_cpp.<name>`
    come `adjust`ed (`load_gguf` holds `_defaults_lock`, re-entrant, for the whole load)."""
    default = getattr(llama_cpp.llama_cpp, name)

    def adjusted() -> Any:
        params = default()
        adjust(params)
        return params

    with _defaults_lock:
        setattr(llama_cpp.llama_cpp, name, adjusted)
        try:
            yield
        finally:
            setattr(llama_cpp.llama_cpp, name, default)


def cpu_buffer_type() -> int:
    """ggml's buffer type for CPU memory, from the CPU device (the one backend every build has loaded)."""
    lib = _ggml.libggml
    lib.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    lib.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    lib.ggml_backend_dev_buffer_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_buffer_type.restype = ctypes.c_void_p
    device = lib.ggml_backend_dev_by_type(_DEVICE_CPU)
    buffer_type = lib.ggml_backend_dev_buffer_type(device) if device else None
    if not buffer_type:
        raise ModelFileInvalid("llama.cpp has no CPU device loaded, so no model can be loaded.",
                               hint="Reinstall Cleo; details are in the log file.")
    return int(buffer_type)


_defaults_lock = threading.RLock()
_processor_checked = False
_log_callback: Any = None
_log_lock = threading.Lock()
_pending_line: list[str] = []
_last_level = logging.DEBUG


def _route_logs_to_python() -> None:
    """Install (once) a llama.cpp log callback that forwards whole lines to `logging`."""
    global _log_callback
    with _log_lock:
        if _log_callback is not None:
            return

        @llama_cpp.llama_log_callback
        def forward(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
            global _last_level
            if level != 5:  # 5 continues the previous record at its level
                _last_level = _GGML_LEVELS.get(level, logging.DEBUG)
            _pending_line.append(text.decode("utf-8", errors="replace"))
            if _pending_line[-1].endswith("\n"):
                line = "".join(_pending_line).rstrip()
                _pending_line.clear()
                if line:
                    log.log(_last_level, "%s", line)

        _log_callback = forward  # ctypes callbacks must outlive their registration
        llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))
