"""Quantize an exported F16/F32 GGUF in process, with the llama.cpp that Cleo runs models with.

`llama_model_quantize` applies llama.cpp's own recipes: Q4_K_M, for instance, keeps some tensors at
higher precision, leaves the router (`ffn_gate_inp`) and norms in F32, and falls back to another
type for tensors whose rows do not fill whole 256-value K-quant blocks.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import llama_cpp

from engine.errors import KnownError, ModelFileInvalid
from engine.models.catalog import read_model_info

# The kinds Cleo offers, with llama.cpp's file-type enum for each.
KINDS: dict[str, int] = {
    "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "Q6_K": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
    "Q5_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "Q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1,
}
# Quantizing an already quantized file would compound the rounding: start from the export instead.
_UNQUANTIZED = {"ALL_F32", "F16", "BF16", "F32"}


class QuantizeFailed(KnownError):
    """llama.cpp could not quantize a model file."""


def quantize(src: str | os.PathLike[str], dst: str | os.PathLike[str], kind: str = "Q8_0", *,
             threads: int = 0) -> Path:
    """Write `dst`, the F16/F32 GGUF `src` quantized to `kind` (one of `KINDS`); return `dst`.

    `threads` 0 lets llama.cpp use every core. `dst` appears only when complete.
    """
    src, dst = Path(src), Path(dst)
    if kind not in KINDS:
        raise ValueError(f"unknown quantization {kind!r}; choose one of {', '.join(KINDS)}")
    info = read_model_info(src)  # a missing or damaged file fails here with a clear message
    if info.quantization not in _UNQUANTIZED:
        raise ModelFileInvalid(f"{src} is already quantized ({info.quantization}).",
                               hint="Quantize the F16 or F32 export of the model instead.")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = KINDS[kind]
    params.nthread = threads
    partial = dst.with_name(dst.name + ".partial")
    try:
        status = llama_cpp.llama_model_quantize(str(src).encode(), str(partial).encode(), ctypes.byref(params))
        if status != 0 or not partial.exists():
            raise QuantizeFailed(f"llama.cpp could not quantize {src} to {kind} (status {status}).",
                                 hint="llama.cpp's log says why; check the free disk space and the source file.")
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)
    return dst
