"""Draw Cleo's icon and write it as PNG (Linux), ICO (Windows) and ICNS (macOS) into packaging/icons.

Run once when the design changes (`python packaging/make_icons.py`); the files are committed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QFont, QImage, QLinearGradient, QPainter, QPainterPath
from PySide6.QtWidgets import QApplication

ICONS = Path(__file__).resolve().parent / "icons"


def draw(size: int) -> QImage:
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    margin = size * 0.06
    shape = QPainterPath()
    shape.addRoundedRect(QRectF(margin, margin, size - 2 * margin, size - 2 * margin), size * 0.22, size * 0.22)
    gradient = QLinearGradient(0, 0, size, size)
    gradient.setColorAt(0, QColor("#5b8def"))
    gradient.setColorAt(1, QColor("#7b4fd6"))
    painter.fillPath(shape, gradient)
    font = QFont("DejaVu Sans", max(1, int(size * 0.5)))
    font.setBold(True)
    painter.setFont(font)
    painter.setPen(QColor("white"))
    painter.drawText(QRectF(0, -size * 0.02, size, size), Qt.AlignmentFlag.AlignCenter, "C")
    painter.end()
    return image


def main() -> int:
    app = QApplication.instance() or QApplication(sys.argv[:1])
    ICONS.mkdir(exist_ok=True)
    for name, size, kind in (("cleo.png", 512, "PNG"), ("cleo.ico", 256, "ICO"), ("cleo.icns", 512, "ICNS")):
        if not draw(size).save(str(ICONS / name), kind):
            print(f"could not write {name}", file=sys.stderr)
            return 1
    del app
    return 0


if __name__ == "__main__":
    sys.exit(main())
