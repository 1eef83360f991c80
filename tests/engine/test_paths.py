"""CLEO_HOME moves every folder; a folder Cleo cannot write is named in the error; what Cleo creates is private."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from engine.errors import FolderNotWritable
from engine.paths import default_chat_model, ensure, folders, make_private_file, write_private_file


def test_cleo_home_moves_every_folder(cleo_home: Path) -> None:
    for folder in folders().all():
        assert folder.is_relative_to(cleo_home)
    assert len(set(folders().all())) == 5
    assert default_chat_model().is_relative_to(folders().models)


def test_unwritable_folder_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(FolderNotWritable) as caught:
        ensure(blocker / "data")
    assert str(blocker / "data") in caught.value.message
    assert "CLEO_HOME" in caught.value.hint


@pytest.mark.skipif(os.name != "posix", reason="modes are POSIX; Windows gives the user's folders to that user alone")
def test_folders_and_files_cleo_creates_are_private_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)  # the usual umask: folders 0755, files 0644
    try:
        folder = ensure(tmp_path / "home" / "data" / "backups")
        write_private_file(folder / "notes.json", b"{}")
        (folder / "old.log").write_text("left by an older Cleo")  # 0644
        make_private_file(folder / "old.log")
    finally:
        os.umask(previous)
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in (tmp_path / "home").rglob("*")}
    assert modes | {"home": oct(stat.S_IMODE((tmp_path / "home").stat().st_mode))} == {
        "home": "0o700", "home/data": "0o700", "home/data/backups": "0o700",
        "home/data/backups/notes.json": "0o600", "home/data/backups/old.log": "0o600"}
    assert (folder / "old.log").read_text() == "left by an older Cleo"  # narrowed, not emptied
