"""Cleo's terminal commands (`cleo chat`, ...), usable without Qt.

`cleo chat` talks to the chat model in the terminal (Ctrl+C stops a reply, not the program);
`cleo chat --once "..." [--json]` answers one message and exits, which is what scripts use. Known errors are printed
as one plain message; anything else is logged with its traceback and summarised. Text that came from the model,
a memory or a file is printed through `terminal_text`, so it cannot send the terminal control sequences.
"""

from __future__ import annotations

import argparse
import io
import logging
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.chat.requests import TurnTicket
from engine.cli import devices_command, memory_commands, model_commands, serve_command, transfer_commands
from engine.cli.terminal_text import json_text, printable
from engine.cli.typed_lines import TypedLines
from engine.errors import InternalError, KnownError
from engine.events import Done, Failed, MemoryUpdated, Notice, Recalled, RecalledItem, Token, Usage
from engine.logs import setup_logging
from engine.paths import folders
from engine.session import Session, open_session
from engine.settings import Settings, load_settings
from engine.views import ModelState

log = logging.getLogger(__name__)

# Exit statuses: 2 means the user or their machine must act, 1 means Cleo has a bug.
EXIT_KNOWN_ERROR = 2
EXIT_BUG = 1
FRONTEND = "terminal"  # this frontend's name in the Session's queue of turns


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cleo", description="Cleo, a private assistant on your computer.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chat = commands.add_parser("chat", help="chat with Cleo in the terminal")
    chat.add_argument("--once", metavar="MESSAGE", help="answer MESSAGE, print the reply and exit")
    chat.add_argument("--model", type=Path, help="a GGUF chat model (default: Cleo's default model)")
    chat.add_argument("--json", action="store_true", help="with --once: print the reply, usage and notices as JSON")
    models = commands.add_parser("models", help="list models or describe one (without loading it)")
    models_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = models_commands.add_parser("list", help="the models Cleo can use, and unusable .gguf files")
    listing.add_argument("--json", action="store_true", help="print JSON instead of text")
    info = models_commands.add_parser("info", help="what a GGUF file holds")
    info.add_argument("path", type=Path)
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    model_commands.add_hub_actions(models_commands)
    memory_commands.add_commands(commands)
    transfer_commands.add_commands(commands)
    serve_command.add_commands(commands)
    devices_command.add_commands(commands)
    args = parser.parse_args(argv)
    _output_that_cannot_fail()
    try:
        setup_logging()
        settings, warnings = load_settings()
        for warning in warnings:
            print(printable(f"warning: {warning}"), file=sys.stderr)
        if args.command in ("memory", "search", "database"):
            return memory_commands.run(args)
        if args.command in transfer_commands.COMMANDS:
            return transfer_commands.run(args)
        if args.command == "serve":
            return serve_command.run(args, settings)
        if args.command == "devices":
            return devices_command.run(args)
        if args.command == "models":
            if args.models_command in model_commands.HUB_ACTIONS:
                return model_commands.run_hub(args, settings)
            return model_commands.run(args.models_command, path=getattr(args, "path", None), as_json=args.json)
        return run_chat(settings, model_path=args.model, once=args.once, as_json=args.json)
    except KnownError as exc:  # its message may quote a file's metadata or a chat template
        print(printable(f"cleo: {exc.user_text()}"), file=sys.stderr)
        return EXIT_KNOWN_ERROR
    except Exception:
        log.exception("cleo %s failed", args.command)
        print(f"cleo: something went wrong inside Cleo; the details are in {folders().logs}", file=sys.stderr)
        return EXIT_BUG


def run_chat(settings: Settings, *, model_path: Path | None, once: str | None, as_json: bool) -> int:
    session = open_session(settings, model_path=model_path)
    try:
        model = session.model_state()
        conversation = session.new_chat()
        if once is not None:
            reply = _reply(session, session.send(conversation, once, frontend=FRONTEND), live=not as_json)
            if as_json:
                print(json_text({**reply.as_json(model), "placement": _placement(session)}))
            if isinstance(reply.error, InternalError):  # a bug, already logged with its traceback
                print(printable(f"cleo: {reply.error.user_text()}"), file=sys.stderr)
                return EXIT_BUG
            if reply.error is not None:
                raise reply.error
            return 0
        print(printable(f"Chatting with {model.name} on the {model.device}. Ctrl+C stops a reply; Ctrl+D or /quit "
                        "leaves."))
        typed = TypedLines()
        while True:
            try:
                text = _next_line(session, typed)
            except (EOFError, KeyboardInterrupt):
                print()
                text = "/quit"
            if text == "/quit":
                _learn_before_leaving(session, conversation)
                return 0
            if text:
                reply = _reply(session, session.send(conversation, text, frontend=FRONTEND), live=True)
                if reply.error is not None:
                    print(printable(f"cleo: {reply.error.user_text()}"), file=sys.stderr)
    finally:
        session.close()


def _placement(session: Session) -> dict[str, object] | None:
    """Where the chat model's layers and experts run and why; None for a model that does not say."""
    placement = getattr(session.assistant.model, "placement", None)
    return placement.as_json() if placement is not None else None


def _output_that_cannot_fail() -> None:
    """Output to a pipe or file is UTF-8, as JSON requires: Windows would otherwise use its legacy
    code page there and stop at the first emoji a model writes. A terminal keeps its encoding,
    and a character it cannot show becomes "?" rather than an error."""
    for stream in (sys.stdout, sys.stderr):
        if not isinstance(stream, io.TextIOWrapper):
            continue
        if stream.isatty():
            stream.reconfigure(errors="replace")
        elif stream.encoding.lower().replace("-", "") != "utf8":
            stream.reconfigure(encoding="utf-8")


def _next_line(session: Session, typed: TypedLines) -> str:
    """The user's next line. Until they send it, Cleo learns from the chat so far one model call
    at a time, so their next reply waits for one call at most (as in the window); what it learned
    is shown once the line is sent, not in the middle of their typing."""
    print("\nyou> ", end="", flush=True)
    learned: list[MemoryUpdated] = []
    try:
        while session.learning_pending and not typed.waiting():
            learned += session.learn_step()
        return typed.read().strip()
    finally:
        for update in learned:
            _print_memory_update(update)


def _learn_before_leaving(session: Session, conversation: str) -> None:
    """Summarise the chat for episodic memory; a second Ctrl+C skips it."""
    session.leave_chat(conversation)
    try:
        while session.learning_pending:
            for update in session.learn_step():
                _print_memory_update(update)
    except KeyboardInterrupt:
        pass


def _print_memory_update(update: MemoryUpdated) -> None:
    print(printable(f"[memory {update.action}: {update.text}]"), file=sys.stderr)


@dataclass
class _Reply:
    text: str = ""
    finish_reason: str = ""
    usage: Usage | None = None
    notices: list[Notice] = field(default_factory=list)
    recalled: list[RecalledItem] = field(default_factory=list)
    memory_updates: list[MemoryUpdated] = field(default_factory=list)
    error: KnownError | InternalError | None = None

    def as_json(self, model: ModelState) -> dict[str, object]:
        return {
            "reply": self.text, "finish_reason": self.finish_reason, "model": model.name, "device": model.device,
            "usage": asdict(self.usage) if self.usage else None,
            "notices": [asdict(n) for n in self.notices],
            "recalled": [asdict(i) for i in self.recalled],
            "memory_updates": [asdict(u) for u in self.memory_updates],
            "error": self.error.user_text() if self.error else None,
        }


def _reply(session: Session, ticket: TurnTicket, *, live: bool) -> _Reply:
    """Write one turn and consume its events; Ctrl+C meanwhile stops the reply instead of the program."""
    reply = _Reply()
    parts: list[str] = []
    previous = signal.signal(signal.SIGINT, lambda _signal, _frame: ticket.stop())
    try:
        for event in session.run(ticket):
            if isinstance(event, Token):
                parts.append(event.text)
                if live:
                    print(printable(event.text), end="", flush=True)
            elif isinstance(event, Notice):
                reply.notices.append(event)
                if live:
                    print(printable(f"[{event.text}]"), file=sys.stderr)
            elif isinstance(event, Recalled):
                reply.recalled.extend(event.items)
            elif isinstance(event, MemoryUpdated):
                reply.memory_updates.append(event)
                if live:
                    _print_memory_update(event)
            elif isinstance(event, Usage):
                reply.usage = event
            elif isinstance(event, Done):
                reply.finish_reason = event.finish_reason
            elif isinstance(event, Failed):
                reply.error = event.error
    finally:
        signal.signal(signal.SIGINT, previous)
    if live:
        print(" [stopped]" if reply.finish_reason == "stopped" else "")
    reply.text = "".join(parts)
    return reply
