"""Conversations out of Cleo: the branch on screen as Markdown, or every branch as Cleo's JSON."""

from __future__ import annotations

import time
from typing import Any

from engine.chat.conversation import Message
from engine.storage.conversations import SqliteConversationStore
from engine.storage.database import Database
from engine.transfer.cleo_json import cleo_document

_SPEAKERS = {"user": "You", "assistant": "Assistant", "system": "System"}


def export_markdown(store: SqliteConversationStore, conversation_id: str) -> str:
    """The branch the user is looking at, root to current leaf, as a Markdown document."""
    conversation = store.conversation(conversation_id)
    lines = [f"# {conversation.title or 'Untitled conversation'}", "", f"Started {_when(conversation.created_at)}", ""]
    if conversation.system_prompt:
        lines += [f"> System prompt: {conversation.system_prompt}", ""]
    for message in store.branch(conversation.current_leaf_id or store.latest_message_id(conversation_id)):
        lines += [f"## {_speaker(message)}", "", message.content.rstrip(), ""]
    return "\n".join(lines)


def export_json(store: SqliteConversationStore, conversation_id: str) -> dict[str, Any]:
    """One conversation with every branch, in the format `import_cleo_json` reads."""
    return cleo_document([store.record(conversation_id)])


def export_everything(database: Database) -> dict[str, Any]:
    """Every conversation except temporary chats, with every branch, in the format `import_cleo_json` reads."""
    store = SqliteConversationStore(database)
    return cleo_document([store.record(conversation_id) for conversation_id in store.saved_conversation_ids()])


def _speaker(message: Message) -> str:
    name = _SPEAKERS.get(message.role, message.role.capitalize())
    return f"{name} ({message.model})" if message.role == "assistant" and message.model else name


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))
