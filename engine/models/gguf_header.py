"""A careful reader of GGUF headers: metadata and tensor table, never the weights.

Cleo reads every file a user points it at before llama.cpp sees it, so this reader assumes the
file may be anything: empty, text, random bytes, truncated, a pipe, or a header whose counts and
sizes are absurd. Every count is checked against the bytes that remain before anything is
allocated, and against what it would cost in Python objects and loop turns (a sparse file can
be terabytes long and cost no disk, so bytes alone bound nothing): at most `MAX_KEYS` keys,
`MAX_TENSORS` tensors, `MAX_ITEMS` array items read or looped over, `MAX_TEXT_BYTES` of text
kept. Every failure is a `ModelFileInvalid` naming the file and the problem. Large arrays (the
vocabulary, merges) are skipped over, keeping only their length, unless the caller needs them
(training reads the vocabulary from here too): the one reader of GGUF metadata in Cleo, for a
file on disk (`read_header`) and for any other source of bytes (`read_header_from`: the start of
a file on Hugging Face, read before downloading it), with the same checks and limits for both.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from engine.errors import ModelFileInvalid, ModelMissing
from engine.paths import NotARegularFile, open_regular_file

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
KEPT_ARRAY_LENGTH = 64  # longer arrays are skipped unless asked for; every array's length is in `array_lengths`
_DEFAULT_ALIGNMENT = 32
# Caps by cost, far above any real model (a 262k-token vocabulary with its scores and types is
# under 0.8M items; the largest MoE files have a few thousand tensors and ~50 keys).
MAX_KEYS = 65_536
MAX_TENSORS = 100_000
MAX_ITEMS = 2**22  # array items, all arrays together
MAX_TEXT_BYTES = 64 * 2**20  # all strings kept, together
MAX_STRING_BYTES = 16 * 2**20  # one metadata string (a chat template is ~10 KB)
MAX_KEY_BYTES = 65_535
MAX_NAME_BYTES = 256  # llama.cpp refuses tensor names of 64 bytes or more

# GGUF value type id -> struct format of one scalar (8 string, 9 array handled apart).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_KNOWN_TYPES = {*_SCALARS, _STRING, _ARRAY}
_U64 = struct.Struct("<Q")
_SKIP_BLOCK = 64 * 1024  # bytes of a skipped string array read at once (at most this much past its end)


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


ValueType = tuple[GGUFValueType, GGUFValueType | None]  # a value's GGUF type, and its items' for an array


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    version: int
    metadata: dict[str, Any]  # key -> str, int, float, bool, or a list of one of them
    array_lengths: dict[str, int] = field(default_factory=dict)
    tensors: tuple[TensorInfo, ...] = ()
    data_offset: int = 0
    file_size: int = 0
    # Every key's exact type, skipped arrays included: llama.cpp checks the types of many keys (token
    # ids are UINT32, token types INT32), so a file written from this metadata must keep them.
    value_types: dict[str, ValueType] = field(default_factory=dict)


class Readable(Protocol):
    """What the reader needs of its source: a binary file, or anything that reads, skips and counts like one."""

    def read(self, n: int, /) -> bytes: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def tell(self) -> int: ...


class _Cursor:
    """Bounded reads from a file; running past the end is a clear error, not a short read."""

    def __init__(self, f: Readable, size: int, path: Path) -> None:
        self.f, self.size, self.path = f, size, path
        self.pos = f.tell()  # counted here: asking the file on every read doubled the time to read a vocabulary
        self.items_left = MAX_ITEMS
        self.text_left = MAX_TEXT_BYTES

    @property
    def remaining(self) -> int:
        return self.size - self.pos

    def read(self, n: int, what: str) -> bytes:
        self.require(n, what)
        self.pos += n
        return self.f.read(n)

    def read_at_most(self, n: int) -> bytes:
        data = self.f.read(n)
        self.pos += len(data)
        return data

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt), what))[0]

    def string(self, what: str, limit: int = MAX_STRING_BYTES) -> str:
        length = self.scalar("<Q", what)
        self.require(length, what)
        if length > limit:
            raise self.invalid(f"{what} is {length} bytes long; Cleo reads at most {limit}")
        if length > self.text_left:
            raise self.invalid(f"its header holds more than {MAX_TEXT_BYTES} bytes of text (at {what})")
        self.text_left -= length
        return self.read(length, what).decode("utf-8", errors="replace")

    def spend_items(self, count: int, what: str) -> None:
        """Count `count` array items against `MAX_ITEMS`, before any is read or looped over."""
        if count > self.items_left:
            raise self.invalid(f"{what} claims {count} items; Cleo reads at most {MAX_ITEMS} array items "
                               "in one header")
        self.items_left -= count

    def skip(self, n: int, what: str) -> None:
        self.require(n, what)
        self.pos += n
        self.f.seek(n, 1)

    def skip_strings(self, count: int, what: str) -> None:
        """Skip `count` strings (each a u64 length and its bytes), their lengths read a block at a time.

        A vocabulary and its merges are 100k-500k strings: a read, an unpack and a seek for each kept
        Python busy, holding the interpreter lock, for a tenth of a second and more, and every other
        thread (the window's, while a model list is scanned or the header of a file on the Hub is
        read) waited for it in turns of several milliseconds. Walking the lengths inside a block
        takes a fifth of that time; what the walk read past the last string is given back with a seek."""
        while count:
            block = self.f.read(min(_SKIP_BLOCK, self.remaining))
            at, count = _walk_strings(block, count)
            if not at or at > self.remaining:  # no room left for a length, or a length past the end of the file
                raise self.invalid(f"the file ends inside its header (while reading {what}); it may be truncated")
            self.pos += at
            self.f.seek(at - len(block), 1)

    def require(self, n: int, what: str) -> None:
        if n > self.remaining:
            raise self.invalid(f"the file ends inside its header (while reading {what}); it may be truncated")

    def invalid(self, problem: str) -> ModelFileInvalid:
        return ModelFileInvalid(f"{self.path} is not a usable model file: {problem}.",
                                hint="Download the file again, or choose another model.")


def read_header(path: Path, *, skip_long_arrays: bool = True) -> GGUFHeader:
    """The metadata and tensor table of the GGUF file at `path`, fully bounds-checked.

    Arrays longer than `KEPT_ARRAY_LENGTH` are skipped (only their length is kept) unless
    `skip_long_arrays` is False: a 49k-token vocabulary and its merges take a noticeable time to
    read, and nothing but training needs them.
    """
    with _open_regular_file(path) as f:
        try:
            return read_header_from(f, os.fstat(f.fileno()).st_size, path, skip_long_arrays=skip_long_arrays)
        except OSError as exc:  # a disk or network share failing mid-read
            raise _unreadable(path, exc) from exc


def read_header_from(source: Readable, size: int, path: Path | str, *,
                     skip_long_arrays: bool = True) -> GGUFHeader:
    """The header of the `size`-byte GGUF file whose bytes `source` gives from where it stands now.

    `path` names the file in every message (and in the header). The checks and limits are those of
    `read_header`; `size` is what the source announced, so a count larger than the rest of the
    file is refused before anything is read past the header.
    """
    path = Path(path)
    cursor = _Cursor(source, size, path)
    version, metadata, lengths, types, tensors = _read_tables(cursor, skip_long_arrays)
    alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise cursor.invalid(f"general.alignment is {alignment!r}, not a power of two")
    data_offset = -(-cursor.pos // alignment) * alignment
    header = GGUFHeader(path, version, metadata, lengths, tensors, data_offset, size, types)
    _check_tensor_data(header, cursor)
    return header


def _read_tables(cursor: _Cursor, skip_long_arrays: bool) -> tuple[
        int, dict[str, Any], dict[str, int], dict[str, ValueType], tuple[TensorInfo, ...]]:
    if cursor.size == 0:
        raise cursor.invalid("the file is empty")
    magic = cursor.read_at_most(len(MAGIC))
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
    if n_keys > MAX_KEYS or n_tensors > MAX_TENSORS:
        raise cursor.invalid(f"its header claims {n_keys} metadata entries and {n_tensors} tensors; Cleo "
                             f"reads at most {MAX_KEYS} entries and {MAX_TENSORS} tensors")
    metadata, lengths, types = _read_metadata(cursor, n_keys, skip_long_arrays)
    return version, metadata, lengths, types, _read_tensor_table(cursor, n_tensors)


def _open_regular_file(path: Path) -> BinaryIO:
    """`path` opened for reading, if it is a regular file: a pipe named `x.gguf` would block the
    scan of a models folder forever, and a device could be endless or have effects when opened."""
    try:
        return open_regular_file(path)
    except FileNotFoundError:
        raise ModelMissing(f"The model file {path} does not exist.",
                           hint="Check the path, or choose another model.") from None
    except NotARegularFile:
        if path.is_dir():
            raise ModelFileInvalid(f"{path} is a folder, not a model file.",
                                   hint="Choose a .gguf file inside it.") from None
        raise _not_regular(path) from None
    except OSError as exc:
        raise _unreadable(path, exc) from exc


def _not_regular(path: Path) -> ModelFileInvalid:
    return ModelFileInvalid(f"{path} is not a regular file (it is a pipe, socket or device), so it holds no model.",
                            hint="Remove it from the models folder, or choose a .gguf file.")


def _unreadable(path: Path, exc: OSError) -> ModelFileInvalid:
    return ModelFileInvalid(f"{path} cannot be read ({exc.strerror or exc}).",
                            hint="Check that the file is yours and readable, or choose another model.")


def _read_metadata(cursor: _Cursor, n_keys: int,
                   skip_long_arrays: bool) -> tuple[dict[str, Any], dict[str, int], dict[str, ValueType]]:
    metadata: dict[str, Any] = {}
    lengths: dict[str, int] = {}
    types: dict[str, ValueType] = {}
    for _ in range(n_keys):
        key = cursor.string("a metadata key", MAX_KEY_BYTES)
        if key in types:
            raise cursor.invalid(f"metadata entry {key} appears twice")
        value_type = cursor.scalar("<I", f"the type of {key}")
        if value_type == _ARRAY:
            item_type = cursor.scalar("<I", f"the item type of {key}")
            count = cursor.scalar("<Q", f"the length of {key}")
            lengths[key] = count
            keep = count <= KEPT_ARRAY_LENGTH or not skip_long_arrays
            values = _read_array(cursor, item_type, count, key, keep)
            if keep:
                metadata[key] = values
            # An empty array's item type is never used, so an unknown one is let through there.
            types[key] = (GGUFValueType.ARRAY, GGUFValueType(item_type) if item_type in _KNOWN_TYPES else None)
        else:
            metadata[key] = _read_value(cursor, value_type, key)
            types[key] = (GGUFValueType(value_type), None)
    return metadata, lengths, types


def _read_value(cursor: _Cursor, value_type: int, key: str) -> Any:
    if value_type == _STRING:
        return cursor.string(key)
    if value_type in _SCALARS:
        return cursor.scalar(_SCALARS[value_type], key)
    raise cursor.invalid(f"metadata entry {key} has unknown value type {value_type}")


def _read_array(cursor: _Cursor, item_type: int, count: int, key: str, keep: bool) -> list[Any]:
    """The array's items (or, when not `keep`, [] and the file read past them), checked first
    against the bytes left and then against what they would cost."""
    if count == 0:
        return []
    # Skipped items count too: skipping strings is a turn of a loop each, and llama.cpp keeps every
    # item of every array in memory when it loads the file after this check.
    if item_type in _SCALARS:  # numbers in one read: a vocabulary's token types are ~50k of them
        fmt = _SCALARS[item_type]
        n_bytes = count * struct.calcsize(fmt)
        cursor.require(n_bytes, key)
        cursor.spend_items(count, key)
        if not keep:
            cursor.skip(n_bytes, key)
            return []
        return list(struct.unpack(f"<{count}{fmt[1:]}", cursor.read(n_bytes, key)))
    if item_type == _STRING:
        # Each string needs at least its 8-byte length, so an absurd count fails before the loop.
        if count * 8 > cursor.remaining:
            raise cursor.invalid(f"metadata entry {key} claims {count} strings, more than the file can hold")
        cursor.spend_items(count, key)
        if keep:
            return [cursor.string(key) for _ in range(count)]
        cursor.skip_strings(count, key)
        return []
    raise cursor.invalid(f"metadata entry {key} is an array of unsupported type {item_type}"
                         + (" (arrays of arrays are not read)" if item_type == _ARRAY else ""))


def _walk_strings(block: bytes, count: int) -> tuple[int, int]:
    """How far the next (up to) `count` strings reach from the start of `block`, and how many are left:
    the walk stops after a string that runs past the end of the block (the caller seeks past its
    rest), or before a length that is not wholly inside it."""
    unpack, size, at = _U64.unpack_from, len(block), 0
    while count and at + 8 <= size:
        at += 8 + unpack(block, at)[0]
        count -= 1
        if at > size:
            break
    return at, count


def _read_tensor_table(cursor: _Cursor, n_tensors: int) -> tuple[TensorInfo, ...]:
    tensors = []
    names: set[str] = set()
    for _ in range(n_tensors):
        tensor = _read_tensor_info(cursor)
        if tensor.name in names:
            raise cursor.invalid(f"tensor {tensor.name} appears twice")
        names.add(tensor.name)
        tensors.append(tensor)
    return tuple(tensors)


def _read_tensor_info(cursor: _Cursor) -> TensorInfo:
    name = cursor.string("a tensor name", MAX_NAME_BYTES)
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
