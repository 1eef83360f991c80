"""Whether this processor has the instructions llama.cpp's CPU code was compiled to use.

A portable build (GGML_NATIVE=OFF) still assumes AVX2, FMA and F16C on x86. On a processor
without them (older CPUs, and today's low-end Pentium, Celeron and Atom chips) the first
computation dies with "illegal instruction", taking the whole app with it and saying nothing.
`missing_features` lets the engine refuse first, with a message that names what is missing.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

# llama.cpp's names (as in llama_print_system_info) -> Linux /proc/cpuinfo flags.
_LINUX_FLAGS = {
    "SSE3": "pni", "SSSE3": "ssse3", "AVX": "avx", "AVX2": "avx2", "F16C": "f16c", "FMA": "fma",
    "BMI2": "bmi2", "AVX_VNNI": "avx_vnni", "AVX512": "avx512f", "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni", "AVX512_BF16": "avx512_bf16", "AMX_INT8": "amx_int8",
}
# -> macOS sysctl machdep.cpu.features / leaf7_features words (Intel Macs).
_MAC_FLAGS = {"SSE3": "SSE3", "SSSE3": "SSSE3", "AVX": "AVX1.0", "AVX2": "AVX2", "F16C": "F16C", "FMA": "FMA",
              "BMI2": "BMI2", "AVX512": "AVX512F"}


def built_for(system_info: str) -> set[str]:
    """The x86 instruction sets a llama.cpp build uses, from its system-info line
    ("CPU : SSE3 = 1 | AVX2 = 1 | ..."); names it uses that are not instruction sets are ignored."""
    used = set()
    for part in system_info.split("|"):
        name, _, value = part.rpartition(":")[2].partition("=")
        if value.strip() == "1" and name.strip() in _LINUX_FLAGS:
            used.add(name.strip())
    return used


def missing_features(needed: set[str], has: dict[str, bool]) -> list[str]:
    """Of `needed`, those the processor is known to lack (unknown ones are given the benefit of the doubt)."""
    return sorted(name for name in needed if has.get(name) is False)


def this_processor() -> dict[str, bool]:
    """What this processor is known to have, by llama.cpp's names; empty where it cannot be told
    (not x86, or the OS does not say). Not asked on Windows: IsProcessorFeaturePresent answers
    "no" for AVX2 on Windows versions that predate that question, which would refuse good CPUs."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return {}
    try:
        if sys.platform.startswith("linux"):
            return linux_processor(Path("/proc/cpuinfo").read_text(errors="replace"))
        if sys.platform == "darwin":
            words = subprocess.run(["sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features"],
                                   capture_output=True, text=True, timeout=5).stdout.split()
            return {name: flag in words for name, flag in _MAC_FLAGS.items()} if words else {}
    except (OSError, subprocess.SubprocessError):
        pass
    return {}


def linux_processor(cpuinfo: str) -> dict[str, bool]:
    """From /proc/cpuinfo: the first processor's flags."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
            return {name: flag in flags for name, flag in _LINUX_FLAGS.items()}
    return {}
