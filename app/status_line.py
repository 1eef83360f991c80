"""The status line under the window: which model is loaded and where, how fast it writes, context used,
and where the local API listens while it is on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtWidgets import QProgressBar, QStatusBar

from app.widgets import plain_label, tooltip

if TYPE_CHECKING:
    from engine import ModelState, Usage


class StatusLine(QStatusBar):
    def __init__(self) -> None:
        super().__init__()
        # the model's name comes from its file, and the device from llama.cpp: shown as they are
        self.model_label = plain_label(self.tr("Loading the model…"))
        self.device_label = plain_label()
        self.speed_label = plain_label()
        self.api_label = plain_label()
        self.api_label.setAccessibleName(self.tr("Local API"))
        self.api_label.hide()
        self.context_gauge = QProgressBar()
        self.context_gauge.setMaximumWidth(160)
        self.context_gauge.setFormat(self.tr("context %v / %m"))
        self.context_gauge.setAccessibleName(self.tr("Context used"))
        for widget in (self.model_label, self.device_label, self.speed_label):
            self.addWidget(widget)
        self.addPermanentWidget(self.api_label)
        self.addPermanentWidget(self.context_gauge)

    def show_model(self, state: ModelState) -> None:
        """A model was loaded: its name and device, and an empty context."""
        self.model_label.setText(state.name)
        self.device_label.setText(state.device)
        self.context_gauge.setRange(0, state.context_size)
        self.context_gauge.setValue(0)

    def show_no_model(self) -> None:
        self.model_label.setText(self.tr("No model loaded"))

    def show_usage(self, usage: Usage) -> None:
        """The last reply's speed, and how much of the context the chat now fills."""
        self.speed_label.setText(self.tr("%1 tokens/s").replace("%1", f"{usage.tokens_per_s:.1f}"))
        self.context_gauge.setRange(0, usage.context_size)
        self.context_gauge.setValue(usage.context_used)

    def show_api(self, address: str) -> None:
        """Where other apps reach the local API ("127.0.0.1:8638"); "" hides it (the API is off)."""
        self.api_label.setText(self.tr("API on %1").replace("%1", address) if address else "")
        self.api_label.setToolTip(tooltip(self.tr("Other apps on this computer can use Cleo's model at "
                                                  "http://%1/v1 with the token from Settings → Local API.")
                                          .replace("%1", address) if address else ""))
        self.api_label.setVisible(bool(address))
