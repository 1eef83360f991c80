"""The window's worker is an adapter: the rules live in the engine's Session, not here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"


def test_every_slot_of_the_worker_only_asks_the_session_and_shows_the_answer() -> None:
    tree = ast.parse((APP / "worker.py").read_text(encoding="utf-8"))
    slots = [f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
             and any(isinstance(d, ast.Call) and getattr(d.func, "id", "") == "Slot" for d in f.decorator_list)]
    assert len(slots) >= 15
    for slot in slots:
        body = slot.body[1:] if ast.get_docstring(slot) else slot.body
        lines = body[-1].end_lineno - body[0].lineno + 1  # type: ignore[operator]
        assert lines <= 5, f"{slot.name} has {lines} lines: the rule it holds belongs in the Session"
        assert slot.name.startswith("on_"), f"{slot.name}: slots are named on_<sender>_<event>"


def test_the_window_reaches_no_engine_internals() -> None:
    chains = re.compile(r"\.(memories|book|hooks|assistant|store|profile)\.")
    for path in sorted(APP.glob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            assert not chains.search(line), f"{path.name}:{number}: {line.strip()}"
