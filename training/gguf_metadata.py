"""GGUF metadata with its exact types, read whole: the vocabulary and merges included.

`engine.gguf_header` checks a header's bounds and skips long arrays; `gguf.GGUFReader` reads
them, but a 49k-token vocabulary takes it seconds. Torch-free, for `gguf_io` (import and export)
and `tokenizer` (the vocabulary of a GGUF file).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFValueType

from engine.errors import ModelFileInvalid


@dataclass(frozen=True)
class MetadataValue:
    """One GGUF metadata value with its exact GGUF type, so that export writes what was read.

    llama.cpp checks the types of many keys (token ids are UINT32, token types INT32, ...).
    """

    value: Any  # str, int, float, bool, or a list of one of them
    type: GGUFValueType
    item_type: GGUFValueType | None = None  # for arrays

    @staticmethod
    def infer(value: Any) -> MetadataValue:
        """The GGUF type llama.cpp's converters use for a plain Python value."""
        if isinstance(value, MetadataValue):
            return value
        if isinstance(value, list | tuple):
            items = list(value)
            item = _scalar_type(items[0], in_array=True) if items else GGUFValueType.STRING
            return MetadataValue(items, GGUFValueType.ARRAY, item)
        return MetadataValue(value, _scalar_type(value, in_array=False))


def _scalar_type(value: Any, *, in_array: bool) -> GGUFValueType:
    if isinstance(value, bool):
        return GGUFValueType.BOOL
    if isinstance(value, int):
        # Counts and token ids are UINT32; arrays of ints (token types) are INT32.
        if in_array:
            return GGUFValueType.INT32
        return GGUFValueType.UINT32 if 0 <= value < 2**32 else GGUFValueType.INT64
    if isinstance(value, float):
        return GGUFValueType.FLOAT32
    if isinstance(value, str):
        return GGUFValueType.STRING
    raise TypeError(f"cannot store {type(value).__name__} value {value!r} in GGUF metadata")


# GGUF value type -> numpy dtype, for arrays of numbers (read in one go).
_NUMPY_TYPES = {
    GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2", GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4", GGUFValueType.FLOAT32: "<f4", GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "<u8", GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT64: "<f8",
}


def read_metadata(path: Path, data_offset: int) -> dict[str, MetadataValue]:
    """Every metadata value of a header `engine.gguf_header.read_header` has already bounds-checked
    (it ends at `data_offset`). A header is at most a few MB: it is read whole, parsed from memory."""
    with path.open("rb") as f:
        data = f.read(data_offset)
    pos = 8  # magic and version
    _, n_keys = struct.unpack_from("<QQ", data, pos)
    pos += 16

    def string() -> str:
        nonlocal pos
        (length,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + length
        return data[pos - length:pos].decode("utf-8")

    def scalar(vtype: GGUFValueType) -> Any:
        nonlocal pos
        if vtype == GGUFValueType.STRING:
            return string()
        item = np.dtype(_NUMPY_TYPES[vtype])
        pos += item.itemsize
        return np.frombuffer(data, item, 1, pos - item.itemsize)[0].item()

    metadata: dict[str, MetadataValue] = {}
    try:
        for _ in range(n_keys):
            key = string()
            vtype = GGUFValueType(struct.unpack_from("<I", data, pos)[0])
            pos += 4
            if vtype != GGUFValueType.ARRAY:
                metadata[key] = MetadataValue(scalar(vtype), vtype)
                continue
            item_type, count = struct.unpack_from("<IQ", data, pos)
            item_type = GGUFValueType(item_type)
            pos += 12
            if item_type == GGUFValueType.STRING:
                items = [string() for _ in range(count)]
            else:
                dtype = np.dtype(_NUMPY_TYPES[item_type])
                items = np.frombuffer(data, dtype, count, pos).tolist()
                pos += count * dtype.itemsize
            metadata[key] = MetadataValue(items, vtype, item_type)
    except (UnicodeDecodeError, KeyError, ValueError) as exc:  # KeyError: arrays of arrays, which no model uses
        raise ModelFileInvalid(f"{path} has metadata Cleo cannot read ({exc}).") from exc
    return metadata
