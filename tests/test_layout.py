"""DESIGN.md's import rules, checked on the source: who may import what."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "app": {"training", "llama_cpp", "sqlite_utils", "sqlean", "sqlite_vec", "torch"},
    "engine": {"PySide6", "torch", "training", "app"},
    "training": {"app", "PySide6"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_what_the_design_allows(package: str) -> None:
    broken = {str(p.relative_to(ROOT)): sorted(_imports(p) & FORBIDDEN[package])
              for p in (ROOT / package).rglob("*.py")}
    assert {path: names for path, names in broken.items() if names} == {}


def test_only_one_engine_module_imports_llama_cpp() -> None:
    users = [p.name for p in (ROOT / "engine").rglob("*.py") if "llama_cpp" in _imports(p)]
    assert users == ["llama_backend.py"]
