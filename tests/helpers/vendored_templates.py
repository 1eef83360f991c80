"""Real chat templates of real models, from the llama.cpp sources that llama-cpp-python vendors.

They are other projects' code, so the repository holds none of them: the first test that needs
them has pip fetch the llama-cpp-python source package (the version Cleo runs on) into a cache
folder outside the repository, and only its `models/templates/*.jinja` are kept from it. A machine
where pip cannot fetch it skips those tests, saying why.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

VERSION = "0.3.36"
_MEMBER = re.compile(r"[^/]+/vendor/llama\.cpp/models/templates/([A-Za-z0-9._-]+\.jinja)")
_MOST_BYTES = 2**20  # a chat template is a few kilobytes; anything larger is not one


def cache_folder() -> Path:
    """Where test downloads are kept between runs: `cleo-tests` in the user's cache folder."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cleo-tests"


def templates_folder() -> Path:
    """The folder of vendored `.jinja` templates, fetched on first use; skips the test if it cannot be."""
    folder = cache_folder() / f"llama-cpp-python-{VERSION}-templates"
    if (folder / ".complete").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as scratch:
        spec = f"llama-cpp-python=={VERSION}"
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "--disable-pip-version-check", "--no-input", "--progress-bar", "off", "-d", scratch, spec],
            capture_output=True, text=True, check=False)
        archives = list(Path(scratch).glob("llama_cpp_python-*.tar.gz"))
        if result.returncode != 0 or not archives:
            said = " ".join(result.stderr.strip().splitlines()[-2:]) or f"exit status {result.returncode}"
            pytest.skip(f"pip could not fetch the {spec} source package for its vendored chat templates ({said})")
        unpacked = Path(scratch) / "templates"
        unpacked.mkdir()
        with tarfile.open(archives[0], "r:gz") as archive:
            for member in archive:
                match = _MEMBER.fullmatch(member.name)
                if match is None or not member.isfile() or member.size > _MOST_BYTES:
                    continue
                source = archive.extractfile(member)
                if source is not None:
                    (unpacked / match.group(1)).write_bytes(source.read())
        if not any(unpacked.glob("*.jinja")):
            pytest.skip(f"the {spec} source package holds no models/templates/*.jinja")
        (unpacked / ".complete").touch()
        try:
            unpacked.rename(folder)  # whole or not at all, even with several test processes at once
        except OSError:  # another process finished first
            shutil.rmtree(unpacked, ignore_errors=True)
    return folder


def template(name: str) -> str:
    """The source of one vendored template, by file name without `.jinja`."""
    return (templates_folder() / f"{name}.jinja").read_text(encoding="utf-8")


def all_templates() -> dict[str, str]:
    """Every vendored template, by file name without `.jinja`."""
    return {path.stem: path.read_text(encoding="utf-8") for path in sorted(templates_folder().glob("*.jinja"))}
