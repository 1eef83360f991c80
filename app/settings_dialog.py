"""The settings dialog, generated from the engine's `Settings` model, so a new setting needs no GUI code.

Each field becomes the widget its type asks for, labelled with its description; limits come from
the model's own constraints, and the model validates the result. A value it refuses is named
under its field and OK stays disabled, so nothing invalid is ever saved. Fields are grouped in the
model's order, a group starting at each field named in `_SECTIONS`.

The Local API group also copies the API's token and makes a new one: those act at once (the token
is no setting), through the window, which owns the clipboard and asks the engine's thread.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

from annotated_types import Ge, Gt, Le, Lt, MaxLen
from pydantic import ValidationError
from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.widgets import button, message_box, plain_label
from engine import Persona, Settings

# Chosen elsewhere in the window (the model manager), not typed in here.
_ELSEWHERE = {"chat_model", "model_folders"}
_LABELS = {
    "context_size": "Context size (tokens)", "threads": "CPU threads", "gpu_layers": "GPU layers",
    "gpu_memory_budget_mb": "GPU memory limit (MB)",
    "kv_cache_budget_mb": "Chat switch cache (MB)", "top_p": "Top-p", "top_k": "Top-k", "min_p": "Min-p",
    "max_tokens": "Longest reply (tokens)", "system_prompt": "Instructions (system prompt)",
    "memory_enabled": "Remember things about me", "ask_before_remembering": "Ask before remembering",
    "font_size": "Chat text size",
    "api_enabled": "Serve the local API", "api_port": "Port", "api_allowed_origins": "Allowed web origins",
    "api_allowed_hosts": "More host names", "api_listen_on_network": "Reachable from other computers",
    "api_max_body_bytes": "Largest request (bytes)", "api_parallel": "Requests written at once",
    "api_queue_limit": "Requests that may wait",
    "api_request_timeout_s": "Time limit per request (s)", "api_memory": "Share memory (model id 'cleo')",
    "api_save_chats": "Keep API chats in my history", "hub_url": "Model source",
}
# The field each group starts with, and the group's title (the settings model keeps each group's fields together).
_SECTIONS = {"context_size": "Model", "temperature": "Replies", "system_prompt": "Conversation and memory",
             "theme": "Appearance", "api_enabled": "Local API", "hub_url": "Finding models"}


class SettingsDialog(QDialog):
    copy_token_requested = Signal()
    new_token_requested = Signal()  # asked after the user confirmed: the old token stops working

    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(self.tr("Settings"))
        self.setAccessibleName(self.tr("Settings"))
        self.settings = settings
        self.editors: dict[str, QWidget] = {}
        self.errors: dict[str, QLabel] = {}
        self.groups: dict[str, QGroupBox] = {}
        self._rows: dict[str, tuple[QFormLayout, int, QVBoxLayout]] = {}  # a field's form, row, editor and error
        column = QVBoxLayout()
        form: QFormLayout  # the group's being filled: one starts before the first field
        for name, info in Settings.model_fields.items():
            if name in _ELSEWHERE:
                continue
            if name in _SECTIONS or not self.groups:
                form = self._group(column, self.tr(_SECTIONS.get(name, "General")))
            editor = self._editor(name, info.annotation, info.metadata, getattr(settings, name))
            label = self.tr(_LABELS.get(name, name.replace("_", " ").capitalize()))
            editor.setAccessibleName(label)
            editor.setAccessibleDescription(info.description or "")
            editor.setToolTip(info.description or "")
            error = plain_label()  # quotes what was typed
            error.setStyleSheet("color: #c0392b")
            error.setWordWrap(True)
            error.hide()
            holder = QWidget()
            stack = QVBoxLayout(holder)
            stack.setContentsMargins(0, 0, 0, 0)
            stack.addWidget(editor)
            stack.addWidget(error)
            form.addRow(label, holder)
            self.editors[name], self.errors[name] = editor, error
            self._rows[name] = (form, form.rowCount() - 1, stack)
        self._api_extras()
        column.addStretch(1)
        body = QWidget()
        body.setLayout(column)
        scroll = QScrollArea()
        scroll.setWidget(body)
        scroll.setWidgetResizable(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(scroll)
        layout.addWidget(self.buttons)
        self.resize(560, 640)
        self.validate()

    def values(self) -> dict[str, Any]:
        values = self.settings.model_dump()
        for name, editor in self.editors.items():
            if isinstance(editor, QCheckBox):
                values[name] = editor.isChecked()
            elif isinstance(editor, QSpinBox | QDoubleSpinBox):
                values[name] = editor.value()
            elif isinstance(editor, QComboBox):
                values[name] = editor.currentText()
            elif isinstance(editor, PersonasEditor):
                values[name] = editor.personas()
            elif isinstance(editor, QPlainTextEdit):
                values[name] = editor.toPlainText()
            elif isinstance(editor, QLineEdit):
                values[name] = editor.text()
        return values

    def validate(self) -> Settings | None:
        """The settings as entered, or None with each refused value explained under its field."""
        for error in self.errors.values():
            error.hide()
        try:
            result = Settings.model_validate(self.values())
        except ValidationError as exc:
            for problem in exc.errors():
                name = str(problem["loc"][0]) if problem["loc"] else ""
                if name in self.errors:
                    where = problem["loc"][1:]  # e.g. which persona and which of its fields
                    prefix = f"{' '.join(str(part + 1) if isinstance(part, int) else str(part) for part in where)}: "
                    self.errors[name].setText((prefix if where else "") + problem["msg"])
                    self.errors[name].show()
            self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(False)
            return None
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(True)
        return result

    def accept(self) -> None:
        result = self.validate()
        if result is not None:
            self.settings = result
            super().accept()

    def show_token_note(self, text: str) -> None:
        """What became of the token (copied, or made new and copied)."""
        self.token_note.setText(text)
        self.token_note.show()

    def on_new_token_button_clicked(self) -> None:
        box = message_box(QMessageBox.Icon.Question, self.tr("Make a new token"),
                          self.tr("Make a new token for the local API? The old one stops working at once: every app "
                                  "that uses it must be given the new one."), self,
                          QMessageBox.StandardButton.Ok | QMessageBox.StandardButton.Cancel)
        box.button(QMessageBox.StandardButton.Ok).setText(self.tr("Make a new token"))
        if box.exec() == QMessageBox.StandardButton.Ok:
            self.new_token_requested.emit()

    def _group(self, column: QVBoxLayout, title: str) -> QFormLayout:
        group = QGroupBox(title)
        group.setAccessibleName(title)
        column.addWidget(group)
        self.groups[title] = group
        return QFormLayout(group)

    def _api_extras(self) -> None:
        """Under the API's settings: where apps connect, the token's buttons, and the warning that goes
        with listening beyond this computer."""
        port = self.editors.get("api_port")
        network = self.editors.get("api_listen_on_network")
        if not isinstance(port, QSpinBox) or not isinstance(network, QCheckBox):
            return
        self.api_address = plain_label()
        self.api_address.setWordWrap(True)
        port.valueChanged.connect(self._show_api_address)
        self._show_api_address(port.value())
        self.copy_token_button = button(self.tr("Copy token"), self.tr("Put the local API's token on the clipboard, "
                                                                     "to paste into an app as its API key"),
                                        self.copy_token_requested.emit)
        self.new_token_button = button(self.tr("Make a new token…"),
                                       self.tr("Replace the local API's token; the old one stops working"),
                                       self.on_new_token_button_clicked)
        self.token_note = plain_label()
        self.token_note.hide()
        row = QHBoxLayout()
        row.addWidget(self.copy_token_button)
        row.addWidget(self.new_token_button)
        row.addStretch(1)
        holder = QWidget()
        stack = QVBoxLayout(holder)
        stack.setContentsMargins(0, 0, 0, 0)
        stack.addLayout(row)
        stack.addWidget(self.token_note)
        stack.addWidget(self.api_address)
        form, port_row, _stack = self._rows["api_port"]
        form.insertRow(port_row + 1, self.tr("Token"), holder)
        self.network_warning = plain_label(self.tr("Other computers on your network can then reach Cleo's model. "
                                                   "They still need the token; keep it secret."))
        self.network_warning.setWordWrap(True)
        self.network_warning.setStyleSheet("color: #c0392b")
        network.toggled.connect(self.network_warning.setVisible)
        self.network_warning.setVisible(network.isChecked())
        self._rows["api_listen_on_network"][2].addWidget(self.network_warning)

    def _show_api_address(self, port: int) -> None:
        self.api_address.setText(self.tr("Apps connect to http://127.0.0.1:%1/v1 with the token as their API key.")
                                 .replace("%1", str(port)))

    def _editor(self, name: str, annotation: Any, metadata: list[Any], value: Any) -> QWidget:
        limits = {type(m): m for m in metadata}
        if name == "personas":
            return PersonasEditor(value, self.validate)
        if annotation is bool:
            box = QCheckBox()
            box.setChecked(value)
            box.toggled.connect(lambda _: self.validate())
            return box
        if annotation in (int, float):
            spin: QSpinBox | QDoubleSpinBox = QSpinBox() if annotation is int else QDoubleSpinBox()
            low = limits[Ge].ge if Ge in limits else limits[Gt].gt if Gt in limits else -2**31
            high = limits[Le].le if Le in limits else limits[Lt].lt if Lt in limits else 2**31 - 1
            if isinstance(spin, QDoubleSpinBox):
                spin.setDecimals(2)
                spin.setSingleStep(0.05)
            spin.setRange(low, high)
            spin.setValue(value)
            spin.valueChanged.connect(lambda _: self.validate())
            return spin
        if typing.get_origin(annotation) is typing.Literal:
            combo = QComboBox()
            combo.addItems([str(choice) for choice in typing.get_args(annotation)])
            combo.setCurrentText(str(value))
            combo.currentTextChanged.connect(lambda _: self.validate())
            return combo
        longest = limits[MaxLen].max_length if MaxLen in limits else 0
        if longest > 1000:  # prose: a multi-line editor
            text = QPlainTextEdit(value)
            text.setMinimumHeight(100)
            text.textChanged.connect(self.validate)
            return text
        line = QLineEdit(str(value))
        line.textChanged.connect(lambda _: self.validate())
        return line


class PersonasEditor(QWidget):
    """Saved personas as a two-column table (name, instructions) with Add and Remove."""

    def __init__(self, personas: tuple[Persona, ...], changed: Callable[[], object]) -> None:
        super().__init__()
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels([self.tr("Name"), self.tr("Instructions")])
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setAccessibleName(self.tr("Personas"))
        self.table.setMinimumHeight(120)
        for persona in personas:
            self._add_row(persona.name, persona.instructions)
        self._changed = changed
        self.table.itemChanged.connect(lambda _: changed())
        add = QPushButton(self.tr("Add persona"))
        add.clicked.connect(self.on_add_button_clicked)
        remove = QPushButton(self.tr("Remove persona"))
        remove.clicked.connect(self.on_remove_button_clicked)
        buttons = QHBoxLayout()
        buttons.addWidget(add)
        buttons.addWidget(remove)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table)
        layout.addLayout(buttons)

    def personas(self) -> list[dict[str, str]]:
        rows = []
        for row in range(self.table.rowCount()):
            name, instructions = (self.table.item(row, column) for column in (0, 1))
            rows.append({"name": name.text() if name else "",
                         "instructions": instructions.text() if instructions else ""})
        return rows

    def on_add_button_clicked(self) -> None:
        self._add_row(self.tr("New persona"), self.tr("You are Cleo, …"))
        self._changed()

    def on_remove_button_clicked(self) -> None:
        self.table.removeRow(self.table.currentRow())
        self._changed()

    def _add_row(self, name: str, instructions: str) -> None:
        row = self.table.rowCount()
        self.table.insertRow(row)
        self.table.setItem(row, 0, QTableWidgetItem(name))
        self.table.setItem(row, 1, QTableWidgetItem(instructions))
