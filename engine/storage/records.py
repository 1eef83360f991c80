"""Whole conversations as records: everything the database keeps of a conversation and its messages.

Exports read them from the conversation store and imports hand them to it
(`SqliteConversationStore.record`, `save_records`), so only the store writes the conversation
tables. Within a record a message is named by its `key`: Cleo's id, or for a message new to Cleo
the id it had where it came from (ChatGPT's), and it points at its parent by the parent's key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from engine.errors import KnownError

# What saving one conversation record did: "added" (new), "updated" (it had messages not saved yet),
# "skipped" (saved before, nothing new), "empty" (no messages, so nothing to save).
SaveOutcome = Literal["added", "updated", "skipped", "empty"]


@dataclass(frozen=True)
class MessageRecord:
    """A message with every field the database keeps of it."""

    key: str  # what makes it "the same message" when a record is saved again
    parent_key: str | None
    role: str
    content: str
    created_at: float
    updated_at: float
    id: str | None = None  # Cleo's id to keep; None: a new one
    source_id: str | None = None  # its id where it came from (ChatGPT's), so a second import finds it
    model: str = ""
    finish_reason: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class ConversationRecord:
    """A conversation with every branch."""

    id: str
    title: str
    created_at: float
    updated_at: float
    messages: list[MessageRecord]  # each after its parent
    current_key: str | None  # the key of the leaf the user is looking at
    pinned: bool = False
    archived: bool = False
    model: str = ""
    system_prompt: str | None = None
    memory_enabled: bool = True


class MessageIdTaken(KnownError):
    """A record keeps a message id that a message of another conversation already has."""

    def __init__(self, key: str, owner: str) -> None:
        super().__init__(f"Cleo already has a message {key!r} in another conversation ({owner!r}).",
                         hint="Nothing was saved.")
        self.key = key
        self.owner = owner
