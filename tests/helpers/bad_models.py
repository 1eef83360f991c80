"""Bad model files of every kind we know, generated, for the tests that must refuse them clearly."""

from __future__ import annotations

import random
import struct
import sys
from pathlib import Path

from tests.helpers.models import write_tiny_gguf

# Templates that try to reach Python's internals from inside the sandbox.
UNSAFE_TEMPLATES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{% for m in messages %}{{ m.__class__.__init__.__globals__ }}{% endfor %}",
    "{{ raise_exception.__globals__['__builtins__']['open']('/etc/passwd').read() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
]


def _patched(source: bytes, offset: int, fmt: str, value: int) -> bytes:
    data = bytearray(source)
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


def bad_headers(tmp: Path) -> list[tuple[str, Path, str]]:
    """(case, path, words the error must contain) for every kind of bad file we know of."""
    good = write_tiny_gguf(tmp / "good.gguf").read_bytes()
    tensor_name = good.index(b"token_embd.weight")
    n_dims_at = tensor_name + len(b"token_embd.weight")
    type_at = n_dims_at + 4 + 2 * 8
    rng = random.Random(1234)
    cases: list[tuple[str, bytes | None, str]] = [
        ("zero bytes", b"", "empty"),
        ("text file", b"# My model notes\nThis is not a model.\n" * 20, "not a GGUF"),
        ("wrong magic", b"GGML" + good[4:], "not a GGUF"),
        ("version 1", _patched(good, 4, "<I", 1), "version 1"),
        ("version 99", _patched(good, 4, "<I", 99), "version 99"),
        ("absurd tensor count", _patched(good, 8, "<Q", 2**62), "more than the file can hold"),
        ("absurd metadata count", _patched(good, 16, "<Q", 2**40), "more than the file can hold"),
        ("absurd key length", _patched(good, 24, "<Q", 2**60), "truncated"),
        ("too many dimensions", _patched(good, n_dims_at, "<I", 9), "dimensions"),
        ("zero dimensions", _patched(good, n_dims_at, "<I", 0), "dimensions"),
        ("unknown tensor type", _patched(good, type_at, "<I", 999), "unknown data type"),
        ("absurd tensor size", _patched(good, n_dims_at + 4, "<Q", 2**50), "cut off"),
        ("truncated tensor data", good[:-200], "cut off"),
        ("tensor data missing", good[: tensor_name + 200], "cut off"),
    ]
    cases += [(f"header cut at {n}", good[:n], "truncated") for n in (6, 12, 20, 30, 60, n_dims_at + 2)]
    cases += [(f"random bytes {i}", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4096))), "not a GGUF")
              for i in range(8)]
    cases += [(f"random after magic {i}", b"GGUF" + struct.pack("<I", 3)
               + bytes(rng.randrange(256) for _ in range(rng.randrange(16, 2048))), "not a usable model")
              for i in range(4)]
    files = []
    for case, content, words in cases:
        path = tmp / f"{case.replace(' ', '-')}.gguf"
        path.write_bytes(content or b"")
        files.append((case, path, words))
    files.append(("unknown architecture", write_tiny_gguf(tmp / "frob.gguf", arch="frobnicator"), "'frobnicator'"))
    files.append(("vocab only", write_tiny_gguf(tmp / "vocab.gguf", tensors=False), "only a vocabulary"))
    folder = tmp / "a-folder.gguf"
    folder.mkdir()
    files.append(("a directory", folder, "is a folder"))
    files.append(("nonexistent", tmp / "missing.gguf", "does not exist"))
    return files


# NTFS files are not sparse unless marked so: there the 1 TiB file would be written out in full.
SPARSE_FILES = sys.platform != "win32"


def sparse_giant(path: Path) -> Path:
    """A valid GGUF header promising a 1 TiB tensor; the file is sparse, so it costs no disk."""
    write_tiny_gguf(path)
    data = bytearray(path.read_bytes())
    name_end = data.index(b"token_embd.weight") + len(b"token_embd.weight")
    struct.pack_into("<Q", data, name_end + 4 + 8, 2**33)  # rows: 2^33 x 32 floats = 1 TiB
    path.write_bytes(bytes(data))
    with path.open("r+b") as f:
        f.truncate(len(data) + 2**40)
    return path


def bad_models(tmp: Path) -> list[tuple[str, Path, str]]:
    """Every bad header, plus files whose header is fine but whose model must still be refused."""
    files = bad_headers(tmp)
    if SPARSE_FILES:
        files.append(("too large for memory", sparse_giant(tmp / "giant.gguf"), "needs about"))
    for i, template in enumerate(UNSAFE_TEMPLATES):
        unsafe = write_tiny_gguf(tmp / f"unsafe-{i}.gguf", chat_template=template)
        files.append((f"unsafe chat template {i}", unsafe, "must not touch"))
    files.append(("template syntax error", write_tiny_gguf(tmp / "syntax.gguf", chat_template="{% for %}"),
                  "not a valid template"))
    return files
