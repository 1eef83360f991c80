"""llama.cpp, through llama-cpp-python: the only module in Cleo that imports `llama_cpp`.

It loads GGUF files for chat (`ChatModel`) and for sentence embeddings (`Embedder`) and turns
llama.cpp's failures into Cleo's known errors. A `Llama` object is not thread-safe (DESIGN.md
decision 2): each instance belongs to the thread that created it. llama.cpp's own log goes to
Python logging (logger `llama.cpp`), never to the user's terminal.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import llama_chat_format

from engine.catalog import read_model_info
from engine.errors import ModelFileInvalid
from engine.fit import check_fits
from engine.gguf_header import read_header

log = logging.getLogger("llama.cpp")

# ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 continues the previous record.
_GGML_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
# Used when a model carries no chat template of its own.
_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked. `seed` -1 means a fresh random seed every reply."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    max_tokens: int = 1024
    seed: int = -1


def physical_cores() -> int:
    """Physical CPU cores; hyper-threads share a core's arithmetic units, so they do not count."""
    if sys.platform.startswith("linux"):
        try:
            cores = set()
            physical = ""
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "physical id":
                    physical = value.strip()
                elif key.strip() == "core id":
                    cores.add((physical, value.strip()))
            if cores:
                return len(cores)
        except OSError:
            pass
    return os.cpu_count() or 1


def default_threads() -> int:
    """Physical cores minus one, so the GUI keeps a core (all cores busy measured 3-10x slower)."""
    return max(1, physical_cores() - 1)


class ChatModel:
    """A chat model loaded for generation."""

    def __init__(
        self,
        path: Path,
        *,
        context_size: int = 4096,
        threads: int | None = None,
        gpu_layers: int = 0,
    ) -> None:
        self.path = path
        self.info = read_model_info(path)  # validates the header before llama.cpp sees the file
        check_fits(self.info, context_size)
        self._llm = _load(path, n_ctx=context_size, n_threads=threads or default_threads(),
                          n_gpu_layers=gpu_layers)

    @property
    def context_size(self) -> int:
        return int(self._llm.n_ctx())

    @property
    def metadata(self) -> dict[str, str]:
        """The GGUF metadata as llama.cpp read it (values are strings)."""
        return dict(self._llm.metadata)

    def tokenize(self, text: str) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """`messages` as the prompt text the model's own chat template makes of them."""
        template = self._llm.metadata.get("tokenizer.chat_template") or _CHATML
        formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(self._llm.token_eos()),
            bos_token=self._token_text(self._llm.token_bos()),
        )
        return str(formatter(messages=list(messages)).prompt)  # type: ignore[arg-type]

    def count_chat_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        return len(self.tokenize(self.render_chat(messages)))

    def _token_text(self, token: int) -> str:
        return "" if token < 0 else self._llm.detokenize([token], special=True).decode("utf-8", "replace")

    def next_token_logits(self, prompt: str) -> np.ndarray:
        """Logits over the vocabulary for the token after `prompt`, evaluated from scratch."""
        self._llm.reset()
        self._llm.eval(self.tokenize(prompt))
        n_vocab = self._llm.n_vocab()
        row = llama_cpp.llama_get_logits_ith(self._llm.ctx, -1)
        return np.ctypeslib.as_array(row, shape=(n_vocab,)).copy()  # [n_vocab]

    def greedy_continuation(self, prompt: str, max_tokens: int) -> str:
        """The most likely continuation of `prompt`, token by token (temperature 0)."""
        self._llm.reset()
        result = self._llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, top_k=1, stream=False)
        assert isinstance(result, dict)  # stream=False returns one response, not an iterator
        return str(result["choices"][0]["text"])

    def stream_chat(
        self,
        messages: Sequence[dict[str, str]],
        sampling: Sampling,
        stop: threading.Event | None = None,
    ) -> Iterator[str]:
        """Stream the assistant's reply to `messages` (rendered with the model's chat template).

        Setting `stop` ends the reply after the token being generated.
        """
        chunks = self._llm.create_chat_completion(
            messages=list(messages),  # type: ignore[arg-type]
            stream=True,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            min_p=sampling.min_p,
            repeat_penalty=sampling.repeat_penalty,
            max_tokens=sampling.max_tokens,
            seed=sampling.seed if sampling.seed >= 0 else None,
        )
        for chunk in chunks:
            if stop is not None and stop.is_set():
                break
            text = chunk["choices"][0]["delta"].get("content")  # type: ignore[index,union-attr]
            if text:
                yield str(text)

    def close(self) -> None:
        self._llm.close()


class Embedder:
    """A sentence embedding model (BERT GGUF with mean pooling) on one thread."""

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        self.path = path
        read_header(path)  # a bad file gets a clear error here, before llama.cpp sees it
        self._llm = _load(path, n_ctx=512, n_threads=threads, embedding=True)
        self.dimension = int(self._llm.n_embd())

    def tokenize(self, text: str) -> list[int]:
        """Token ids as the model sees `text`, with its start and end markers."""
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=True))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised vectors for `texts`, one row each: [len(texts), dimension]."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = np.asarray(self._llm.embed(list(texts)), dtype=np.float32)  # [n, dim]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def close(self) -> None:
        self._llm.close()


def _load(path: Path, **params: Any) -> llama_cpp.Llama:
    _route_logs_to_python()
    try:
        return llama_cpp.Llama(model_path=str(path), verbose=False, **params)
    except ValueError as exc:
        raise ModelFileInvalid(
            f"llama.cpp could not load {path} ({exc}).",
            hint="The file may be damaged or use an architecture this version of Cleo does not run; "
                 "details are in the log file.",
        ) from exc


_log_callback: Any = None
_log_lock = threading.Lock()
_pending_line: list[str] = []
_last_level = logging.DEBUG


def _route_logs_to_python() -> None:
    """Install (once) a llama.cpp log callback that forwards whole lines to `logging`."""
    global _log_callback
    with _log_lock:
        if _log_callback is not None:
            return

        @llama_cpp.llama_log_callback
        def forward(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
            global _last_level
            if level != 5:  # 5 continues the previous record at its level
                _last_level = _GGML_LEVELS.get(level, logging.DEBUG)
            _pending_line.append(text.decode("utf-8", errors="replace"))
            if _pending_line[-1].endswith("\n"):
                line = "".join(_pending_line).rstrip()
                _pending_line.clear()
                if line:
                    log.log(_last_level, "%s", line)

        _log_callback = forward  # ctypes callbacks must outlive their registration
        llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))
