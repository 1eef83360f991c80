"""The import rules of docs/ARCHITECTURE.md, checked on the source (a lazy import inside a function counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import engine

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "app": {"llama_cpp", "sqlean", "sqlite_vec", "torch", "training"},
    "engine": {"PySide6", "torch", "training", "app"},
    "training": {"app", "PySide6"},
}


def _imported_modules(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names taken from it) for every import in the file; `import a.b` gives ("a.b", [])."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def _imports(path: Path) -> set[str]:
    return {module.split(".")[0] for module, _ in _imported_modules(path)}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_nothing_forbidden(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    for path in files:
        bad = _imports(path) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_only_the_runtime_subpackage_imports_llama_cpp() -> None:
    users = {p.parent.name for p in sorted((ROOT / "engine").rglob("*.py")) if "llama_cpp" in _imports(p)}
    assert users == {"runtime"}


def test_the_window_uses_only_the_engines_surface() -> None:
    """`app/` takes engine names from `engine` itself, never from a module inside it, and only names
    the surface (`engine.__all__`) lists; so the engine's insides can move without touching the window."""
    for path in sorted((ROOT / "app").rglob("*.py")):
        for module, names in _imported_modules(path):
            if module.split(".")[0] != "engine":
                continue
            where = path.relative_to(ROOT)
            assert module == "engine", f"{where} imports {module}: take it from `engine` (add it to the surface)"
            assert set(names) <= set(engine.__all__), f"{where} imports {set(names) - set(engine.__all__)}"


def test_every_name_of_the_surface_exists() -> None:
    assert sorted(engine.__all__) == sorted(engine._SURFACE)
    for name in engine.__all__:
        assert getattr(engine, name) is not None, name


# The engine's pure helpers that training shares (so both read GGUF files and render chat templates
# alike); never the Session, the chat model runtime, storage or memory.
TRAINING_MAY_USE = {"engine.errors", "engine.logs", "engine.paths", "engine.settings", "engine.chat.kv_cache",
                    "engine.models.gguf_header", "engine.models.catalog", "engine.runtime.chat_template"}


def test_training_uses_only_the_engines_pure_helpers() -> None:
    for path in sorted((ROOT / "training").rglob("*.py")):
        modules = {module for module, _ in _imported_modules(path) if module.split(".")[0] == "engine"}
        assert modules <= TRAINING_MAY_USE, f"{path.name} imports {sorted(modules - TRAINING_MAY_USE)}"


def test_each_engine_subpackage_says_what_it_owns() -> None:
    for init in sorted((ROOT / "engine").glob("*/__init__.py")):
        docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert docstring and len(docstring.split()) >= 5, f"{init.relative_to(ROOT)} needs a docstring"


def test_no_module_is_over_400_lines() -> None:
    for package in ("app", "engine", "training"):
        for path in sorted((ROOT / package).rglob("*.py")):
            lines = len(path.read_text(encoding="utf-8").splitlines())
            assert lines <= 400, f"{path.relative_to(ROOT)} has {lines} lines"
