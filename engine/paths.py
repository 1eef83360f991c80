"""Where Cleo keeps things on disk.

Folders come from platformdirs (the usual per-OS places). Setting `CLEO_HOME=DIR` moves every
Cleo folder under DIR; tests always do this so they never touch the user's real folders.
The file names of the default models live here because both `training.defaults` (which
builds them) and the app (which loads them) must agree on them.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import platformdirs

from engine.errors import FolderNotWritable

APP_NAME = "Cleo"
HOME_VARIABLE = "CLEO_HOME"

# Read-only data shipped with Cleo: beside the packages in a checkout, in the bundle when frozen.
_SHIPPED = Path(getattr(sys, "_MEIPASS", Path(__file__).resolve().parent.parent))
RESOURCES = _SHIPPED / "resources"
# The default models inside a built app (packaging/), so the first run needs no network; a
# checkout has none and builds them into the models folder instead.
BUNDLED_MODELS = _SHIPPED / "models"

DEFAULT_CHAT_MODEL_FILE = "cleo-moe-4x135m-q4_1.gguf"
DEFAULT_EMBEDDING_MODEL_FILE = "all-minilm-l6-v2-f16.gguf"


@dataclass(frozen=True)
class Folders:
    """Every folder Cleo writes to. None of them is created until `ensure` is called."""

    data: Path
    config: Path
    cache: Path
    logs: Path

    @property
    def models(self) -> Path:
        return self.data / "models"

    def all(self) -> tuple[Path, ...]:
        return (self.data, self.config, self.cache, self.logs, self.models)


def folders() -> Folders:
    """Cleo's folders, read afresh from the environment on each call."""
    home = os.environ.get(HOME_VARIABLE, "").strip()
    if home:
        root = Path(home).expanduser()
        return Folders(root / "data", root / "config", root / "cache", root / "logs")
    return Folders(
        Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)),
        Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)),
        Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False)),
        Path(platformdirs.user_log_dir(APP_NAME, appauthor=False)),
    )


def ensure(folder: Path) -> Path:
    """Create `folder` (private: 0700 on POSIX) if needed and prove it is writable, or raise `FolderNotWritable`."""
    try:
        make_private_folder(folder)
        # Creating a file is the only check that holds everywhere (ACLs, read-only mounts, root).
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        hint = f"Choose another folder with {HOME_VARIABLE}=DIR, or fix the permissions of {folder}."
        raise FolderNotWritable(
            f"Cleo cannot write to the folder {folder} ({exc.strerror or exc}).", hint=hint
        ) from exc
    return folder


def default_chat_model() -> Path:
    return _own_or_bundled(DEFAULT_CHAT_MODEL_FILE)


def default_embedding_model() -> Path:
    return _own_or_bundled(DEFAULT_EMBEDDING_MODEL_FILE)


def _own_or_bundled(name: str) -> Path:
    """The copy in the user's models folder; else the one shipped with the app, if any."""
    own = folders().models / name
    bundled = BUNDLED_MODELS / name
    return bundled if not own.exists() and bundled.exists() else own


# What Cleo writes holds the user's chats and memories: folders Cleo creates are 0700 and files
# 0600 on POSIX, whatever the umask. Windows gives a user's profile folders to that user alone
# already, and Python cannot set ACLs there, so these only make the calls there.
PRIVATE_FOLDER_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def make_private_folder(folder: Path) -> Path:
    """`folder` and any missing parents, created 0700; an existing `folder` is made 0700 too."""
    missing = [parent for parent in (folder, *folder.parents) if not parent.exists()]
    for parent in reversed(missing):
        parent.mkdir(mode=PRIVATE_FOLDER_MODE, exist_ok=True)
        _make_private(parent, PRIVATE_FOLDER_MODE)
    _make_private(folder, PRIVATE_FOLDER_MODE)
    return folder


def make_private_file(path: Path) -> Path:
    """`path`, created empty if missing, readable and writable by the user alone (0600)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0), PRIVATE_FILE_MODE))
    _make_private(path, PRIVATE_FILE_MODE)
    return path


def write_private_file(path: Path, data: bytes) -> None:
    """Replace `path` with `data` all at once: a 0600 temporary file beside it, flushed to disk, renamed.

    A crash leaves the old file or the new one, never half of one.
    """
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(descriptor, "wb") as out:  # mkstemp creates it 0600
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable (POSIX; Windows has no directory handles to flush)."""
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class NotARegularFile(OSError):
    """The path is a folder, pipe, socket or device: nothing Cleo reads as a file."""


def open_regular_file(path: Path) -> BinaryIO:
    """`path` opened for reading if it is a regular file, else `NotARegularFile`: reading a pipe
    waits for a writer for ever, and a device may never end. Other failures are the usual OSErrors.

    Opened without blocking (a pipe put in the file's place after the check would otherwise wait
    in `open` itself), and checked again on the descriptor, which is what is read."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise NotARegularFile(f"{path} is not a regular file")
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise NotARegularFile(f"{path} is not a regular file")
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(descriptor, True)  # a regular file never blocks; reads are plain again
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def _make_private(path: Path, mode: int) -> None:
    if os.name == "posix":
        os.chmod(path, mode)
