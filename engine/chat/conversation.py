"""Conversations as trees of messages, and the store they live in.

A reply can have alternatives (regenerate) and a user message can be edited (a new branch);
nothing is overwritten. Each message points at its parent; a conversation remembers the leaf
the user is looking at, and the branch is the path from the root to it.

`ConversationStore` is what the assistant needs: `engine.storage.conversations` keeps it in the
profile's database; `InMemoryConversationStore` keeps everything in memory, for an assistant
without a profile.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace
from typing import Protocol

from engine.errors import KnownError


class ConversationMissing(KnownError):
    """A conversation or message id that does not exist (any more)."""


@dataclass(frozen=True)
class Message:
    id: str
    conversation_id: str
    role: str  # "user" or "assistant"
    content: str
    parent_id: str | None
    created_at: float
    finish_reason: str = ""  # for replies: "stop", "length", "stopped", "error"; "" while streaming
    model: str = ""


@dataclass(frozen=True)
class Conversation:
    id: str
    title: str
    system_prompt: str | None  # None: the system prompt from the settings
    created_at: float
    current_leaf_id: str | None = None


class ConversationStore(Protocol):
    def create_conversation(self, title: str = "", system_prompt: str | None = None) -> Conversation: ...
    def conversation(self, conversation_id: str) -> Conversation: ...
    def message(self, message_id: str) -> Message: ...
    def add_message(self, conversation_id: str, role: str, content: str, parent_id: str | None,
                    *, model: str = "") -> Message: ...
    def save_reply(self, message_id: str, content: str, finish_reason: str = "") -> None: ...
    def set_current_leaf(self, conversation_id: str, message_id: str) -> None: ...
    def branch(self, leaf_id: str | None) -> list[Message]: ...
    def alternatives(self, message_id: str) -> list[Message]: ...


class InMemoryConversationStore:
    """A `ConversationStore` that forgets everything when the program ends."""

    def __init__(self) -> None:
        self._conversations: dict[str, Conversation] = {}
        self._messages: dict[str, Message] = {}
        self._ids = itertools.count(1)

    def create_conversation(self, title: str = "", system_prompt: str | None = None) -> Conversation:
        conversation = Conversation(f"c{next(self._ids)}", title, system_prompt, time.time())
        self._conversations[conversation.id] = conversation
        return conversation

    def conversation(self, conversation_id: str) -> Conversation:
        try:
            return self._conversations[conversation_id]
        except KeyError:
            raise ConversationMissing(f"There is no conversation {conversation_id!r}.",
                                      hint="It may have been deleted; pick another chat.") from None

    def message(self, message_id: str) -> Message:
        try:
            return self._messages[message_id]
        except KeyError:
            raise ConversationMissing(f"There is no message {message_id!r}.",
                                      hint="It may have been deleted with its chat.") from None

    def add_message(self, conversation_id: str, role: str, content: str, parent_id: str | None,
                    *, model: str = "") -> Message:
        self.conversation(conversation_id)
        if parent_id is not None and self.message(parent_id).conversation_id != conversation_id:
            raise ValueError(f"message {parent_id} belongs to another conversation")
        message = Message(f"m{next(self._ids)}", conversation_id, role, content, parent_id, time.time(), model=model)
        self._messages[message.id] = message
        return message

    def save_reply(self, message_id: str, content: str, finish_reason: str = "") -> None:
        self._messages[message_id] = replace(self.message(message_id), content=content, finish_reason=finish_reason)

    def set_current_leaf(self, conversation_id: str, message_id: str) -> None:
        self._conversations[conversation_id] = replace(self.conversation(conversation_id), current_leaf_id=message_id)

    def branch(self, leaf_id: str | None) -> list[Message]:
        path: list[Message] = []
        while leaf_id is not None:
            message = self.message(leaf_id)
            path.append(message)
            leaf_id = message.parent_id
        return path[::-1]

    def alternatives(self, message_id: str) -> list[Message]:
        message = self.message(message_id)
        return [m for m in self._messages.values()
                if m.conversation_id == message.conversation_id and m.parent_id == message.parent_id]
