"""Exports hold the user's chats: the file is private, and written whole or not at all."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine.cli.main import main
from engine.errors import KnownError
from engine.transfer import export as export_module
from engine.transfer import write_export

ROOT = Path(__file__).resolve().parents[3]

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


def test_an_export_whose_folder_cannot_be_flushed_after_the_rename_is_written_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The new file already has its name then: an error saying "nothing was changed there" was false."""
    output = tmp_path / "backup.md"
    output.write_text("an older export\n", encoding="utf-8")

    def refuse(folder: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(export_module, "sync_folder", refuse)
    write_export(output, "# Plans\n")

    assert output.read_text(encoding="utf-8") == "# Plans\n"
    assert f"wrote {output} but could not flush its folder to disk" in caplog.text


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_an_export_to_a_pipe_is_written_into_it(tmp_path: Path) -> None:
    """`--output /dev/stdout` piped to another program, or a named pipe: no file to replace."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_bytes()), daemon=True)
    reader.start()

    write_export(pipe, {"format": "cleo-conversations", "conversations": []})

    reader.join(timeout=10)
    assert json.loads(received[0]) == {"format": "cleo-conversations", "conversations": []}
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode)  # still the pipe, not a file put in its place


@posix_only
def test_an_export_through_a_link_replaces_the_file_and_keeps_the_link(tmp_path: Path) -> None:
    """`/dev/stdout` sent to a file is such a link; so is a user's link to their backups folder."""
    real = tmp_path / "real.md"
    real.write_text("older\n", encoding="utf-8")
    link = tmp_path / "link.md"
    link.symlink_to(real)

    write_export(link, "newer\n")

    assert link.is_symlink() and real.read_text(encoding="utf-8") == "newer\n"


@posix_only
def test_cleo_export_to_dev_stdout_writes_to_what_stdout_is(tmp_path: Path) -> None:
    _chat_in_profile(tmp_path)
    command = [sys.executable, "-c", "import sys; from engine.cli.main import main; sys.exit(main(sys.argv[1:]))",
               "export", "chatgpt-c1", "--output", "/dev/stdout"]
    piped = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.startswith("# Plans\n")
    into_file = tmp_path / "out.md"
    with into_file.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.PIPE, text=True, timeout=60, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert into_file.read_text(encoding="utf-8").startswith("# Plans\n")
