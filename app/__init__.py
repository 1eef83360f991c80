"""Cleo's desktop app (PySide6): the window over the engine's Session, and the `cleo` command."""
