"""`cleo models …`: the catalog (`list`, `info PATH`) and Hugging Face (`search`, `files`, `download`).

Names and architectures come from the files' metadata, and everything the Hub says (repository
names, file names, licences) comes from strangers: all of it is printed through `terminal_text`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from engine.cli.terminal_text import json_text, printable
from engine.errors import KnownError
from engine.models.catalog import ModelCatalog, ModelInfo, read_model_info
from engine.models.fit import Gpu, available_memory
from engine.models.hub import HubFile, hub_address, repo_files, search, suggestions
from engine.models.hub_downloads import DownloadProgress, download_model
from engine.models.remote_header import RemoteModel, describe_remote
from engine.paths import folders
from engine.settings import Settings

HUB_ACTIONS = ("search", "files", "download")
DEFAULT_HEADERS = 3  # model files whose header `cleo models files` reads unless told otherwise


def run(action: str, *, path: Path | None, as_json: bool) -> int:
    if action == "info":
        assert path is not None  # argparse requires it for `info`
        info = read_model_info(path)
        print(json.dumps(_as_json(info), indent=2) if as_json else printable(describe(info)))
        return 0
    models, unusable = ModelCatalog().scan()
    if as_json:
        print(json.dumps({"models": [_as_json(m) for m in models],
                          "unusable": [{"path": str(u.path), "problem": u.problem} for u in unusable]}, indent=2))
        return 0
    if not models and not unusable:
        print("No models yet. Run `python -m training.defaults` to build Cleo's default models.")
    for info in models:
        print(printable(describe(info)), end="\n\n")
    for bad in unusable:
        print(printable(f"unusable: {bad.path}\n  {bad.problem}\n"))
    return 0


def add_hub_actions(actions: Any) -> None:
    """`search`, `files` and `download` under `cleo models` (`actions` is its argparse sub-parsers)."""
    find = actions.add_parser("search", help="find GGUF models on Hugging Face (without QUERY: Cleo's suggestions)")
    find.add_argument("query", nargs="?", default="")
    find.add_argument("--sort", choices=("downloads", "recent"), default="downloads")
    find.add_argument("--page", type=int, default=1, help="page of 20 results (default 1)")
    find.add_argument("--json", action="store_true", help="print JSON instead of text")
    files = actions.add_parser("files", help="a repository's GGUF files: sizes, and for a few what their header "
                                             "says and whether they fit this computer")
    files.add_argument("repo", help="owner/name, e.g. Qwen/Qwen3-30B-A3B-GGUF")
    files.add_argument("--revision", default="main", help="branch, tag or commit (default main)")
    files.add_argument("--headers", type=int, default=DEFAULT_HEADERS, metavar="N",
                       help=f"read the header of the first N model files (default {DEFAULT_HEADERS}; 0 for none)")
    files.add_argument("--header", action="append", default=[], metavar="FILE",
                       help="read this file's header too (may be repeated)")
    files.add_argument("--json", action="store_true", help="print JSON instead of text")
    fetch = actions.add_parser("download", help="download a GGUF file (all parts of a split one), checked")
    fetch.add_argument("repo")
    fetch.add_argument("file", help="the file's name or path in the repository (a split model: its first part)")
    fetch.add_argument("--revision", default="main", help="branch, tag or commit (default main)")
    fetch.add_argument("--folder", type=Path, help="where to save it (default: Cleo's models folder)")


def run_hub(args: argparse.Namespace, settings: Settings) -> int:
    hub = hub_address(settings)
    if args.models_command == "search":
        return _search(hub, args) if args.query.strip() else _suggestions(args.json)
    if args.models_command == "files":
        return _files(hub, args, settings)
    return _download(hub, args)


def _search(hub: str, args: argparse.Namespace) -> int:
    page = search(hub, args.query, sort=args.sort, page=args.page)
    if args.json:
        print(json_text({"query": page.query, "sort": page.sort, "page": page.page, "more": bool(page.next_url),
                         "models": [asdict(m) for m in page.models]}, indent=2))
        return 0
    if not page.models:
        print(printable(f"No GGUF models on page {page.page} for '{page.query}'."))
        return 0
    for model in page.models:
        licence = f", licence {model.licence}" if model.licence else ""
        print(printable(f"{model.repo}\n  {model.downloads:,} downloads, {model.likes:,} likes, "
                        f"updated {model.updated[:10] or 'unknown'}{licence}"))
    if page.next_url:
        print(f"\nMore: cleo models search ... --page {page.page + 1}")
    return 0


def _suggestions(as_json: bool) -> int:
    memory = available_memory()
    found = suggestions()
    if as_json:
        print(json_text({"memory_free": memory, "suggested": [asdict(s) for s in found]}, indent=2))
        return 0
    free = f"{memory / 1024**3:.0f} GB of memory free now" if memory else "free memory unknown"
    print(f"Models Cleo suggests, by the memory they need ({free}); search with `cleo models search QUERY`:")
    for item in found:
        fits = "" if memory is None or item.memory_gb * 1024**3 <= memory else "  (more than is free now)"
        kind = "MoE" if item.moe else "dense"
        print(printable(f"  {item.memory_gb:>3} GB  {kind:<5} {item.repo}  {item.file}{fits}\n"
                        f"              {item.description}"))
    return 0


def _files(hub: str, args: argparse.Namespace, settings: Settings) -> int:
    listing = repo_files(hub, args.repo, args.revision)
    wanted = [f.name for f in listing.models[:max(args.headers, 0)]]
    wanted += [listing.find(name).name for name in args.header]
    gpus = _gpus()
    read: dict[str, RemoteModel | str] = {}
    for file in listing.files:
        if file.name in wanted:
            try:
                read[file.name] = describe_remote(listing, file, context_size=settings.context_size, gpus=gpus)
            except KnownError as exc:  # one bad file is reported on its line; the others are still shown
                read[file.name] = exc.message
    if args.json:
        print(json_text({"repo": listing.repo, "revision": listing.revision, "commit": listing.commit,
                         "files": [_file_json(f, read.get(f.name)) for f in listing.files]}, indent=2))
        return 0
    print(printable(f"{listing.repo} at {listing.commit[:12]} ({listing.revision}):"))
    for file in listing.files:
        print(printable(_file_text(file, read.get(file.name))))
    unread = [f for f in listing.models if f.name not in read]
    if unread:
        print(f"\nHeaders not read for {len(unread)} more model file(s): add --header FILE, or --headers N.")
    return 0


def _download(hub: str, args: argparse.Namespace) -> int:
    listing = repo_files(hub, args.repo, args.revision)
    folder = args.folder if args.folder is not None else folders().models
    cancelled = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda _signal, _frame: cancelled.set())
    printer = _ProgressPrinter()
    try:
        path = download_model(listing, args.file, folder, progress=printer, cancelled=cancelled)
    finally:
        signal.signal(signal.SIGINT, previous)
        printer.end()
    print(printable(f"Saved {path} (from {listing.repo} at {listing.commit[:12]})."))
    try:
        print(printable(describe(read_model_info(path))))
    except KnownError as exc:  # the file is there and verified; say why Cleo cannot use it
        print(printable(f"Cleo cannot use it: {exc.message}"))
    return 0


class _ProgressPrinter:
    """Progress on stderr: rewritten in place on a terminal, a line every few seconds in a log."""

    def __init__(self) -> None:
        self.live = sys.stderr.isatty()
        self.printed_at = 0.0

    def __call__(self, progress: DownloadProgress) -> None:
        now = time.monotonic()
        if progress.done < progress.total and now - self.printed_at < (0.2 if self.live else 5.0):
            return
        self.printed_at = now
        part = f" (part {progress.part} of {progress.parts})" if progress.parts > 1 else ""
        speed = f", {progress.bytes_per_second / 1e6:.1f} MB/s" if progress.bytes_per_second else ""
        left = f", {_duration(progress.seconds_left)} left" if progress.seconds_left is not None else ""
        line = (f"{progress.done * 100 // max(progress.total, 1):3d}% {progress.done / 1e9:.2f} of "
                f"{progress.total / 1e9:.2f} GB{speed}{left}{part}")
        print(printable(f"\r{line:<72}") if self.live else printable(line), end="" if self.live else "\n",
              file=sys.stderr, flush=True)

    def end(self) -> None:
        if self.live and self.printed_at:
            print(file=sys.stderr)


def _gpus() -> list[Gpu]:
    from engine.runtime.llama import gpus  # loads llama.cpp: only when a header is read

    return gpus()


def _file_text(file: HubFile, read: RemoteModel | str | None) -> str:
    mark = {"model": "", "mmproj": "  [vision projector, not a chat model]", "other": "  [not a model]"}[file.kind]
    parts = f", {len(file.parts)} parts" if len(file.parts) > 1 else ""
    missing = f", {file.missing_parts} part(s) missing" if file.missing_parts else ""
    quant = f"{file.quantization}, " if file.quantization else ""
    text = f"\n{file.name}{mark}\n  {quant}{_size(file.size)}{parts}{missing}"
    if len(file.parts) == 1 and file.parts[0].sha256:
        text += f", sha256 {file.parts[0].sha256}"
    if isinstance(read, str):
        return text + f"\n  header: {read}"
    if read is not None:
        info = read.info
        experts = (f"MoE, {info.experts} experts, {info.experts_used} active per token" if info.is_moe
                   else "dense")
        template = "chat template" if info.has_chat_template else "no chat template"
        text += (f"\n  {info.architecture}, {experts}, {_count(info.parameters)} parameters, {info.quantization}, "
                 f"context {info.context_length} tokens, {template}\n  {read.fit.text}")
    return text


def _file_json(file: HubFile, read: RemoteModel | str | None) -> dict[str, Any]:
    data: dict[str, Any] = {"name": file.name, "kind": file.kind, "quantization": file.quantization,
                            "size": file.size, "missing_parts": file.missing_parts,
                            "parts": [asdict(p) for p in file.parts]}
    if isinstance(read, str):
        data["header_error"] = read
    elif read is not None:
        header = _as_json(read.info)
        header["path"] = file.name
        data["header"] = header
        data["fit"] = asdict(read.fit)
        data["header_bytes_read"] = read.bytes_read
    return data


def describe(info: ModelInfo) -> str:
    """A few lines a person can read: what the model is and how big."""
    experts = f"MoE, {info.experts} experts, {info.experts_used} used per token" if info.is_moe else "dense"
    kind = "embeddings" if info.is_embedding_model else ("chat" if info.has_chat_template else "no chat template")
    return (f"{info.name}\n  {info.path}\n  {info.architecture}, {experts}, {_count(info.parameters)} parameters, "
            f"{info.quantization}, {info.file_size / 1e6:.0f} MB\n  context {info.context_length} tokens, {kind}")


def _count(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} KB"


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min" if seconds >= 90 \
        else f"{seconds:.0f} s"


def _as_json(info: ModelInfo) -> dict[str, Any]:
    data = asdict(info)
    data["path"] = str(info.path)
    data["is_moe"] = info.is_moe
    data["is_embedding_model"] = info.is_embedding_model
    data["has_chat_template"] = info.has_chat_template
    del data["chat_template"]  # long; `has_chat_template` says what the list needs
    return data  # printed with json.dumps' default ensure_ascii: every control character escaped
