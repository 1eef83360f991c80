"""Stop strings are found however the model's pieces split them."""

from __future__ import annotations

import pytest

from engine.api.stops import StopScanner


@pytest.mark.parametrize("pieces", [["Hello END there"], ["Hello E", "ND there"], ["Hello ", "E", "N", "D", "x"],
                                    ["Hel", "lo EN", "D"]])
def test_text_ends_before_the_stop_wherever_it_is_split(pieces: list[str]) -> None:
    scanner = StopScanner(["END", "STOP"])
    out = "".join(scanner.feed(piece) for piece in pieces) + scanner.flush()
    assert out == "Hello "
    assert scanner.hit


def test_text_that_only_looks_like_a_stop_is_passed_on() -> None:
    scanner = StopScanner(["END"])
    out = [scanner.feed(piece) for piece in ("The E", "N", "tire ", "EN")]
    assert "".join(out) + scanner.flush() == "The ENtire EN"
    assert out[0] == "The "  # "E" waits for the next piece
    assert not scanner.hit


def test_the_earliest_stop_wins() -> None:
    scanner = StopScanner(["world", "o"])
    assert scanner.feed("Hello world") == "Hell"
    assert scanner.feed("more") == ""
