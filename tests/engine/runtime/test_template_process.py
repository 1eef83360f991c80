"""The render process's life: a warm spare after a stop, no orphan left spinning when Cleo dies, and
a clear error when it cannot be started at all (test_template_bounds measures time and memory)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from pathlib import Path

import jinja2
import markupsafe
import pytest

from engine.errors import ChatTemplateInvalid, KnownError
from engine.runtime import template_process
from engine.runtime.chat_template import ChatTemplate
from engine.runtime.template_process import RENDER_SECONDS, WATCHDOG_SECONDS, RenderProcessUnavailable, TemplateProcess
from tests.helpers.bad_models import ENDLESS

ROOT = Path(__file__).resolve().parents[3]
HELLO = [{"role": "user", "content": "Hello"}]
ECHO = "{% for m in messages %}{{ m.content }}{% endfor %}"


def _render(renderer: TemplateProcess, source: str, seconds: float = RENDER_SECONDS) -> str:
    return renderer.request(("render", source, HELLO, True, "", "", None), seconds)


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie no one has reaped yet counts as gone)."""
    if sys.platform.startswith("linux"):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


@pytest.fixture
def renderer() -> Iterator[TemplateProcess]:
    process = TemplateProcess()
    yield process
    process.close()


def test_after_a_stopped_render_a_process_started_before_it_renders_the_next_prompt(renderer: TemplateProcess
                                                                                   ) -> None:
    assert _render(renderer, ECHO) == "Hello"
    stopped, spare = renderer.pid, renderer.spare_pid
    assert spare is not None and spare != stopped
    with pytest.raises(template_process.RenderFailed, match="time"):
        _render(renderer, ENDLESS)
    started = time.monotonic()
    assert _render(renderer, ECHO) == "Hello"
    assert renderer.pid == spare  # warm since the first render: no interpreter start on this path
    assert time.monotonic() - started < RENDER_SECONDS
    assert stopped is not None and not _running(stopped)
    assert renderer.spare_pid not in (None, spare)  # and the next spare is on its way


def test_a_render_process_left_behind_by_a_dead_cleo_ends_itself(tmp_path: Path) -> None:
    """Cleo killed mid-render (no chance to clean up): the render process, stuck in the template,
    never reads the end of its input, so it must notice on its own."""
    script = (
        "import sys\n"
        "from engine.runtime.template_process import TemplateProcess\n"
        "renderer = TemplateProcess()\n"
        "renderer.request(('compile', sys.argv[1]), 30)\n"
        "print(renderer.pid, getattr(renderer, 'spare_pid', None), flush=True)\n"
        "renderer.request(('render', sys.argv[1], [{'role': 'user', 'content': 'hi'}], True, '', '', None), 600)\n"
    )
    with subprocess.Popen([sys.executable, "-c", script, ENDLESS], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}) as cleo:
        assert cleo.stdout is not None
        pids = [int(pid) for pid in cleo.stdout.readline().split() if pid != "None"]
        assert pids and all(_running(pid) for pid in pids)
        time.sleep(0.3)  # the render is under way
        cleo.kill()  # SIGKILL: Cleo gets no chance to clean up
    deadline = time.monotonic() + WATCHDOG_SECONDS + 3.0
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in pids if _running(pid)]
    for pid in left:
        os.kill(pid, signal.SIGTERM)  # not to leave it spinning after the test
    assert not left, f"still running {WATCHDOG_SECONDS + 3.0:.0f} s after Cleo died: {left}"


def test_a_process_that_cannot_be_started_is_a_known_error_and_rendering_recovers(
        renderer: TemplateProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_processes_left(*_args: object, **_kwargs: object) -> None:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(template_process, "_shared", renderer)
    monkeypatch.setattr(template_process.subprocess, "Popen", no_processes_left)
    with pytest.raises(KnownError) as caught:
        ChatTemplate(ECHO, origin="/models/fine.gguf").render(HELLO)
    assert isinstance(caught.value, RenderProcessUnavailable) and not isinstance(caught.value, ChatTemplateInvalid)
    assert "could not start the process that renders chat templates" in caught.value.message
    assert "Resource temporarily unavailable" in caught.value.message and "fine.gguf" not in caught.value.message
    assert caught.value.hint
    monkeypatch.undo()
    assert _render(renderer, ECHO) == "Hello"


def test_a_process_that_ends_before_it_is_ready_is_reported_at_once(
        renderer: TemplateProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(renderer, "_command", [sys.executable, "-c", "raise SystemExit(3)"])
    started = time.monotonic()
    with pytest.raises(RenderProcessUnavailable, match="exit code 3"):
        _render(renderer, ECHO)
    assert time.monotonic() - started < 10  # not the minute a slow start may take


def test_jinja2_installed_where_an_isolated_interpreter_does_not_look_is_found(tmp_path: Path) -> None:
    """As with `pip install --user`: the render process runs with -I, which leaves out the user's
    site-packages, so it must be told where jinja2 and markupsafe are."""
    user_site = tmp_path / "user-site"
    for module in (jinja2, markupsafe):
        package = Path(module.__file__ or "").parent
        shutil.copytree(package, user_site / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    venv.create(tmp_path / "bare", with_pip=False)  # an interpreter with no packages of its own
    python = tmp_path / "bare" / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    script = ("from engine.runtime.template_process import TemplateProcess\n"
              "print(TemplateProcess().request(('render', '{{ messages[0].content }}!', "
              "[{'role': 'user', 'content': 'Hello'}], True, '', '', None), 30))\n")
    result = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=120, check=False,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(user_site)])})
    assert result.stdout.strip() == "Hello!", result.stderr[-2000:]
