"""`cleo serve`: the local API without the window, on this terminal until Ctrl+C.

The Session is opened here, on the main thread, which then writes every queued request's turn
(`Session.serve`); the HTTP server runs on a thread of its own and only queues work.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path
from typing import Any

from engine.cli.terminal_text import printable
from engine.settings import API_TOKEN_VARIABLE, Settings


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("a port is a number from 1 to 65535 (0 picks a free one)")
    return port


def add_commands(commands: Any) -> None:
    serve = commands.add_parser("serve", help="serve the local OpenAI-compatible API until Ctrl+C")
    serve.add_argument("--port", type=_port, help="the port (default: the setting api_port; 0 picks a free one)")
    serve.add_argument("--model", type=Path, help="a GGUF chat model (default: the one in the settings)")
    serve.add_argument("--parallel", type=_parallel,
                       help="requests written at the same time, 1-16 (default: the setting api_parallel)")


def _parallel(text: str) -> int:
    count = int(text)
    if not 1 <= count <= 16:
        raise argparse.ArgumentTypeError("from 1 to 16 requests at the same time")
    return count


def run(args: argparse.Namespace, settings: Settings) -> int:
    # Here, not at the top: the other commands need no HTTP server loaded.
    from engine.api.server import LocalApi
    from engine.api.token import token_file
    from engine.session import open_session

    # Served whatever the window's setting says, so the model gets the API's sequences.
    settings = settings.updated(api_enabled=True, api_parallel=args.parallel or settings.api_parallel)
    session = open_session(settings, model_path=args.model)
    finished = threading.Event()
    previous = {number: signal.signal(number, lambda _signal, _frame: finished.set())
                for number in (signal.SIGINT, signal.SIGTERM)}
    api = LocalApi(session, settings, port=args.port)
    try:
        api.start()
        model = session.model_state()
        where = (f"the variable {API_TOKEN_VARIABLE}" if os.environ.get(API_TOKEN_VARIABLE, "").strip()
                 else f"the file {token_file()}")
        print(printable(f"Cleo's local API serves {model.name} at {api.url}"), flush=True)
        print(printable(f"Send the token in {where} as 'Authorization: Bearer TOKEN'. Ctrl+C stops."), flush=True)
        session.serve(finished)
        print("Stopped.", flush=True)
        return 0
    finally:
        api.stop()
        session.close()
        for number, handler in previous.items():
            signal.signal(number, handler)
