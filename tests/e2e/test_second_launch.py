"""Two real Cleo processes: a second launch while the first is open brings it forward and exits."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from engine import default_database_path, in_use
from tests.helpers.models import DefaultModels


def test_a_second_launch_brings_the_open_cleo_forward_and_exits(default_models: DefaultModels,
                                                                cleo_home: Path) -> None:
    default_models.copy_home_to(cleo_home)
    env = {**os.environ, "CLEO_HOME": str(cleo_home), "CLEO_THREADS": "1", "QT_QPA_PLATFORM": "offscreen"}
    first = subprocess.Popen([sys.executable, "-m", "app"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        database = default_database_path()
        deadline = time.monotonic() + 120
        while not in_use(database):  # the open Cleo's engine has taken the profile
            assert first.poll() is None, first.communicate()[0]
            assert time.monotonic() < deadline, "the first Cleo never opened its profile"
            time.sleep(0.1)
        second = subprocess.run([sys.executable, "-m", "app"], env=env, capture_output=True, text=True,
                                timeout=120, check=False)
        assert second.returncode == 0, second.stderr
        assert "already open" in second.stdout and "its window was brought forward" in second.stdout
        assert first.poll() is None  # the open Cleo goes on
        log_text = (cleo_home / "logs" / "cleo.log").read_text(encoding="utf-8")
        assert "a second launch asked for this window" in log_text
    finally:
        first.kill()
        first.communicate()
