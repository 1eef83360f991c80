"""Cleo's terminal commands (`cleo chat`, ...), usable without Qt.

`cleo chat` talks to the chat model in the terminal; `cleo chat --once "..."` answers one
message and exits, which is what scripts and the setup check use. Known errors are printed
as one plain message; anything else is logged with its traceback and summarised.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path

from engine import model_commands
from engine.errors import KnownError, ModelMissing
from engine.llama_backend import ChatModel, Sampling, default_threads
from engine.logs import setup_logging
from engine.paths import default_chat_model, folders
from engine.settings import Settings, load_settings

log = logging.getLogger(__name__)

# Exit statuses: 2 means the user or their machine must act, 1 means Cleo has a bug.
EXIT_KNOWN_ERROR = 2
EXIT_BUG = 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cleo", description="Cleo, a private assistant on your computer.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chat = commands.add_parser("chat", help="chat with Cleo in the terminal")
    chat.add_argument("--once", metavar="MESSAGE", help="answer MESSAGE, print the reply and exit")
    chat.add_argument("--model", type=Path, help="a GGUF chat model (default: Cleo's default model)")
    models = commands.add_parser("models", help="list models or describe one (without loading it)")
    models_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = models_commands.add_parser("list", help="the models Cleo can use, and unusable .gguf files")
    listing.add_argument("--json", action="store_true", help="print JSON instead of text")
    info = models_commands.add_parser("info", help="what a GGUF file holds")
    info.add_argument("path", type=Path)
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    try:
        setup_logging()
        settings, warnings = load_settings()
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if args.command == "models":
            return model_commands.run(args.models_command, path=getattr(args, "path", None), as_json=args.json)
        return run_chat(settings, model_path=args.model, once=args.once)
    except KnownError as exc:
        print(f"cleo: {exc.user_text()}", file=sys.stderr)
        return EXIT_KNOWN_ERROR
    except Exception:
        log.exception("cleo %s failed", args.command)
        print(f"cleo: something went wrong inside Cleo; the details are in {folders().logs}", file=sys.stderr)
        return EXIT_BUG


def run_chat(settings: Settings, *, model_path: Path | None, once: str | None) -> int:
    default = default_chat_model()
    path = model_path or (Path(settings.chat_model) if settings.chat_model else default)
    if path == default and not path.exists():
        raise ModelMissing(f"Cleo's default model {path} does not exist.",
                           hint="Build it with `python -m training.defaults` (or `make run`), or choose a model "
                                "with --model PATH.")
    model = ChatModel(path, context_size=settings.context_size, threads=settings.threads or default_threads())
    sampling = Sampling(
        temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k,
        min_p=settings.min_p, repeat_penalty=settings.repeat_penalty,
        max_tokens=settings.max_tokens, seed=settings.seed,
    )
    conversation = [{"role": "system", "content": settings.system_prompt}]
    if once is not None:
        _reply(model, conversation, once, sampling)
        return 0
    print(f"Chatting with {model.metadata.get('general.name', path.name)}. Ctrl+C stops a reply; "
          "Ctrl+D or /quit leaves.")
    while True:
        try:
            text = input("\nyou> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if text == "/quit":
            return 0
        if text:
            _reply(model, conversation, text, sampling)


def _reply(model: ChatModel, conversation: list[dict[str, str]], text: str, sampling: Sampling) -> None:
    conversation.append({"role": "user", "content": text})
    stop = threading.Event()
    parts: list[str] = []
    try:
        for piece in model.stream_chat(_fitting(model, conversation, sampling), sampling, stop):
            parts.append(piece)
            print(piece, end="", flush=True)
    except KeyboardInterrupt:
        stop.set()
        print(" [stopped]", end="")
    print()
    conversation.append({"role": "assistant", "content": "".join(parts)})


def _fitting(model: ChatModel, conversation: list[dict[str, str]], sampling: Sampling) -> list[dict[str, str]]:
    """The system prompt and as many of the newest turns as leave room for a full reply."""
    budget = model.context_size - sampling.max_tokens
    system, turns = conversation[0], conversation[1:]
    while len(turns) > 1 and model.count_chat_tokens([system, *turns]) > budget:
        turns = turns[1:]
    return [system, *turns]
