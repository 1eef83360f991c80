"""The settings dialog, generated from the engine's `Settings` model, so a new setting needs no GUI code.

Each field becomes the widget its type asks for, labelled with its description; limits come from
the model's own constraints, and the model validates the result. A value it refuses is named
under its field and OK stays disabled, so nothing invalid is ever saved.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

from annotated_types import Ge, Gt, Le, Lt, MaxLen
from pydantic import ValidationError
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.widgets import plain_label
from engine import Persona, Settings

# Chosen elsewhere in the window (the model manager), not typed in here.
_ELSEWHERE = {"chat_model", "model_folders"}
_LABELS = {
    "context_size": "Context size (tokens)", "threads": "CPU threads", "gpu_layers": "GPU layers",
    "kv_cache_budget_mb": "Chat switch cache (MB)", "top_p": "Top-p", "top_k": "Top-k", "min_p": "Min-p",
    "max_tokens": "Longest reply (tokens)", "system_prompt": "Instructions (system prompt)",
    "memory_enabled": "Remember things about me", "ask_before_remembering": "Ask before remembering",
    "font_size": "Chat text size",
}


class SettingsDialog(QDialog):
    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(self.tr("Settings"))
        self.setAccessibleName(self.tr("Settings"))
        self.settings = settings
        self.editors: dict[str, QWidget] = {}
        self.errors: dict[str, QLabel] = {}
        form = QFormLayout()
        for name, info in Settings.model_fields.items():
            if name in _ELSEWHERE:
                continue
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
            column = QVBoxLayout(holder)
            column.setContentsMargins(0, 0, 0, 0)
            column.addWidget(editor)
            column.addWidget(error)
            form.addRow(label, holder)
            self.editors[name], self.errors[name] = editor, error
        body = QWidget()
        body.setLayout(form)
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
