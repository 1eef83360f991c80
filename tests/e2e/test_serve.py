"""`cleo serve` as a user runs it: a real process on the real default model, stopped with Ctrl+C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from engine.paths import HOME_VARIABLE
from tests.helpers.models import DefaultModels


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is a console event on Windows")
def test_serve_answers_and_stops_cleanly_on_ctrl_c(default_models: DefaultModels, cleo_home: Path) -> None:
    default_models.copy_home_to(cleo_home)
    env = {**os.environ, HOME_VARIABLE: str(cleo_home), "CLEO_THREADS": "1", "CLEO_CONTEXT_SIZE": "1024"}
    process = subprocess.Popen([sys.executable, "-m", "app", "serve", "--port", "0"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        found = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", first)
        assert found, first + (process.stderr.read() if process.poll() is not None and process.stderr else "")
        assert "api-token" in process.stdout.readline()
        token = (cleo_home / "config" / "api-token").read_text().strip()
        with httpx.Client(base_url=found.group(1), headers={"Authorization": f"Bearer {token}"}, timeout=120,
                          trust_env=False) as client:
            assert client.get("/models").json()["data"][0]["id"] == "cleo-moe-4x135m-q4_1"
            reply = client.post("/chat/completions", json={
                "model": "cleo", "temperature": 0, "max_tokens": 8,
                "messages": [{"role": "user", "content": "What is the capital of France?"}]})
            assert reply.status_code == 200
            assert reply.json()["choices"][0]["message"]["content"]
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert "Stopped." in out
        assert "Traceback" not in err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
