"""`cleo import` and `cleo export`: conversations in from ChatGPT or a Cleo export, out as Markdown or JSON.

    cleo import chatgpt FILE          conversations.json (or the .zip) of a ChatGPT data export
    cleo import cleo FILE             a file written by `cleo export --format json` or `--all`
    cleo export CONVERSATION_ID [--format markdown|json] [--output FILE]
    cleo export --all [--output FILE] every conversation but temporary chats, as JSON

Without --output an export goes to standard output, so it can be piped; the summary then goes to
standard error. With --output the file is private (0600) and replaced whole, or left as it was.
`engine.cli.main` registers the commands with `add_commands` and hands them to `run`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.cli.terminal_text import json_text, printable
from engine.errors import KnownError
from engine.profile import Profile, open_profile
from engine.transfer import write_export

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
            print(printable(f"Imported {args.file}: {report.summary()}."))
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
    exported: str | dict[str, Any]
    if args.all:
        exported = profile.export_everything()
        what = f"{len(exported['conversations'])} conversation(s)"
    else:
        exported = profile.export_chat(args.conversation_id, args.format or "markdown")
        what = f"conversation {args.conversation_id}"
    if args.output is None:
        text = exported if isinstance(exported, str) else _json_text(exported)
        # A terminal would obey control characters in a chat's text; a pipe gets the exact text.
        sys.stdout.write(printable(text) if sys.stdout.isatty() else text)
    else:
        write_export(args.output, exported)  # private, and all or nothing: a failure keeps the old file
    print(printable(f"Exported {what} to {args.output or 'standard output'}."),
          file=sys.stderr if args.output is None else None)
    return 0


def _json_text(document: dict[str, Any]) -> str:
    return json_text(document, indent=2) + "\n"

