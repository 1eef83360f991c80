"""Imports: peak memory on hostile 4 GB exports, memory and speed on a real-sized one, loop detection.

Prints JSON lines (`"bench": "importing"`), each import in a fresh Python process whose peak
resident memory (VmHWM on Linux, ru_maxrss elsewhere) is the figure:
(a) `conversations.json` files of 4 GB packed into a few MB each (space, one title, empty lists,
    one conversation of repeated nodes): outcome, peak MB, seconds. Target: peak < 300 MB.
(b) a ChatGPT export of about 100 MB of ordinary conversations, imported whole: peak MB and MB/s,
    against the baseline in the same run: what reading it whole as the import did before
    (`json.loads` of the member) costs in memory alone.
(c) loop detection in a conversation's message tree (a chain of 8,000 nodes with a loop after it):
    `parents_first` against the earlier search for the looping node (a set built per node).
Run with `python -m bench.importing` (needs no model).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.transfer.importing import ImportFileInvalid, Place, parents_first
from tests.engine.transfer.hostile_files import PEAK, ROOT, four_gb_exports, import_in_child

REAL_SIZE = 100_000_000
LOOP_CHAIN = 8000


def _print(row: dict[str, Any]) -> None:
    print(json.dumps({"bench": "importing", **row}), flush=True)


def _ordinary_export(path: Path, size: int) -> tuple[Path, int]:
    """A ChatGPT export of distinct conversations of 40 messages each, about `size` bytes unpacked."""
    written = conversations = 0
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive, \
            archive.open("conversations.json", "w", force_zip64=True) as member:
        member.write(b"[")
        while written < size:
            mapping: dict[str, Any] = {}
            parent = None
            for n in range(40):
                key = f"{conversations:08x}-{n:04x}-node"
                role = "user" if n % 2 == 0 else "assistant"
                mapping[key] = {"id": key, "parent": parent, "children": [], "message": {
                    "id": key, "author": {"role": role, "name": None, "metadata": {}}, "create_time": 1.7e9 + n,
                    "content": {"content_type": "text", "parts": [f"Message {n} of chat {conversations}. " * 12]},
                    "status": "finished_successfully", "metadata": {"model_slug": "gpt-4o", "request_id": key}}}
                parent = key
            chat = {"id": f"chat-{conversations:08x}", "title": f"Chat {conversations}", "create_time": 1.7e9,
                    "update_time": 1.7e9 + 60, "mapping": mapping, "current_node": parent}
            data = (b"," if conversations else b"") + json.dumps(chat).encode()
            member.write(data)
            written += len(data)
            conversations += 1
        member.write(b"]")
    return path, written


_WHOLE = PEAK + """
import json, zipfile
with zipfile.ZipFile(sys.argv[1]) as archive:
    data = json.loads(archive.read("conversations.json"))
print(json.dumps({"peak_mb": round(peak_mb(), 1)}))
"""


def _read_whole(export: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", _WHOLE, str(export)], cwd=ROOT, check=True, capture_output=True,
                          text=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _earlier_loop_search(parents: dict[str, str | None], order: list[str]) -> str:
    """How the looping node was found before: a set of the ordered nodes built again for each node."""
    return next(key for key in parents if key not in set(order))


def _loop_tree() -> dict[str, str | None]:
    parents: dict[str, str | None] = {f"n{i}": f"n{i - 1}" if i else None for i in range(LOOP_CHAIN)}
    parents.update({"x1": "x2", "x2": "x1"})  # after the chain, as a file may list them
    return parents


def _timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _loop_detection() -> None:
    parents = _loop_tree()
    place = Place("bench", "")

    def linear() -> None:
        try:
            parents_first(parents, place, "node")
        except ImportFileInvalid:
            return
        raise AssertionError("the loop was not found")

    order = [f"n{i}" for i in range(LOOP_CHAIN)]
    _print({"case": "loop detection", "nodes": len(parents), "seconds": round(_timed(linear), 4),
            "baseline_seconds": round(_timed(lambda: _earlier_loop_search(parents, order)), 4)})


def main() -> None:
    _loop_detection()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        export, size = _ordinary_export(work / "ordinary.zip", REAL_SIZE)
        result = import_in_child(work / "ordinary.db", export)
        _print({"case": "ordinary export", "unpacked_mb": round(size / 1e6, 1), **result,
                "mb_per_s": round(size / 1e6 / result["seconds"], 1),
                "baseline_read_whole_peak_mb": _read_whole(export)["peak_mb"]})
        export.unlink()
        for name, export in four_gb_exports(work):
            result = import_in_child(work / f"{export.stem}.db", export)
            _print({"case": f"4 GB: {name}", "zip_mb": round(export.stat().st_size / 1e6, 1), **result,
                    "target_peak_mb": 300, "met": result["peak_mb"] < 300})
            export.unlink()


if __name__ == "__main__":
    main()
