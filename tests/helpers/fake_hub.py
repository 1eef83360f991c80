"""A fake Hugging Face Hub on 127.0.0.1, and small real GGUF files for it to serve.

Two real HTTP servers: the Hub (search, revision, tree, resolve) and a file host on another port
(what the Hub's `resolve` redirects to, like its CDN), which serves Range requests. Switches make
them fail the ways the real ones do: 429, 5xx, an HTML page instead of JSON, a slow or cut-off
transfer, a wrong sha256 in the tree, a file longer than announced.

The answers copy the shapes documented for the Hub API (and returned by huggingface.co); the
fields Cleo relies on are marked `# used` in the examples below, the rest are there so that a
client reading more than it should would notice nothing different from the real Hub.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# GET /api/models?search=qwen&filter=gguf&sort=downloads&direction=-1&limit=20&expand=downloads&expand=likes
#     &expand=lastModified&expand=tags   ->  200, Link: <https://huggingface.co/api/models?...&cursor=...>; rel="next"
SEARCH_RESULT_EXAMPLE = {
    "_id": "680f0da8bb1d5c3a3b3c3b3f",
    "id": "Qwen/Qwen3-30B-A3B-GGUF",  # used
    "downloads": 123456,  # used
    "likes": 321,  # used
    "lastModified": "2025-05-20T12:34:56.000Z",  # used
    "tags": ["gguf", "text-generation", "license:apache-2.0", "region:us"],  # used: the license:… tag
}
# GET /api/models/{repo}/revision/{revision}
REVISION_EXAMPLE = {
    "_id": "680f0da8bb1d5c3a3b3c3b3f", "id": "Qwen/Qwen3-30B-A3B-GGUF", "private": False,
    "sha": "0123456789abcdef0123456789abcdef01234567",  # used: every later request is pinned to it
    "lastModified": "2025-05-20T12:34:56.000Z", "tags": ["gguf"], "siblings": [{"rfilename": "README.md"}],
}
# GET /api/models/{repo}/tree/{commit}?recursive=true  ->  200, a list; paged with Link like search
TREE_EXAMPLE = [
    {"type": "file", "oid": "d1c4ba7e5c6cd9d1f1d6b1c9e1b4b5a6c7d8e9f0", "size": 18556685824,  # used: type
     "path": "Qwen3-30B-A3B-Q4_K_M.gguf",  # used
     "lfs": {"oid": "0d003f6662faee786ed5da3e31b29c978de5ae5d275c8794c606a7f3c01aa8f5",  # used: the sha256
             "size": 18556685824,  # used
             "pointerSize": 135}},
    {"type": "file", "oid": "a3f6e2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5", "size": 1570, "path": "README.md"},
    {"type": "directory", "oid": "b4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3", "size": 0, "path": "Q8_0"},
]
# GET /{repo}/resolve/{commit}/{path}  ->  302 to the file host (X-Repo-Commit, X-Linked-Size,
#     X-Linked-Etag headers), which answers Range requests with 206 and `Content-Range`.


def write_moe_gguf(path: Path, *, vocabulary: int = 100_000, experts: int = 8, experts_used: int = 2,
                   width: int = 1024, chat_template: str = "{{ messages }}") -> Path:
    """A small but real Mixture-of-Experts GGUF (qwen3moe): a large vocabulary so its header
    passes the first megabyte, expert tensors so the file is several times larger than that."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(path, arch="qwen3moe")
    writer.add_name("tiny moe")
    writer.add_context_length(32768)
    writer.add_block_count(1)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_expert_count(experts)
    writer.add_expert_used_count(experts_used)
    writer.add_token_list([f"tok{i}" for i in range(vocabulary)])
    writer.add_chat_template(chat_template)
    writer.add_tensor("token_embd.weight", np.ones((16, 64), dtype=np.float32))
    writer.add_tensor("blk.0.ffn_gate_exps.weight", np.ones((experts, width, 64), dtype=np.float32))
    writer.add_tensor("blk.0.ffn_up_exps.weight", np.ones((experts, width, 64), dtype=np.float32))
    writer.add_tensor("blk.0.ffn_down_exps.weight", np.ones((experts, 64, width), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_split_gguf(folder: Path, stem: str = "split-model-Q8_0") -> list[Path]:
    """A real split GGUF in three parts, as llama.cpp's gguf-split names them (one tensor per part)."""
    import numpy as np
    from gguf import GGUFWriter

    folder.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(folder / f"{stem}.gguf", arch="llama", split_max_tensors=1)
    writer.add_name("split")
    writer.add_context_length(2048)
    writer.add_block_count(1)
    writer.add_token_list([f"t{i}" for i in range(100)])
    for name in ("token_embd.weight", "output_norm.weight", "output.weight"):
        writer.add_tensor(name, np.full((100, 32), 0.5, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sorted(folder.glob(f"{stem}-*-of-*.gguf"))


@dataclass
class FakeRepo:
    commits: list[tuple[str, dict[str, bytes]]]  # oldest first; the last is main
    downloads: int = 0
    likes: int = 0
    licence: str = "apache-2.0"
    last_modified: str = "2025-01-01T00:00:00.000Z"


@dataclass
class Faults:
    api_status: int = 0  # answer every API call with this status (429 comes with Retry-After)
    html: bool = False  # answer API calls with a web page, as a proxy's login does
    wrong_sha256: set[str] = field(default_factory=set)  # paths whose tree sha256 is not the file's
    longer: dict[str, int] = field(default_factory=dict)  # paths served with this many extra bytes
    cut_after: int | None = None  # the file host drops the next transfer after this many bytes
    seconds_per_chunk: float = 0.0  # the file host pauses this long after each 64 KiB
    ignore_range: bool = False  # the file host answers 200 with the whole file


class FakeHub:
    def __init__(self, tree_page: int = 1000) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.blobs: dict[str, bytes] = {}
        self.faults = Faults()
        self.tree_page = tree_page
        self.api_calls: list[str] = []  # path and query of every API request
        self.resolved: list[str] = []  # path of every resolve request
        self.ranges: list[str] = []  # Range header of every file-host request ("" for none)
        self.served = 0  # body bytes the file host sent
        self.lock = threading.Lock()
        self.files = _serve(_FileHost, self)
        self.api = _serve(_Api, self)
        self.url = f"http://127.0.0.1:{self.api.server_address[1]}"
        self.files_url = f"http://127.0.0.1:{self.files.server_address[1]}"

    def add_repo(self, repo: str, files: dict[str, bytes], **details: Any) -> str:
        self.repos[repo] = FakeRepo([], **details)
        return self.push(repo, files)

    def push(self, repo: str, files: dict[str, bytes]) -> str:
        """A new commit on main with these files; returns its id."""
        commits = self.repos[repo].commits
        commit = hashlib.sha1(f"{repo}{len(commits)}".encode()).hexdigest()
        commits.append((commit, dict(files)))
        for data in files.values():
            self.blobs[hashlib.sha256(data).hexdigest()] = data
        return commit

    def close(self) -> None:
        for server in (self.api, self.files):
            server.shutdown()
            server.server_close()

    def serve_file(self, data: bytes, name: str = "file.gguf") -> str:
        """The file host's address for `data`: where the Hub's `resolve` would redirect to."""
        sha256 = hashlib.sha256(data).hexdigest()
        self.blobs[sha256] = data
        return f"{self.files_url}/files/{sha256}?name={urllib.parse.quote(name)}"

    def files_at(self, repo: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        commits = self.repos[repo].commits if repo in self.repos else []
        if revision == "main" and commits:
            return commits[-1]
        return next((c for c in commits if c[0] == revision), None)


def _serve(handler: type[BaseHTTPRequestHandler], hub: FakeHub) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.hub = hub  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _Handler(BaseHTTPRequestHandler):
    @property
    def hub(self) -> FakeHub:
        return self.server.hub  # type: ignore[attr-defined]

    def reply(self, status: int, body: bytes, kind: str = "application/json", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def json(self, value: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.reply(status, json.dumps(value).encode(), **(headers or {}))

    def log_message(self, *args: object) -> None:
        pass


class _Api(_Handler):
    def do_GET(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        path, query = urllib.parse.unquote(parts.path), urllib.parse.parse_qs(parts.query)
        if path.startswith("/api/"):
            self.hub.api_calls.append(self.path)
            faults = self.hub.faults
            if faults.html:
                return self.reply(200, b"<!doctype html><html><body>Sign in to continue</body></html>", "text/html")
            if faults.api_status:
                return self.json({"error": "Too many requests"}, faults.api_status,
                                 {"Retry_After": "30"} if faults.api_status == 429 else None)
        if path == "/api/models":
            return self.search(query)
        for marker, answer in (("/revision/", self.revision), ("/tree/", self.tree), ("/resolve/", self.resolve)):
            if marker in path:
                repo, rest = path.removeprefix("/api/models/").removeprefix("/").split(marker, 1)
                return answer(repo, rest, query)
        self.json({"error": "Not found"}, 404)

    def search(self, query: dict[str, list[str]]) -> None:
        text = query.get("search", [""])[0].lower()
        assert query.get("filter") == ["gguf"], query  # Cleo only ever asks for GGUF repositories
        key = "downloads" if query.get("sort") == ["downloads"] else "last_modified"
        found = sorted((r for r in self.hub.repos.items() if text in r[0].lower()),
                       key=lambda r: getattr(r[1], key), reverse=True)
        start, limit = int(query.get("cursor", ["0"])[0]), int(query.get("limit", ["20"])[0])
        page = [{"_id": hashlib.md5(name.encode()).hexdigest()[:24], "id": name, "downloads": repo.downloads,
                 "likes": repo.likes, "lastModified": repo.last_modified,
                 "tags": ["gguf", f"license:{repo.licence}", "region:us"]} for name, repo in found[start:start + limit]]
        headers: dict[str, str] = {}
        if start + limit < len(found):
            rest = [(k, v) for k, values in query.items() if k != "cursor" for v in values]
            headers["Link"] = (f'<{self.hub.url}/api/models?{urllib.parse.urlencode(rest)}'
                               f'&cursor={start + limit}>; rel="next"')
        self.json(page, headers=headers)

    def revision(self, repo: str, revision: str, _query: dict[str, list[str]]) -> None:
        found = self.hub.files_at(repo, revision) if repo in self.hub.repos else None
        if found is None:
            return self.json({"error": f"Invalid rev id: {revision}"}, 404)
        self.json({"_id": "x", "id": repo, "private": False, "sha": found[0], "tags": ["gguf"],
                   "lastModified": self.hub.repos[repo].last_modified,
                   "siblings": [{"rfilename": name} for name in found[1]]})

    def tree(self, repo: str, revision: str, query: dict[str, list[str]]) -> None:
        found = self.hub.files_at(repo, revision) if repo in self.hub.repos else None
        if found is None:
            return self.json({"error": "Revision not found"}, 404)
        entries: list[dict[str, Any]] = []
        for folder in sorted({name.rsplit("/", 1)[0] for name in found[1] if "/" in name}):
            entries.append({"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0,
                            "path": folder})
        for name, data in sorted(found[1].items()):
            entry: dict[str, Any] = {"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data),
                                     "path": name}
            if name.endswith(".gguf"):
                sha256 = hashlib.sha256(data).hexdigest()
                if name in self.hub.faults.wrong_sha256:
                    sha256 = hashlib.sha256(b"another file").hexdigest()
                entry["lfs"] = {"oid": sha256, "size": len(data), "pointerSize": 134}
            entries.append(entry)
        start = int(query.get("cursor", ["0"])[0])
        page = entries[start:start + self.hub.tree_page]
        headers: dict[str, str] = {}
        if start + self.hub.tree_page < len(entries):
            headers["Link"] = (f'<{self.hub.url}/api/models/{repo}/tree/{revision}?recursive=true'
                               f'&cursor={start + self.hub.tree_page}>; rel="next"')
        self.json(page, headers=headers)

    def resolve(self, repo: str, rest: str, _query: dict[str, list[str]]) -> None:
        self.hub.resolved.append(f"{repo}/resolve/{rest}")
        revision, _, name = rest.partition("/")
        found = self.hub.files_at(repo, revision) if repo in self.hub.repos else None
        if found is None or name not in found[1]:
            return self.json({"error": "Entry not found"}, 404)
        sha256 = hashlib.sha256(found[1][name]).hexdigest()
        self.send_response(302)
        self.send_header("Location", f"{self.hub.files_url}/files/{sha256}?name={urllib.parse.quote(name)}")
        self.send_header("X-Repo-Commit", found[0])
        self.send_header("X-Linked-Size", str(len(found[1][name])))
        self.send_header("X-Linked-Etag", f'"{sha256}"')
        self.send_header("Content-Length", "0")
        self.end_headers()


class _FileHost(_Handler):
    def do_GET(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        data = self.hub.blobs.get(parts.path.removeprefix("/files/"))
        if data is None:
            return self.json({"error": "Not found"}, 404)
        name = urllib.parse.parse_qs(parts.query).get("name", [""])[0]
        faults = self.hub.faults
        data += b"\0" * faults.longer.get(name, 0)
        requested = self.headers.get("Range", "")
        self.hub.ranges.append(requested)
        start, end = 0, len(data) - 1
        if requested.startswith("bytes=") and not faults.ignore_range:
            first, _, last = requested[6:].partition("-")
            start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
            if start >= len(data):
                return self.reply(416, b"", "text/plain", Content_Range=f"bytes */{len(data)}")
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:end + 1]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut, faults.cut_after = faults.cut_after, None
        self.send_body(body if cut is None else body[:cut], faults.seconds_per_chunk)
        if cut is not None:
            self.connection.close()

    def send_body(self, body: bytes, pause: float) -> None:
        for at in range(0, len(body), 64 * 1024):
            try:
                self.wfile.write(body[at:at + 64 * 1024])
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: its right
                return
            with self.hub.lock:
                self.hub.served += len(body[at:at + 64 * 1024])
            if pause:
                time.sleep(pause)


MOE_REPO = "cleo-test/Tiny-MoE-GGUF"
SPLIT_NAME = "Q8_0/split-model-Q8_0-00001-of-00003.gguf"


def hub_with_models(folder: Path) -> FakeHub:
    """A fake Hub holding one repository of real GGUF files: a tiny dense model, an MoE model, a
    model split in three parts (in a subfolder, as many repositories keep them), a vision
    projector and a README; and a few more repositories for search to find."""
    from tests.helpers.models import write_tiny_gguf

    folder.mkdir(parents=True, exist_ok=True)
    tiny = write_tiny_gguf(folder / "tiny-F32.gguf", chat_template="{{ messages }}").read_bytes()
    files = {"tiny-F32.gguf": tiny, "mmproj-tiny-F16.gguf": tiny, "README.md": b"# Tiny MoE\n",
             "tiny-moe-F32.gguf": write_moe_gguf(folder / "tiny-moe-F32.gguf").read_bytes()}
    (folder / "split").mkdir(exist_ok=True)
    files.update({f"Q8_0/{p.name}": p.read_bytes() for p in write_split_gguf(folder / "split")})
    hub = FakeHub()
    hub.add_repo(MOE_REPO, files, downloads=50, likes=7, last_modified="2025-03-01T10:00:00.000Z")
    for number, (downloads, day) in enumerate([(900, "2024-01-05"), (20, "2025-06-30"), (300, "2024-11-11")]):
        hub.add_repo(f"someone/Model-{number}-GGUF", {"model-Q4_K_M.gguf": tiny}, downloads=downloads,
                     likes=number, licence="mit", last_modified=f"{day}T00:00:00.000Z")
    return hub
