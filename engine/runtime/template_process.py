"""Chat templates rendered in a process of their own, so no template can hang Cleo or exhaust its memory.

One render process per Cleo process, started on first use and kept for every render after: a
prompt render costs a round trip through a pipe, not a process start. The process is a fresh
interpreter that imports only jinja2 and the sandbox (`template_sandbox`), never llama.cpp, Qt,
torch or the program that started it, and compiles each template once. What holds where:

- every OS: a compile or render that has not answered within its deadline (`RENDER_SECONDS`) is
  stopped by killing the process, and a fresh one starts at once for the next render;
- Linux: the process's address space is capped at its size after start plus `MEMORY_BYTES`, so a
  template that allocates more gets MemoryError, reported like any other failure;
- macOS and Windows (which ignore or lack that cap): memory is bounded by the sandbox's size
  guards and the deadline, not by the operating system.

Requests go down as length-prefixed pickles (from Cleo, trusted); replies come back as a tag and
UTF-8 text, never a pickle, at most `MAX_REPLY_BYTES`: nothing a template shapes is unpickled in
Cleo. A reader thread per process turns the pipe into a queue, so waiting with a deadline works
the same on every OS. A frozen app starts itself with `FROZEN_FLAG` and must hand that over to
`serve_if_asked()` first thing.
"""

from __future__ import annotations

import atexit
import json
import pickle
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from engine.runtime import template_sandbox

RENDER_SECONDS = 1.0  # a prompt renders in milliseconds; a restart, the kill and the report fit in the rest of 2 s
MEMORY_BYTES = 256 * 2**20
START_SECONDS = 60.0  # a cold start on a slow, busy machine; not the template's time
MAX_REPLY_BYTES = 4 * template_sandbox.MAX_TEXT + 16  # the longest prompt, in UTF-8
FROZEN_FLAG = "--cleo-chat-templates"
_KEEP_COMPILED = 16  # templates compiled in the process (a few models are in use at a time)
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
         "from engine.runtime.template_process import serve; serve(int(sys.argv[2]))")


class RenderFailed(Exception):
    """A template failed in the render process: `kind` says how (see `_answer`), `detail` what it said."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def _write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(len(payload).to_bytes(4, "little") + payload)
    stream.flush()


def _read_frame(stream: IO[bytes], most: int) -> bytes | None:
    """The next frame, or None at the end of the stream or when it announces more than `most` bytes."""
    header = stream.read(4)
    if len(header) < 4:
        return None
    size = int.from_bytes(header, "little")
    if size > most:
        return None
    payload = stream.read(size)
    return payload if len(payload) == size else None


# --- the render process -------------------------------------------------------------------------------


def _limit_memory(extra_bytes: int) -> None:
    """On Linux, cap this process's address space at its present size plus `extra_bytes`."""
    if not sys.platform.startswith("linux"):
        return
    import os
    import resource

    with open("/proc/self/statm", encoding="ascii") as statm:
        size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = size + extra_bytes if hard == resource.RLIM_INFINITY else min(hard, size + extra_bytes)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _error(kind: str, detail: str) -> bytes:
    return b"E" + json.dumps({"kind": kind, "detail": detail[:400]}).encode("utf-8")


def _answer(templates: dict[str, Any], request: tuple[Any, ...]) -> bytes:
    """The reply to one request: b"T" and the text, or b"E" and the kind of failure and its words."""
    action, source = request[0], request[1]
    try:
        template = templates.get(source)
        if template is None:
            try:
                template = template_sandbox.compile_template(source)
            except MemoryError:
                raise
            except Exception as exc:  # syntax errors, and whatever else a stranger's template raises compiling
                return _error("compile", str(exc) or type(exc).__name__)
            if len(templates) >= _KEEP_COMPILED:
                del templates[next(iter(templates))]
            templates[source] = template
        if action == "compile":
            return b"T"
        messages, add_generation_prompt, bos_token, eos_token = request[2:]
        text = template_sandbox.render(template, messages, add_generation_prompt=add_generation_prompt,
                                       bos_token=bos_token, eos_token=eos_token)
        return b"T" + text.encode("utf-8", "surrogatepass")
    except MemoryError:
        return _error("memory", "")
    except template_sandbox.TemplateTooCostly as exc:
        return _error("limit", str(exc))
    except template_sandbox.jinja2.exceptions.SecurityError as exc:
        return _error("unsafe", str(exc))
    except Exception as exc:  # the template's own failures (raise_exception, a missing key, a recursion)
        return _error("failed", f"{type(exc).__name__}: {exc}")


def serve(memory_bytes: int) -> None:
    """The render process: answer requests on stdin until Cleo closes it."""
    import os

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in a terminal is for Cleo, which ends this process
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing printed can corrupt a reply
    requests = sys.stdin.buffer
    _limit_memory(memory_bytes)
    templates: dict[str, Any] = {}
    _write_frame(replies, b"R")
    while (frame := _read_frame(requests, 2**40)) is not None:
        _write_frame(replies, _answer(templates, pickle.loads(frame)))


def serve_if_asked() -> None:
    """In a frozen app, where the render process is the app started again: serve, then exit."""
    if sys.argv[1:2] == [FROZEN_FLAG]:
        serve(int(sys.argv[2]))
        sys.exit(0)


# --- Cleo's side --------------------------------------------------------------------------------------


def _command(memory_bytes: int) -> list[str]:
    if getattr(sys, "frozen", False):
        return [sys.executable, FROZEN_FLAG, str(memory_bytes)]
    # -I: no PYTHON* variables, no user site, no current folder: the interpreter and Cleo's code only.
    return [sys.executable, "-I", "-c", _BOOT, str(Path(__file__).resolve().parents[2]), str(memory_bytes)]


def _read_replies(stream: IO[bytes], replies: queue.Queue[bytes | None]) -> None:
    try:
        while (frame := _read_frame(stream, MAX_REPLY_BYTES)) is not None:
            replies.put(frame)
    except (OSError, ValueError):  # the pipe broke
        pass
    finally:
        replies.put(None)  # the process ended, or sent more than a prompt can be
        stream.close()


class TemplateProcess:
    """The render process, seen from Cleo: one request at a time, each with a deadline."""

    def __init__(self, memory_bytes: int = MEMORY_BYTES) -> None:
        self._memory_bytes = memory_bytes
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._replies: queue.Queue[bytes | None] = queue.Queue()
        self._ready = False

    @property
    def pid(self) -> int | None:
        """The render process's id (for tests and logs); None before the first render."""
        return None if self._process is None else self._process.pid

    def request(self, request: tuple[Any, ...], seconds: float) -> str:
        """Send `request` and return the text that comes back; raises `RenderFailed`."""
        with self._lock:
            process = self._wait_until_ready()
            assert process.stdin is not None
            try:
                _write_frame(process.stdin, pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL))
                reply = self._replies.get(timeout=max(seconds, 0.001))
            except queue.Empty:
                self._restart()
                raise RenderFailed("time", f"{seconds:.1f} s") from None
            except OSError as exc:  # the process died between two requests
                code = self._restart()
                raise RenderFailed("crashed", f"exit code {code}") from exc
            if reply is None:
                code = self._restart()
                raise RenderFailed("crashed", f"exit code {code}")
            if reply[:1] == b"T":
                return reply[1:].decode("utf-8", "surrogatepass")
            failure = json.loads(reply[1:])
            if failure["kind"] == "memory":
                self._restart()  # what a MemoryError left half-built is not worth keeping
        raise RenderFailed(str(failure["kind"]), str(failure["detail"]))

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _wait_until_ready(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            self._start()
        assert self._process is not None
        if not self._ready:
            try:
                ready = self._replies.get(timeout=START_SECONDS) == b"R"
            except queue.Empty:
                ready = False
            if not ready:
                code = self._stop()
                raise RuntimeError(f"The process that renders chat templates did not start within "
                                   f"{START_SECONDS:.0f} s (exit code {code}; command {_command(0)[:3]}).")
            self._ready = True
        return self._process

    def _start(self) -> None:
        hidden = 0
        if sys.platform == "win32":
            hidden = subprocess.CREATE_NO_WINDOW  # no console window flashing up
        errors = None if sys.stderr is not None else subprocess.DEVNULL  # a windowed app has no stderr to share
        process = subprocess.Popen(_command(self._memory_bytes), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=errors, creationflags=hidden)
        self._replies = queue.Queue()
        threading.Thread(target=_read_replies, args=(process.stdout, self._replies), name="chat-template-replies",
                         daemon=True).start()
        self._process, self._ready = process, False

    def _stop(self) -> int | None:
        """End the process (killed: it may be in a loop that never returns); its exit code."""
        process, self._process, self._ready = self._process, None, False
        if process is None:
            return None
        process.kill()
        code = process.wait()
        try:
            if process.stdin is not None:
                process.stdin.close()  # its stdout is the reader thread's to close
        except OSError:  # a request was half written when it died
            pass
        return code

    def _restart(self) -> int | None:
        """Stop the process and start the next one now, so it is warm by the next render."""
        code = self._stop()
        self._start()
        return code


_shared: TemplateProcess | None = None
_shared_lock = threading.Lock()


def shared() -> TemplateProcess:
    """The render process every chat template of this Cleo process uses."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = TemplateProcess()
            atexit.register(_shared.close)
        return _shared
