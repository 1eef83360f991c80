"""Bad model files of every kind we know, generated, for the tests that must refuse them clearly."""

from __future__ import annotations

import random
import shutil
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

# A loop no size guard sees: only the render process's deadline stops it.
ENDLESS = "{% set s = 'x' * 50000 %}{% for a in s %}{% for b in s %}{{ '' }}{% endfor %}{% endfor %}"
# Renders a chat of two messages, and never ends on a longer one.
LOOPS_ON_LONGER_CHATS = ("{% set s = 'x' * 50000 %}{% if messages|length > 2 %}{% for a in s %}{% for b in s %}"
                         "{% endfor %}{% endfor %}{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}")
_BIG = "{% set s = 'x' * 8000000 %}"

# Templates that try to exhaust time or memory, one or more per way of doing it. Each must fail with
# ChatTemplateInvalid, naming the file, within 2 s and 256 MB.
HOSTILE_TEMPLATES = {
    "nested range loops": "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
    "nested loops over a string": ENDLESS,
    "loops only past two messages": LOOPS_ON_LONGER_CHATS,
    "range past two messages": "{% if messages|length > 2 %}{% for i in range(10**5) %}{% for j in range(10**5) %}"
                               "{% endfor %}{% endfor %}{% endif %}",
    "lipsum": "{{ lipsum(n=100000000) }}",
    "string times a huge int": "{{ 'x' * 3000000000 }}",
    "huge int times a string": "{{ 3000000000 * 'x' }}",
    "list times a huge int": "{{ ([1] * 3000000000)|length }}",
    "list of big strings": _BIG + "{{ ([s] * 1000)|join }}",
    "string plus string in a loop": _BIG + "{% set ns = namespace(s='') %}{% for i in range(1000) %}"
                                           "{% set ns.s = ns.s + s %}{% endfor %}{{ ns.s|length }}",
    "concatenation chain": _BIG + "{{ " + " ~ ".join(["s"] * 40) + " }}",
    "power of a power": "{{ (10 ** 1000) ** 1000 }}",
    "power of a huge exponent": "{{ 2 ** 3000000000 }}",
    "squaring in a loop": "{% set ns = namespace(x=3) %}{% for i in range(64) %}{% set ns.x = ns.x * ns.x %}"
                          "{% endfor %}{{ ns.x > 0 }}",
    "str.center": "{{ 'x'.center(999999999) }}",
    "str.ljust": "{{ 'x'.ljust(999999999, '-') }}",
    "str.rjust": "{{ 'x'.rjust(999999999) }}",
    "str.zfill": "{{ '1'.zfill(999999999) }}",
    "str.expandtabs": "{{ ('\t' * 10000).expandtabs(99999) }}",
    "str.replace": "{{ ('x' * 100000).replace('', 'y' * 100000) }}",
    "str.join": "{{ ('y' * 100000).join('x' * 100000) }}",
    "str.format width": "{{ '{:>999999999}'.format('x') }}",
    "str.format nested width": "{{ '{:{}}'.format('x', 999999999) }}",
    "str.format repeats": _BIG + "{{ ('{0}' * 1000).format(s) }}",
    "percent width": "{{ '%999999999d' % 1 }}",
    "percent star width": "{{ '%*d' % (999999999, 1) }}",
    "percent precision": "{{ '%.999999999f' % 1.0 }}",
    "percent repeats": _BIG + "{{ ('%s' * 1000) % ((s,) * 1000) }}",
    "indent filter": "{{ 'x'|indent(999999999) }}",
    "indent many lines": "{{ ('x\n' * 1000000)|indent(90000) }}",
    "wordwrap filter": "{{ ('x ' * 100000)|wordwrap(1, wrapstring='y' * 100000) }}",
    "center filter": "{{ 'x'|center(999999999) }}",
    "batch filter": "{{ [1]|batch(999999999, 0)|list|length }}",
    "slice filter": "{{ [1, 2]|slice(999999999, 0)|list|length }}",
    "format filter": "{{ '%999999999s'|format(1) }}",
    "replace filter": "{{ ('x' * 100000)|replace('', 'y' * 100000) }}",
    "tojson indent": "{{ messages|tojson(indent=999999999) }}",
    "string filter of a big list": _BIG + "{{ ([s] * 1000)|string|length }}",
    "endless macro recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "exponential macro recursion": "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}"
                                   "{% endmacro %}{{ f(64) }}",
    "doubling macro output": "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% else %}xxxxxxxx"
                             "{% endif %}{% endmacro %}{{ f(40) }}",
    "growing a list in a namespace": "{% set ns = namespace(items=[]) %}{% for i in range(100000) %}"
                                     "{% set ns.items = ns.items + ['x' * 10000] %}{% endfor %}",
    "growing a string with ~": "{% set ns = namespace(s='') %}{% for i in range(100000) %}"
                               "{% set ns.s = ns.s ~ ('x' * 100000) %}{% endfor %}",
    "strftime_now format": "{{ strftime_now('%c' * 4000000) }}",
}


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
    files.append(("template that never ends", write_tiny_gguf(tmp / "endless.gguf", chat_template=ENDLESS),
                  "did not finish"))
    files.append(("template that loops on chats longer than the sample",
                  write_tiny_gguf(tmp / "longer.gguf", chat_template=LOOPS_ON_LONGER_CHATS), "did not finish"))
    files.append(("template building a huge string",
                  write_tiny_gguf(tmp / "huge.gguf", chat_template="{{ 'x' * 3000000000 }}"), "far more than"))
    return files


def with_chat_template(model: Path, copy: Path, template: str) -> Path:
    """A copy of the real `model` whose chat template is `template`, to run a hostile one on a model
    llama.cpp loads. The new template is padded with a Jinja comment to the old one's byte length,
    so no offset in the file moves; it must not be longer."""
    key = b"tokenizer.chat_template"
    with model.open("rb") as f:
        head = f.read(2**22)  # the metadata comes before the tensors
    at = head.index(key) + len(key)
    assert struct.unpack_from("<I", head, at)[0] == 8, "the chat template is a string"
    length = struct.unpack_from("<Q", head, at + 4)[0]
    body = template.encode("utf-8")
    padding = length - len(body) - len("{##}")
    assert padding >= 0, f"the template must be at most {length - 4} bytes"
    shutil.copyfile(model, copy)
    with copy.open("r+b") as f:
        f.seek(at + 12)
        f.write(body + b"{#" + b" " * padding + b"#}")
    return copy
