"""An import's memory does not grow with the file: 4 GB `conversations.json` files packed into a
few MB each are refused after a few MB, and the largest records and messages Cleo accepts are
imported, each in a fresh process whose peak memory is measured."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest

from engine.transfer.importing import MAX_MESSAGE_CHARS
from engine.transfer.reading import MAX_RECORD_BYTES, MAX_VALUE_BYTES
from tests.engine.transfer.hostile_files import GB, chatgpt_export, import_in_child, random_words, write_big_zip

PEAK_MB = 300

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="ru_maxrss comes from the resource module (POSIX)")


@pytest.mark.parametrize(("head", "repeated", "tail", "problem"), [
    # one title of 4 GB: reading the file whole took 8.7 GB
    (b'[{"title": "', b"0", b'"}]', "conversation 1, field 'title': it has 16 MB in one value"),
    # millions of empty lists: the most objects per byte, so the most memory per byte once parsed
    (b'[{"title": "x", "mapping": [', b"[], ", b"[]]}]",
     f"it takes over {MAX_RECORD_BYTES >> 20} MB, more than Cleo imports in one conversation"),
], ids=["one 4 GB title", "4 GB of empty lists"])
def test_a_4_gb_export_is_refused_within_300_mb(tmp_path: Path, head: bytes, repeated: bytes, tail: bytes,
                                                problem: str) -> None:
    export = write_big_zip(tmp_path / "export.zip", head, repeated, 4 * GB, tail)
    assert export.stat().st_size < 40_000_000

    result = import_in_child(tmp_path / "cleo.db", export)

    assert problem in result["outcome"], result
    assert f"Cleo cannot import {export}, conversation 1, field " in result["outcome"]
    assert f"Nothing from {export} was saved" in result["outcome"]
    assert result["conversations"] == 0
    assert result["peak_mb"] < PEAK_MB, result


@pytest.mark.parametrize(("compression", "name"), [(zipfile.ZIP_BZIP2, "bzip2"), (zipfile.ZIP_LZMA, "LZMA")])
def test_a_zip_member_packed_without_a_bound_on_each_read_is_refused_before_it_is_read(
        tmp_path: Path, compression: int, name: str) -> None:
    """zipfile unpacks what one read asks for with a bound only for deflate: a bzip2 member of a
    few hundred bytes unpacked 1 GB in one read (2.1 GB of memory)."""
    export = tmp_path / "export.zip"
    with zipfile.ZipFile(export, "w", compression=compression) as archive, \
            archive.open("conversations.json", "w", force_zip64=True) as member:
        member.write(b"[")
        block = b" " * (64 << 20)
        for _ in range(4):  # 256 MB of space: enough to show, quick to pack
            member.write(block)
        member.write(b"]")
    assert export.stat().st_size < 100_000

    result = import_in_child(tmp_path / "cleo.db", export)

    assert result["outcome"] == (f"Cleo cannot import {export}: 'conversations.json' in it is packed with {name}, "
                                 f"which Cleo does not unpack. Nothing from {export} was saved."), result
    assert result["conversations"] == 0
    assert result["peak_mb"] < PEAK_MB, result


def test_the_largest_conversations_and_messages_cleo_accepts_import_within_300_mb(tmp_path: Path) -> None:
    """Every conversation near the most a record may take, of words the search index has not seen
    (what costs it the most memory), and messages far over the most text one keeps: one part of
    almost the most one value may hold, and one of six parts. Before the caps, one 15 MB message
    took 400 MB, six parts of 15 MB 2.26 GB."""
    million = MAX_MESSAGE_CHARS
    one_value = MAX_VALUE_BYTES - (1 << 20)
    budget = MAX_RECORD_BYTES - (2 << 20)  # the record's keys and nodes take the rest
    full = [[random_words(million, seed)] for seed in range(budget // million)]
    huge_part = [[random_words(one_value, 100)], *full[:(budget - one_value) // million]]
    six_parts = [[random_words(budget // 6, 200 + part) for part in range(6)]]
    export = tmp_path / "conversations.json"
    export.write_bytes(chatgpt_export([full, huge_part, six_parts]))

    result = import_in_child(tmp_path / "cleo.db", export)

    added = len(full) + len(huge_part) + len(six_parts)
    assert result["outcome"].startswith(f"imported: 3 conversation(s) added, {added} message(s) added, "
                                        f"2 message(s) longer than {million:,} characters cut to that length "
                                        "(conversation 2 ('big 2'), node 'c2m0'; conversation 3 ('big 3'), "
                                        "node 'c3m0')"), result
    assert result["conversations"] == 3
    print(f"largest accepted import: {export.stat().st_size >> 20} MB, peak {result['peak_mb']} MB, "
          f"{result['seconds']} s")
    assert result["peak_mb"] < PEAK_MB, result
