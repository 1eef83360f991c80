"""Hostile files to import, made without holding them in memory, and an import measured in a child process.

Shared by the import tests and `bench/importing.py`: a .zip whose `conversations.json` unpacks
to gigabytes is written by streaming a few repeated bytes through the deflater, and the import
runs in a fresh Python whose peak resident memory is what the import cost.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
GB = 1_000_000_000


def write_big_zip(path: Path, head: bytes, repeated: bytes, size: int, tail: bytes,
                  name: str = "conversations.json") -> Path:
    """A .zip holding `name` = head + repeated... (to `size` bytes in all) + tail, written as a stream."""
    block = repeated * max(1, (1 << 20) // len(repeated))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive, \
            archive.open(name, "w", force_zip64=True) as member:
        member.write(head)
        left = size - len(head) - len(tail)
        while left > 0:
            piece = block[:left]
            member.write(piece)
            left -= len(piece)
        member.write(tail)
    return path


def chatgpt_node(key: str) -> bytes:
    """One node of a ChatGPT conversation's mapping, as the bytes of `"key": {...},`."""
    message = {"id": key, "author": {"role": "user"}, "create_time": 1.7e9,
               "content": {"content_type": "text", "parts": ["Hello there"]}}
    node: dict[str, Any] = {"id": key, "message": message, "parent": None, "children": []}
    return f"{json.dumps(key)}: {json.dumps(node)}, ".encode()


def four_gb_exports(folder: Path, size: int = 4 * GB) -> Iterator[tuple[str, Path]]:
    """The shapes a huge `conversations.json` can take, each `size` bytes unpacked, as (name, .zip)."""
    yield "space", write_big_zip(folder / "space.zip", b"[", b" ", size, b"]")
    yield "one title", write_big_zip(folder / "title.zip", b'[{"title": "', b"0", size, b'"}]')
    yield "empty lists", write_big_zip(folder / "lists.zip", b'[{"title": "x", "mapping": [', b"[], ", size,
                                       b"[]]}]")
    node = chatgpt_node("a")
    yield "one conversation", write_big_zip(folder / "mapping.zip", b'[{"title": "x", "mapping": {', node, size,
                                            b'"b": {}}}]')


# The peak of this process alone. On Linux ru_maxrss keeps, across exec, the size of the process
# that started it (pytest's, hundreds of MB), so the high-water mark of its own memory is read.
PEAK = """
import resource, sys
def peak_mb():
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
    except OSError:
        unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 1024 / 1024
"""

_CHILD = PEAK + """
import json, time
from pathlib import Path
from engine.storage.database import open_database
from engine.transfer import ImportFileInvalid, import_chatgpt
database = open_database(Path(sys.argv[1]))
start = time.perf_counter()
try:
    outcome = "imported: " + import_chatgpt(database, Path(sys.argv[2])).summary()
except ImportFileInvalid as refused:
    outcome = refused.message
seconds = time.perf_counter() - start
conversations = database.conn.execute("SELECT count(*) FROM conversations").fetchone()[0]
database.close()
print(json.dumps({"outcome": outcome, "peak_mb": round(peak_mb(), 1), "seconds": round(seconds, 2),
                  "conversations": conversations}))
"""


def import_in_child(database: Path, export: Path) -> dict[str, Any]:
    """Import `export` (ChatGPT's) into `database` in a fresh Python: outcome ("imported: " and the
    report's summary, or the error), peak memory (MB), seconds."""
    done = subprocess.run([sys.executable, "-c", _CHILD, str(database), str(export)], cwd=ROOT, check=True,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def random_words(size: int, seed: int) -> str:
    """`size` characters of words of random letters, about 8 long: nearly every one a new word for
    the search index, which holds a row's distinct words in memory until it is written."""
    letters = bytes(range(ord("a"), ord("z") + 1))
    table = bytes(32 if byte < 32 else letters[byte % 26] for byte in range(256))  # 1 in 8: a space
    return random.Random(seed).randbytes(size).translate(table).decode("ascii")


def chatgpt_export(conversations: list[list[list[str]]]) -> bytes:
    """A ChatGPT export whose n-th conversation holds one message per list of parts, in a chain."""
    records = []
    for number, messages in enumerate(conversations, 1):
        mapping: dict[str, Any] = {}
        parent = None
        for index, parts in enumerate(messages):
            key = f"c{number}m{index}"
            mapping[key] = {"id": key, "parent": parent, "children": [], "message": {
                "id": key, "author": {"role": "user" if index % 2 == 0 else "assistant"}, "create_time": 1.7e9 + index,
                "content": {"content_type": "text", "parts": parts}}}
            parent = key
        records.append({"title": f"big {number}", "id": f"c{number}", "create_time": 1.7e9, "mapping": mapping})
    return json.dumps(records).encode()
