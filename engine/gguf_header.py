"""A careful reader of GGUF headers: metadata and tensor table, never the weights.

Cleo reads every file a user points it at before llama.cpp sees it, so this reader assumes the
file may be anything: empty, text, random bytes, truncated, or a header whose counts and sizes
are absurd. Every count is checked against the bytes that remain before anything is allocated,
and every failure is a `ModelFileInvalid` naming the file and the problem. Large arrays (the
vocabulary, merges) are skipped over, keeping only their length.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from engine.errors import ModelFileInvalid, ModelMissing

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
KEPT_ARRAY_LENGTH = 64  # longer arrays are skipped; their length is kept in `array_lengths`
_DEFAULT_ALIGNMENT = 32

# GGUF value type id -> struct format of one scalar (8 string, 9 array handled apart).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: fastest-varying dimension first
    type: GGMLQuantizationType
    offset: int  # from the start of the tensor data section
    n_bytes: int

    @property
    def n_elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    version: int
    metadata: dict[str, Any]
    array_lengths: dict[str, int] = field(default_factory=dict)
    tensors: tuple[TensorInfo, ...] = ()
    data_offset: int = 0
    file_size: int = 0


class _Cursor:
    """Bounded reads from a file; running past the end is a clear error, not a short read."""

    def __init__(self, f: BinaryIO, size: int, path: Path) -> None:
        self.f, self.size, self.path = f, size, path

    @property
    def remaining(self) -> int:
        return self.size - self.f.tell()

    def read(self, n: int, what: str) -> bytes:
        self._require(n, what)
        return self.f.read(n)

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.scalar("<Q", what)
        return self.read(length, what).decode("utf-8", errors="replace")

    def skip(self, n: int, what: str) -> None:
        self._require(n, what)
        self.f.seek(n, 1)

    def _require(self, n: int, what: str) -> None:
        if n > self.remaining:
            raise self.invalid(f"the file ends inside its header (while reading {what}); it may be truncated")

    def invalid(self, problem: str) -> ModelFileInvalid:
        return ModelFileInvalid(f"{self.path} is not a usable model file: {problem}.",
                                hint="Download the file again, or choose another model.")


def read_header(path: Path) -> GGUFHeader:
    """The metadata and tensor table of the GGUF file at `path`, fully bounds-checked."""
    if not path.exists():
        raise ModelMissing(f"The model file {path} does not exist.", hint="Check the path, or choose another model.")
    if path.is_dir():
        raise ModelFileInvalid(f"{path} is a folder, not a model file.", hint="Choose a .gguf file inside it.")
    size = path.stat().st_size
    with path.open("rb") as f:
        cursor = _Cursor(f, size, path)
        if size == 0:
            raise cursor.invalid("the file is empty")
        magic = f.read(4)
        if magic != MAGIC:
            raise cursor.invalid("it does not start with the GGUF signature (it is not a GGUF model)")
        version = cursor.scalar("<I", "the version")
        if version not in SUPPORTED_VERSIONS:
            raise cursor.invalid(f"GGUF version {version} is not supported (supported: "
                                 f"{', '.join(map(str, SUPPORTED_VERSIONS))})")
        n_tensors = cursor.scalar("<Q", "the tensor count")
        n_keys = cursor.scalar("<Q", "the metadata count")
        # Each key needs at least 8 + 4 bytes and each tensor entry at least 8 + 4 + 4 + 8.
        if n_keys * 12 > cursor.remaining or n_tensors * 24 > cursor.remaining:
            raise cursor.invalid(f"its header claims {n_keys} metadata entries and {n_tensors} tensors, "
                                 "more than the file can hold (it is truncated or damaged)")
        metadata, lengths = _read_metadata(cursor, n_keys)
        tensors = tuple(_read_tensor_info(cursor) for _ in range(n_tensors))
        alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise cursor.invalid(f"general.alignment is {alignment!r}, not a power of two")
        data_offset = -(-f.tell() // alignment) * alignment
    header = GGUFHeader(path, version, metadata, lengths, tensors, data_offset, size)
    _check_tensor_data(header, cursor)
    return header


def _read_metadata(cursor: _Cursor, n_keys: int) -> tuple[dict[str, Any], dict[str, int]]:
    metadata: dict[str, Any] = {}
    lengths: dict[str, int] = {}
    for _ in range(n_keys):
        key = cursor.string("a metadata key")
        value_type = cursor.scalar("<I", f"the type of {key}")
        if value_type == _ARRAY:
            item_type = cursor.scalar("<I", f"the item type of {key}")
            count = cursor.scalar("<Q", f"the length of {key}")
            lengths[key] = count
            if count <= KEPT_ARRAY_LENGTH:
                metadata[key] = [_read_value(cursor, item_type, key) for _ in range(count)]
            else:
                _skip_values(cursor, item_type, count, key)
        else:
            metadata[key] = _read_value(cursor, value_type, key)
    return metadata, lengths


def _read_value(cursor: _Cursor, value_type: int, key: str) -> Any:
    if value_type == _STRING:
        return cursor.string(key)
    if value_type in _SCALARS:
        return cursor.scalar(_SCALARS[value_type], key)
    raise cursor.invalid(f"metadata entry {key} has unknown value type {value_type}")


def _skip_values(cursor: _Cursor, item_type: int, count: int, key: str) -> None:
    if item_type in _SCALARS:
        cursor.skip(count * struct.calcsize(_SCALARS[item_type]), key)
    elif item_type == _STRING:
        if count * 8 > cursor.remaining:
            raise cursor.invalid(f"metadata entry {key} claims {count} strings, more than the file can hold")
        for _ in range(count):
            cursor.skip(cursor.scalar("<Q", key), key)
    else:
        raise cursor.invalid(f"metadata entry {key} is an array of unsupported type {item_type}")


def _read_tensor_info(cursor: _Cursor) -> TensorInfo:
    name = cursor.string("a tensor name")
    n_dims = cursor.scalar("<I", f"the dimensions of {name}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise cursor.invalid(f"tensor {name} has {n_dims} dimensions (at most {MAX_DIMS} are possible)")
    shape = tuple(cursor.scalar("<Q", f"the shape of {name}") for _ in range(n_dims))
    type_id = cursor.scalar("<I", f"the type of {name}")
    offset = cursor.scalar("<Q", f"the offset of {name}")
    try:
        tensor_type = GGMLQuantizationType(type_id)
        block, block_bytes = GGML_QUANT_SIZES[tensor_type]
    except (ValueError, KeyError):
        raise cursor.invalid(f"tensor {name} has unknown data type {type_id}") from None
    if shape[0] % block:
        raise cursor.invalid(f"tensor {name}'s rows ({shape[0]}) do not fill whole {tensor_type.name} blocks")
    n_bytes = shape[0] // block * block_bytes
    for dim in shape[1:]:
        n_bytes *= dim
    return TensorInfo(name, shape, tensor_type, offset, n_bytes)


def _check_tensor_data(header: GGUFHeader, cursor: _Cursor) -> None:
    end = header.data_offset
    for tensor in header.tensors:
        end = max(end, header.data_offset + tensor.offset + tensor.n_bytes)
    if end > header.file_size:
        raise cursor.invalid(f"its tensors need {end} bytes but the file has {header.file_size}; "
                             "the download was probably cut off")
