"""What the user types into `cleo chat`: the next line, and whether one is waiting.

`cleo chat` learns from the conversation while the user types, and stops as soon as a line is
waiting. `input()` cannot say that: it reads the terminal or pipe through a buffer that may
already hold the next line while select() on the file says nothing is left. So on POSIX the
lines are read straight from the file descriptor into a buffer of our own. A terminal in its
usual (canonical) mode hands over a line only when Enter is pressed and keeps its own line
editing. Windows consoles cannot be select()ed: there a pressed key counts as "waiting", and
a pipe never does.
"""

from __future__ import annotations

import os
import sys


class TypedLines:
    def __init__(self) -> None:
        self._pending = b""
        try:
            self._fd: int | None = None if sys.platform == "win32" else sys.stdin.fileno()
        except (AttributeError, OSError, ValueError):  # stdin replaced or closed
            self._fd = None
        self._ended = False

    def waiting(self) -> bool:
        """Whether reading a line now would not wait for the user (a line, or the end of input)."""
        if self._fd is None:
            return _key_pressed()
        if b"\n" in self._pending or self._ended:
            return True
        import select

        try:
            return bool(select.select([self._fd], [], [], 0)[0])
        except (OSError, ValueError):
            return True  # reading tells what is wrong

    def read(self) -> str:
        """The next line without its end; EOFError once the input has ended (Ctrl+D)."""
        if self._fd is None:
            return input()
        while b"\n" not in self._pending and not self._ended:
            chunk = os.read(self._fd, 65536)
            self._ended = not chunk
            self._pending += chunk
        if not self._pending:
            raise EOFError
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode(sys.stdin.encoding or "utf-8", errors="replace").removesuffix("\r")


def _key_pressed() -> bool:
    if sys.platform == "win32":
        import msvcrt

        return msvcrt.kbhit()
    return False  # stdin is no file: input() will tell
