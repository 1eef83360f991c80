"""Which chat model Cleo loads, and the choices about models and settings made before (or without) a Session."""

from __future__ import annotations

import sys
from pathlib import Path

from engine.errors import ModelMissing
from engine.models.catalog import ModelCatalog, read_model_info
from engine.paths import default_chat_model
from engine.settings import Settings, save_settings
from engine.views import ModelList, Refresh


def chat_model_path(settings: Settings, model_path: Path | None = None) -> Path:
    default = default_chat_model()
    path = model_path or (Path(settings.chat_model) if settings.chat_model else default)
    if path == default and not path.exists():
        rebuild = ("Reinstall Cleo to get it back" if getattr(sys, "frozen", False)
                   else "Build it with `python -m training.defaults` (or `make run`)")
        raise ModelMissing(f"Cleo's default model {path} does not exist.",
                           hint=f"{rebuild}, or choose another model (Models in the window, --model PATH in the "
                                "terminal).")
    return path


def list_models(settings: Settings) -> ModelList:
    """The models Cleo can load from its folders and the user's, and the .gguf files it cannot."""
    models, unusable = ModelCatalog([Path(p) for p in settings.model_folders]).scan()
    return ModelList(tuple(models), tuple(unusable))


def choose_model(settings: Settings, path: str) -> Settings:
    """Make the model at `path` the default, checked first; the saved settings are returned."""
    read_model_info(Path(path))  # a clear error before anything changes
    settings = settings.updated(chat_model=path)
    save_settings(settings)
    return settings


def keep_settings(settings: Settings) -> Refresh:
    """Save `settings` when no Session could open (the model failed to load): they apply at the next open."""
    save_settings(settings)
    return Refresh(settings=settings)
