"""Where Cleo keeps things on disk.

Folders come from platformdirs (the usual per-OS places). Setting `CLEO_HOME=DIR` moves every
Cleo folder under DIR; tests always do this so they never touch the user's real folders.
The file names of the default models live here because both `training.defaults` (which
builds them) and the app (which loads them) must agree on them.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

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
    """Create `folder` if needed and prove it is writable, or raise `FolderNotWritable`."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
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
