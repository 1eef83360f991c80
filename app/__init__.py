"""Cleo's desktop app (PySide6). Until the window lands (issue 6), `cleo` opens the terminal chat."""
