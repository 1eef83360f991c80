"""Hostile chat templates: each renders or fails with ChatTemplateInvalid, naming the file, within 2 s and 256 MB.

This is where a test measures time and memory, because the guarantee is about them: the clock is
the caller's (from the render call to its answer, a restart of the render process included), and
memory is the render process's peak resident size over its size before the render (read from
/proc, so Linux only; the time bound is checked everywhere).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import ChatTemplateInvalid
from engine.runtime import template_process
from engine.runtime.chat_template import ChatTemplate
from engine.runtime.template_sandbox import MAX_TEXT
from tests.helpers.bad_models import HOSTILE_TEMPLATES, LOOPS_ON_LONGER_CHATS

SECONDS = 2.0
MEMORY = 256 * 2**20
LINUX = sys.platform.startswith("linux")
ORIGIN = "/models/bomb.gguf"
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "How are you?"}]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _status(pid: int, field: str) -> int:
    """A size from /proc/<pid>/status in bytes; 0 once the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) * 1024 for line in lines if line.startswith(f"{field}:")), 0)


class Measured:
    seconds = 0.0
    memory = 0  # bytes the render process grew by, at its peak


@contextmanager
def measured() -> Iterator[Measured]:
    """Time the block, and sample the render process's peak size every millisecond while it runs."""
    renderer = template_process.shared()
    ChatTemplate(CHATML).render(CHAT)  # the process is up and warm
    result = Measured()
    pid = renderer.pid
    assert pid is not None
    baseline = _status(pid, "VmRSS") if LINUX else 0
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.001):
            result.memory = max(result.memory, _status(pid, "VmHWM") - baseline)

    sampler = threading.Thread(target=sample)
    if LINUX:
        sampler.start()
    started = time.monotonic()
    try:
        yield result
    finally:
        result.seconds = time.monotonic() - started
        done.set()
        if LINUX:
            sampler.join()
            result.memory = max(result.memory, _status(pid, "VmHWM") - baseline)


def _render_hostile(source: str, chat: list[dict[str, str]] = CHAT) -> tuple[Measured, str]:
    """What the user sees of `source` on `chat` (the error, or the prompt's length), and what it cost."""
    with measured() as cost:
        try:
            outcome = f"rendered {len(ChatTemplate(source, origin=ORIGIN).render(chat, add_generation_prompt=True))}"
        except ChatTemplateInvalid as exc:
            outcome = exc.message
    return cost, outcome


@pytest.mark.parametrize("source", list(HOSTILE_TEMPLATES.values()), ids=list(HOSTILE_TEMPLATES))
def test_a_hostile_template_fails_clearly_within_two_seconds_and_256_mb(source: str) -> None:
    cost, outcome = _render_hostile(source)
    assert outcome.startswith(f"The chat template in {ORIGIN} "), outcome
    assert cost.seconds < SECONDS, f"{cost.seconds:.2f} s: {outcome}"
    assert cost.memory < MEMORY, f"{cost.memory / 2**20:.0f} MB: {outcome}"
    assert ChatTemplate(CHATML).render(CHAT[1:2]) == "<|im_start|>user\nHello<|im_end|>\n"  # and rendering goes on


def test_a_template_that_loops_only_on_longer_chats_behaves_on_short_ones_and_is_stopped_on_long_ones() -> None:
    template = ChatTemplate(LOOPS_ON_LONGER_CHATS, origin=ORIGIN)
    assert template.render(CHAT[:2]) == "Be brief.Hello"
    for length in (3, 4, 12):
        cost, outcome = _render_hostile(LOOPS_ON_LONGER_CHATS, (CHAT * 3)[:length])
        assert "did not finish within" in outcome and ORIGIN in outcome
        assert cost.seconds < SECONDS and cost.memory < MEMORY


def test_a_hostile_template_right_after_another_is_bounded_too() -> None:
    endless = HOSTILE_TEMPLATES["nested loops over a string"]
    with pytest.raises(ChatTemplateInvalid):
        ChatTemplate(endless, origin=ORIGIN).render(CHAT)
    started = time.monotonic()  # the render process is starting again: that counts too
    with pytest.raises(ChatTemplateInvalid) as caught:
        ChatTemplate(endless, origin=ORIGIN).render(CHAT)
    assert time.monotonic() - started < SECONDS and "did not finish" in caught.value.message


@pytest.mark.skipif(not LINUX, reason="the address-space cap is Linux's")
def test_memory_the_size_guards_miss_is_capped_by_the_operating_system() -> None:
    cost, outcome = _render_hostile(HOSTILE_TEMPLATES["concatenation chain"])  # 40 copies of 8 MB at once
    assert "needed more than 256 MB of memory" in outcome
    assert cost.memory < MEMORY


# Building blocks of a template that costs too much, with the huge number N, in places a sample chat
# may never reach (after K messages, in a macro, a loop, a captured block).
_KERNELS = ["{{ 'x' * N }}", "{{ ([0] * N)|length }}", "{{ 'ab'.center(N) }}", "{{ '{:N}'.format(1) }}",
            "{{ '%Nd' % 1 }}", "{{ 'x'|indent(N) }}", "{{ [1]|batch(N, 0)|list|length }}", "{{ 2 ** N }}",
            "{{ range(N)|list|length }}", "{{ '1'.zfill(N) }}", "{{ 'x'|center(N) }}", "{{ N * N * N * N }}",
            "{{ ('ab' * 1000).replace('', 'y' * (N % 1000000)) }}", "{{ messages|tojson(indent=N) }}",
            "{{ lipsum(N) }}", "{% for i in range(N) %}{% for j in range(N) %}{% endfor %}{% endfor %}"]
_WRAPPERS = ["BODY", "{% if messages|length > K %}BODY{% endif %}", "{% macro m() %}BODY{% endmacro %}{{ m() }}",
             "{% for m in messages %}BODY{% endfor %}", "{% set x %}BODY{% endset %}{{ x|length }}"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kernel=st.sampled_from(_KERNELS), wrapper=st.sampled_from(_WRAPPERS), huge=st.integers(10**6, 10**15),
       after=st.integers(0, 6), length=st.integers(1, 10))
def test_any_costly_template_in_any_place_on_any_chat_is_bounded(kernel: str, wrapper: str, huge: int, after: int,
                                                                  length: int) -> None:
    source = wrapper.replace("K", str(after)).replace("BODY", kernel.replace("N", str(huge)))
    cost, outcome = _render_hostile(source, (CHAT * 3)[:length])
    assert cost.seconds < SECONDS and cost.memory < MEMORY, outcome
    if not outcome.startswith("rendered"):  # a wrapper may keep the kernel from running on this chat
        assert outcome.startswith(f"The chat template in {ORIGIN} "), outcome


_FRAGMENTS = ["{% for i in range(99999) %}", "{% for c in messages[0].content * 9999 %}", "{% endfor %}",
              "{% if messages|length > 3 %}", "{% endif %}", "{{ 'x' * 99999 }}", "{{ messages|tojson }}",
              "{% set ns = namespace(s='ab') %}", "{% set ns.s = ns.s ~ ns.s %}", "{% set ns.s = ns.s * 2 %}",
              "{{ ns.s|length }}", "{% macro f(n) %}", "{% endmacro %}", "{{ f(n) }}{{ f(n) }}", "{{ f(1) }}",
              "{{ loop.index }}", "{{ (ns.s ~ ns.s)|wordwrap(3) }}", "{{ ns.s.replace('a', ns.s) }}"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(st.sampled_from(_FRAGMENTS), min_size=1, max_size=12), length=st.integers(1, 8))
def test_templates_assembled_at_random_render_or_fail_within_the_bounds(pieces: list[str], length: int) -> None:
    cost, outcome = _render_hostile("".join(pieces), (CHAT * 2)[:length])
    assert cost.seconds < SECONDS and cost.memory < MEMORY, outcome
    if outcome.startswith("rendered"):
        assert int(outcome.split()[1]) <= MAX_TEXT
    else:
        assert outcome.startswith(f"The chat template in {ORIGIN} "), outcome


@pytest.mark.skipif(not LINUX, reason="reads /proc/<pid>/maps")
def test_the_render_process_loads_jinja_and_nothing_heavy(moe_model: object) -> None:
    ChatTemplate(CHATML).render(CHAT)
    pid = template_process.shared().pid
    libraries = Path(f"/proc/{pid}/maps").read_text(encoding="utf-8", errors="replace")
    assert "llama" in Path(f"/proc/{os.getpid()}/maps").read_text(encoding="utf-8", errors="replace")  # here, yes
    for heavy in ("llama", "ggml", "Qt6", "torch", "numpy"):
        assert heavy not in libraries, heavy
