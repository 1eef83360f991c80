"""Rendering a reply's Markdown stays linear. Prints JSON lines (`"bench": "markdown"`).

Each hostile input is timed against a baseline of plain text of the same length and line count,
rendered in the same run (the median of several renders; the target is <= 50 ms each):
(1) `"*a " * 20000`: an italic opener on every word and no closer;
(2) a 60 KB code block without a language: its language is guessed, and it is coloured;
(3) the same block streaming in, re-rendered 200 times as it grows, with the chat view's memory
    of guessed languages: the language is guessed once, and each repaint stays cheap.
The very first guess of the process loads every pygments lexer; it is reported on its own.

Run with `python -m bench.markdown` (no model and no display needed).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from unittest import mock

from pygments.lexer import Lexer

import app.render
from app.render import LIGHT, render_markdown

TARGET_MS = 50.0
RUNS = 5


def emit(**row: object) -> None:
    print(json.dumps({"bench": "markdown", **row}), flush=True)


def median_ms(render: Callable[[], object]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        render()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def code_block() -> str:
    lines = [f"total_{i} = compute(values[{i}], scale={i % 7}) + offsets.get('k{i}', 0)  # step {i}"
             for i in range(2000)]
    return "\n".join(lines)[:60_000]


def compare(case: str, text: str, baseline: str) -> None:
    took = median_ms(lambda: render_markdown(text, LIGHT))
    base = median_ms(lambda: render_markdown(baseline, LIGHT))
    emit(case=case, chars=len(text), ms=round(took, 2), baseline_ms=round(base, 2),
         ratio=round(took / base, 2) if base else None, target_ms=TARGET_MS, ok=took <= TARGET_MS)


def plain_like(text: str) -> str:
    """Plain prose of the same length and the same line breaks as `text`."""
    return "".join("\n" if c == "\n" else "a" if i % 3 else " " for i, c in enumerate(text))


def main() -> None:
    start = time.perf_counter()
    render_markdown("```\n" + "x = 1\nprint(x)\n" * 10 + "```", LIGHT)
    emit(case="first guess in the process (loads every lexer)", ms=round((time.perf_counter() - start) * 1000, 1))

    stars = "*a " * 20000
    compare("italic openers without a closer", stars, plain_like(stars))
    block = "```\n" + code_block() + "\n```"
    compare("60 KB code block, no language", block, plain_like(block))

    guesses = 0
    guess = app.render.guess_lexer

    def counting(text: str) -> Lexer:
        nonlocal guesses
        guesses += 1
        return guess(text)

    lexers: dict[int, Lexer] = {}
    steps = [block[:len(block) * k // 200] for k in range(1, 201)]
    times = []
    with mock.patch.object(app.render, "guess_lexer", counting):
        for text in steps:
            began = time.perf_counter()
            render_markdown(text, LIGHT, lexers=lexers)
            times.append((time.perf_counter() - began) * 1000)
    emit(case="60 KB code block streaming in, 200 repaints", guesses=guesses,
         median_repaint_ms=round(statistics.median(times), 2), worst_repaint_ms=round(max(times), 2),
         target_ms=TARGET_MS, ok=guesses == 1 and max(times) <= TARGET_MS)


if __name__ == "__main__":
    main()
