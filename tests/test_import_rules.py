"""DESIGN.md's import rules, checked on the source (so a lazy import inside a function counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "app": {"llama_cpp", "sqlite_utils", "sqlean", "sqlite_vec", "torch", "training"},
    "engine": {"PySide6", "torch", "training", "app"},
    "training": {"app", "PySide6"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_nothing_forbidden(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    for path in files:
        bad = _imports(path) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_only_one_engine_module_imports_llama_cpp() -> None:
    users = [p.name for p in sorted((ROOT / "engine").rglob("*.py")) if "llama_cpp" in _imports(p)]
    assert users == ["llama_backend.py"]


def test_training_uses_no_engine_runtime() -> None:
    for path in sorted((ROOT / "training").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "engine.llama_backend" not in modules, path.name
