"""The row above the conversation: the chat's title, its instructions (persona) and its memory switch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QWidget

from app.controller import ChatController
from app.widgets import plain_label

if TYPE_CHECKING:
    from engine import ConversationView, Persona


class Header(QWidget):
    def __init__(self, controller: ChatController, personas: tuple[Persona, ...]) -> None:
        super().__init__()
        self.controller = controller
        self.personas = personas  # the saved personas, from the settings
        self.title = plain_label()  # a title can come from an imported chat
        self.title.setAccessibleName(self.tr("Chat title"))
        self.memory_switch = QCheckBox(self.tr("Memory"))
        self.memory_switch.setAccessibleName(self.tr("Memory in this chat"))
        self.memory_switch.setAccessibleDescription(self.tr("Let Cleo remember and recall things in this chat"))
        self.memory_switch.setChecked(True)
        self.memory_switch.toggled.connect(self.on_memory_switch_toggled)
        self.persona = QComboBox()
        self.persona.setAccessibleName(self.tr("Instructions for this chat"))
        self.persona.setAccessibleDescription(self.tr("The default instructions from the settings, or a saved persona"))
        self.persona.setToolTip(self.persona.accessibleDescription())
        self.persona.activated.connect(self.on_persona_activated)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)  # a row of the conversation's column, not a box of its own
        row.addWidget(self.title, 1)
        row.addWidget(self.persona)
        row.addWidget(self.memory_switch)
        self.show_personas(None)

    def show_conversation(self, view: ConversationView | None) -> None:
        """The chat now shown, or None for a new chat not yet sent."""
        self.show_personas(view.instructions if view is not None else None)
        if view is None:
            self.title.setText(self.tr("New chat"))
            self.memory_switch.setEnabled(True)
            return
        self.title.setText(view.title + (self.tr(" (temporary)") if view.temporary else ""))
        self.memory_switch.blockSignals(True)  # showing the chat's choice is not the user changing it
        self.memory_switch.setChecked(view.memory_enabled)
        self.memory_switch.setEnabled(not view.temporary)
        self.memory_switch.blockSignals(False)

    def show_temporary_chat(self) -> None:
        self.title.setText(self.tr("Temporary chat: nothing is remembered, and it is deleted when you leave it"))

    def show_personas(self, instructions: str | None) -> None:
        """The persona choices, with the one `instructions` belong to selected (or a custom entry)."""
        self.persona.clear()
        self.persona.addItem(self.tr("Default instructions"), "")
        for persona in self.personas:
            self.persona.addItem(persona.name, persona.instructions)
        if instructions:
            index = self.persona.findData(instructions)
            if index < 0:
                self.persona.addItem(self.tr("This chat's own instructions"), instructions)
                index = self.persona.count() - 1
            self.persona.setCurrentIndex(index)

    def change_personas(self, personas: tuple[Persona, ...]) -> None:
        """The settings changed: list their personas, keeping the open chat's choice."""
        self.personas = personas
        self.show_personas(self.persona.currentData() or None)

    def on_memory_switch_toggled(self, on: bool) -> None:
        if self.controller.current:
            self.controller.change_conversation(self.controller.current, memory_enabled=on)

    def on_persona_activated(self, _index: int) -> None:
        self.controller.use_instructions(self.persona.currentData() or "")
