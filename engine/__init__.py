"""Cleo's engine: everything that is neither GUI nor torch, under one `Session`.

Frontends (the window in `app/`, the terminal commands in `engine.cli`, the local API) import
what they use from this package and from nowhere deeper: the names below are the surface, and
`tests/test_import_rules.py` keeps it so. Names load on first use, so importing `engine` costs
nothing before the window's first paint (llama.cpp, numpy and SQLite load with the Session).

Subpackages, each owning one concern: `chat` (a turn: assistant, prompt, KV cache), `runtime`
(llama.cpp, the only importer of `llama_cpp`), `models` (GGUF files, catalog, downloads, fit),
`storage` (the SQLite database, migrations, profile lock, conversations), `memory` (the memory
book, learning, recall, vectors), `transfer` (imports and exports), `cli` (terminal commands), `api`
(the local OpenAI-compatible API; its server loads on first use).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> module that defines it
_SURFACE = {
    "Session": "engine.session", "open_session": "engine.session", "list_models": "engine.model_choice",
    "choose_model": "engine.model_choice", "keep_settings": "engine.model_choice", "Profile": "engine.profile",
    "open_profile": "engine.profile", "TurnTicket": "engine.chat.requests",
    "KnownError": "engine.errors", "InternalError": "engine.errors", "ModelMissing": "engine.errors",
    "Busy": "engine.errors", "NotReady": "engine.errors",
    "Event": "engine.events", "Started": "engine.events", "Token": "engine.events", "Notice": "engine.events",
    "Recalled": "engine.events", "RecalledItem": "engine.events", "MemoryUpdated": "engine.events",
    "Usage": "engine.events", "Done": "engine.events", "Failed": "engine.events",
    "ConversationView": "engine.views", "MemoryState": "engine.views", "ModelList": "engine.views",
    "ModelState": "engine.views", "Refresh": "engine.views",
    "Message": "engine.chat.conversation", "Memory": "engine.memory.book", "MEMORY_KINDS": "engine.memory.book",
    "ConversationSummary": "engine.storage.conversations", "SearchHit": "engine.storage.conversations",
    "default_database_path": "engine.storage.profile_lock", "in_use": "engine.storage.profile_lock",
    "ModelInfo": "engine.models.catalog", "Unusable": "engine.models.catalog",
    "read_model_info": "engine.models.catalog",
    "CatalogEntry": "engine.models.downloads", "download": "engine.models.downloads",
    "read_catalog": "engine.models.downloads", "DownloadCancelled": "engine.models.downloads",
    "available_memory": "engine.models.fit", "estimate_need": "engine.models.fit",
    "HubModel": "engine.models.hub", "SearchPage": "engine.models.hub", "HubFile": "engine.models.hub",
    "RepoFiles": "engine.models.hub", "Suggestion": "engine.models.hub", "hub_address": "engine.models.hub",
    "search": "engine.models.hub", "search_next": "engine.models.hub", "repo_files": "engine.models.hub",
    "suggestions": "engine.models.hub", "HubCancelled": "engine.models.hub_http",
    "HubUnreachable": "engine.models.hub_http",
    "RemoteModel": "engine.models.remote_header", "describe_remote": "engine.models.remote_header",
    "DownloadQueue": "engine.models.hub_downloads", "QueuedDownload": "engine.models.hub_downloads",
    "DownloadProgress": "engine.models.hub_downloads", "gpus": "engine.runtime.llama",
    "Settings": "engine.settings", "Persona": "engine.settings", "load_settings": "engine.settings",
    "save_settings": "engine.settings", "DEFAULT_SYSTEM_PROMPT": "engine.settings",
    "folders": "engine.paths", "ensure": "engine.paths", "BUNDLED_MODELS": "engine.paths",
    "default_chat_model": "engine.paths", "default_embedding_model": "engine.paths",
    "setup_logging": "engine.logs", "run_command": "engine.cli.main",
    "LocalApi": "engine.api.server", "api_token": "engine.api.token", "new_token": "engine.api.token",
}
__all__ = [
    "BUNDLED_MODELS",
    "DEFAULT_SYSTEM_PROMPT",
    "MEMORY_KINDS",
    "Busy",
    "CatalogEntry",
    "ConversationSummary",
    "ConversationView",
    "Done",
    "DownloadCancelled",
    "DownloadProgress",
    "DownloadQueue",
    "Event",
    "Failed",
    "HubCancelled",
    "HubFile",
    "HubModel",
    "HubUnreachable",
    "InternalError",
    "KnownError",
    "LocalApi",
    "Memory",
    "MemoryState",
    "MemoryUpdated",
    "Message",
    "ModelInfo",
    "ModelList",
    "ModelMissing",
    "ModelState",
    "NotReady",
    "Notice",
    "Persona",
    "Profile",
    "QueuedDownload",
    "Recalled",
    "RecalledItem",
    "Refresh",
    "RemoteModel",
    "RepoFiles",
    "SearchHit",
    "SearchPage",
    "Session",
    "Settings",
    "Started",
    "Suggestion",
    "Token",
    "TurnTicket",
    "Unusable",
    "Usage",
    "api_token",
    "available_memory",
    "choose_model",
    "default_chat_model",
    "default_database_path",
    "default_embedding_model",
    "describe_remote",
    "download",
    "ensure",
    "estimate_need",
    "folders",
    "gpus",
    "hub_address",
    "in_use",
    "keep_settings",
    "list_models",
    "load_settings",
    "new_token",
    "open_profile",
    "open_session",
    "read_catalog",
    "read_model_info",
    "repo_files",
    "run_command",
    "save_settings",
    "search",
    "search_next",
    "setup_logging",
    "suggestions",
]


def __getattr__(name: str) -> Any:
    if name not in _SURFACE:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    module = importlib.import_module(_SURFACE[name])
    value = getattr(module, "main" if name == "run_command" else name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from engine.api.server import LocalApi
    from engine.api.token import api_token, new_token
    from engine.chat.conversation import Message
    from engine.chat.requests import TurnTicket
    from engine.cli.main import main as run_command
    from engine.errors import Busy, InternalError, KnownError, ModelMissing, NotReady
    from engine.events import Done, Event, Failed, MemoryUpdated, Notice, Recalled, RecalledItem, Started, Token, Usage
    from engine.logs import setup_logging
    from engine.memory.book import MEMORY_KINDS, Memory
    from engine.model_choice import choose_model, keep_settings, list_models
    from engine.models.catalog import ModelInfo, Unusable, read_model_info
    from engine.models.downloads import CatalogEntry, DownloadCancelled, download, read_catalog
    from engine.models.fit import available_memory, estimate_need
    from engine.models.hub import (
        HubFile,
        HubModel,
        RepoFiles,
        SearchPage,
        Suggestion,
        hub_address,
        repo_files,
        search,
        search_next,
        suggestions,
    )
    from engine.models.hub_downloads import DownloadProgress, DownloadQueue, QueuedDownload
    from engine.models.hub_http import HubCancelled, HubUnreachable
    from engine.models.remote_header import RemoteModel, describe_remote
    from engine.paths import BUNDLED_MODELS, default_chat_model, default_embedding_model, ensure, folders
    from engine.profile import Profile, open_profile
    from engine.runtime.llama import gpus
    from engine.session import Session, open_session
    from engine.settings import DEFAULT_SYSTEM_PROMPT, Persona, Settings, load_settings, save_settings
    from engine.storage.conversations import ConversationSummary, SearchHit
    from engine.storage.profile_lock import default_database_path, in_use
    from engine.views import ConversationView, MemoryState, ModelList, ModelState, Refresh
