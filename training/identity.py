"""Cleo must not learn to call itself another assistant: answers claiming another identity are rewritten or cut.

See `clean_identity` for what is rewritten, what is cut and what is kept.
"""

from __future__ import annotations

import re

from training.readers import Conversation, Example, ReadReport
from training.split import stable_hash

ASSISTANT_NAME = "Cleo"

# Assistants and the organisations behind them. Words that are also ordinary words or names in
# role-play (bard, gemini, llama, claude, curie) are left out: they would flag innocent answers.
_OTHER_ASSISTANT = re.compile(
    r"\b(?:vicuna|chat\s?gpt|gpt-?\d(?:\.\d)?(?:-turbo)?|open\s?ai|lmsys|large model systems organi[sz]ation|"
    r"anthropic|hugging\s?face|smol\s?lm\d?|google bard|bing chat|meta ai|llama[- ]?\d|mistral ai|qwen)\b",
    re.IGNORECASE)
# The speaker talking about itself.
_SELF = re.compile(r"\bI(?:'m|'ve)?\b|\b(?i:me|my|myself)\b")  # "I" only in capitals: "i" is a loop variable
# ChatGPT's signature disclaimer claims that identity even without a name.
_LANGUAGE_MODEL_DISCLAIMER = re.compile(r"\bas an AI language model\b", re.IGNORECASE)
_CODE = re.compile(r"[{};=]")  # prose claiming an identity has none of these; code lines usually do
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_REWRITE_CHARS = 300  # FastChat's identity answers are under 150 characters
_NO = re.compile(r"^\s*no\b[\s,.!]*", re.IGNORECASE)
_CLEO_ANSWERS = (
    "I'm {name}, a private AI assistant that runs entirely on your own computer.",
    "My name is {name}. I'm an AI assistant that lives on your computer, so our conversations stay with you.",
    "I am {name}, a local AI assistant: I run on your machine, and nothing you tell me leaves it.",
)


def claims_other_identity(text: str) -> bool:
    """Whether an answer says it is (or was made by) another assistant or AI company."""
    return any(_sentence_claims(sentence) for sentence in _SENTENCE_END.split(text))


def _sentence_claims(sentence: str) -> bool:
    return _names_other(sentence) or (not _CODE.search(sentence) and bool(_LANGUAGE_MODEL_DISCLAIMER.search(sentence)))


def _names_other(sentence: str) -> bool:
    if _CODE.search(sentence):
        return False  # `const s = 'I am a GPT-3 AI model!';` is a code sample's string, not the speaker
    return bool(_OTHER_ASSISTANT.search(sentence) and _SELF.search(sentence))


def cleo_identity_answer(original: str, *, name: str = ASSISTANT_NAME) -> str | None:
    """Cleo's answer in place of an answer that only states another identity, or None if it says more.

    Rewritten: short answers (at most `_REWRITE_CHARS`) whose every sentence has the speaker name
    another assistant or its maker, as FastChat's identity answers do. "No, I'm a language model
    trained by researchers from LMSYS." (to "Are you ChatGPT?") becomes "No, I'm Cleo, ...": a
    leading "No" is kept. Not rewritten: an answer starting with "Yes" (the rewrite would contradict
    the question it answers), the "As an AI language model, ..." disclaimer (it prefaces an answer
    to something else), and anything longer or saying more.
    """
    sentences = [s for s in _SENTENCE_END.split(original.strip()) if s.strip()]
    if (not sentences or len(original) > _REWRITE_CHARS or not all(_names_other(s) for s in sentences)
            or _LANGUAGE_MODEL_DISCLAIMER.search(original) or re.match(r"^\s*yes\b", original, re.IGNORECASE)):
        return None
    if _NO.match(original):
        return f"No, I'm {name}, a private AI assistant that runs entirely on your own computer."
    # The phrasing is picked by a hash of the original, so the data varies but never between runs.
    return _CLEO_ANSWERS[stable_hash(original) % len(_CLEO_ANSWERS)].format(name=name)


def clean_identity(messages: Conversation, *, name: str = ASSISTANT_NAME) -> tuple[Conversation | None, str]:
    """The conversation with no answer claiming another assistant's identity, and what was done.

    Policy, per assistant answer that claims another identity (`claims_other_identity`):
    - rewritten: the answer only states that identity (FastChat's "I am Vicuna, a language model
      trained by researchers from LMSYS.") and is replaced by Cleo's (`cleo_identity_answer`);
    - cut: any other such answer (a long answer that begins "As an AI language model developed by
      OpenAI, ..."): the conversation ends before the question it answers, since removing only
      the sentence could leave an answer that no longer makes sense;
    - dropped: nothing with an answer is left after the cut; the result is None.
    Mentions that are not about the speaker ("GPT-3 is a model by OpenAI" in a code sample) are kept.
    Returns (messages, action) with action one of "kept", "rewritten", "cut", "dropped".
    """
    out: Conversation = []
    action = "kept"
    for n, message in enumerate(messages):
        if message["role"] != "assistant" or not claims_other_identity(message["content"]):
            out.append(message)
            continue
        replacement = cleo_identity_answer(message["content"], name=name)
        if replacement is not None:
            out.append({**message, "content": replacement})
            action = "rewritten"
            continue
        # Cut before the question this answer replies to (the message before it).
        kept = out[: max(0, n - 1)]
        if not any(m["role"] == "assistant" for m in kept):
            return None, "dropped"
        return kept, "cut"
    return out, action


def clean_examples(examples: list[Example], report: ReadReport, name: str = ASSISTANT_NAME) -> list[Example]:
    """`clean_identity` applied to each example, counting in `report` what was rewritten, cut and dropped."""
    cleaned = []
    for example in examples:
        messages, action = clean_identity(example.messages, name=name)
        if action == "rewritten":
            report.identity_rewritten += sum(
                a["content"] != b["content"] for a, b in zip(example.messages, messages or [], strict=False))
        elif action == "cut":
            report.identity_cut += 1
        elif action == "dropped":
            report.identity_dropped += 1
        if messages is not None:
            cleaned.append(Example(example.id, messages))
    report.examples = len(cleaned)
    return cleaned

