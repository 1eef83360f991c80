"""Stop strings, found in the text however the model's pieces split them."""

from __future__ import annotations

from collections.abc import Sequence


class StopScanner:
    """Passes text through until one of `stops` appears; the stop and all after it are dropped.

    Text that could be the start of a stop is held back until the next piece shows whether it is
    one, so a stop split across pieces ("<|e" + "nd|>") is still cut out whole.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.hit = False
        self._held = ""

    def feed(self, piece: str) -> str:
        """The text that is certainly before any stop; after a hit, nothing more."""
        if self.hit:
            return ""
        text = self._held + piece
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.hit, self._held = True, ""
            return text[:cut]
        keep = self._partial_stop_at_end(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        """What was held back, once the reply ended without completing a stop."""
        held, self._held = self._held, ""
        return "" if self.hit else held

    def _partial_stop_at_end(self, text: str) -> int:
        """The length of the longest end of `text` that begins some stop."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
