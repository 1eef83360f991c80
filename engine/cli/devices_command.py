"""`cleo devices [--json]`: what llama.cpp can run on here, to see why a GPU is (not) used.

It lists the ggml backends that loaded, each device with its type and memory, and the features
the CPU code uses. Nothing is loaded beyond llama.cpp itself.
"""

from __future__ import annotations

import argparse
from typing import Any

from engine.cli.terminal_text import json_text, printable


def add_commands(commands: Any) -> None:
    devices = commands.add_parser("devices", help="the backends, GPUs and CPU features llama.cpp can use here")
    devices.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    # Here, not at the top: the other commands need no llama.cpp loaded.
    from engine.runtime.devices import device_report

    report = device_report()
    if args.json:
        print(json_text(report.as_json()))
        return 0
    print(printable(f"Backends: {', '.join(report.backends) or 'none loaded'}"))
    for device in report.devices:
        memory = f"{_gb(device.free)} free of {_gb(device.total)}" if device.total else "memory not reported"
        print(printable(f"{device.name}: {device.description} ({device.type}, {device.backend} backend), {memory}"))
    if not any(device.is_gpu for device in report.devices):
        print("No GPU: models run on the CPU." if report.gpu_offload else
              "No GPU: this build of llama.cpp runs models on the CPU only.")
    print(printable(f"CPU features: {' '.join(report.cpu_features) or 'none reported'}"))
    return 0


def _gb(n: int) -> str:
    return f"{n / 1024**3:.1f} GB"
