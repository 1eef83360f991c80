"""What packaging/slim.py takes out of the Linux bundle, and that Cleo still works without it.

On the real libraries of this checkout: the PySide6 wheel's ICU and Qt, llama-cpp-python's
libraries. The frozen app itself is checked by `cleo --smoke-test` in `make bundle`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _package_folder(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent


QT_LIB = _package_folder("PySide6") / "Qt" / "lib"
LLAMA_LIB = _package_folder("llama_cpp") / "lib"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("readelf") is None,
                                reason="the slimming is for Linux bundles (ELF libraries, binutils)")


def _slim():  # packaging/ is not a package ("packaging" is also pip's library), so load the file
    spec = importlib.util.spec_from_file_location("slim", ROOT / "packaging" / "slim.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


slim = _slim()


def _icu_data() -> Path:
    found = sorted(QT_LIB.glob("libicudata.so.*"))
    if not found:
        pytest.skip("this PySide6 wheel carries no ICU")
    return found[0]


def test_icu_package_repacked_whole_is_byte_identical() -> None:
    _, package = slim._data_symbol(_icu_data())
    items = slim.icu_items(package)
    assert len(items) > 1000 and any(name.endswith("/coll/root.res") for name in items)
    assert slim.repack_icu_data(package, lambda name: True) == package


def _sorting_with(library: Path) -> str:
    """`app.smoke._sorting()` in a fresh Qt process whose ICU reads `library`'s data."""
    env = {**os.environ, "LD_PRELOAD": str(library), "QT_QPA_PLATFORM": "offscreen"}
    result = subprocess.run([sys.executable, "-c", "from app.smoke import _sorting; print(_sorting())"],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_slim_icu_data_sorts_names_like_the_full_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    full = _icu_data()
    small = slim.slim_icu_data(full, tmp_path / "slim")
    assert small.name == full.name
    assert small.stat().st_size < full.stat().st_size / 5
    assert _sorting_with(small) == "ok"
    # The check can fail: with no collation data Qt falls back to comparing code points.
    monkeypatch.setattr(slim, "ICU_KEEP", slim.re.compile(r"^$"))
    empty = slim.slim_icu_data(full, tmp_path / "empty")
    assert _sorting_with(empty).startswith("en_US sorts ['Banana', 'apple'")


def test_libraries_only_a_dropped_plugin_needed_are_dropped() -> None:
    offscreen = QT_LIB.parent / "plugins" / "platforms" / "libqoffscreen.so"
    entries = [("PySide6/Qt/plugins/platforms/libqoffscreen.so", str(offscreen), "BINARY")] + [
        (f"PySide6/Qt/lib/{name}", str(QT_LIB / name), "BINARY")
        for name in ("libQt6Core.so.6", "libQt6Gui.so.6", "libQt6Network.so.6")]
    python = next(Path(sys.base_prefix, "lib").glob("libpython3*.so*"), None)
    if python is not None:  # loaded by the bootloader by name: kept although nothing links it
        entries.append((python.name, str(python), "BINARY"))
    kept = {Path(dest).name for dest, _, _ in slim.drop_unreached(entries)}
    assert {"libqoffscreen.so", "libQt6Core.so.6", "libQt6Gui.so.6"} <= kept
    assert "libQt6Network.so.6" not in kept
    assert python is None or python.name in kept


def test_identical_llama_libraries_are_collected_once() -> None:
    entries = [(f"llama_cpp/lib/{name}", str(LLAMA_LIB / name), "BINARY")
               for name in ("libggml-base.so", "libggml-base.so.0", "libllama.so")]
    assert slim.identical_as_symlinks(entries, "llama_cpp/lib") == [
        ("llama_cpp/lib/libggml-base.so", "libggml-base.so.0", "SYMLINK"),
        ("llama_cpp/lib/libggml-base.so.0", str(LLAMA_LIB / "libggml-base.so.0"), "BINARY"),
        ("llama_cpp/lib/libllama.so", str(LLAMA_LIB / "libllama.so"), "BINARY"),
    ]
