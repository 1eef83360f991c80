"""`cleo import` and `cleo export`: conversations in from ChatGPT or a Cleo export, out as Markdown or JSON.

    cleo import chatgpt FILE          conversations.json (or the .zip) of a ChatGPT data export
    cleo import cleo FILE             a file written by `cleo export --format json` or `--all`
    cleo export CONVERSATION_ID [--format markdown|json] [--output FILE]
    cleo export --all [--output FILE] every conversation but temporary chats, as JSON

Without --output an export goes to standard output, so it can be piped; the summary then goes to
standard error. `engine.cli.main` registers the commands with `add_commands` and hands them to `run`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from engine.errors import KnownError
from engine.profile import Profile, open_profile

COMMANDS = ("import", "export")


def add_commands(subparsers: Any) -> None:
    """Add `import` and `export` to `subparsers` (what `ArgumentParser.add_subparsers` returned)."""
    importing = subparsers.add_parser("import", help="import conversations from ChatGPT or a Cleo export")
    importing.add_argument("source", choices=("chatgpt", "cleo"), metavar="SOURCE",
                           help="chatgpt (a ChatGPT data export) or cleo (a file from `cleo export`)")
    importing.add_argument("file", type=Path, metavar="FILE")
    exporting = subparsers.add_parser("export", help="export a conversation, or all of them, to a file")
    exporting.add_argument("conversation_id", nargs="?", metavar="CONVERSATION_ID", help="the conversation to export")
    exporting.add_argument("--all", action="store_true", help="every conversation except temporary chats (JSON)")
    exporting.add_argument("--format", choices=("markdown", "json"), default=None,
                           help="markdown (the current branch; the default) or json (every branch, re-importable)")
    exporting.add_argument("--output", type=Path, metavar="FILE", help="write to FILE instead of standard output")


def run(args: argparse.Namespace) -> int:
    """Run `cleo import` or `cleo export` on the profile's database; known errors propagate."""
    profile = open_profile(keywords_only=True)
    try:
        if args.command == "import":
            report = profile.import_chats(args.source, args.file)
            print(f"Imported {args.file}: {report.summary()}.")
            return 0
        return _export(profile, args)
    finally:
        profile.close()


def _export(profile: Profile, args: argparse.Namespace) -> int:
    if args.all == (args.conversation_id is not None):
        raise KnownError("Say what to export: a conversation id, or --all.",
                         hint="For example `cleo export --all --output cleo-backup.json`.")
    if args.all and args.format == "markdown":
        raise KnownError("`cleo export --all` writes JSON only.",
                         hint="Export one conversation at a time as Markdown, or leave out --format.")
    if args.all:
        document = profile.export_everything()
        text, what = _json_text(document), f"{len(document['conversations'])} conversation(s)"
    else:
        exported = profile.export_chat(args.conversation_id, args.format or "markdown")
        text = exported if isinstance(exported, str) else _json_text(exported)
        what = f"conversation {args.conversation_id}"
    _write(text, args.output)
    print(f"Exported {what} to {args.output or 'standard output'}.", file=sys.stderr if args.output is None else None)
    return 0


def _json_text(document: dict[str, Any]) -> str:
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def _write(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise KnownError(f"Cleo cannot write {output} ({exc.strerror or exc}).",
                         hint="Choose a folder that exists and that you can write to.") from exc
