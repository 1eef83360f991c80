"""Exports hold the user's chats: the file is private, and written whole or not at all."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine.cli.main import main
from engine.errors import KnownError
from engine.transfer import write_export

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes and resource limits")


def _chat_in_profile(tmp_path: Path) -> None:
    export = [{"title": "Plans", "create_time": 1_700_000_000, "id": "c1", "mapping": {
        "u1": {"message": {"id": "u1", "author": {"role": "user"}, "create_time": 1_700_000_001,
                           "content": {"content_type": "text", "parts": ["What now?"]}}, "parent": None}}}]
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps(export), encoding="utf-8")
    assert main(["import", "chatgpt", str(path)]) == 0


@posix_only
@pytest.mark.parametrize("form", [["--all"], ["chatgpt-c1", "--format", "json"], ["chatgpt-c1"]])
def test_an_export_file_is_private_and_replaces_the_old_one_whole(tmp_path: Path, form: list[str]) -> None:
    _chat_in_profile(tmp_path)
    output = tmp_path / "backup.txt"
    output.write_text("an older export\n", encoding="utf-8")
    os.chmod(output, 0o644)
    previous = os.umask(0o022)
    try:
        assert main(["export", *form, "--output", str(output)]) == 0
    finally:
        os.umask(previous)

    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert "What now?" in output.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".backup")) == []


@contextmanager
def _files_limited_to(size: int) -> Iterator[None]:
    """Writing past `size` bytes of any file fails (EFBIG), as on a full disk, for this process."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel ends the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@posix_only
def test_a_failed_export_leaves_the_old_file_as_it_was(tmp_path: Path) -> None:
    output = tmp_path / "backup.json"
    output.write_text('{"the": "older export"}\n', encoding="utf-8")
    document = {"format": "cleo-conversations", "version": 1,
                "conversations": [{"id": f"c{n}", "title": "x" * 100} for n in range(2000)]}

    with _files_limited_to(64 * 1024), pytest.raises(KnownError, match=r"cannot write .*backup\.json") as raised:
        write_export(output, document)

    assert "nothing was changed there" in raised.value.message
    assert output.read_text(encoding="utf-8") == '{"the": "older export"}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["backup.json"]  # no temporary file left behind
