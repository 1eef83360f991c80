"""Text from a model, a memory, a chat title or a file, made safe to print on a terminal.

A terminal obeys control sequences in what it prints: `ESC ] 52 ; c ; …` writes the user's
clipboard, `ESC ] 0 ; …` retitles the window, others move the cursor or rewrite what is on the
screen, and bidi overrides and marks make text read differently from what it is. None of that may come
from a model's reply, a memory or a GGUF file's metadata, so every such text the terminal
commands print goes through `printable` (or `json_text` for JSON), which shows each control
character as a visible escape (`\\x1b`) instead of sending it. Newlines and tabs stay; a carriage
return is dropped (it would let a line overwrite itself).
"""

from __future__ import annotations

import json
import re
from typing import Any

# Bidi controls: embeddings and overrides, isolates, and the marks (left-to-right, right-to-left,
# Arabic letter mark), which reorder what is around them; and the line and paragraph separators,
# which some terminals and pagers take for a line break that is not there.
_UNICODE_CONTROLS = "\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
# C0 controls but tab and newline, DEL, C1 controls (U+0080-U+009F: 8-bit CSI/OSC), and the above.
_CONTROLS = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_UNICODE_CONTROLS}]")
# What JSON leaves raw when not made ASCII (it escapes the C0 controls itself).
_RAW_IN_JSON = re.compile(f"[\x7f-\x9f{_UNICODE_CONTROLS}]")


def printable(text: str) -> str:
    """`text` with every control character shown, not obeyed."""
    return _CONTROLS.sub(_visible, text)


def json_text(value: Any, **options: Any) -> str:
    """`value` as JSON (non-ASCII text kept readable) with no control character left raw: the same
    data for a program, nothing a terminal would obey. Such characters occur only inside strings,
    where their `\\uXXXX` escape means the same."""
    text = json.dumps(value, ensure_ascii=False, **options)
    return _RAW_IN_JSON.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


def _visible(found: re.Match[str]) -> str:
    code = ord(found.group())
    if code == 0x0D:
        return ""
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
