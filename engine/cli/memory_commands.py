"""`cleo memory …`, `cleo search …` and `cleo database restore`: memory and history from the terminal.

Memories, titles and snippets are printed through `terminal_text`: they came from models and imports.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

from engine.cli.terminal_text import json_text, printable
from engine.errors import KnownError
from engine.memory.book import MEMORY_KINDS, Memory, MemoryBook
from engine.profile import Profile, open_profile
from engine.storage.database import default_database_path, restore_latest_backup


def add_commands(commands: argparse._SubParsersAction) -> None:
    memory = commands.add_parser("memory", help="what Cleo remembers about you")
    actions = memory.add_subparsers(dest="memory_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the memories (or, with --inbox, the proposals awaiting approval)")
    listing.add_argument("--inbox", action="store_true")
    listing.add_argument("--json", action="store_true")
    add = actions.add_parser("add", help="remember something")
    add.add_argument("text")
    add.add_argument("--kind", choices=MEMORY_KINDS, default="fact")
    add.add_argument("--pin", action="store_true", help="always put it in front of the model")
    edit = actions.add_parser("edit", help="change what a memory says")
    edit.add_argument("id")
    edit.add_argument("text")
    forget = actions.add_parser("forget", help="forget a memory, or --everything")
    forget.add_argument("id", nargs="?")
    forget.add_argument("--everything", action="store_true")
    pin = actions.add_parser("pin", help="pin (or --off: unpin) a memory")
    pin.add_argument("id")
    pin.add_argument("--off", action="store_true")
    for name, text in (("approve", "accept a proposed memory"), ("reject", "turn down a proposed memory")):
        actions.add_parser(name, help=text).add_argument("id")
    search = actions.add_parser("search", help="what Cleo would recall for a question")
    search.add_argument("query", nargs="?")
    search.add_argument("--queries", type=Path, help="a file of queries, one per line: one JSON line each")
    search.add_argument("--k", type=int, default=5)
    search.add_argument("--mode", choices=("hybrid", "bm25", "dense"), default="hybrid")
    search.add_argument("--json", action="store_true")
    history = commands.add_parser("search", help="search all conversations")
    history.add_argument("query")
    history.add_argument("--json", action="store_true")
    database = commands.add_parser("database", help="Cleo's database file")
    database.add_subparsers(dest="database_command", required=True, metavar="ACTION").add_parser(
        "restore", help="replace a damaged database with the latest backup")


def run(args: argparse.Namespace) -> int:
    if args.command == "database":
        backup = restore_latest_backup(default_database_path())
        print(f"Restored {default_database_path()} from {backup}; the damaged file was kept next to it.")
        return 0
    memories = open_profile()
    try:
        if args.command == "search":
            hits = memories.store.search(args.query)
            if args.json:
                print(json_text([asdict(h) for h in hits]))
            for hit in [] if args.json else hits:
                print(printable(f"{_date(hit.created_at)}  {hit.conversation_title}  ({hit.role}): {hit.snippet}"))
            return 0
        return _memory(args, memories)
    finally:
        memories.close()


def _memory(args: argparse.Namespace, memories: Profile) -> int:
    book, command = memories.book, args.memory_command
    if command == "list":
        records = book.inbox() if args.inbox else book.memories()
        if args.json:
            print(json_text([asdict(m) for m in records]))
        for m in [] if args.json else records:
            print(printable(f"{m.id[:8]}  {m.kind:<11} {'📌 ' if m.pinned else ''}{m.content}"))
        return 0
    if command == "add":
        action, memory = book.add(args.text, args.kind, pinned=args.pin)
        _said(f"{action.capitalize()}:", memory)
    elif command == "edit":
        _said("Changed:", book.edit(_full_id(book, args.id), args.text))
    elif command == "forget":
        if args.everything:
            book.forget_everything()
            print("Cleo forgot every memory and their history.")
        elif args.id:
            book.forget(_full_id(book, args.id))
            print("Forgotten.")
        else:
            raise KnownError("Say which memory to forget.",
                             hint="Give its id (see `cleo memory list`) or --everything.")
    elif command == "pin":
        _said("Unpinned:" if args.off else "Pinned:", book.pin(_full_id(book, args.id), not args.off))
    elif command == "approve":
        _said("Remembered:", book.approve(_full_id(book, args.id)))
    elif command == "reject":
        book.reject(_full_id(book, args.id))
        print("Turned down.")
    elif command == "search":
        _search(args, memories)
    return 0


def _search(args: argparse.Namespace, memories: Profile) -> None:
    if args.queries is not None:
        try:
            queries = [q.strip() for q in args.queries.read_text(encoding="utf-8").splitlines() if q.strip()]
        except OSError as exc:
            raise KnownError(f"Cannot read the queries file {args.queries} ({exc.strerror}).") from exc
    elif args.query:
        queries = [args.query]
    else:
        raise KnownError("Give a query, or --queries FILE.", hint='e.g. cleo memory search "where do I live"')
    for query in queries:
        items = memories.recall.search(query, k=args.k, mode=args.mode)
        if args.json:
            print(json_text({"query": query, "results": [asdict(i) for i in items]}), flush=True)
            continue
        for item in items:
            print(printable(f"{item.score:.4f}  {_date(item.created_at)}  {item.kind:<7} {item.text[:100]}"))


def _full_id(book: MemoryBook, prefix: str) -> str:
    """Memory ids may be given by their first characters, as `cleo memory list` shows them; the
    prefix is compared literally (see `MemoryBook.ids_starting_with`)."""
    ids = book.ids_starting_with(prefix) if prefix else []
    if len(ids) != 1:
        raise KnownError(f"{'No' if not ids else 'More than one'} memory has an id starting with {prefix!r}.",
                         hint="See the ids with `cleo memory list`.")
    return ids[0]


def _said(prefix: str, memory: Memory) -> None:
    print(printable(f"{prefix} {memory.content} ({memory.id[:8]})"))


def _date(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(timestamp))
