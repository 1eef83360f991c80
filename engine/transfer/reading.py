"""Reading a file to import as a stream of JSON records, each bounded, whatever the file holds.

Nothing is read whole. The file, or the member of a .zip, is parsed as it streams (ijson over
the yajl C parser, which also refuses NaN, Infinity and numbers beyond 64 bits), and the records
(conversations) are built one at a time, each capped by its depth and by what it costs in
memory, and each value by its length. So the memory an import needs does not grow with the
file: a 4 GB `conversations.json` packed into a few MB is refused after reading about 16 MB,
where reading it whole took 8.7 GB.
"""

from __future__ import annotations

import os
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

import ijson

from engine import paths
from engine.transfer.importing import ImportFileInvalid, Place, shown

_MB = 1024 * 1024
# A whole file: bounds the time an import takes and what it writes, not its memory.
MAX_FILE_BYTES = 4 * 1024 * _MB
# One record (a conversation) as Python objects, estimated as it is built: real ones are far smaller.
# It is held with the messages made from it while they are saved: this bounds an import's memory.
MAX_RECORD_BYTES = 32 * _MB
# The bytes between two values: one string that long, or that much space, is not a chat.
MAX_VALUE_BYTES = 16 * _MB
MAX_DEPTH = 100  # ChatGPT's records nest about 8 deep; ijson's memory grows with the square of depth
# A .zip's central directory is read whole, and each entry costs about ten times its bytes.
MAX_ZIP_DIRECTORY_BYTES = 8 * _MB
_CHUNK = 64 * 1024
_BOUNDED_COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_COMPRESSION_NAMES = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "LZMA", 9: "Deflate64"}
# By name, not ijson's first available: the pure-Python fallback would be many times slower, and
# a bundle that lacks the C parser should fail its smoke test, not import slowly.
_PARSER = ijson.get_backend("yajl2_c")
_EVENT_KINDS = {"start_map": "an object", "start_array": "a list", "string": "text", "number": "a number",
                "boolean": "true or false", "null": "null"}
# What each part of a value costs in memory beyond the scalars' own size (CPython, 64-bit).
_OBJECT_COST, _LIST_COST, _SLOT_COST, _KEY_SLOT_COST = 240, 64, 16, 40


@contextmanager
def open_records(path: Path, place: Place, member: Callable[[zipfile.ZipFile], str] | None) -> Iterator[JsonRecords]:
    """The JSON in `path`, or in the member of a .zip that `member` picks (it raises KeyError if none)."""
    with ExitStack() as stack:
        try:
            stream = _open_stream(stack, path, place, member)
        except KeyError as missing:
            raise place.error(f"it is a .zip without a {missing.args[0]}") from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as exc:
            raise ImportFileInvalid(f"Cleo cannot read {path} ({exc}).",
                                    hint="Check that the file is readable and complete.") from exc
        yield JsonRecords(stream, place)


def _open_stream(stack: ExitStack, path: Path, place: Place,
                 member: Callable[[zipfile.ZipFile], str] | None) -> IO[bytes]:
    file = stack.enter_context(open_regular_file(path))
    size = os.fstat(file.fileno()).st_size
    if member is None or not zipfile.is_zipfile(file):
        file.seek(0)
        _check_size(size, place, "it")
        return file
    directory = _zip_directory_size(file)
    if directory > MAX_ZIP_DIRECTORY_BYTES:
        raise place.error(f"its list of files takes {directory // _MB} MB, more than a chat export's")
    archive = stack.enter_context(zipfile.ZipFile(file))
    info = archive.getinfo(member(archive))
    if info.flag_bits & 0x1:
        raise ImportFileInvalid(f"Cleo cannot import {path}: {shown(info.filename)} in it is encrypted. "
                                f"Nothing from {path} was saved.",
                                hint="Unpack the .zip with its password, then import the .json file itself.")
    if info.compress_type not in _BOUNDED_COMPRESSIONS:
        # zipfile bounds what one read unpacks only for deflate: a bzip2 or LZMA member of a few
        # hundred bytes would unpack to gigabytes in one read, whatever the caps below say.
        raise ImportFileInvalid(f"Cleo cannot import {path}: {shown(info.filename)} in it is packed with "
                                f"{_COMPRESSION_NAMES.get(info.compress_type, f'method {info.compress_type}')}, "
                                f"which Cleo does not unpack. Nothing from {path} was saved.",
                                hint=f"Unpack the .zip, then import {shown(info.filename)} itself.")
    _check_size(info.file_size, place, shown(info.filename))  # the .zip's word; counted again while reading
    return stack.enter_context(archive.open(info))


def open_regular_file(path: Path) -> IO[bytes]:
    """`path` opened for reading if it is a regular file (`engine.paths.open_regular_file`), or
    `ImportFileInvalid`: reading a FIFO waits for a writer for ever, and a device may never end."""
    try:
        return paths.open_regular_file(path)
    except (FileNotFoundError, NotADirectoryError):
        raise ImportFileInvalid(f"There is no file {path}.", hint="Check the name and folder.") from None
    except paths.NotARegularFile:
        raise _not_a_file(path) from None


def _not_a_file(path: Path) -> ImportFileInvalid:
    return ImportFileInvalid(f"Cleo cannot import {path}: it is not a file (a folder, a pipe or a device). "
                             f"Nothing from {path} was saved.", hint="Choose the .json (or .zip) file to import.")


def _check_size(size: int, place: Place, what: str) -> None:
    if size > MAX_FILE_BYTES:
        raise place.error(f"{what} is {size / (1024 * _MB):.1f} GB; Cleo imports files of up to "
                          f"{MAX_FILE_BYTES // (1024 * _MB)} GB")


def _zip_directory_size(file: IO[bytes]) -> int:
    """How many bytes of the .zip's central directory `zipfile.ZipFile` would read (found as it finds them)."""
    size = file.seek(0, 2)
    tail_start = max(0, size - 22 - 65535)  # the end record: 22 bytes and a comment of up to 64 KB
    file.seek(tail_start)
    tail = file.read()
    end = tail.rfind(b"PK\x05\x06")
    if end < 0 or len(tail) - end < 22:
        return 0
    directory: int = struct.unpack_from("<L", tail, end + 12)[0]
    # A zip64 locator just before the end record: the zip64 record before it holds the real size.
    locator = tail_start + end - 20
    if locator >= 56:
        file.seek(locator)
        if file.read(4) == b"PK\x06\x07":
            file.seek(locator - 56)
            record = file.read(56)
            if record[:4] == b"PK\x06\x06":
                directory = struct.unpack_from("<Q", record, 40)[0]
    return directory


class JsonRecords:
    """A JSON document as it streams, read value by value: each value built whole, and bounded."""

    def __init__(self, stream: IO[bytes], place: Place) -> None:
        self._stream = stream
        self._place = place
        self._total = 0  # bytes read
        self._since_value = 0  # bytes read since the parser last gave a value
        self._record = ""  # the record being read, for errors: "conversation 3"
        self._building: list[list[Any]] = []  # [container, its current key] from the record down, for errors
        self._next_event: tuple[str, Any] | None = None
        self._events = _PARSER.basic_parse(self, use_float=True, buf_size=_CHUNK)

    def read(self, size: int) -> bytes:
        """What the parser reads: the file's bytes, counted against the caps."""
        try:
            data = self._stream.read(size)
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise self._error(f"the file is damaged or cannot be read ({exc})") from None
        self._total += len(data)
        self._since_value += len(data)
        if self._total > MAX_FILE_BYTES:
            raise self._error(f"it is over {MAX_FILE_BYTES // (1024 * _MB)} GB, the most Cleo imports")
        if self._since_value > MAX_VALUE_BYTES:
            raise self._error(f"it has {MAX_VALUE_BYTES // _MB} MB in one value (or of space between two), "
                              "more than any chat holds")
        return data

    def open_list(self, wanted: str) -> None:
        """Start reading the document, which must be a list (of `wanted`), e.g. "the list of conversations"."""
        self._open("start_array", lambda kind: f"it holds {kind}, not {wanted}")

    def open_object(self) -> None:
        """Start reading the document, which must be an object."""
        self._open("start_map", lambda kind: f"it is {kind}, not an object")

    def _open(self, wanted: str, problem: Callable[[str], str]) -> None:
        event, _ = self._next()
        if event != wanted:
            if event in ("start_map", "start_array"):
                self._next()  # "{not json" is not JSON, rather than an object: say so
            raise self._place.error(problem(_EVENT_KINDS.get(event, event)))

    def next_field(self) -> str | None:
        """In an object: the next key (read its value next), or None at the object's end."""
        event, value = self._next()
        return value if event == "map_key" else None

    def next_is_list(self) -> bool:
        """Whether the next value is a list; if so, its start is read (read its items next)."""
        event = self._next()
        if event[0] == "start_array":
            return True
        self._next_event = event
        return False

    def items(self, record: Callable[[int], str]) -> Iterator[Any]:
        """In a list: each item, built whole; `record(n)` names the n-th in errors ("conversation 3")."""
        number = 0
        while True:
            event, value = self._next()
            if event == "end_array":
                return
            number += 1
            self._record = record(number)
            yield self._build(event, value)

    def value(self, record: str) -> Any:
        """The next value, built whole; `record` names it in errors."""
        self._record = record
        return self._build(*self._next())

    def finish(self) -> None:
        """After the document: nothing may follow it but space."""
        self._record = ""
        try:
            event = self._next()
        except StopIteration:
            return
        raise self._error(f"{_EVENT_KINDS.get(event[0], event[0])} follows the end of the document")

    def _build(self, event: str, value: Any) -> Any:
        """The value that starts with `event`, within `MAX_RECORD_BYTES` and `MAX_DEPTH`."""
        if event == "start_map":
            root: Any = {}
        elif event == "start_array":
            root = []
        else:
            return value
        building = self._building = [[root, None]]
        cost = _OBJECT_COST
        while True:
            event, value = self._next()
            if event == "map_key":
                building[-1][1] = value
                cost += sys.getsizeof(value) + _KEY_SLOT_COST
                continue
            if event == "end_map" or event == "end_array":
                building.pop()
                if not building:
                    self._building = []
                    return root
                continue
            if event == "start_map":
                item: Any = {}
                cost += _OBJECT_COST + _SLOT_COST
            elif event == "start_array":
                item = []
                cost += _LIST_COST + _SLOT_COST
            else:
                item = value
                cost += sys.getsizeof(value) + _SLOT_COST
            container, key = building[-1]
            if type(container) is list:
                container.append(item)
            else:
                container[key] = item
            if cost > MAX_RECORD_BYTES:
                raise self._error(f"it takes over {MAX_RECORD_BYTES // _MB} MB, more than Cleo imports in "
                                  "one conversation")
            if item is not value:
                if len(building) >= MAX_DEPTH:
                    raise self._error(f"its values nest more than {MAX_DEPTH} deep")
                building.append([item, None])

    def _next(self) -> tuple[str, Any]:
        if self._next_event is not None:
            waiting, self._next_event = self._next_event, None
            return waiting
        try:
            event: tuple[str, Any] = next(self._events)
        except ijson.JSONError as exc:
            raise self._error(f"it is not JSON ({_parser_problem(exc)})") from None
        except UnicodeDecodeError:
            raise self._error("it is not UTF-8 text") from None
        except ValueError as exc:  # raised by the parser: nothing else runs in next()
            raise self._error(f"it is not JSON ({exc})") from None
        self._since_value = 0
        return event

    def _error(self, problem: str) -> ImportFileInvalid:
        place = self._place.inner(self._record) if self._record else self._place
        if self._building:
            last = len(self._building) - 1
            steps = [_step(container, key, filling=level == last) for level, (container, key) in
                     enumerate(self._building)]
            if len(steps) > 8:  # a deep value: its way in, and where it ends
                steps[4:-3] = [f"… {len(steps) - 7} more …"]
            place = place.inner("field " + " > ".join(steps))
        return place.error(problem)


def _step(container: Any, key: Any, *, filling: bool) -> str:
    """One step of the way to a value: an object's key, or a list's item number (the next one, in the
    list being filled; the last one, in a list whose last item is being built)."""
    if isinstance(container, dict):
        return shown(key)
    return f"item {len(container) + 1 if filling else len(container)}"


def _parser_problem(exc: Exception) -> str:
    """yajl's message, in one line: its first, and the text near the error (which it quotes after)."""
    raw = exc.args[0] if exc.args else ""
    lines = (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)).splitlines()
    first = lines[0].strip().rstrip(".") if lines else "unreadable"
    near = lines[1].strip() if len(lines) > 1 else ""
    return f"{first}, near {shown(near)}" if near else first
