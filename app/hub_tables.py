"""The model manager's Hugging Face tables: long lists put in a batch at a time, columns sized cheaply.

A repository can hold thousands of files, and a search grows a page at a time up to a thousand
repositories. Making the items of a thousand rows and sizing the columns to every one of them
kept the GUI thread busy for ~50 ms in one go (measured offscreen), and several times that for
a larger repository: the window stuttered. So the first `ROWS_AT_ONCE` rows (what the user sees
first, and what a selection made right away needs) go in at once and the rest on later turns of
the event loop, and the columns are sized to the rows around the visible ones only
(`SIZED_ROWS`); a longer name further down shows whole in its tooltip.

Everything the Hub sends is shown as the characters it is: table items are literal and tooltips
are escaped.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from PySide6.QtCore import QObject, QSignalBlocker, Qt, QTimer, Slot
from PySide6.QtWidgets import QTableWidget

from app.widgets import tooltip

ROWS_AT_ONCE = 100
SIZED_ROWS = 100

_TEXT, _TOOLTIP = int(Qt.ItemDataRole.DisplayRole), int(Qt.ItemDataRole.ToolTipRole)
_ALIGNMENT = int(Qt.ItemDataRole.TextAlignmentRole)
_RIGHT = int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)

Row = tuple[tuple[str, ...], str]  # a row's cells, and the note each of them shows as its tooltip


class _Span:
    """Rows `first` to `first + count - 1` of a table, made by `row(i)` for i in 0..count-1 when put in."""

    __slots__ = ("count", "done", "first", "row")

    def __init__(self, first: int, count: int, row: Callable[[int], Row]) -> None:
        self.first, self.count, self.row, self.done = first, count, row, 0


def hub_table(name: str, headers: tuple[str, ...]) -> QTableWidget:
    table = QTableWidget(0, len(headers))
    table.setHorizontalHeaderLabels(list(headers))
    table.setAccessibleName(name)
    table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
    table.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
    table.verticalHeader().hide()
    table.verticalHeader().setDefaultSectionSize(table.fontMetrics().height() + 10)
    table.horizontalHeader().setStretchLastSection(True)
    table.horizontalHeader().setResizeContentsPrecision(SIZED_ROWS)
    return table


class RowFiller(QObject):
    """Puts rows into tables: `ROWS_AT_ONCE` now, the rest a batch per turn of the event loop.

    A row is made when it is put in (`row(i)`), so it shows what is known then: a header read
    meanwhile, say, without going back to rows made before."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._waiting: dict[QTableWidget, collections.deque[_Span]] = {}
        self._timer = QTimer(self)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self.on_timer_timeout)

    def fill(self, table: QTableWidget, count: int, row: Callable[[int], Row], *, append: bool = False) -> None:
        """Show `count` rows after those shown (`append`) or instead of them; `row(i)` makes the i-th."""
        waiting = self._waiting.setdefault(table, collections.deque())
        if not append:
            waiting.clear()  # rows of a list replaced are never made
            with QSignalBlocker(table):  # a new list selects nothing: nothing is fetched until the user chooses
                table.clearSelection()
                table.setRowCount(0)
                table.setCurrentCell(-1, -1)
        start = table.rowCount()
        table.setRowCount(start + count)
        if count:
            waiting.append(_Span(start, count, row))
        self._put(table, waiting)
        table.resizeColumnsToContents()
        if waiting:
            self._timer.start()

    def clear(self, table: QTableWidget) -> None:
        self.fill(table, 0, _no_row)

    def set_row(self, table: QTableWidget, row: int, cells: tuple[str, ...]) -> None:
        """Change what `row` shows (a row not put in yet shows what is known when it is)."""
        for column, text in enumerate(cells):
            item = table.item(row, column)
            if item is not None:
                item.setText(text)

    def waiting(self, table: QTableWidget) -> int:
        """Rows of `table` not put in yet."""
        return sum(span.count - span.done for span in self._waiting.get(table, ()))

    @Slot()
    def on_timer_timeout(self) -> None:
        for table, waiting in self._waiting.items():
            if waiting:
                self._put(table, waiting)
                if not waiting:
                    table.resizeColumnsToContents()
        if not any(self._waiting.values()):
            self._timer.stop()

    @staticmethod
    def _put(table: QTableWidget, waiting: collections.deque[_Span]) -> None:
        # Through the model, not a QTableWidgetItem made in Python per cell: the table makes its items
        # itself, so no Python object stays behind for each of them (tens of thousands of those made
        # the garbage collector stop the window for ~70 ms, and they took longer to make).
        model, index, left = table.model(), table.model().index, ROWS_AT_ONCE
        while waiting and left:
            span = waiting[0]
            for i in range(span.done, min(span.count, span.done + left)):
                cells, note = span.row(i)
                shown = tooltip(note)
                for column, text in enumerate(cells):
                    roles: dict[int, object] = {_TEXT: text, _TOOLTIP: shown}  # text shown literally
                    if column and text[:1].isdigit():
                        roles[_ALIGNMENT] = _RIGHT
                    model.setItemData(index(span.first + i, column), roles)
                span.done, left = i + 1, left - 1
            if span.done == span.count:
                waiting.popleft()


def _no_row(_i: int) -> Row:
    raise IndexError("an empty list has no rows")
