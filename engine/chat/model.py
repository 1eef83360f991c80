"""The seam between a turn and the model that writes it: what the assistant and the prompt use.

`engine.runtime.chat_model.LlamaChatModel` is the real one (llama.cpp on a GGUF file). Tests whose
point is the Session, the prompt or the window pass a scripted model through the same seam;
tests whose point is llama.cpp use the real one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from engine.chat.kv_cache import KvSnapshot
    from engine.runtime.chat_model import ReplyStats
    from engine.runtime.sampling import Sampling
    from engine.settings import Settings


class ChatModel(Protocol):
    path: Path
    device: str  # "CPU", or where on the GPU it runs
    notices: list[str]  # what the user must hear about how it was loaded (e.g. a CPU fallback)
    parallel: int  # replies it may write alongside the chat's, each in a sequence of its own (0: none)

    @property
    def name(self) -> str: ...

    @property
    def context_size(self) -> int: ...

    @property
    def cached_tokens(self) -> tuple[int, ...]:
        """The tokens whose keys and values the model holds, from position 0."""
        ...

    def tokenize(self, text: str, *, add_start: bool = True) -> list[int]: ...

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    @property
    def chat_template(self) -> str:
        """The source of its chat template (what says whether, and how, it takes tools)."""
        ...

    def chat_tokens(self, messages: Sequence[dict[str, Any]], *, tools: Sequence[dict[str, Any]] | None = None
                    ) -> list[int]:
        """The tokens the model reads for `messages` and the functions in `tools` (its chat template),
        ending where its reply begins."""
        ...

    def stream(self, prompt: Sequence[int], sampling: Sampling, stop: threading.Event | None = None,
               stats: ReplyStats | None = None, *, special: bool = False, alongside: bool = False
               ) -> Iterator[str]:
        """The reply's text piece by piece; setting `stop` ends it within one token. With `special`,
        control tokens but end-of-generation are part of the text (tool calls are marked with them).
        With `alongside` it is written in a sequence of its own, beside the chat's (see `parallel`),
        whose cache it leaves as it is."""
        ...

    def complete_json(self, messages: Sequence[dict[str, str]], schema: dict[str, Any]) -> Any: ...

    def snapshot(self) -> KvSnapshot: ...

    def restore(self, snapshot: KvSnapshot) -> bool: ...

    def close(self) -> None: ...


# Changing one of these loads the model again; the others apply from the next turn.
# So does turning the local API on or off, or changing its parallel requests (`reloads`).
RELOADING_SETTINGS = ("chat_model", "context_size", "threads", "gpu_layers", "gpu_memory_budget_mb",
                      "kv_cache_budget_mb")

# How a Session loads a chat model: the file, and the settings that size it.
ModelLoader = Callable[[Path, "Settings"], ChatModel]


def load_llama_model(path: Path, settings: Settings) -> ChatModel:
    """The real model: llama.cpp on the GGUF file at `path`."""
    from engine.runtime.chat_model import LlamaChatModel

    return LlamaChatModel(path, context_size=settings.context_size, threads=settings.threads or None,
                          gpu_layers=settings.gpu_layers, gpu_memory_budget_mb=settings.gpu_memory_budget_mb,
                          parallel=api_sequences(settings))


def api_sequences(settings: Settings) -> int:
    """Sequences a model is loaded with for the local API's requests: none while the API is off,
    as each holds a whole context's cache in memory."""
    return settings.api_parallel if settings.api_enabled else 0


def reloads(old: Settings, new: Settings) -> bool:
    """Whether going from `old` to `new` loads the model again."""
    return (any(getattr(old, name) != getattr(new, name) for name in RELOADING_SETTINGS)
            or api_sequences(old) != api_sequences(new))
