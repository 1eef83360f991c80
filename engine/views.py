"""What a frontend shows, as plain frozen values: the Session returns them, the window paints them.

They carry no database handles and no Qt types, so they cross threads and are tested without a
window. `Refresh` bundles the views one request changed, so a frontend shows exactly those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the window imports this before the engine's runtime loads
    from engine.chat.conversation import Message
    from engine.events import RecalledItem
    from engine.memory.book import Memory
    from engine.models.catalog import ModelInfo, Unusable
    from engine.settings import Settings
    from engine.storage.conversations import ConversationSummary


@dataclass(frozen=True)
class ModelState:
    """What the status line shows about the loaded model."""

    name: str
    path: str
    device: str  # "CPU", or where on the GPU
    context_size: int


@dataclass(frozen=True)
class ConversationView:
    """One conversation as the chat view shows it: the current branch, oldest first."""

    id: str
    title: str
    messages: tuple[Message, ...]
    alternatives: dict[str, tuple[int, int]] = field(default_factory=dict)  # message id -> (1-based index, count)
    instructions: str | None = None  # its own system prompt; None follows the settings
    model: str = ""  # its own model file; "" follows the settings
    temporary: bool = False
    memory_enabled: bool = True
    why: dict[str, tuple[RecalledItem, ...]] = field(default_factory=dict)  # reply id -> what memory added


@dataclass(frozen=True)
class MemoryState:
    """The memory panel: what Cleo remembers, and the proposals waiting for the user."""

    remembered: tuple[Memory, ...]
    inbox: tuple[Memory, ...]


@dataclass(frozen=True)
class ModelList:
    """The Models dialog: models Cleo can load, and .gguf files it cannot, with why."""

    models: tuple[ModelInfo, ...]
    unusable: tuple[Unusable, ...]


@dataclass(frozen=True)
class Refresh:
    """The views one request changed; None where nothing changed."""

    conversations: tuple[ConversationSummary, ...] | None = None  # the sidebar
    conversation: ConversationView | None = None  # the open chat, shown again
    memories: MemoryState | None = None
    model: ModelState | None = None  # a model was loaded
    settings: Settings | None = None  # settings were saved

    def __or__(self, later: Refresh) -> Refresh:
        """Both requests' changes; where both changed a view, the later one wins."""
        return Refresh(
            conversations=later.conversations if later.conversations is not None else self.conversations,
            conversation=later.conversation or self.conversation,
            memories=later.memories or self.memories,
            model=later.model or self.model,
            settings=later.settings or self.settings,
        )
