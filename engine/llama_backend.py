"""llama.cpp, through llama-cpp-python: the only module in Cleo that imports `llama_cpp`.

It loads GGUF files for chat (`ChatModel`) and for sentence embeddings (`Embedder`) and turns
llama.cpp's failures into Cleo's known errors. A `Llama` object is not thread-safe (DESIGN.md
decision 2): each instance belongs to the thread that created it. llama.cpp's own log goes to
Python logging (logger `llama.cpp`), never to the user's terminal.
"""

from __future__ import annotations

import codecs
import ctypes
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import _ggml, llama_grammar

from engine import cpu_features
from engine.catalog import read_model_info
from engine.chat_template import ChatTemplate
from engine.errors import ContextFull, GenerationFailed, ModelFileInvalid, ProcessorUnsupported
from engine.fit import Gpu, check_fits, plan_gpu_layers
from engine.gguf_header import read_header
from engine.kv_cache import KvSnapshot, common_prefix

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
    grammar: str = ""  # GBNF the reply must follow (e.g. from `json_grammar`); empty for free text


@dataclass
class ReplyStats:
    """What one reply cost, filled in while it streams."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt, reused from the cache instead of computed
    completion_tokens: int = 0
    finish_reason: str = ""  # "stop" (the model ended), "length" (token limit), "stopped" (the user)


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
    """A chat model loaded for generation, with the conversation's context kept between replies.

    llama.cpp's KV cache holds the tokens of the last prompt and reply (`cached_tokens`). A new
    prompt that starts with the same tokens only computes what is new (DESIGN.md decision 3), and
    `snapshot`/`restore` move one conversation's cache aside and back.
    """

    def __init__(
        self,
        path: Path,
        *,
        context_size: int = 4096,
        threads: int | None = None,
        gpu_layers: int = -1,
        gpus_found: Sequence[Gpu] | None = None,
        loader: Callable[..., llama_cpp.Llama] | None = None,
    ) -> None:
        load = loader or _load
        self.path = path
        self.info = read_model_info(path)  # validates the header before llama.cpp sees the file
        template_source = self.info.chat_template or _CHATML
        # Render a small conversation now, so a template that fails does so before llama.cpp loads
        # the file rather than in the middle of a chat.
        ChatTemplate(template_source, origin=str(path)).render(_SAMPLE_CHAT, add_generation_prompt=True)
        plan = plan_gpu_layers(self.info, context_size, gpu_layers, gpus() if gpus_found is None else gpus_found)
        self.notices = [plan.notice] if plan.notice else []  # what the user must hear about this load
        self.device = plan.device
        if plan.layers == 0:
            check_fits(self.info, context_size)
        # Generation leaves a core for the GUI; reading a prompt is short and uses every core.
        # A thread count the user (or a test) sets applies to both.
        params = {"n_ctx": context_size, "n_threads": threads or default_threads(),
                  "n_threads_batch": threads or physical_cores()}
        try:
            self._llm = load(path, n_gpu_layers=plan.layers, **params)
        except ModelFileInvalid as exc:
            if plan.layers == 0:
                raise
            # A failed GPU load (driver, memory) is retried on the CPU, and the user is told why.
            check_fits(self.info, context_size)
            self._llm = load(path, n_gpu_layers=0, **params)
            self.device = "CPU"
            self.notices.append(f"{path.name} runs on the CPU, which is slower: loading it on the GPU failed. "
                                f"{exc.message}")
        self._ctx = self._llm.ctx
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._n_vocab = int(self._llm.n_vocab())
        self._cached: list[int] = []  # tokens whose keys and values are in the cache, from position 0
        self._stop_prefill: threading.Event | None = None
        self._abort = llama_cpp.ggml_abort_callback(self._should_abort)  # kept alive with the model
        self._piece = ctypes.create_string_buffer(256)
        self._bos_text = self._token_text(self._llm.token_bos())
        self._eos_text = self._token_text(self._llm.token_eos())
        self._template = ChatTemplate(template_source, bos_token=self._bos_text, eos_token=self._eos_text,
                                      origin=str(path))

    @property
    def context_size(self) -> int:
        return int(self._llm.n_ctx())

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def metadata(self) -> dict[str, str]:
        """The GGUF metadata as llama.cpp read it (values are strings)."""
        return dict(self._llm.metadata)

    @property
    def cached_tokens(self) -> tuple[int, ...]:
        return tuple(self._cached)

    def tokenize(self, text: str, *, add_start: bool = True) -> list[int]:
        """Token ids of `text`, special tokens included, with the model's start token (if it uses
        one) unless `text` already begins with it."""
        add_start = add_start and not (self._bos_text and text.startswith(self._bos_text))
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_start, special=True))

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._llm.detokenize(list(tokens)).decode("utf-8", "replace")

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """`messages` as the prompt text the model's own chat template makes of them."""
        return self._template.render(messages, add_generation_prompt=True)

    def chat_tokens(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """The exact tokens the model reads for `messages`, ending where its reply begins."""
        return self.tokenize(self.render_chat(messages))

    def count_chat_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        return len(self.chat_tokens(messages))

    def _token_text(self, token: int) -> str:
        return "" if token < 0 else self._llm.detokenize([token], special=True).decode("utf-8", "replace")

    def next_token_logits(self, prompt: str) -> np.ndarray:
        """Logits over the vocabulary for the token after `prompt`, evaluated from scratch."""
        self.forget()
        self._prefill(self.tokenize(prompt), None)
        row = llama_cpp.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(row, shape=(self._n_vocab,)).copy()  # [n_vocab]

    def greedy_continuation(self, prompt: str, max_tokens: int) -> str:
        """The most likely continuation of `prompt`, token by token (temperature 0)."""
        sampling = Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=max_tokens)
        return "".join(self.stream(self.tokenize(prompt), sampling))

    def stream_chat(
        self,
        messages: Sequence[dict[str, str]],
        sampling: Sampling,
        stop: threading.Event | None = None,
    ) -> Iterator[str]:
        """Stream the assistant's reply to `messages` (rendered with the model's chat template)."""
        return self.stream(self.chat_tokens(messages), sampling, stop)

    def complete_json(self, messages: Sequence[dict[str, str]], schema: dict[str, Any], *,
                      max_tokens: int = 256) -> Any:
        """The model's answer to `messages` as JSON that follows `schema` (grammar-constrained, greedy).

        Raises `GenerationFailed` when the answer is cut off by `max_tokens` before the JSON ends.
        """
        sampling = Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=max_tokens, grammar=json_grammar(schema))
        text = "".join(self.stream(self.chat_tokens(messages), sampling))
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise GenerationFailed(f"{self.path.name} did not finish its JSON answer within {max_tokens} tokens.",
                                   hint="This is retried after a later turn.") from exc

    def stream(
        self,
        prompt: Sequence[int],
        sampling: Sampling,
        stop: threading.Event | None = None,
        stats: ReplyStats | None = None,
    ) -> Iterator[str]:
        """Stream the text that follows `prompt`, reusing the cached tokens it starts with.

        Setting `stop` ends the reply within one token, or aborts reading a long prompt. The
        tokens read and generated stay cached, so the next prompt continues from them.
        """
        stats = stats if stats is not None else ReplyStats()
        if len(prompt) >= self.context_size:
            raise ContextFull(f"The prompt has {len(prompt)} tokens; {self.path.name} reads at most "
                              f"{self.context_size}.", hint="Start a new chat or raise the context size.")
        stats.prompt_tokens = len(prompt)
        stats.cached_tokens = self._prefill(prompt, stop)
        if stats.cached_tokens < 0:
            stats.cached_tokens, stats.finish_reason = 0, "stopped"
            return
        chain = _sampler_chain(sampling, self._n_vocab, self._vocab)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        one = (llama_cpp.llama_token * 1)()
        batch = llama_cpp.llama_batch_get_one(one, 1)
        try:
            while True:
                if stop is not None and stop.is_set():
                    stats.finish_reason = "stopped"
                    break
                if stats.completion_tokens >= sampling.max_tokens or len(self._cached) >= self.context_size:
                    stats.finish_reason = "length"
                    break
                token = llama_cpp.llama_sampler_sample(chain, self._ctx, -1)
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    stats.finish_reason = "stop"
                    break
                stats.completion_tokens += 1
                text = decoder.decode(self._token_bytes(token))
                if text:
                    yield text
                one[0] = token
                self._decode(batch, 1)
                self._cached.append(token)
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail
        finally:
            llama_cpp.llama_sampler_free(chain)

    def _prefill(self, prompt: Sequence[int], stop: threading.Event | None) -> int:
        """Put `prompt` in the cache; the number of tokens reused, or -1 when `stop` interrupted."""
        keep = min(common_prefix(self._cached, prompt), len(prompt) - 1)  # the last token is read again for its logits
        self._forget_from(keep)
        self._stop_prefill = stop
        if stop is not None:
            llama_cpp.llama_set_abort_callback(self._ctx, self._abort, None)
        try:
            n_batch = self._llm.n_batch
            for start in range(keep, len(prompt), n_batch):
                chunk = list(prompt[start:start + n_batch])
                tokens = (llama_cpp.llama_token * len(chunk))(*chunk)
                if not self._decode(llama_cpp.llama_batch_get_one(tokens, len(chunk)), len(chunk)):
                    return -1
                self._cached.extend(chunk)
        finally:
            if stop is not None:  # checked per graph node, so only while reading a prompt
                llama_cpp.llama_set_abort_callback(self._ctx, _NO_ABORT, None)
            self._stop_prefill = None
        return keep

    def _decode(self, batch: Any, n_tokens: int) -> bool:
        """Run llama.cpp on `batch`; False when it was aborted by a stop request."""
        status = llama_cpp.llama_decode(self._ctx, batch)
        if status == 0:
            return True
        self._forget_from(len(self._cached))  # a failed or aborted batch may leave part of itself behind
        if status == 2:
            return False
        raise GenerationFailed(f"llama.cpp could not process {n_tokens} tokens with {self.path.name} "
                               f"(status {status}).", hint="Details are in the log file; try a new chat.")

    def _should_abort(self, _data: ctypes.c_void_p) -> bool:
        return self._stop_prefill is not None and self._stop_prefill.is_set()

    def _token_bytes(self, token: int) -> bytes:
        n = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, False)
        if n < 0:  # the piece is longer than the buffer
            self._piece = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, False)
        return self._piece.raw[:n]

    def _forget_from(self, position: int) -> None:
        """Drop cached tokens (and anything a failed batch left behind) from `position` on."""
        if not llama_cpp.llama_memory_seq_rm(self._memory, 0, position, -1):
            llama_cpp.llama_memory_clear(self._memory, True)  # some caches only drop whole sequences
            position = 0
        del self._cached[position:]

    def forget(self) -> None:
        """Empty the cache, so the next prompt is read from its start."""
        self._forget_from(0)

    def snapshot(self) -> KvSnapshot:
        """A copy of the cache (tokens and their keys and values) that `restore` puts back."""
        size = llama_cpp.llama_state_seq_get_size(self._ctx, 0)
        data = bytearray(size)
        view = (ctypes.c_uint8 * size).from_buffer(data)
        written = llama_cpp.llama_state_seq_get_data(self._ctx, view, size, 0)
        del view  # release the export so the bytearray can be frozen
        return KvSnapshot(tokens=tuple(self._cached), data=bytes(data[:written]))

    def restore(self, snapshot: KvSnapshot) -> bool:
        """Replace the cache with `snapshot`; False (and an empty cache) if llama.cpp refuses it."""
        self.forget()
        buffer = (ctypes.c_uint8 * len(snapshot.data)).from_buffer_copy(snapshot.data)
        if llama_cpp.llama_state_seq_set_data(self._ctx, buffer, len(snapshot.data), 0) == 0:
            self.forget()
            return False
        self._cached = list(snapshot.tokens)
        return True

    def close(self) -> None:
        self._llm.close()


class Embedder:
    """A sentence embedding model (BERT GGUF with mean pooling) on one thread."""

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        self.path = path
        read_header(path)  # a bad file gets a clear error here, before llama.cpp sees it
        self._llm = _load(path, n_ctx=512, n_threads=threads, n_threads_batch=threads, embedding=True)
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


_NO_ABORT = llama_cpp.ggml_abort_callback()  # a null callback: nothing to check


def json_grammar(schema: dict[str, Any]) -> str:
    """A GBNF grammar that only lets the model write JSON matching `schema`."""
    return str(llama_grammar.json_schema_to_gbnf(json.dumps(schema)))


def gpus() -> list[Gpu]:
    """The GPUs llama.cpp can offload to in this build, with their free memory now."""
    lib = _ggml.libggml
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_description.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_description.restype = ctypes.c_char_p
    lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                            ctypes.POINTER(ctypes.c_size_t)]
    found = []
    for index in range(lib.ggml_backend_dev_count()):
        device = lib.ggml_backend_dev_get(index)
        if lib.ggml_backend_dev_type(device) not in (_DEVICE_GPU, _DEVICE_IGPU):
            continue
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        lib.ggml_backend_dev_memory(device, ctypes.byref(free), ctypes.byref(total))
        name = (lib.ggml_backend_dev_description(device) or b"GPU").decode("utf-8", "replace")
        found.append(Gpu(name=name, free=int(free.value), total=int(total.value)))
    return found


# enum ggml_backend_dev_type: CPU, GPU, IGPU (integrated, host memory), ACCEL, META
_DEVICE_GPU, _DEVICE_IGPU = 1, 2


def _sampler_chain(sampling: Sampling, n_vocab: int, vocab: Any) -> Any:
    """llama.cpp's own sampler chain for `sampling`; the caller frees it."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

    def add(sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(chain, sampler)

    if sampling.grammar:  # first, so every later step only sees tokens the grammar allows
        grammar = llama_cpp.llama_sampler_init_grammar(vocab, sampling.grammar.encode(), b"root")
        if not grammar:
            llama_cpp.llama_sampler_free(chain)
            raise ValueError("llama.cpp rejected the grammar")
        add(grammar)

    if sampling.repeat_penalty != 1.0:
        add(llama_cpp.llama_sampler_init_penalties(n_vocab, _PENALTY_LAST_N, sampling.repeat_penalty, 0.0, 0.0))
    if sampling.temperature <= 0.0:
        add(llama_cpp.llama_sampler_init_greedy())
        return chain
    if sampling.top_k > 0:
        add(llama_cpp.llama_sampler_init_top_k(sampling.top_k))
    add(llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
    add(llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1))
    add(llama_cpp.llama_sampler_init_temp(sampling.temperature))
    add(llama_cpp.llama_sampler_init_dist(sampling.seed if sampling.seed >= 0 else _RANDOM_SEED))
    return chain


_PENALTY_LAST_N = 64  # llama.cpp's default window for the repeat penalty
_RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp picks a random seed


_SAMPLE_CHAT = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                {"role": "assistant", "content": "a"}, {"role": "user", "content": "u"}]


def check_processor(has: dict[str, bool] | None = None) -> None:
    """Raise `ProcessorUnsupported` if this processor (or `has`, for tests) lacks an instruction set
    llama.cpp was compiled to use: running it anyway ends the app with "illegal instruction"."""
    needed = cpu_features.built_for(llama_cpp.llama_print_system_info().decode("utf-8", errors="replace"))
    missing = cpu_features.missing_features(needed, cpu_features.this_processor() if has is None else has)
    if missing:
        names = " and ".join([", ".join(missing[:-1]), missing[-1]] if len(missing) > 1 else missing)
        raise ProcessorUnsupported(
            f"This computer's processor lacks {names}, which Cleo's engine (llama.cpp) was built to use, "
            "so it cannot run a model here (most Intel Core and AMD processors made since 2015 have them; "
            "many Celeron, Pentium and Atom chips do not).",
            hint="Run Cleo from its source on this computer, with llama.cpp rebuilt for this processor: "
                 f'CMAKE_ARGS="-DGGML_NATIVE=ON" pip install --force-reinstall --no-cache-dir '
                 f"llama-cpp-python=={llama_cpp.__version__} (see the README).")


def _load(path: Path, **params: Any) -> llama_cpp.Llama:
    _route_logs_to_python()
    global _processor_checked
    if not _processor_checked:
        check_processor()
        _processor_checked = True
    try:
        return llama_cpp.Llama(model_path=str(path), verbose=False, **params)
    except ValueError as exc:
        raise ModelFileInvalid(
            f"llama.cpp could not load {path} ({exc}).",
            hint="The file may be damaged or use an architecture this version of Cleo does not run; "
                 "details are in the log file.",
        ) from exc


_processor_checked = False
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
