"""Finding GGUF models on Hugging Face: search, the files of a repository, and Cleo's suggestions.

Each function makes a few blocking requests and returns frozen dataclasses, so the window runs
it on a worker thread and the terminal runs it directly; each takes a `cancelled` event. What
Cleo relies on in the Hub's answers (recorded with examples in tests/helpers/fake_hub.py):

- search `GET /api/models?search=&filter=gguf&sort=&direction=-1&limit=&expand=…`: a list of
  `{id, downloads, likes, lastModified, tags}` (the licence is the `license:…` tag), and the
  `Link: <…>; rel="next"` header for the next page;
- `GET /api/models/{repo}/revision/{revision}`: `sha`, the commit every later request is pinned to;
- `GET /api/models/{repo}/tree/{commit}?recursive=true`: `{type, path, size, lfs: {oid, size}}`,
  where `lfs.oid` is the file's sha256; also paged with `Link`.

A listing is pinned to the commit it came from, so the file Cleo downloads and verifies is the
one the user saw, even if the repository changes in between.
"""

from __future__ import annotations

import json
import os
import re
import threading
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.errors import KnownError
from engine.models.catalog import split_part
from engine.models.downloads import CATALOG_FILE, CatalogInvalid
from engine.models.hub_http import HubUnreachable, get_json
from engine.settings import Settings

DEFAULT_HUB = "https://huggingface.co"
HUB_VARIABLE = "HF_ENDPOINT"  # the variable Hugging Face's own tools read for a mirror
PER_PAGE = 20
MAX_PAGE = 50  # pages are reached by following links one by one; deeper than this, refine the query
_MAX_TREE_PAGES = 50
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
_QUANT = re.compile(r"(?<![A-Za-z0-9])(I?Q[1-8](?:_[A-Z0-9]{1,4}){0,3}|BF16|F16|F32|MXFP4|TQ[12]_0)(?![A-Za-z0-9])",
                    re.IGNORECASE)

Sort = Literal["downloads", "recent"]
Kind = Literal["model", "mmproj", "other"]


def hub_address(settings: Settings) -> str:
    """The Hub Cleo talks to: the setting when the user changed it, else `HF_ENDPOINT`, else Hugging Face."""
    chosen = settings.hub_url if settings.hub_url != DEFAULT_HUB else os.environ.get(HUB_VARIABLE, "") or DEFAULT_HUB
    return chosen.rstrip("/")


@dataclass(frozen=True)
class HubModel:
    """One search result."""

    repo: str
    downloads: int
    likes: int
    updated: str  # ISO 8601 as the Hub sends it; "" when it did not say
    licence: str  # "" when the repository names none


@dataclass(frozen=True)
class SearchPage:
    query: str
    sort: Sort
    page: int  # 1 for the first
    models: tuple[HubModel, ...]
    next_url: str  # "" on the last page; `search_next` follows it


@dataclass(frozen=True)
class RemotePart:
    """One file on the Hub: its path in the repository, its size, and its sha256 ("" when the Hub gave none)."""

    path: str
    size: int
    sha256: str

    @property
    def file_name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class HubFile:
    """What the user picks: one file, or all parts of a split model (loaded from the first)."""

    name: str  # the first part's path in the repository
    kind: Kind
    quantization: str  # from the file name ("" when it does not say); the header says for sure
    parts: tuple[RemotePart, ...]
    missing_parts: int = 0  # parts a split model names that the repository lacks

    @property
    def size(self) -> int:
        return sum(part.size for part in self.parts)

    @property
    def is_split(self) -> bool:
        return len(self.parts) > 1 or self.missing_parts > 0

    @property
    def file_name(self) -> str:
        return self.parts[0].file_name


@dataclass(frozen=True)
class RepoFiles:
    repo: str
    revision: str  # what the user asked for ("main", a tag, a commit)
    commit: str  # the commit it pointed to when listed: downloads are pinned to it
    hub: str
    files: tuple[HubFile, ...]

    @property
    def models(self) -> tuple[HubFile, ...]:
        return tuple(f for f in self.files if f.kind == "model")

    def find(self, name: str) -> HubFile:
        """The file (or split model) with this path or file name; `KnownError` naming the choices if none."""
        for file in self.files:
            if name in (file.name, file.file_name) or any(name in (p.path, p.file_name) for p in file.parts):
                return file
        choices = ", ".join(f.name for f in self.files if f.kind != "other") or "none"
        raise KnownError(f"{self.repo} has no file {name} at {self.commit[:12]}.",
                         hint=f"GGUF files there: {choices}.")

    def file_url(self, part: RemotePart) -> str:
        """Where `part` is downloaded from: pinned to the listed commit."""
        return (f"{self.hub}/{urllib.parse.quote(self.repo)}/resolve/{self.commit}/"
                f"{urllib.parse.quote(part.path)}")


def search(hub: str, query: str, *, sort: Sort = "downloads", page: int = 1, per_page: int = PER_PAGE,
           cancelled: threading.Event | None = None) -> SearchPage:
    """GGUF repositories matching `query`, most downloaded or most recently updated first."""
    if not 1 <= page <= MAX_PAGE:
        raise KnownError(f"Page {page} is out of reach; Cleo shows pages 1 to {MAX_PAGE}.",
                         hint="Make the search more specific instead.")
    params = [("search", query.strip()), ("filter", "gguf"),
              ("sort", "lastModified" if sort == "recent" else "downloads"), ("direction", "-1"),
              ("limit", str(per_page)),
              *[("expand", field) for field in ("downloads", "likes", "lastModified", "tags")]]
    url = f"{hub}/api/models?{urllib.parse.urlencode(params)}"
    found = SearchPage(query, sort, 0, (), url)
    while found.page < page:
        if not found.next_url:
            return SearchPage(query, sort, page, (), "")  # past the last page: nothing more
        found = search_next(found, cancelled=cancelled)
    return found


def search_next(previous: SearchPage, *, cancelled: threading.Event | None = None) -> SearchPage:
    """The page after `previous` (the window's "More" button)."""
    data, next_url = get_json(previous.next_url, cancelled=cancelled)
    if not isinstance(data, list):
        raise HubUnreachable("Hugging Face cannot be reached: its search answer is not a list of models.",
                             hint="Try again later; everything else in Cleo keeps working.")
    models = tuple(_model(item) for item in data if isinstance(item, dict) and isinstance(item.get("id"), str))
    return SearchPage(previous.query, previous.sort, previous.page + 1, models, next_url)


def repo_files(hub: str, repo: str, revision: str = "main", *,
               cancelled: threading.Event | None = None) -> RepoFiles:
    """Every file of `repo` at `revision`, GGUF files grouped and described, pinned to one commit."""
    check_repo(repo, revision)
    quoted = urllib.parse.quote(repo)
    info, _ = get_json(f"{hub}/api/models/{quoted}/revision/{urllib.parse.quote(revision, safe='')}",
                       cancelled=cancelled)
    commit = info.get("sha") if isinstance(info, dict) else None
    if not isinstance(commit, str) or not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise HubUnreachable(f"Hugging Face cannot be reached: it did not say which commit {repo} {revision} is.",
                             hint="Try again later; everything else in Cleo keeps working.")
    entries: list[dict[str, Any]] = []
    url = f"{hub}/api/models/{quoted}/tree/{commit}?recursive=true"
    for _ in range(_MAX_TREE_PAGES):
        data, url = get_json(url, cancelled=cancelled)
        entries += [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []
        if not url:
            break
    return RepoFiles(repo, revision, commit, hub, group_files(entries))


def check_repo(repo: str, revision: str = "main") -> None:
    """Refuse a name that is no Hub repository id or revision before it becomes part of a URL."""
    if not _REPO.match(repo):
        raise KnownError(f"{repo!r} is not a Hugging Face repository name.",
                         hint="Write it as owner/name, for example Qwen/Qwen3-30B-A3B-GGUF.")
    if not _REVISION.match(revision) or ".." in revision:
        raise KnownError(f"{revision!r} is not a branch, tag or commit name.", hint="Use main, or a commit id.")


def group_files(entries: Iterable[dict[str, Any]]) -> tuple[HubFile, ...]:
    """The tree's files as the user chooses them: split parts together, models first, largest first."""
    parts = [_part(e) for e in entries if e.get("type") == "file" and isinstance(e.get("path"), str)]
    splits: dict[tuple[str, int], dict[int, RemotePart]] = {}
    files: list[HubFile] = []
    for part in parts:
        folder, _, name = part.path.rpartition("/")
        split = split_part(name)  # the names llama.cpp finds the parts by, once downloaded into one folder
        if split and split[2] > 1:
            splits.setdefault((f"{folder}/{split[0]}" if folder else split[0], split[2]), {})[split[1]] = part
        else:
            files.append(HubFile(part.path, _kind(part.path), _quantization(part.path), (part,)))
    for (stem, count), found in splits.items():
        ordered = tuple(found[n] for n in sorted(found))
        files.append(HubFile(ordered[0].path, _kind(stem + ".gguf"), _quantization(stem + ".gguf"), ordered,
                             missing_parts=count - len(found)))
    order = {"model": 0, "mmproj": 1, "other": 2}
    return tuple(sorted(files, key=lambda f: (order[f.kind], f.name.lower())))


@dataclass(frozen=True)
class Suggestion:
    """A model Cleo suggests, from resources/catalog.json."""

    repo: str
    file: str
    revision: str
    memory_gb: int  # the machine memory it is chosen for
    moe: bool
    licence: str
    description: str
    size: int = 0  # 0 when not pinned: the tree gives it at download time
    sha256: str = ""  # "" when not pinned: likewise


def suggestions(path: Path = CATALOG_FILE) -> tuple[Suggestion, ...]:
    """Cleo's suggested models, smallest machines first and Mixture-of-Experts models first within each."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        raw = data.get("suggested", []) if isinstance(data, dict) else []
        found = [Suggestion(**item) for item in raw]
    except (OSError, ValueError, TypeError) as exc:
        raise CatalogInvalid(f"{path}: the suggested models cannot be read ({exc}).",
                             hint="Reinstall Cleo; your models and chats are not affected.") from exc
    for item in found:
        if not _REPO.match(item.repo) or (item.sha256 and not re.fullmatch(r"[0-9a-f]{64}", item.sha256)):
            raise CatalogInvalid(f"{path}: the suggestion {item.repo} {item.file} is not valid.",
                                 hint="Reinstall Cleo.")
    return tuple(sorted(found, key=lambda s: (s.memory_gb, not s.moe)))


def pinned(repo: str, file: str) -> Suggestion | None:
    """The suggestion whose size and sha256 Cleo knows in advance for this file, if any."""
    return next((s for s in suggestions() if (s.repo, s.file) == (repo, file) and s.sha256), None)


def _model(item: dict[str, Any]) -> HubModel:
    tags = item.get("tags")
    tags = tags if isinstance(tags, list) else []
    licence = next((t.removeprefix("license:") for t in tags if isinstance(t, str) and t.startswith("license:")), "")
    return HubModel(item["id"], _count(item.get("downloads")), _count(item.get("likes")),
                    str(item.get("lastModified") or ""), licence)


def _part(entry: dict[str, Any]) -> RemotePart:
    lfs = entry.get("lfs")
    lfs = lfs if isinstance(lfs, dict) else {}
    oid = lfs.get("oid")
    sha256 = oid if isinstance(oid, str) and re.fullmatch(r"[0-9a-f]{64}", oid) else ""
    return RemotePart(entry["path"], _count(lfs.get("size", entry.get("size"))), sha256)


def _kind(path: str) -> Kind:
    name = path.rsplit("/", 1)[-1].lower()
    if not name.endswith(".gguf"):
        return "other"
    return "mmproj" if "mmproj" in name else "model"


def _quantization(path: str) -> str:
    found = _QUANT.findall(path.rsplit("/", 1)[-1])
    return found[-1].upper() if found else ""


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
