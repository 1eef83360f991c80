"""An import's memory does not grow with the file: 4 GB `conversations.json` files packed into a
few MB each are refused after a few MB, in a fresh process whose peak memory is measured."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.engine.transfer.hostile_files import GB, import_in_child, write_big_zip

PEAK_MB = 300

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="ru_maxrss comes from the resource module (POSIX)")


@pytest.mark.parametrize(("head", "repeated", "tail", "problem"), [
    # one title of 4 GB: reading the file whole took 8.7 GB
    (b'[{"title": "', b"0", b'"}]', "conversation 1, field 'title': it has 16 MB in one value"),
    # millions of empty lists: the most objects per byte, so the most memory per byte once parsed
    (b'[{"title": "x", "mapping": [', b"[], ", b"[]]}]",
     "it takes over 96 MB, more than Cleo imports in one conversation"),
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
