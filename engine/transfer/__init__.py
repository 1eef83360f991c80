"""Chats in and out: Markdown and Cleo JSON exports, imports of Cleo and ChatGPT exports.

Callers use the names below; the modules behind them are `export`, `cleo_json`, `chatgpt`,
`importing` (what every import shares) and `reading` (a file to import, read as a bounded stream).
"""

from engine.transfer.chatgpt import import_chatgpt
from engine.transfer.cleo_json import import_cleo_file, import_cleo_json
from engine.transfer.export import export_everything, export_json, export_markdown, write_export
from engine.transfer.importing import ImportFileInvalid, ImportReport

__all__ = [
    "ImportFileInvalid",
    "ImportReport",
    "export_everything",
    "export_json",
    "export_markdown",
    "import_chatgpt",
    "import_cleo_file",
    "import_cleo_json",
    "write_export",
]
