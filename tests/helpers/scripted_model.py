"""A chat model that writes what the test scripted, at the `ChatModel` seam.

For tests whose point is the Session, the prompt or the window, not llama.cpp: it answers in
microseconds and says exactly what it was told to. Tests whose point is the model itself use the
real one (the default MoE on llama.cpp).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from engine.chat.kv_cache import KvSnapshot, common_prefix
from engine.runtime.chat_model import ReplyStats
from engine.runtime.sampling import Sampling


class ScriptedChatModel:
    """Replies with the scripted texts in order (then `fallback`), one word per token.

    `release`, when given, must be set before each token: a test holds a reply half-written with it.
    `prompts` records every prompt as text, so a test can check what the model was asked (tools
    offered appear as `<tools> name ...`, calls made as `<call> name arguments`). `chat_template` is
    the template source it says it has, which decides whether it takes tools (none by default).
    `parallel` is how many replies it says it writes beside the chat's; a reply written `alongside`
    leaves the chat's cache as it is.
    """

    def __init__(self, replies: Iterable[str] = (), *, path: Path = Path("scripted.gguf"), fallback: str = "Noted.",
                 context_size: int = 4096, json_answers: Iterable[Any] = (), release: threading.Event | None = None,
                 chat_template: str = "", parallel: int = 0) -> None:
        self.path = path
        self.parallel = parallel
        self.chat_template = chat_template
        self.device = "CPU"
        self.notices: list[str] = []
        self.replies = list(replies)
        self.fallback = fallback
        self.json_answers = list(json_answers)
        self.release = release
        self.prompts: list[str] = []
        self.asked_for_control_tokens: list[bool] = []  # `special` of each stream, in order
        self.closed = False
        self._context_size = context_size
        self._words: dict[str, int] = {}
        self._cached: list[int] = []

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def context_size(self) -> int:
        return self._context_size

    @property
    def cached_tokens(self) -> tuple[int, ...]:
        return tuple(self._cached)

    def tokenize(self, text: str, *, add_start: bool = True) -> list[int]:
        return [self._words.setdefault(word, len(self._words)) for word in text.split()]

    def detokenize(self, tokens: Sequence[int]) -> str:
        names = {number: word for word, number in self._words.items()}
        return " ".join(names[token] for token in tokens)

    def chat_tokens(self, messages: Sequence[dict[str, Any]], *, tools: Sequence[dict[str, Any]] | None = None
                    ) -> list[int]:
        text = " <tools> " + " ".join(t["function"]["name"] for t in tools) if tools else ""
        for m in messages:
            text += f" <{m['role']}> {m.get('content') or ''}"
            for call in m.get("tool_calls", ()):
                text += f" <call> {call['function']['name']} {json.dumps(call['function']['arguments'])}"
        return self.tokenize(text + " <assistant>")

    def stream(self, prompt: Sequence[int], sampling: Sampling, stop: threading.Event | None = None,
               stats: ReplyStats | None = None, *, special: bool = False, alongside: bool = False
               ) -> Iterator[str]:
        stats = stats if stats is not None else ReplyStats()
        self.asked_for_control_tokens.append(special)
        self.prompts.append(self.detokenize(prompt))
        cache = [] if alongside else self._cached  # a list of its own, dropped at the end
        stats.prompt_tokens, stats.cached_tokens = len(prompt), common_prefix(cache, prompt)
        cache[:] = prompt
        words = (self.replies.pop(0) if self.replies else self.fallback).split()
        for number, word in enumerate(words):
            if self.release is not None:
                self.release.wait(timeout=30)
            if stop is not None and stop.is_set():
                stats.finish_reason = "stopped"
                return
            if stats.completion_tokens >= sampling.max_tokens:
                stats.finish_reason = "length"
                return
            stats.completion_tokens += 1
            cache += self.tokenize(word)
            yield word if number == 0 else f" {word}"
        stats.finish_reason = "stop"

    def complete_json(self, messages: Sequence[dict[str, str]], schema: dict[str, Any]) -> Any:
        self.prompts.append(" ".join(m["content"] for m in messages))
        return self.json_answers.pop(0) if self.json_answers else {}

    def snapshot(self) -> KvSnapshot:
        return KvSnapshot(tuple(self._cached), bytes(len(self._cached)))

    def restore(self, snapshot: KvSnapshot) -> bool:
        self._cached = list(snapshot.tokens)
        return True

    def close(self) -> None:
        self.closed = True
