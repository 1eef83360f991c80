"""Text printed on a terminal shows every character a terminal (or a pager) would obey, for every
such character, in plain text and in JSON, and leaves ordinary text of any script as it is."""

from __future__ import annotations

import json
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.cli.terminal_text import json_text, printable

# Bidi marks reorder the text around them; the separators are line breaks to some terminals.
UNICODE_CONTROLS = ["\u061c", "\u200e", "\u200f", "\u2028", "\u2029", "\u202a", "\u202e", "\u2066", "\u2069"]


@pytest.mark.parametrize("control", UNICODE_CONTROLS, ids=[f"U+{ord(c):04X}" for c in UNICODE_CONTROLS])
def test_a_bidi_control_or_separator_is_shown_not_obeyed(control: str) -> None:
    text = f"pay {control}0001$ now"

    assert printable(text) == f"pay \\u{ord(control):04x}0001$ now"
    as_json = json_text({"memory": text})
    assert control not in as_json
    assert json.loads(as_json) == {"memory": text}  # the same data for a program reading it


def test_text_in_any_script_and_its_own_line_breaks_are_kept() -> None:
    text = "Cleo répond 你好, مرحبا and שלום\n\ttabbed 👋"
    assert printable(text) == text
    assert json.loads(json_text(text)) == text


@given(st.text())
def test_no_character_a_terminal_obeys_is_left_in_printed_text(text: str) -> None:
    shown = printable(text)
    obeyed = [c for c in shown if (unicodedata.category(c) in ("Cc", "Zl", "Zp") and c not in "\n\t")
              or unicodedata.bidirectional(c) in ("LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI")
              or c in "\u061c\u200e\u200f"]
    assert obeyed == []
