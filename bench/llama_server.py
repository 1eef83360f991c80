"""llama.cpp's own `llama-server`, built once into a cache folder: the baseline `bench/api.py` runs against.

The source is the llama.cpp that the llama-cpp-python sdist Cleo pins vendors, so the baseline and
Cleo run the same kernels; the flags are the portable ones Cleo's wheel is built with (no
`-march=native`, CPU only, Release). The build goes to `CLEO_BENCH_CACHE` (default
`~/.cache/cleo-bench`), outside the repository, and is reused while its flags and source match.
`CLEO_BENCH_LLAMA_CPP_PYTHON=DIR` points at an already extracted sdist to skip the download.

Run `python -m bench.llama_server` to build it (or find the earlier build); prints one JSON line
with the binary's path and how long the build took.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LLAMA_CPP_PYTHON = "0.3.36"  # keep equal to the version the Makefile installs
CACHE_VARIABLE = "CLEO_BENCH_CACHE"
SDIST_VARIABLE = "CLEO_BENCH_LLAMA_CPP_PYTHON"

# As in Cleo's wheel: portable code, CPU only, Release. The rest only trims the build to the one
# program: no tests, examples, web UI (it would need npm or a download), HTTPS or curl.
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DGGML_CUDA=OFF", "-DGGML_METAL=OFF", "-DGGML_VULKAN=OFF", "-DGGML_HIP=OFF", "-DGGML_OPENCL=OFF",
    "-DGGML_BLAS=OFF", "-DGGML_RPC=OFF",
    "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary: no chance of loading another libllama
)
Report = Callable[[str], None]

# The machine is shared: build at the lowest priority, on at most two cores.
BUILD_JOBS = 2


@dataclass(frozen=True)
class Baseline:
    binary: Path
    source: Path
    build_seconds: float  # how long the build took when it was made (0 if unknown)
    built_now: bool


class BuildFailed(RuntimeError):
    """llama-server could not be built here; the message says why."""


def cache_folder() -> Path:
    return Path(os.environ.get(CACHE_VARIABLE, "") or Path.home() / ".cache" / "cleo-bench").expanduser()


def llama_cpp_source(report: Report = print) -> Path:
    """The vendored llama.cpp tree: from `CLEO_BENCH_LLAMA_CPP_PYTHON`, the cache, or a fresh download."""
    given = os.environ.get(SDIST_VARIABLE, "").strip()
    sdist = Path(given).expanduser() if given else cache_folder() / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
    source = sdist / "vendor" / "llama.cpp"
    if (source / "CMakeLists.txt").exists():
        return source
    if given:
        raise BuildFailed(f"{SDIST_VARIABLE}={given} holds no vendor/llama.cpp/CMakeLists.txt")
    return _download_source(report)


def _download_source(report: Report) -> Path:
    downloads = cache_folder() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    report(f"downloading the llama-cpp-python {LLAMA_CPP_PYTHON} sdist into {downloads}")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--dest", str(downloads), f"llama-cpp-python=={LLAMA_CPP_PYTHON}"]
    done = subprocess.run(command, capture_output=True, text=True)
    archives = sorted(downloads.glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"))
    if done.returncode or not archives:
        raise BuildFailed(f"pip download failed: {(done.stderr or done.stdout).strip()[-500:]}")
    with tarfile.open(archives[0]) as archive:
        # The "data" filter refuses absolute paths, links out of the folder and device files.
        archive.extractall(cache_folder(), filter="data")
    source = cache_folder() / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    if not (source / "CMakeLists.txt").exists():
        raise BuildFailed(f"the sdist {archives[0].name} holds no vendor/llama.cpp")
    return source


def _build_folder() -> Path:
    return cache_folder() / f"llama-server-{LLAMA_CPP_PYTHON}"


def _stamp(source: Path) -> dict[str, object]:
    return {"llama_cpp_python": LLAMA_CPP_PYTHON, "source": str(source), "flags": list(CMAKE_FLAGS)}


def locate_or_build(report: Report = print) -> Baseline:
    """The llama-server binary, built first if the cache has none made from this source with these flags."""
    source = llama_cpp_source(report)
    build = _build_folder()
    binary = build / "bin" / "llama-server"
    record = build / "cleo-bench-build.json"
    if binary.exists() and record.exists():
        made = json.loads(record.read_text())
        if made.get("stamp") == _stamp(source):
            return Baseline(binary, source, float(made.get("build_seconds", 0.0)), built_now=False)
    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if missing:
        raise BuildFailed(f"no {' or '.join(missing)} on PATH: install a C++ compiler and CMake")
    if build.exists():
        shutil.rmtree(build)  # a build with other flags or from other source is not the baseline
    build.mkdir(parents=True)
    log = build / "build.log"
    start = time.perf_counter()
    report(f"building llama-server from {source} into {build} (log: {log})")
    nice = ["nice", "-n", "19"] if shutil.which("nice") else []
    steps = [
        [*nice, "cmake", "-S", str(source), "-B", str(build), *CMAKE_FLAGS],
        [*nice, "cmake", "--build", str(build), "--target", "llama-server", "-j", str(BUILD_JOBS)],
    ]
    with log.open("w") as out:
        for step in steps:
            out.write("$ " + " ".join(step) + "\n")
            out.flush()
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode:
                tail = log.read_text(errors="replace")[-1500:]
                raise BuildFailed(f"`{' '.join(step[len(nice):len(nice) + 2])}` failed; end of {log}:\n{tail}")
    seconds = time.perf_counter() - start
    if not binary.exists():
        raise BuildFailed(f"the build finished but {binary} is missing; see {log}")
    record.write_text(json.dumps({"stamp": _stamp(source), "build_seconds": round(seconds, 1)}, indent=1))
    return Baseline(binary, source, seconds, built_now=True)


def main() -> None:
    row: dict[str, object] = {"bench": "llama_server"}
    try:
        baseline = locate_or_build(report=lambda line: print(line, file=sys.stderr, flush=True))
        row.update(binary=str(baseline.binary), built_now=baseline.built_now,
                   build_seconds=round(baseline.build_seconds, 1), flags=list(CMAKE_FLAGS))
    except BuildFailed as exc:
        row.update(error=str(exc))
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
