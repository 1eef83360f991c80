"""`cleo devices` and where `cleo chat --once --json` says the model runs, run as a user runs them."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from tests.helpers.models import DefaultModels


def _cleo(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "CLEO_HOME": str(home), "CLEO_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", "app", *args], env=full_env, capture_output=True,
                          text=True, timeout=300, check=False)


def test_devices_lists_the_cpu_and_what_it_uses(cleo_home: Path) -> None:
    result = _cleo("devices", "--json", home=cleo_home)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert "CPU" in report["backends"]
    cpu = [d for d in report["devices"] if d["type"] == "CPU"]
    assert len(cpu) == 1 and cpu[0]["backend"] == "CPU" and cpu[0]["description"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert {"SSE3", "AVX2"} <= set(report["cpu_features"])  # what this build assumes on x86
    gpus = [d for d in report["devices"] if d["type"] in ("GPU", "integrated GPU")]
    assert isinstance(report["gpu_offload"], bool)
    assert all(d["total_bytes"] > 0 and 0 <= d["free_bytes"] <= d["total_bytes"] for d in gpus)

    text = _cleo("devices", home=cleo_home)
    assert text.returncode == 0, text.stderr
    assert "Backends: CPU" in text.stdout
    assert f"CPU: {cpu[0]['description']} (CPU, CPU backend)" in text.stdout
    assert "CPU features: " in text.stdout
    if not gpus:
        assert "No GPU" in text.stdout


def test_chat_once_json_says_where_the_model_runs(default_models: DefaultModels, cleo_home: Path) -> None:
    default_models.copy_home_to(cleo_home)
    result = _cleo("chat", "--once", "What is the capital of France?", "--json", home=cleo_home,
                   CLEO_TEMPERATURE="0", CLEO_CONTEXT_SIZE="1024")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert "Paris" in answer["reply"]
    placement = answer["placement"]
    assert placement["device"] == answer["device"]
    assert (placement["layers"], placement["expert_layers"]) == (31, 30)  # the default MoE: 30 blocks + output
    if placement["gpu"] is None:  # this build or machine has no GPU
        assert (answer["device"], placement["gpu_layers"], placement["cpu_tensors"]) == ("CPU", 0, [])
        assert placement["explanation"] == "on the CPU: this build of Cleo found no GPU it can use"
    else:
        assert placement["explanation"] and placement["gpu_layers"] > 0
