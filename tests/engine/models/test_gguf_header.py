"""The GGUF header reader on hostile files: bounded by what a header would cost, not by its bytes
alone (sparse files are huge and free), regular files only, and fuzzed from a real small GGUF; the
same limits and answers for a header read from the Hub before a download."""

from __future__ import annotations

import contextlib
import math
import os
import struct
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import KnownError, ModelFileInvalid
from engine.models.catalog import ModelCatalog, ModelInfo, Unusable, read_model_info
from engine.models.gguf_header import MAX_ITEMS, MAX_KEYS, MAX_TENSORS, GGUFHeader, read_header, read_header_from
from engine.models.remote_header import FIRST_READ, read_remote_header
from tests.helpers.bad_models import SPARSE_FILES
from tests.helpers.fake_hub import FakeHub, write_moe_gguf
from tests.helpers.models import write_tiny_gguf

sparse_only = pytest.mark.skipif(not SPARSE_FILES, reason="NTFS would write the giant file out in full")


def _string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def _header(n_tensors: int, n_keys: int, body: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_keys) + body


def _sparse(path: Path, start: bytes, size: int) -> Path:
    """`start`, then zeros up to `size` bytes: a file that costs no disk, however long."""
    with path.open("wb") as f:
        f.write(start)
        f.truncate(size)
    return path


def _refused_quickly(path: Path, words: str, *, skip_long_arrays: bool = True) -> None:
    """`path` is refused within a second, naming the file and `words`, in a few MB of memory."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ModelFileInvalid) as refused:
            read_header(path, skip_long_arrays=skip_long_arrays)
        took = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in refused.value.message and words in refused.value.message, refused.value.message
    assert took < 1.0 and peak < 16 * 2**20, (took, peak)


@sparse_only
@pytest.mark.parametrize("skip_long_arrays", [True, False])
def test_a_billion_bools_are_refused_by_their_count(tmp_path: Path, skip_long_arrays: bool) -> None:
    start = _header(0, 1, _string(b"flags") + struct.pack("<IIQ", 9, 7, 10**9))
    path = _sparse(tmp_path / "bools.gguf", start, len(start) + 10**9 + 64)
    _refused_quickly(path, f"claims 1000000000 items; Cleo reads at most {MAX_ITEMS}",
                     skip_long_arrays=skip_long_arrays)


@sparse_only
def test_a_hundred_million_empty_strings_are_refused_before_the_loop(tmp_path: Path) -> None:
    # Zeros read as strings of length 0: the old reader looped 10^8 times to skip them.
    start = _header(0, 1, _string(b"tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 10**8))
    path = _sparse(tmp_path / "strings.gguf", start, len(start) + 8 * 10**8 + 64)
    _refused_quickly(path, f"claims 100000000 items; Cleo reads at most {MAX_ITEMS}")


@sparse_only
def test_a_hundred_million_tensors_are_refused_by_their_count(tmp_path: Path) -> None:
    path = _sparse(tmp_path / "tensors.gguf", _header(10**8, 0), 40 * 10**8)
    _refused_quickly(path, f"claims 0 metadata entries and 100000000 tensors; Cleo reads at most {MAX_KEYS} "
                           f"entries and {MAX_TENSORS} tensors")


@sparse_only
def test_a_hundred_million_keys_are_refused_by_their_count(tmp_path: Path) -> None:
    path = _sparse(tmp_path / "keys.gguf", _header(0, 10**8), 20 * 10**8)
    _refused_quickly(path, f"claims 100000000 metadata entries and 0 tensors; Cleo reads at most {MAX_KEYS}")


@sparse_only
def test_a_gigabyte_string_is_refused_without_reading_it(tmp_path: Path) -> None:
    start = _header(0, 1, _string(b"general.name") + struct.pack("<IQ", 8, 2**30))
    path = _sparse(tmp_path / "name.gguf", start, len(start) + 2**30 + 64)
    _refused_quickly(path, "general.name is 1073741824 bytes long; Cleo reads at most")


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    fake = FakeHub()
    yield fake
    fake.close()


@pytest.mark.parametrize(("start", "size", "words"), [  # size: what the Hub announces after `start`
    (_header(0, 1, _string(b"flags") + struct.pack("<IIQ", 9, 7, 10**9)), 10**9 + 64,
     f"claims 1000000000 items; Cleo reads at most {MAX_ITEMS}"),
    (_header(0, 1, _string(b"tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 10**8)), 8 * 10**8 + 64,
     f"claims 100000000 items; Cleo reads at most {MAX_ITEMS}"),
    (_header(10**8, 0), 40 * 10**8, f"100000000 tensors; Cleo reads at most {MAX_KEYS} entries and {MAX_TENSORS}"),
    (_header(0, 10**8), 20 * 10**8, f"claims 100000000 metadata entries and 0 tensors; Cleo reads at most {MAX_KEYS}"),
    (_header(0, 1, _string(b"general.name") + struct.pack("<IQ", 8, 2**30)), 2**30 + 64,
     "general.name is 1073741824 bytes long; Cleo reads at most"),
], ids=["a billion bools", "a hundred million strings", "a hundred million tensors", "a hundred million keys",
        "a gigabyte string"])
def test_the_same_limits_hold_for_a_header_read_from_the_hub(hub: FakeHub, start: bytes, size: int, words: str) -> None:
    # The Hub announces a huge file; its host holds the first megabyte, all the reader may ask for.
    url = hub.serve_file(start + bytes(FIRST_READ - len(start)), "huge.gguf")
    asked = len(hub.ranges)
    tracemalloc.start()
    began = time.perf_counter()
    try:
        with pytest.raises(ModelFileInvalid) as refused:
            read_remote_header(url, len(start) + size, "someone/Huge-GGUF/huge.gguf")
        took = time.perf_counter() - began
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "someone/Huge-GGUF/huge.gguf" in refused.value.message and words in refused.value.message
    assert len(hub.ranges) - asked == 1  # one range of the first megabyte, nothing more
    assert took < 1.0 and peak < 16 * 2**20, (took, peak)


class _CountedReads:
    """A file's bytes as a source that counts the reads asked of it (each one a turn of Python's loop)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.reads = data, 0, 0

    def read(self, n: int) -> bytes:
        self.reads += 1
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset
        return self.pos

    def tell(self) -> int:
        return self.pos


def test_a_large_vocabulary_is_skipped_a_block_at_a_time(tmp_path: Path) -> None:
    # A header on the Hub is read on a thread beside the window's: read a token at a time, a vocabulary
    # of 262k tokens (Gemma 3's) kept the interpreter busy for ~0.2 s, and the window waited in turns.
    path = write_moe_gguf(tmp_path / "wide.gguf", vocabulary=262_144, width=64)
    data = path.read_bytes()
    source = _CountedReads(data)
    header = read_header_from(source, len(data), path)
    assert header == read_header(path) and header.array_lengths["tokenizer.ggml.tokens"] == 262_144
    assert source.reads < 1_000, source.reads  # one per token and key before


def test_skipped_strings_longer_than_a_block_leave_the_next_key_readable(tmp_path: Path) -> None:
    writer = GGUFWriter(tmp_path / "long.gguf", arch="llama")
    writer.add_array("test.notes", [("x" * (100_000 if i % 3 == 0 else i)) for i in range(70)])
    writer.add_string("test.after", "still here")
    writer.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    header = read_header(tmp_path / "long.gguf")
    assert header.array_lengths["test.notes"] == 70 and "test.notes" not in header.metadata
    assert header.metadata["test.after"] == "still here"
    data = (tmp_path / "long.gguf").read_bytes()
    cut = data.index(b"test.after") - 50_000  # inside the last long note
    with pytest.raises(ModelFileInvalid, match=r"ends inside its header \(while reading test\.notes\)"):
        read_header_from(_CountedReads(data[:cut]), cut, tmp_path / "long.gguf")


def test_nested_arrays_and_repeated_keys_or_tensors_are_refused(tmp_path: Path) -> None:
    nested = tmp_path / "nested.gguf"
    nested.write_bytes(_header(0, 1, _string(b"deep") + struct.pack("<IIQ", 9, 9, 3) + bytes(256)))
    _refused_quickly(nested, "deep is an array of unsupported type 9 (arrays of arrays are not read)")

    twice = tmp_path / "twice.gguf"
    entry = _string(b"general.name") + struct.pack("<I", 8) + _string(b"x")
    twice.write_bytes(_header(0, 2, entry + entry) + bytes(64))
    _refused_quickly(twice, "metadata entry general.name appears twice")

    tensor = _string(b"w") + struct.pack("<IQIQ", 1, 8, 0, 0)  # one dimension of 8 F32 values
    same_name = tmp_path / "same-name.gguf"
    same_name.write_bytes(_header(2, 0, tensor + tensor) + bytes(256))
    _refused_quickly(same_name, "tensor w appears twice")


def test_a_header_whose_numbers_are_not_counts_still_describes_the_model(tmp_path: Path) -> None:
    # int(inf) raised OverflowError out of the catalog: a bug escaping on a file's say-so.
    path = tmp_path / "odd-numbers.gguf"
    writer = GGUFWriter(path, arch="llama")
    writer.add_float32("llama.context_length", math.inf)
    writer.add_float32("llama.block_count", math.nan)
    writer.add_int32("llama.embedding_length", -5)
    writer.add_tensor("token_embd.weight", np.ones((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    info = read_model_info(path)
    assert (info.context_length, info.layers, info.embedding_length) == (0, 0, 0)


@pytest.fixture
def models_folder(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "models"
    folder.mkdir()
    write_tiny_gguf(folder / "tiny.gguf")
    os.mkfifo(folder / "x.gguf")
    yield folder
    # If a scan is stuck opening the pipe, opening its other end sets it free.
    with contextlib.suppress(OSError):  # nobody is reading it: nothing is stuck
        os.close(os.open(folder / "x.gguf", os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.skipif(sys.platform == "win32", reason="Windows folders hold no pipes")
def test_a_pipe_named_like_a_model_does_not_hang_the_scan(models_folder: Path) -> None:
    scanned: list[tuple[list[ModelInfo], list[Unusable]]] = []
    scan = threading.Thread(target=lambda: scanned.append(ModelCatalog([models_folder]).scan()), daemon=True)
    scan.start()
    scan.join(timeout=10)
    assert not scan.is_alive(), "the scan is stuck opening the pipe"
    [(models, unusable)] = scanned
    assert "tiny.gguf" in {m.path.name for m in models}
    [pipe] = unusable
    assert pipe.path.name == "x.gguf" and "not a regular file" in pipe.problem


# --- fuzzing from a real small GGUF -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    folder = tmp_path_factory.mktemp("fuzz")
    return write_tiny_gguf(folder / "tiny.gguf", chat_template="{{ messages }}").read_bytes(), folder / "mutant.gguf"


def _always_a_result_or_a_clear_refusal(path: Path, content: bytes, hub: FakeHub) -> None:
    path.write_bytes(content)
    readers: list[Callable[[], object]] = [lambda: read_header(path), lambda: read_header(path, skip_long_arrays=False)]
    for read in readers:
        try:
            assert isinstance(read(), GGUFHeader)
        except ModelFileInvalid as exc:
            assert str(path) in exc.message
    try:
        assert isinstance(read_model_info(path), ModelInfo)
    except KnownError as exc:
        assert str(path) in exc.message
    # The same bytes on the Hub, fetched in small growing ranges: the same reader, so the same answer.
    url = hub.serve_file(content, path.name)
    assert _outcome(lambda: read_remote_header(url, len(content), str(path), first_read=256)[0]) == \
        _outcome(lambda: read_header(path))


def _outcome(read: Callable[[], GGUFHeader]) -> GGUFHeader | str:
    try:
        return read()
    except ModelFileInvalid as exc:
        return exc.message


_BIG = st.sampled_from([0, 1, 2**8, 2**16, 2**31, 2**32 - 1, 2**32, 2**62, 2**63, 2**64 - 1, 10**9, 10**8, 64, 65])


# A deadline per example: a loop or a huge allocation on some input fails the test instead of hanging it.
@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_headers_give_a_header_or_a_clear_refusal(tiny: tuple[bytes, Path], hub: FakeHub,
                                                         data: st.DataObject) -> None:
    good, path = tiny
    header_end = good.index(b"output_norm.weight") + 64  # mutations aim at the header, not the weights
    kind = data.draw(st.sampled_from(["truncated", "bytes", "number", "random tail"]))
    content = bytearray(good)
    if kind == "truncated":
        content = content[:data.draw(st.integers(0, len(good)))]
    elif kind == "bytes":
        for _ in range(data.draw(st.integers(1, 8))):
            content[data.draw(st.integers(0, header_end))] = data.draw(st.integers(0, 255))
    elif kind == "number":  # a count, length, type or offset turned absurd
        at = data.draw(st.integers(4, header_end - 8))
        width, limit = data.draw(st.sampled_from([("<Q", 2**64), ("<I", 2**32)]))
        struct.pack_into(width, content, at, data.draw(_BIG) % limit)
    else:
        content = content[:data.draw(st.integers(0, 64))] + bytearray(data.draw(st.binary(max_size=2048)))
    _always_a_result_or_a_clear_refusal(path, bytes(content), hub)
