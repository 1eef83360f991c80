"""Chat templates rendered in a process of their own, so no template can hang Cleo or exhaust its memory.

The render process is a fresh interpreter that imports only jinja2 and the sandbox
(`template_sandbox`), never llama.cpp, Qt, torch or the program that started it, and compiles each
template once. It is started on first use and kept for every render after: a prompt render costs a
round trip through a pipe, not a process start. A second, spare process is started once the first
is ready and waits idle, so a render that must be stopped is followed at once by a warm process,
not by an interpreter start (seconds on a busy machine). What holds where:

- every OS: a compile or render that has not answered within its deadline (`RENDER_SECONDS`) is
  stopped by killing the process, and the spare takes over for the next render;
- every OS: a process that works on one request for `WATCHDOG_SECONDS` ends itself: by then Cleo
  would have killed it, so Cleo has died (a process stuck in a loop never reads the end of its
  input, which is how an idle one learns that Cleo is gone);
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
import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import jinja2
import markupsafe

from engine.errors import KnownError
from engine.runtime import template_sandbox

log = logging.getLogger(__name__)

# A prompt renders in about a millisecond (a long chat with tools in a few); what is left of the 2 s
# a user may wait goes to stopping the process and reporting it, with room for a machine twice as
# slow and busy.
RENDER_SECONDS = 0.5
WATCHDOG_SECONDS = 4 * RENDER_SECONDS  # well past Cleo's own deadline, so Cleo's clear error comes first
MEMORY_BYTES = 256 * 2**20
START_SECONDS = 60.0  # a cold start on a slow, busy machine; not the template's time
MAX_REPLY_BYTES = 4 * template_sandbox.MAX_TEXT + 16  # the longest prompt, in UTF-8
FROZEN_FLAG = "--cleo-chat-templates"
OVERRAN = 70  # the exit code of a render process its watchdog ended
_KEEP_COMPILED = 16  # templates compiled in the process (a few models are in use at a time)
# -I leaves out the user's site-packages, where jinja2 may be installed (pip --user): the folders
# jinja2 and markupsafe came from are passed after the memory limit and the watchdog's seconds.
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); sys.path += sys.argv[4:]; "
         "from engine.runtime.template_process import serve; serve(int(sys.argv[2]), float(sys.argv[3]))")
_WARM_UP = "{% for m in messages %}{{ m.role }}: {{ m.content|trim }}{% endfor %}"


class RenderFailed(Exception):
    """A template failed in the render process: `kind` says how (see `_answer`), `detail` what it said."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class RenderProcessUnavailable(KnownError):
    """The process that renders chat templates could not be started: Cleo's installation, not a model."""


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
    import resource

    with open("/proc/self/statm", encoding="ascii") as statm:
        size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = size + extra_bytes if hard == resource.RLIM_INFINITY else min(hard, size + extra_bytes)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


class _Watchdog:
    """Ends this process when one request has run `seconds`. A thread, so it works on every OS; it
    waits on a condition, so an idle process is not woken up."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._changed = threading.Condition()
        self._request = 0
        self._busy = False
        threading.Thread(target=self._watch, name="chat-template-watchdog", daemon=True).start()

    def begin(self) -> None:
        with self._changed:
            self._request += 1
            self._busy = True
            self._changed.notify()

    def end(self) -> None:
        with self._changed:
            self._busy = False
            self._changed.notify()

    def _watch(self) -> None:
        with self._changed:
            while True:
                self._changed.wait_for(lambda: self._busy)
                if not self._changed.wait_for(self._finished(self._request), self._seconds):
                    os._exit(OVERRAN)  # no cleanup to wait for: the main thread may never let go

    def _finished(self, request: int) -> Callable[[], bool]:
        return lambda: not self._busy or self._request != request


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
        messages, add_generation_prompt, bos_token, eos_token, tools = request[2:]
        text = template_sandbox.render(template, messages, add_generation_prompt=add_generation_prompt,
                                       bos_token=bos_token, eos_token=eos_token, tools=tools)
        return b"T" + text.encode("utf-8", "surrogatepass")
    except MemoryError:
        return _error("memory", "")
    except template_sandbox.TemplateTooCostly as exc:
        return _error("limit", str(exc))
    except template_sandbox.jinja2.exceptions.SecurityError as exc:
        return _error("unsafe", str(exc))
    except Exception as exc:  # the template's own failures (raise_exception, a missing key, a recursion)
        return _error("failed", f"{type(exc).__name__}: {exc}")


def serve(memory_bytes: int, watchdog_seconds: float = WATCHDOG_SECONDS) -> None:
    """The render process: answer requests on stdin until Cleo closes it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in a terminal is for Cleo, which ends this process
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing printed can corrupt a reply
    requests = sys.stdin.buffer
    watchdog = _Watchdog(watchdog_seconds)  # before the cap: its thread's stack counts as size at start
    templates: dict[str, Any] = {}
    _answer({}, ("render", _WARM_UP, [{"role": "user", "content": " "}], True, "", "", None))  # lazy imports now
    _limit_memory(memory_bytes)
    _write_frame(replies, b"R")
    while (frame := _read_frame(requests, 2**40)) is not None:
        watchdog.begin()
        reply = _answer(templates, pickle.loads(frame))
        watchdog.end()
        _write_frame(replies, reply)


def serve_if_asked() -> None:
    """In a frozen app, where the render process is the app started again: serve, then exit."""
    if sys.argv[1:2] == [FROZEN_FLAG]:
        serve(int(sys.argv[2]), float(sys.argv[3]))
        sys.exit(0)


# --- Cleo's side --------------------------------------------------------------------------------------


def _command(memory_bytes: int, watchdog_seconds: float) -> list[str]:
    limits = [str(memory_bytes), repr(watchdog_seconds)]
    if getattr(sys, "frozen", False):
        return [sys.executable, FROZEN_FLAG, *limits]
    root = Path(__file__).resolve().parents[2]
    libraries = {str(Path(module.__file__ or "").resolve().parents[1]) for module in (jinja2, markupsafe)}
    # -I: no PYTHON* variables, no user site, no current folder: the interpreter, Cleo's code and jinja2 only.
    return [sys.executable, "-I", "-c", _BOOT, str(root), *limits, *sorted(libraries - {str(root)})]


def _read_replies(stream: IO[bytes], replies: queue.Queue[bytes | None]) -> None:
    try:
        while (frame := _read_frame(stream, MAX_REPLY_BYTES)) is not None:
            replies.put(frame)
    except (OSError, ValueError):  # the pipe broke
        pass
    finally:
        replies.put(None)  # the process ended, or sent more than a prompt can be
        stream.close()


class _Renderer:
    """One render process, and the queue its replies arrive on."""

    def __init__(self, command: list[str]) -> None:
        hidden = 0
        if sys.platform == "win32":
            hidden = subprocess.CREATE_NO_WINDOW  # no console window flashing up
        errors = None if sys.stderr is not None else subprocess.DEVNULL  # a windowed app has no stderr to share
        try:
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
                                            creationflags=hidden)
        except (OSError, ValueError) as exc:  # no interpreter there, no processes left, no pipes left
            raise RenderProcessUnavailable(
                f"Cleo could not start the process that renders chat templates ({type(exc).__name__}: {exc}).",
                hint=_REINSTALL) from exc
        self.replies: queue.Queue[bytes | None] = queue.Queue()
        self.ready = False
        threading.Thread(target=_read_replies, args=(self.process.stdout, self.replies), name="chat-template-replies",
                         daemon=True).start()

    def wait_until_ready(self) -> None:
        if self.ready:
            return
        try:
            self.ready = self.replies.get(timeout=START_SECONDS) == b"R"
            why = "it ended before it was ready, with exit code {}"
        except queue.Empty:
            why = f"it was not ready within {START_SECONDS:.0f} s"
        if not self.ready:
            code = self.stop()
            raise RenderProcessUnavailable(
                f"Cleo could not start the process that renders chat templates ({why.format(code)}).", hint=_REINSTALL)

    def stop(self) -> int | None:
        """End the process (killed: it may be in a loop that never returns); its exit code."""
        self.process.kill()
        code = self.process.wait()
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()  # its stdout is the reader thread's to close
        except OSError:  # a request was half written when it died
            pass
        return code


_REINSTALL = ("Cleo's installation may be incomplete: install it again. Started from a terminal, Cleo "
              "shows there why the process failed.")


class TemplateProcess:
    """The render process, seen from Cleo: one request at a time, each with a deadline, and a warm
    spare ready to take over from a process that had to be stopped."""

    def __init__(self, memory_bytes: int = MEMORY_BYTES, watchdog_seconds: float = WATCHDOG_SECONDS) -> None:
        self._command = _command(memory_bytes, watchdog_seconds)
        self._lock = threading.Lock()
        self._active: _Renderer | None = None
        self._spare: _Renderer | None = None

    @property
    def pid(self) -> int | None:
        """The id of the process that renders next (for tests and logs); None before the first render."""
        return None if self._active is None else self._active.process.pid

    @property
    def spare_pid(self) -> int | None:
        """The id of the spare process, once one was started."""
        return None if self._spare is None else self._spare.process.pid

    def request(self, request: tuple[Any, ...], seconds: float) -> str:
        """Send `request` and return the text that comes back within `seconds` (less than the
        watchdog's, which would end the process first); raises `RenderFailed`, or
        `RenderProcessUnavailable` when no render process can be started."""
        with self._lock:
            renderer = self._ready_renderer()
            assert renderer.process.stdin is not None
            try:
                _write_frame(renderer.process.stdin, pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL))
                reply = renderer.replies.get(timeout=max(seconds, 0.001))
            except queue.Empty:
                self._replace()
                raise RenderFailed("time", f"{seconds:.1f} s") from None
            except OSError as exc:  # the process died between two requests
                code = self._replace()
                raise RenderFailed("crashed", f"exit code {code}") from exc
            if reply is None:
                code = self._replace()
                raise RenderFailed("crashed", f"exit code {code}")
            if reply[:1] == b"T":
                return reply[1:].decode("utf-8", "surrogatepass")
            failure = json.loads(reply[1:])
            if failure["kind"] == "memory":
                self._replace()  # what a MemoryError left half-built is not worth keeping
        raise RenderFailed(str(failure["kind"]), str(failure["detail"]))

    def close(self) -> None:
        with self._lock:
            for renderer in (self._active, self._spare):
                if renderer is not None:
                    renderer.stop()
            self._active = self._spare = None

    def _ready_renderer(self) -> _Renderer:
        """The process to render with, started (or taken over from the spare) if need be; then a spare."""
        if self._spare is not None and self._spare.process.poll() is not None:
            self._spare = None  # ended while it waited (killed from outside)
        if self._active is None:
            self._active, self._spare = self._spare or _Renderer(self._command), None
        try:
            self._active.wait_until_ready()
        except RenderProcessUnavailable:
            self._active = None
            raise
        if self._spare is None:
            try:
                self._spare = _Renderer(self._command)  # warm long before a render must be stopped
            except RenderProcessUnavailable:  # rendering goes on; the next start says why if it fails too
                log.warning("could not start a spare chat-template render process", exc_info=True)
        return self._active

    def _replace(self) -> int | None:
        """Stop the process; the spare renders next. Its exit code."""
        assert self._active is not None
        code = self._active.stop()
        self._active = None
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
