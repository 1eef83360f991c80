"""CLEO_HOME moves every folder; a folder Cleo cannot write is named in the error."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import FolderNotWritable
from engine.paths import default_chat_model, ensure, folders


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
