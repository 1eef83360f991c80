"""`cleo chat --once --model bomb.gguf`, run as a user runs it: a clear error in seconds, and Cleo still answers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.bad_models import LOOPS_ON_LONGER_CHATS
from tests.helpers.models import DefaultModels, write_tiny_gguf


def _cleo(*args: str, home: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "CLEO_HOME": str(home), "CLEO_THREADS": "1", "CLEO_TEMPERATURE": "0"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "app", *args], env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    return result, time.monotonic() - started


def test_a_model_whose_template_never_ends_is_refused_within_two_seconds_and_the_chosen_model_still_answers(
        default_models: DefaultModels, cleo_home: Path, tmp_path: Path) -> None:
    default_models.copy_home_to(cleo_home)
    bomb = write_tiny_gguf(tmp_path / "bomb.gguf", chat_template=LOOPS_ON_LONGER_CHATS)
    # What the same command costs on a model whose template works: Cleo starts, starts the render
    # process, renders the sample chat, and llama.cpp refuses the tiny file. The bomb takes the same
    # path up to its render, which must be stopped instead. Each is run twice and the faster run
    # counts, so a busy machine's slow start of one run is not taken for the template's cost.
    fine = write_tiny_gguf(tmp_path / "fine.gguf")
    baseline_runs: list[float] = []
    bomb_runs: list[float] = []
    for _ in range(2):
        baseline, seconds = _cleo("chat", "--model", str(fine), "--once", "hello", home=cleo_home)
        assert baseline.returncode == 2 and f"llama.cpp could not load {fine}" in baseline.stderr, baseline.stderr
        baseline_runs.append(seconds)
        result, seconds = _cleo("chat", "--model", str(bomb), "--once", "hello", home=cleo_home)
        assert result.returncode == 2, result.stderr
        assert f"The chat template in {bomb} did not finish" in result.stderr
        assert "Traceback" not in result.stderr
        bomb_runs.append(seconds)
    assert min(bomb_runs) - min(baseline_runs) < 2.0, f"the bomb: {bomb_runs}, a working template: {baseline_runs}"
    answer, _ = _cleo("chat", "--once", "What is the capital of France?", home=cleo_home)
    assert answer.returncode == 0, answer.stderr
    assert "Paris" in answer.stdout
