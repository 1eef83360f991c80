"""The double-click app: its size, and how soon its window paints. Prints JSON lines (`"bench": "bundle"`).

Needs the Linux bundle (`make bundle`, in dist/Cleo). Measured here, in one run:
- size of the bundle without the default models (target <= 150 MB) and with them;
- start to first paint: from launching the frozen `cleo` until its main window has painted
  (it prints "painted" and quits: `CLEO_QUIT_AFTER_FIRST_PAINT`), on Qt's offscreen platform
  unless a display is there. The first launch after the build, then the median of 5 (target
  <= 400 ms); the same for the checkout's `cleo` as the baseline.

Run with `python -m bench.bundle`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "dist" / "Cleo"
SIZE_TARGET_MB = 150.0
PAINT_TARGET_MS = 400.0


def emit(**row: object) -> None:
    print(json.dumps({"bench": "bundle", **row}), flush=True)


def megabytes(folder: Path, *, skip: str | None = None) -> float:
    """Size in MB of 10^6 bytes (the stricter reading of "150 MB"; MiB would allow 157 MB)."""
    total = sum(f.stat().st_size for f in folder.rglob("*")
                if f.is_file() and not f.is_symlink() and (skip is None or skip not in f.parts))
    return round(total / 1e6, 1)


def first_paint_ms(command: list[str], home: Path) -> float:
    env = {**os.environ, "CLEO_HOME": str(home), "CLEO_QUIT_AFTER_FIRST_PAINT": "1"}
    if not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")):
        env["QT_QPA_PLATFORM"] = "offscreen"
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert process.stdout is not None
    for line in process.stdout:
        if line.strip() == "painted":
            elapsed = (time.perf_counter() - start) * 1000
            break
    else:
        raise SystemExit(f"{command[0]} never painted its window (exit {process.wait()})")
    process.wait(timeout=60)
    return elapsed


def main() -> int:
    app = BUNDLE / "cleo"
    if not app.exists():
        print(f"No bundle at {BUNDLE}: run `make bundle` first.", file=sys.stderr)
        return 1
    without = megabytes(BUNDLE, skip="models")
    emit(measure="size", without_models_mb=without, with_models_mb=megabytes(BUNDLE),
         target_mb=SIZE_TARGET_MB, met=without <= SIZE_TARGET_MB)
    largest = sorted(((megabytes(p) if p.is_dir() else round(p.stat().st_size / 1e6, 1), p.name)
                      for p in (BUNDLE / "_internal").iterdir() if p.name != "models" and not p.is_symlink()),
                     reverse=True)[:8]
    emit(measure="largest_parts_mb", parts={name: size for size, name in largest})

    results = {}
    with tempfile.TemporaryDirectory(prefix="cleo-bench-bundle-") as tmp:
        for name, command in (("frozen", [str(app)]), ("checkout", [str(Path(sys.executable).parent / "cleo")])):
            home = Path(tmp) / name
            first = first_paint_ms(command, home)
            runs = [first_paint_ms(command, home) for _ in range(5)]
            results[name] = statistics.median(runs)
            emit(measure="start_to_first_paint", app=name, first_launch_ms=round(first, 1),
                 median_ms=round(results[name], 1), runs_ms=[round(r, 1) for r in runs])
    emit(measure="summary", without_models_mb=without, size_met=without <= SIZE_TARGET_MB,
         first_paint_ms=round(results["frozen"], 1), first_paint_met=results["frozen"] <= PAINT_TARGET_MS,
         checkout_first_paint_ms=round(results["checkout"], 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
