"""Screenshots of Cleo for the README: `make screenshots` (or `python -m app.screenshots [FOLDER]`).

Starts the real window on a throw-away demo profile (a copy of the default models, a few chats
and memories written through the engine's own store) and saves PNGs of the main window in light
and dark, the memory panel, the model manager, its Hugging Face search and a repository's files
with their fit, and the settings. Under Xvfb when `make` finds `xvfb-run`, otherwise on Qt's
offscreen platform, which renders the same pixels.

The Hugging Face pictures need no network: the test suite's fake Hub on 127.0.0.1 holds
repositories named like real ones, and for Qwen3-30B-A3B the real model's header (its
architecture, 128 experts, 8 active, 48 layers, its vocabulary size and tensor shapes) without
the weights: the file list announces the real files' sizes and the header is read with Range
requests as from the real Hub, so the facts and the fit are Cleo's own estimate for this
computer.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QCoreApplication
from PySide6.QtWidgets import QApplication, QWidget

DEMO_CHAT = [
    ("user", "Can you help me plan a weekend in Lisbon? I love old trams and seafood."),
    ("assistant", "Happily! A relaxed plan:\n\n- **Saturday**: ride tram **28** through Alfama early, before the "
                  "crowds, then lunch at a *tasca* for grilled sardines.\n- **Sunday**: LX Factory in the morning "
                  "and a sunset at the Miradouro da Graça.\n\nWant me to keep a list of places you liked?"),
    ("user", "Yes please. Also, how do I sort my list of places by rating in Python?"),
    ("assistant", "Use `sorted` with a key:\n\n```python\nplaces = [{\"name\": \"Tasca do Chico\", \"rating\": 4.7},\n"
                  "          {\"name\": \"Time Out Market\", \"rating\": 4.3}]\nbest = sorted(places, "
                  "key=lambda p: p[\"rating\"], reverse=True)\n```\n\nIt returns a new list, best first."),
]


def _demo_profile(home: Path, models: Path) -> None:
    os.environ["CLEO_HOME"] = str(home)
    from engine import folders, open_profile

    shutil.copytree(models, folders().models)
    memories = open_profile()
    try:
        store, book = memories.store, memories.book
        for title in ("Birthday gift ideas for Ana", "Fixing the bike's gears"):
            chat = store.create_conversation(title)
            first = store.add_message(chat.id, "user", f"Let's talk about: {title.lower()}", None)
            store.set_current_leaf(chat.id, first.id)
        chat = store.create_conversation("Weekend in Lisbon")
        parent = None
        for role, text in DEMO_CHAT:
            parent = store.add_message(chat.id, role, text, parent, model="cleo-moe").id
            if role == "assistant":
                store.save_reply(parent, text, "stop")
        assert parent is not None
        store.set_current_leaf(chat.id, parent)
        store.update_conversation(chat.id, pinned=True)
        book.add("The user loves old trams and seafood", "preference", source_conversation_id=chat.id)
        book.add("The user's sister Ana lives in Porto", "profile")
        book.add("The user is learning Python", "fact", propose=True)
    finally:
        memories.close()


# Repositories for the search picture: (id, downloads, likes, last update, licence); figures illustrative.
DEMO_REPOS = [("Qwen/Qwen3-30B-A3B-GGUF", 412_977, 287, "2025-05-20", "apache-2.0"),
              ("unsloth/gpt-oss-20b-GGUF", 2_113_640, 504, "2025-08-21", "apache-2.0"),
              ("allenai/OLMoE-1B-7B-0924-Instruct-GGUF", 16_604, 34, "2024-09-27", "apache-2.0"),
              ("ibm-granite/granite-3.1-3b-a800m-instruct-GGUF", 4_930, 12, "2024-12-18", "apache-2.0"),
              ("TheBloke/Mixtral-8x7B-Instruct-v0.1-GGUF", 98_511, 631, "2023-12-14", "apache-2.0"),
              ("bartowski/google_gemma-3-12b-it-GGUF", 305_228, 98, "2025-03-12", "gemma"),
              ("microsoft/Phi-3-mini-4k-instruct-gguf", 187_415, 502, "2024-07-02", "mit")]
QWEN_QUANTS = {"Q4_K_M": (15, "Q4_K"), "Q5_K_M": (17, "Q5_K"), "Q6_K": (18, "Q6_K"), "Q8_0": (7, "Q8_0")}


class _Announced(bytes):
    """A header that the fake Hub's file list announces with the real file's size (the weights are not there)."""

    announced = 0

    def __len__(self) -> int:
        return self.announced


def _qwen_header(folder: Path, quant: str) -> bytes:
    """Qwen3-30B-A3B's GGUF header as llama.cpp writes it: metadata, vocabulary size and tensor table."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter

    file_type, kind = QWEN_QUANTS[quant]
    path = folder / f"Qwen3-30B-A3B-{quant}.gguf"
    writer = GGUFWriter(path, arch="qwen3moe")
    writer.add_name("Qwen3-30B-A3B")
    writer.add_file_type(file_type)
    for add, value in ((writer.add_context_length, 40960), (writer.add_block_count, 48),
                       (writer.add_embedding_length, 2048), (writer.add_head_count, 32),
                       (writer.add_head_count_kv, 4), (writer.add_expert_count, 128),
                       (writer.add_expert_used_count, 8), (writer.add_expert_feed_forward_length, 768)):
        add(value)
    writer.add_token_list([f"t{i}" for i in range(151_936)])
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}")
    shapes = {"token_embd.weight": (151_936, 2048), "output.weight": (151_936, 2048), "output_norm.weight": (2048,)}
    for n in range(48):
        shapes |= {f"blk.{n}.attn_q.weight": (4096, 2048), f"blk.{n}.attn_k.weight": (512, 2048),
                   f"blk.{n}.attn_v.weight": (512, 2048), f"blk.{n}.attn_output.weight": (2048, 4096),
                   f"blk.{n}.attn_norm.weight": (2048,), f"blk.{n}.ffn_norm.weight": (2048,),
                   f"blk.{n}.ffn_gate_inp.weight": (128, 2048), f"blk.{n}.ffn_gate_exps.weight": (128, 768, 2048),
                   f"blk.{n}.ffn_up_exps.weight": (128, 768, 2048), f"blk.{n}.ffn_down_exps.weight": (128, 2048, 768)}
    total = 0
    for name, shape in shapes.items():
        dtype = GGMLQuantizationType[kind] if len(shape) > 1 and "gate_inp" not in name else GGMLQuantizationType.F32
        block, size = GGML_QUANT_SIZES[dtype]
        n_bytes = int(np.prod(shape)) // block * size
        writer.add_tensor_info(name, shape, np.dtype(np.float32), n_bytes, raw_dtype=dtype)
        total += -(-n_bytes // 32) * 32
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    header = path.read_bytes()
    shown = _Announced(header + b"\0" * (8 * 2**20))  # more than the header reader asks for
    shown.announced = -(-len(header) // 32) * 32 + total
    return shown


def _demo_hub(folder: Path) -> Any:
    """The test suite's fake Hub (tests/helpers/fake_hub.py), holding the demo repositories."""
    from tests.helpers.fake_hub import FakeHub

    hub = FakeHub()
    files = {f"Qwen3-30B-A3B-{q}.gguf": _qwen_header(folder, q) for q in QWEN_QUANTS}
    files |= {"README.md": b"# Qwen3-30B-A3B-GGUF\n", "params": b"{}"}
    for repo, downloads, likes, day, licence in DEMO_REPOS:
        hub.add_repo(repo, files if repo.startswith("Qwen/") else {"x.gguf": b"GGUF"}, downloads=downloads,
                     likes=likes, licence=licence, last_modified=f"{day}T00:00:00.000Z")
    return hub


def _until(done: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        QCoreApplication.processEvents()
        time.sleep(0.01)


def _hub_pictures(dialog: Any, out: Path, folder: Path, context_size: int) -> None:
    """The search, and Qwen3-30B-A3B's files with the fit of each quantization on this computer."""
    hub = _demo_hub(folder)
    browser = dialog.browser
    dialog.tabs.setCurrentWidget(browser)
    dialog.show()
    browser.follow(hub.url, context_size)
    browser.query.setText("gguf")
    browser.search()
    _until(lambda: browser.results.rowCount() == len(DEMO_REPOS) and not browser.work.busy("search"))
    _save(dialog, out / "model-search.png")
    repos = [item.text() for i in range(browser.results.rowCount()) if (item := browser.results.item(i, 0))]
    browser.results.selectRow(repos.index(DEMO_REPOS[0][0]))
    _until(lambda: browser.listing is not None and not browser.work.busy("files"))
    for row in reversed(range(len(QWEN_QUANTS))):  # each header is read once; the first quantization stays chosen
        browser.files.selectRow(row)
        _until(lambda: not browser.work.busy("header"))
    _save(dialog, out / "model-files.png")
    hub.close()


def _save(widget: QWidget, path: Path) -> None:
    for _ in range(20):
        QCoreApplication.processEvents()
        time.sleep(0.01)
    widget.grab().save(str(path))
    print(path)


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "docs/screenshots").resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from engine import folders

    models = folders().models
    if not any(models.glob("*.gguf")):
        print(f"No models in {models}: run `make models` first.", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="cleo-demo-") as tmp:
        _demo_profile(Path(tmp), models)
        from app.main_window import MainWindow
        from app.settings_dialog import SettingsDialog
        from app.worker import EngineWorker
        from engine import Settings

        app = QApplication.instance() or QApplication([])
        assert isinstance(app, QApplication)
        app.setStyle("Fusion")
        settings = Settings(threads=1, theme="light")
        window = MainWindow(settings, EngineWorker(settings))
        window.resize(1100, 700)
        window.show()
        window.start()
        deadline = time.monotonic() + 120
        while not window.sidebar.conversations and time.monotonic() < deadline:
            QCoreApplication.processEvents()
            time.sleep(0.01)
        lisbon = next(c.id for c in window.sidebar.conversations if c.title == "Weekend in Lisbon")
        window.controller.open(lisbon)
        while (window.chat.view is None or window.chat.view.id != lisbon) and time.monotonic() < deadline:
            QCoreApplication.processEvents()
            time.sleep(0.01)
        _save(window, out / "main-light.png")
        window.theme.apply(settings.updated(theme="dark"))
        _save(window, out / "main-dark.png")
        window.theme.apply(settings)
        window.memory_dock.show()
        _save(window, out / "memory.png")
        window.memory_dock.hide()
        window.open_models()
        assert window.models_dialog is not None
        _save(window.models_dialog, out / "models.png")
        _hub_pictures(window.models_dialog, out, Path(tmp), settings.context_size)
        window.models_dialog.close()
        dialog = SettingsDialog(settings, window)
        dialog.show()
        _save(dialog, out / "settings.png")
        dialog.close()
        window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
