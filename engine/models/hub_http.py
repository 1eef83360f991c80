"""The few HTTP requests Cleo makes to Hugging Face's API: small JSON answers and byte ranges.

Model files themselves never travel through here: they go through the hardened downloader in
`engine.models.downloads`. This module fetches search results, file lists and the first
megabytes of a GGUF file (its header), on urllib, the HTTP library Cleo already ships
(`huggingface_hub` would add ~29 MB with its dependencies for three GET requests).

The Hub is not trusted more than a download is: the same URL rule applies (https, or plain http
to this computer; no step down on a redirect), answers are bounded in size, and anything that is
not what was asked for (a proxy's login page, a rate limit, a server error, a timeout) becomes
one `HubUnreachable` line that says what happened. Nothing here retries on its own: the window
and the terminal stay in charge of when to ask again.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import IO, Any

from engine.errors import KnownError
from engine.models.downloads import check_url

TIMEOUT = 15.0  # seconds a silent Hub is waited for
MAX_JSON_BYTES = 32 * 2**20  # a search page is ~20 KB and the tree of a large repo a few MB
_CHUNK = 64 * 1024  # reads between two looks at the cancel flag
_USER_AGENT = "Cleo (model manager)"
_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


class HubUnreachable(KnownError):
    """Hugging Face (or the mirror the settings name) did not answer with what Cleo asked for."""


class HubNotFound(KnownError):
    """The repository, revision or file does not exist on the Hub (or is private)."""


class HubCancelled(KnownError):
    """The user stopped a search, a file list or a header read."""


def get_json(url: str, *, cancelled: threading.Event | None = None) -> tuple[Any, str]:
    """The JSON at `url` and the address of the next page ("" when this is the last one)."""
    with _open(url, {"Accept": "application/json"}, cancelled) as response:
        kind = response.headers.get("Content-Type", "")
        body = _read(response, MAX_JSON_BYTES, cancelled, url, whole=True)
        next_page = _next_page(response.headers.get("Link", ""), url)
    if "json" not in kind.lower():
        raise _unreachable(url, f"it answered with {_kind(kind)} instead of data (a proxy or a login page "
                                "may be in the way)")
    try:
        return json.loads(body), next_page
    except (ValueError, UnicodeDecodeError) as exc:
        raise _unreachable(url, f"its answer is not valid JSON ({exc})") from exc


def get_range(url: str, start: int, end: int, *, cancelled: threading.Event | None = None) -> bytes:
    """Bytes `start` to `end` (exclusive) of the file at `url`; fewer only when the file ends first."""
    with _open(url, {"Range": f"bytes={start}-{end - 1}"}, cancelled) as response:
        if response.status != 206 and start:  # the server ignored Range: skip what is not wanted
            _read(response, start, cancelled, url)
        return _read(response, end - start, cancelled, url)


def _open(url: str, headers: dict[str, str], cancelled: threading.Event | None) -> Any:
    if cancelled is not None and cancelled.is_set():
        raise HubCancelled("Stopped.")
    check_url(url)
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, **headers})
    opener = urllib.request.build_opener(_CheckedRedirects)
    try:
        return opener.open(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise _http_error(url, exc) from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        raise _unreachable(url, _reason(exc)) from exc


def _read(response: IO[bytes], limit: int, cancelled: threading.Event | None, url: str,
          whole: bool = False) -> bytes:
    """At most `limit` bytes of the body; with `whole`, a longer body is refused rather than cut."""
    parts: list[bytes] = []
    have = 0
    read = getattr(response, "read1", response.read)
    try:
        while have < limit:
            chunk = read(min(_CHUNK, limit - have))
            if cancelled is not None and cancelled.is_set():
                raise HubCancelled("Stopped.")
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        if whole and response.read(1):
            raise _unreachable(url, f"its answer is larger than {limit // 2**20} MB")
    except (OSError, http.client.HTTPException) as exc:
        raise _unreachable(url, f"the answer stopped halfway ({_reason(exc)})") from exc
    return b"".join(parts)


def _next_page(link: str, url: str) -> str:
    """The Link header's next page, if it stays on the same server (a Link elsewhere is ignored)."""
    found = _NEXT_LINK.search(link)
    if not found:
        return ""
    target = urllib.parse.urljoin(url, found.group(1))
    here, there = urllib.parse.urlsplit(url), urllib.parse.urlsplit(target)
    return target if (here.scheme, here.netloc) == (there.scheme, there.netloc) else ""


def _http_error(url: str, exc: urllib.error.HTTPError) -> KnownError:
    if exc.code == 404:
        return HubNotFound(f"Hugging Face has no such model or file: {_where(url)}.",
                           hint="Check the name (it is case-sensitive, like Qwen/Qwen3-30B-A3B-GGUF).")
    if exc.code in (401, 403):
        return HubNotFound(f"Hugging Face refuses {_where(url)} without an account: the model is private or "
                           "gated (its licence must be accepted on the website).",
                           hint="Cleo downloads public models; choose another repository.")
    if exc.code == 429:
        wait = exc.headers.get("Retry-After", "") if exc.headers else ""
        later = f"in {wait} seconds" if wait.isdigit() else "in a minute"
        return _unreachable(url, "it is limiting requests from this computer (429 Too Many Requests)",
                            hint=f"Try again {later}; everything else in Cleo keeps working.")
    return _unreachable(url, f"it answered {exc.code} {exc.reason}")


def _unreachable(url: str, why: str, hint: str = "") -> HubUnreachable:
    return HubUnreachable(f"Hugging Face cannot be reached: {why} ({_host(url)}).",
                          hint=hint or "Check the connection (or the proxy) and try again; everything else in "
                                       "Cleo keeps working.")


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        return _reason(reason)
    if isinstance(exc, TimeoutError) or "timed out" in str(reason or exc):
        return f"no answer within {TIMEOUT:.0f} seconds"
    return str(getattr(exc, "strerror", None) or reason or exc) or type(exc).__name__


def _kind(content_type: str) -> str:
    media = content_type.split(";")[0].strip()
    return "a web page" if media == "text/html" else (media or "no content type")


def _host(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _where(url: str) -> str:
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    for prefix in ("/api/models/", "/"):
        if path.startswith(prefix):
            return path.removeprefix(prefix)
    return path


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect (a renamed repository, a file on a CDN) only where `check_url` allows."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        check_url(urllib.parse.urljoin(req.full_url, newurl), came_from=req.full_url)
        return super().redirect_request(req, fp, code, msg, headers, newurl)
