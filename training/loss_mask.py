"""Conversations and documents as token ids with a loss mask: which tokens the model learns to produce.

A conversation is rendered with the model's own chat template (Jinja in a sandbox, as llama.cpp's
chat formatting does) and tokenized as llama.cpp would tokenize the prompt. A token is a target
(counted in the loss) only if it belongs to an assistant message: its content and the end-of-turn
token that closes it, never system, user or template text. The spans are found by rendering the
conversation's prefixes and comparing their tokens with the whole conversation's. A plain-text
document is learnt everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.chat.kv_cache import common_prefix
from engine.errors import ChatTemplateInvalid
from engine.runtime.chat_template import ChatTemplate as SandboxedChatTemplate
from training.readers import Conversation
from training.tokenizer import CHATML_TEMPLATE, Tokenizer


class ChatTemplate(SandboxedChatTemplate):
    """The engine's sandboxed chat template (so training renders exactly what the app will), built
    from a tokenizer's own template and special tokens."""

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer) -> ChatTemplate:
        """The tokenizer's own template (ChatML when it has none, as llama-cpp-python falls back to)."""
        def text(token_id: int | None) -> str:
            return "" if token_id is None else tokenizer.token_bytes(token_id).decode("utf-8", "replace")
        return cls(tokenizer.chat_template or CHATML_TEMPLATE, bos_token=text(tokenizer.bos_id),
                   eos_token=text(tokenizer.eos_id))


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids and, for each, whether the model learns to produce it (a target of the loss)."""

    ids: list[int]
    targets: list[bool]

    def __len__(self) -> int:
        return len(self.ids)


def encode_chat(messages: Conversation, tokenizer: Tokenizer, template: ChatTemplate) -> TokenizedExample:
    """`messages` rendered with `template` and tokenized as llama.cpp tokenizes a prompt, with
    targets on exactly the assistant messages' tokens: their content and the end-of-turn token.

    For assistant message i, the text before it is the render of messages[:i] with a generation
    prompt, and its end is where the render of messages[:i+1] ends, or, when that text holds an
    end-of-turn token (ChatML's `<|im_end|>`), right after the last one (ChatML's newline after it
    is template text). Both must be prefixes of the whole render, which holds for templates that
    render turns in order (ChatML, Llama, Mistral...); others raise `ChatTemplateInvalid`.
    Token boundaries come from tokenizing each prefix: where a token straddles the boundary, the
    first tokens that differ from the whole conversation's belong to the assistant.
    """
    return encode_chats([messages], tokenizer, template)[0]


def encode_chats(conversations: Sequence[Conversation], tokenizer: Tokenizer, template: ChatTemplate, *,
                 chunk: int = 512) -> list[TokenizedExample]:
    """`encode_chat` for many conversations, tokenizing `chunk` conversations' texts in one call
    (`tokenizers` pays a fixed cost per call that dwarfs a short conversation)."""
    eot_texts = [tokenizer.token_bytes(i).decode("utf-8", "replace") for i in tokenizer.end_of_turn_ids]
    out = []
    for lo in range(0, len(conversations), chunk):
        plans = [_assistant_spans(messages, template, eot_texts) for messages in conversations[lo:lo + chunk]]
        texts = [text for full, cuts, _ in plans for text in (full, *(full[:c] for c in cuts))]
        encoded = iter(tokenizer.encode_batch(texts))
        for full, cuts, spans in plans:
            ids = next(encoded)
            token_at = {c: common_prefix(ids, next(encoded)) for c in cuts}
            out.append(_with_targets(full, ids, [(token_at[a], token_at[b]) for a, b in spans], tokenizer))
    return out


def _assistant_spans(messages: Conversation, template: ChatTemplate,
                     eot_texts: list[str]) -> tuple[str, list[int], list[tuple[int, int]]]:
    """(whole render, the character positions to tokenize up to, the assistant messages' character spans)."""
    full = template.render(messages)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = template.render(messages[:i], add_generation_prompt=True)
        after = template.render(messages[: i + 1])
        if not (full.startswith(before) and full.startswith(after) and len(before) <= len(after)):
            raise ChatTemplateInvalid("The chat template does not render a conversation as its earlier turns "
                                      "followed by the new one, so the assistant's tokens cannot be found.")
        eot_ends = [found + len(t) for t in eot_texts if (found := after.rfind(t, len(before))) >= 0]
        spans.append((len(before), max(eot_ends) if eot_ends else len(after)))
    return full, sorted({c for span in spans for c in span}), spans


def _with_targets(full: str, ids: list[int], spans: list[tuple[int, int]], tokenizer: Tokenizer) -> TokenizedExample:
    targets = [False] * len(ids)
    for start, end in spans:  # token spans
        targets[start:end] = [True] * (end - start)
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        bos_text = tokenizer.token_bytes(tokenizer.bos_id).decode("utf-8", "replace")
        if not (bos_text and full.startswith(bos_text)):  # llama.cpp adds none when the text has it already
            ids, targets = [tokenizer.bos_id, *ids], [False, *targets]
    # What follows the last answer teaches nothing and only takes room in a packed row.
    last = max((t for t, target in enumerate(targets) if target), default=-1)
    return TokenizedExample(ids[: last + 1], targets[: last + 1])


def document_end_id(tokenizer: Tokenizer) -> int:
    """The token that closes a plain-text document: `<|endoftext|>` when the vocabulary has it, else eos."""
    try:
        return tokenizer.token_id("<|endoftext|>")
    except KeyError:
        if tokenizer.eos_id is None:
            raise ValueError("the tokenizer has neither <|endoftext|> nor an eos token to end documents") from None
        return tokenizer.eos_id


def encode_text(document: str, tokenizer: Tokenizer) -> TokenizedExample:
    """A plain-text document for pretraining: its tokens (special-token spellings stay text), then the
    document-end token; every token is a target except the first, which nothing in the document predicts."""
    return _text_example(tokenizer.encode(document, special=False), tokenizer)


def encode_texts(documents: Sequence[str], tokenizer: Tokenizer) -> list[TokenizedExample]:
    """`encode_text` for many documents, tokenized in one call."""
    return [_text_example(ids, tokenizer) for ids in tokenizer.encode_batch(documents, special=False)]


def _text_example(tokens: list[int], tokenizer: Tokenizer) -> TokenizedExample:
    ids = [*tokens, document_end_id(tokenizer)]
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        ids = [tokenizer.bos_id, *ids]
    return TokenizedExample(ids, [False] + [True] * (len(ids) - 1))

