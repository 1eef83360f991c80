"""GGUF metadata values with their exact GGUF types, so that an export writes back what an import read.

The file is read by the engine's bounds-checked reader (`engine.models.gguf_header`), asked for
whole arrays: training needs the vocabulary and merges that the engine skips.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gguf import GGUFValueType

from engine.models.gguf_header import GGUFHeader


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


def typed_metadata(header: GGUFHeader) -> dict[str, MetadataValue]:
    """Every metadata value of `header` with its GGUF type (arrays are complete only in a header read
    with `skip_long_arrays=False`)."""
    return {key: MetadataValue(value, *header.value_types[key]) for key, value in header.metadata.items()}
