"""The window's fixtures, for the tests in this folder; they are defined in `tests.helpers.gui`."""

from __future__ import annotations

from tests.helpers.gui import open_window, profile

__all__ = ["open_window", "profile"]
