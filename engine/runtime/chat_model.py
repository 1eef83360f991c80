"""A chat model in llama.cpp: generation that keeps the conversation's tokens cached between replies.

`LlamaChatModel` renders chats with the model's own template, streams replies token by token
(stoppable within one token, or while reading a long prompt), reuses the cached prefix a new
prompt shares with the last one, and sets a conversation's cache aside and back (`snapshot`,
`restore`). Like every `Llama` object it belongs to the thread that created it.
"""

from __future__ import annotations

import codecs
import ctypes
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from engine.chat.kv_cache import KvSnapshot, common_prefix
from engine.errors import ContextFull, GenerationFailed, ModelFileInvalid
from engine.models.catalog import read_model_info
from engine.models.fit import Gpu, check_fits
from engine.models.placement import Placement, model_tensors, plan_placement
from engine.runtime.batch import Batcher, Lane
from engine.runtime.chat_template import ChatTemplate
from engine.runtime.llama import default_threads, gpus, load_gguf, physical_cores
from engine.runtime.sampling import Sampling, json_grammar, sampler_chain

# Used when a model carries no chat template of its own.
_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# A copy of another sequence's cache costs a copy of a whole context's keys and values: fewer
# shared tokens than this are read again instead.
_WORTH_COPYING = 64
_SAMPLE_CHAT = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                {"role": "assistant", "content": "a"}, {"role": "user", "content": "u"}]


@dataclass
class ReplyStats:
    """What one reply cost, filled in while it streams."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt, reused from the cache instead of computed
    completion_tokens: int = 0
    finish_reason: str = ""  # "stop" (the model ended), "length" (token limit), "stopped" (the user)


class LlamaChatModel:
    """A chat model loaded for generation, with the conversation's context kept between replies.

    llama.cpp's KV cache holds the tokens of the last prompt and reply (`cached_tokens`). A new
    prompt that starts with the same tokens only computes what is new, and `snapshot`/`restore`
    move one conversation's cache aside and back.
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
        parallel: int = 0,
        gpu_memory_budget_mb: int = 0,
    ) -> None:
        load = loader or load_gguf
        self.path = path
        self.parallel = parallel  # replies that may be written alongside the chat's, each in its own sequence
        self.info = read_model_info(path)  # validates the header before llama.cpp sees the file
        template_source = self.info.chat_template or _CHATML
        # Render a small conversation now, so a template that fails does so before llama.cpp loads
        # the file rather than in the middle of a chat.
        ChatTemplate(template_source, origin=str(path)).render(_SAMPLE_CHAT, add_generation_prompt=True)
        # Every sequence holds up to `context_size` tokens of its own.
        cells = context_size * (parallel + 1)
        self.placement = plan_placement(self.info, model_tensors(path), cells, requested=gpu_layers,
                                        gpus=gpus() if gpus_found is None else gpus_found,
                                        budget_mb=gpu_memory_budget_mb)
        self.notices = [self.placement.notice] if self.placement.notice else []  # what the user must hear
        self.device = self.placement.device
        if self.placement.gpu_layers == 0:
            check_fits(self.info, cells)
        # Generation leaves a core for the GUI; reading a prompt is short and uses every core.
        # A thread count the user (or a test) sets applies to both.
        params: dict[str, Any] = {"n_ctx": cells, "sequences": parallel + 1,
                                  "n_threads": threads or default_threads(),
                                  "n_threads_batch": threads or physical_cores()}
        try:
            self._llm = load(path, n_gpu_layers=self.placement.gpu_layers, cpu_tensors=self.placement.cpu_tensors,
                             **params)
        except ModelFileInvalid as exc:
            if self.placement.gpu_layers == 0:
                raise
            # A failed GPU load (driver, memory) is retried on the CPU, and the user is told why.
            check_fits(self.info, cells)
            self._llm = load(path, n_gpu_layers=0, **params)
            self.notices.append(f"{path.name} runs on the CPU, which is slower: loading it on the GPU failed. "
                                f"{exc.message}")
            self.placement = Placement(0, self.placement.layers, expert_layers=self.placement.expert_layers,
                                       explanation=f"on the CPU: loading it on the GPU failed ({exc.message})")
            self.device = self.placement.device
        self._llm._batch.close()  # Llama's own batch (n_batch x n_ctx sequence ids) is never used here
        self._ctx = self._llm.ctx
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._n_vocab = int(self._llm.n_vocab())
        # Per sequence, the tokens whose keys and values are in its cache, from position 0.
        self._sequences: list[list[int]] = [[] for _ in range(parallel + 1)]
        self._batcher = Batcher(self._ctx, self._vocab, self._llm.n_batch, path.name)
        self._piece = ctypes.create_string_buffer(256)
        self._bos_text = self._token_text(self._llm.token_bos())
        self._eos_text = self._token_text(self._llm.token_eos())
        self._template = ChatTemplate(template_source, bos_token=self._bos_text, eos_token=self._eos_text,
                                      origin=str(path))

    @property
    def context_size(self) -> int:
        """Tokens one sequence holds: the longest prompt and reply together."""
        return int(llama_cpp.llama_n_ctx_seq(self._ctx))

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def metadata(self) -> dict[str, str]:
        """The GGUF metadata as llama.cpp read it (values are strings)."""
        return dict(self._llm.metadata)

    @property
    def cached_tokens(self) -> tuple[int, ...]:
        return tuple(self._sequences[0])

    def tokenize(self, text: str, *, add_start: bool = True) -> list[int]:
        """Token ids of `text`, special tokens included, with the model's start token (if it uses
        one) unless `text` already begins with it."""
        add_start = add_start and not (self._bos_text and text.startswith(self._bos_text))
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_start, special=True))

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._llm.detokenize(list(tokens)).decode("utf-8", "replace")

    @property
    def chat_template(self) -> str:
        """The source of the chat template the model's prompts are rendered with."""
        return self._template.source

    def render_chat(self, messages: Sequence[dict[str, Any]], *, tools: Sequence[dict[str, Any]] | None = None
                    ) -> str:
        """`messages` as the prompt text the model's own chat template makes of them, offering `tools`."""
        return self._template.render(messages, add_generation_prompt=True, tools=tools)

    def chat_tokens(self, messages: Sequence[dict[str, Any]], *, tools: Sequence[dict[str, Any]] | None = None
                    ) -> list[int]:
        """The exact tokens the model reads for `messages` (and `tools`), ending where its reply begins."""
        return self.tokenize(self.render_chat(messages, tools=tools))

    def count_chat_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        return len(self.chat_tokens(messages))

    def _token_text(self, token: int) -> str:
        return "" if token < 0 else self._llm.detokenize([token], special=True).decode("utf-8", "replace")

    def next_token_logits(self, prompt: str) -> np.ndarray:
        """Logits over the vocabulary for the token after `prompt`, evaluated from scratch."""
        self.forget()
        lane = self._join(self.tokenize(prompt), None, None, 0)
        try:
            self._batcher.read(lane)
            row = llama_cpp.llama_get_logits_ith(self._ctx, lane.row)
        finally:
            self._batcher.leave(lane)
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
        *,
        special: bool = False,
        alongside: bool = False,
    ) -> Iterator[str]:
        """Stream the text that follows `prompt`, reusing the cached tokens it starts with.

        Setting `stop` ends the reply within one token, or aborts reading a long prompt. The
        tokens read and generated stay cached, so the next prompt continues from them. Control
        tokens are left out of the text, unless `special`: then all but end-of-generation (which
        ends the reply) are written as their text, e.g. the `[TOOL_CALLS]` or `<|python_tag|>` that
        starts a tool call, which a reader of the reply must see.

        The reply goes in the chat's sequence, unless `alongside`: then it takes a free sequence
        of its own (the one whose cache shares most with `prompt`) and the chat's cache stays as
        it is. Replies streaming at the same time share each llama.cpp step (engine.runtime.batch).
        """
        stats = stats if stats is not None else ReplyStats()
        if len(prompt) >= self.context_size:
            raise ContextFull(f"The prompt has {len(prompt)} tokens; {self.path.name} reads at most "
                              f"{self.context_size}.", hint="Start a new chat or raise the context size.")
        stats.prompt_tokens = len(prompt)
        chain = sampler_chain(sampling, self._n_vocab, self._vocab)
        try:
            lane = self._join(prompt, stop, chain, sampling.max_tokens, alongside=alongside)
        except BaseException:
            llama_cpp.llama_sampler_free(chain)
            raise
        stats.cached_tokens = len(lane.tokens)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        try:
            while (token := self._batcher.next_token(lane)) is not None:
                text = decoder.decode(self._token_bytes(token, special))
                if text:
                    yield text
            if tail := decoder.decode(b"", final=True):
                yield tail
        finally:
            self._batcher.leave(lane)  # its tokens stay cached for the next prompt
            llama_cpp.llama_sampler_free(chain)
            stats.completion_tokens = lane.written - len(lane.ready)  # those its reader took
            stats.finish_reason = lane.finish or "stopped"
            if lane.finish == "stopped" and not lane.written and lane.unread:
                stats.cached_tokens = 0  # stopped while reading the prompt

    def _join(self, prompt: Sequence[int], stop: threading.Event | None, chain: Any, max_tokens: int, *,
              alongside: bool = False) -> Lane:
        """A lane for `prompt` in the chat's sequence, or (`alongside`) in a free one of the others,
        holding the cached tokens it starts with; the rest of the cache of that sequence is dropped."""
        sequence = self._free_sequence(prompt) if alongside else 0
        if alongside:
            self._share_prefix(sequence, prompt)
        cached = self._sequences[sequence]
        keep = min(common_prefix(cached, prompt), len(prompt) - 1)  # the last token is read again for its logits
        self._forget_from(sequence, keep)
        lane = Lane(sequence, self._sequences[sequence], list(prompt[keep:]), chain, stop, max_tokens,
                    self.context_size)
        return self._batcher.join(lane)

    def _share_prefix(self, sequence: int, prompt: Sequence[int]) -> None:
        """Give `sequence` the cache of another one (busy or not) that starts as `prompt` does, such as
        a system prompt many requests send, when that saves reading at least `_WORTH_COPYING` tokens."""
        own = common_prefix(self._sequences[sequence], prompt)
        source, shared = max(((s, common_prefix(tokens, prompt)) for s, tokens in enumerate(self._sequences)
                              if s != sequence), key=lambda pair: pair[1])
        shared = min(shared, len(prompt) - 1)
        if shared - own < _WORTH_COPYING:
            return
        # Each sequence has a cache of its own, so llama.cpp copies all of it (-1, -1: it takes no part);
        # `_join` then drops what follows the shared tokens.
        llama_cpp.llama_memory_seq_rm(self._memory, sequence, -1, -1)
        llama_cpp.llama_memory_seq_cp(self._memory, source, sequence, -1, -1)
        self._sequences[sequence] = self._sequences[source][:shared]

    def _free_sequence(self, prompt: Sequence[int]) -> int:
        """The free sequence besides the chat's whose cache shares most with `prompt`."""
        busy = self._batcher.busy_sequences
        free = [s for s in range(1, len(self._sequences)) if s not in busy]
        if not free:
            raise GenerationFailed(f"All {self.parallel} sequences of {self.path.name} are writing replies.",
                                   hint="Try again when one of them ends.")
        return max(free, key=lambda s: common_prefix(self._sequences[s], prompt))

    def _token_bytes(self, token: int, special: bool = False) -> bytes:
        n = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, special)
        if n < 0:  # the piece is longer than the buffer
            self._piece = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, special)
        return self._piece.raw[:n]

    def _forget_from(self, sequence: int, position: int) -> None:
        """Drop `sequence`'s cached tokens from `position` on."""
        if not llama_cpp.llama_memory_seq_rm(self._memory, sequence, position, -1):
            llama_cpp.llama_memory_seq_rm(self._memory, sequence, -1, -1)  # some caches only drop whole sequences
            position = 0
        del self._sequences[sequence][position:]

    def forget(self) -> None:
        """Empty the chat's cache, so the next prompt is read from its start."""
        self._forget_from(0, 0)

    def snapshot(self) -> KvSnapshot:
        """A copy of the cache (tokens and their keys and values) that `restore` puts back."""
        size = llama_cpp.llama_state_seq_get_size(self._ctx, 0)
        data = bytearray(size)
        view = (ctypes.c_uint8 * size).from_buffer(data)
        written = llama_cpp.llama_state_seq_get_data(self._ctx, view, size, 0)
        del view  # release the export so the bytearray can be frozen
        return KvSnapshot(tokens=tuple(self._sequences[0]), data=bytes(data[:written]))

    def restore(self, snapshot: KvSnapshot) -> bool:
        """Replace the cache with `snapshot`; False (and an empty cache) if llama.cpp refuses it."""
        self.forget()
        buffer = (ctypes.c_uint8 * len(snapshot.data)).from_buffer_copy(snapshot.data)
        if llama_cpp.llama_state_seq_set_data(self._ctx, buffer, len(snapshot.data), 0) == 0:
            self.forget()
            return False
        self._sequences[0] = list(snapshot.tokens)
        return True

    def close(self) -> None:
        self._batcher.close()
        self._llm.close()
