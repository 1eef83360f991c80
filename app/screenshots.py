"""Screenshots of Cleo for the README: `make screenshots` (or `python -m app.screenshots [FOLDER]`).

Starts the real window on a throw-away demo profile (a copy of the default models, a few chats
and memories written through the engine's own store) and saves PNGs of the main window in light
and dark, the memory panel, the model manager and the settings. Under Xvfb when `make` finds
`xvfb-run`, otherwise on Qt's offscreen platform, which renders the same pixels.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

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
        window.models_dialog.close()
        dialog = SettingsDialog(settings, window)
        dialog.show()
        _save(dialog, out / "settings.png")
        dialog.close()
        window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
