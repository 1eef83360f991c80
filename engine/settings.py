"""Cleo's settings: one pydantic model, persisted as JSON, overridable from the environment.

Every field has a type, limits, a default and a description; the settings dialog (`app/settings_dialog.py`) is
generated from this model. Values come from, in order of strength: `CLEO_<FIELD>` environment
variables, `settings.json` in the config folder, the defaults below.

A damaged settings file never stops Cleo: unreadable JSON is kept as `settings.json.bad` and the
defaults are used; a file with unknown or out-of-range entries keeps its good entries, the bad
ones are named in a warning, and the original is kept as `settings.json.bad`. A bad environment
variable is an error, because the user typed it just now and should learn it was ignored; so is a
settings file Cleo cannot read at all (a folder in its place, no permission), since saving over
it would fail too: both name what to fix.

The file is written whole or not at all, readable by the user alone (0600 on POSIX; on Windows the
user's config folder is theirs already).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from engine.errors import SettingsInvalid
from engine.paths import HOME_VARIABLE, ensure, folders, write_private_file

log = logging.getLogger(__name__)

ENV_PREFIX = "CLEO_"
FILE_NAME = "settings.json"

DEFAULT_SYSTEM_PROMPT = (
    "You are Cleo, a helpful assistant that runs privately on the user's own computer. "
    "Answer clearly and briefly."
)


class Persona(BaseModel):
    """A saved set of instructions a chat can start with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=60)
    instructions: str = Field(min_length=1, max_length=20000)


DEFAULT_PERSONAS = (
    Persona(name="Concise", instructions="You are Cleo. Answer in as few words as the question allows; no preamble."),
    Persona(name="Tutor", instructions="You are Cleo, a patient tutor. Explain step by step with small examples, "
                                       "and end with one question that checks understanding."),
)

# The local API's token may come from the environment (for scripts); it is no setting, so it is never saved.
API_TOKEN_VARIABLE = "CLEO_API_TOKEN"
# A web origin as browsers send it: scheme, host and an optional port, nothing after.
_ORIGIN = re.compile(r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")
_HOST_NAME = re.compile(r"^[A-Za-z0-9.-]{1,253}$")


class Settings(BaseModel):
    """Everything a user can set. Instances are immutable; use `updated()` to change one."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # Model and runtime
    chat_model: str = Field(
        "", max_length=4096,
        description="Path of the GGUF chat model to use; empty means Cleo's default model.",
    )
    context_size: int = Field(
        4096, ge=512, le=262144, description="Tokens of conversation the model sees at once."
    )
    threads: int = Field(
        0, ge=0, le=512,
        description="CPU threads for generation; 0 means physical cores minus one (at least 1).",
    )
    gpu_layers: int = Field(
        -1, ge=-1, le=4096,
        description="Layers to put on the GPU; -1 means as many as fit, 0 means CPU only.",
    )
    gpu_memory_budget_mb: int = Field(
        0, ge=0, le=1048576,
        description="Most GPU memory Cleo may use for a model, in MB, to keep some for other programs; "
                    "0 means all that is free.",
    )
    model_folders: tuple[str, ...] = Field(
        (), max_length=100,
        description="More folders (e.g. LM Studio's or GPT4All's) and GGUF files to list models from.",
    )
    kv_cache_budget_mb: int = Field(
        1024, ge=0, le=262144,
        description="Memory for remembering other conversations' context so switching back is fast.",
    )

    # Sampling
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Randomness of replies; 0 is always the same.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Sample only from the most likely tokens up to this mass.")
    top_k: int = Field(40, ge=0, le=1000, description="Sample only from this many likely tokens; 0 means all.")
    min_p: float = Field(0.05, ge=0.0, le=1.0, description="Drop tokens less likely than this share of the best one.")
    repeat_penalty: float = Field(1.1, ge=1.0, le=2.0, description="How strongly to avoid repeating words.")
    max_tokens: int = Field(1024, ge=1, le=32768, description="Longest reply, in tokens.")
    seed: int = Field(-1, ge=-1, le=2**31 - 1, description="Random seed; -1 picks a new one every reply.")

    # Conversation and memory
    system_prompt: str = Field(
        DEFAULT_SYSTEM_PROMPT, max_length=20000, description="Instructions Cleo follows in every chat."
    )
    personas: tuple[Persona, ...] = Field(
        DEFAULT_PERSONAS, max_length=50, description="Saved instructions a chat can use instead of the ones above.",
    )
    memory_enabled: bool = Field(True, description="Let Cleo remember things about you across chats.")
    ask_before_remembering: bool = Field(
        True, description="Show proposed memories for approval instead of saving them at once."
    )

    # Appearance
    theme: Literal["system", "light", "dark"] = Field("system", description="Colour theme of the window.")
    font_size: int = Field(11, ge=8, le=32, description="Size of the chat text, in points.")

    # Local API (OpenAI-compatible, for other apps on this computer)
    api_enabled: bool = Field(False, description="Serve the local API while Cleo's window is open.")
    api_port: int = Field(8638, ge=1, le=65535, description="Port of the local API on this computer.")
    api_allowed_origins: str = Field(
        "", max_length=4000,
        description="Web pages that may call the local API from a browser: origins such as https://example.com, "
                    "separated by spaces or commas.",
    )
    api_allowed_hosts: str = Field(
        "", max_length=4000,
        description="Host names the local API answers to besides localhost, 127.0.0.1 and [::1], separated by "
                    "spaces or commas.",
    )
    api_listen_on_network: bool = Field(
        False, description="Let other computers on the network reach the local API (the token is still required).",
    )
    api_max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024, description="Largest request the local API accepts, in bytes.",
    )
    api_parallel: int = Field(
        4, ge=1, le=16,
        description="Requests the local API writes at the same time. Each holds a context of its own in memory, "
                    "so the model loads again when this changes.",
    )
    api_queue_limit: int = Field(
        16, ge=1, le=1024, description="Requests the local API lets wait for the model; more are told to retry.",
    )
    api_request_timeout_s: float = Field(
        600.0, ge=1.0, le=86400.0, description="Longest a local API request may take, waiting included, in seconds.",
    )
    api_memory: bool = Field(
        False, description="Let apps using the model id 'cleo' get your instructions and what Cleo remembers.",
    )
    api_save_chats: bool = Field(False, description="Keep the local API's conversations in your chat history.")

    # Finding models
    hub_url: str = Field(
        "https://huggingface.co", max_length=400,
        description="Where Cleo searches for and downloads models: Hugging Face, or a mirror of it. Left at "
                    "https://huggingface.co, the HF_ENDPOINT variable is used when it is set.",
    )

    @field_validator("hub_url")
    @classmethod
    def _hub_url(cls, text: str) -> str:
        # Downloads add their own rule (https, or plain http to this computer only); this checks the form.
        if not re.match(r"^https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~/-]*)?$", text):
            raise ValueError(f"{text!r} is not a web address like https://huggingface.co")
        return text.rstrip("/")

    @field_validator("api_allowed_origins")
    @classmethod
    def _origins(cls, text: str) -> str:
        for origin in _items(text):
            if not _ORIGIN.match(origin):
                raise ValueError(f"{origin!r} is not an origin like https://example.com or http://localhost:3000")
        return ", ".join(_items(text.lower()))

    @field_validator("api_allowed_hosts")
    @classmethod
    def _hosts(cls, text: str) -> str:
        for host in _items(text):
            if not _HOST_NAME.match(host):
                raise ValueError(f"{host!r} is not a host name like my-computer.local")
        return ", ".join(_items(text.lower()))

    def api_origins(self) -> tuple[str, ...]:
        return _items(self.api_allowed_origins)

    def api_hosts(self) -> tuple[str, ...]:
        return _items(self.api_allowed_hosts)

    def updated(self, **changes: Any) -> Settings:
        """A copy with `changes` applied, validated like everything else."""
        return _validate({**self.model_dump(), **changes}, source="the change")


def _items(text: str) -> tuple[str, ...]:
    return tuple(item for item in re.split(r"[\s,]+", text) if item)


def settings_file() -> Path:
    return folders().config / FILE_NAME


def load_settings() -> tuple[Settings, list[str]]:
    """The settings in force, and warnings about anything in the file that had to be ignored."""
    path = settings_file()
    stored, warnings = _read_file(path)
    warnings += _misspelled_variables()
    values = {**stored, **_environment_values()}
    try:
        return _validate(values, source=str(path)), warnings
    except SettingsInvalid:
        pass
    # Some stored entries are unknown or out of range: keep the good ones, name the bad ones.
    good, bad = _split_valid(stored)
    if bad:
        _keep_bad_copy(path)
        warnings += [f"Ignored setting in {path}: {problem}" for problem in bad]
        warnings.append(f"The original file was kept as {path.name}.bad.")
    return _validate({**good, **_environment_values()}, source="the environment"), warnings


def save_settings(settings: Settings) -> Path:
    """Write `settings` atomically, so a crash mid-write never leaves half a file."""
    path = ensure(folders().config) / FILE_NAME
    try:
        write_private_file(path, (json.dumps(settings.model_dump(), indent=2, sort_keys=True) + "\n").encode())
    except OSError as exc:
        raise SettingsInvalid(f"Cleo cannot save its settings to {path} ({exc.strerror or exc}).",
                              hint=_UNUSABLE_FILE_HINT) from exc
    return path


_UNUSABLE_FILE_HINT = ("It must be a file Cleo can read and write: move away whatever is there (Cleo then starts "
                       f"with the default settings), or choose another folder with {HOME_VARIABLE}=DIR.")


def _read_file(path: Path) -> tuple[dict[str, Any], list[str]]:
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return {}, []
    except OSError as exc:  # a folder in its place, no permission, a broken disk
        raise SettingsInvalid(f"Cleo cannot read its settings file {path} ({exc.strerror or exc}).",
                              hint=_UNUSABLE_FILE_HINT) from exc
    try:
        data = json.loads(text.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("the file does not hold a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        _keep_bad_copy(path)
        path.unlink()
        warning = (
            f"Settings file {path} could not be read ({exc}); it was kept as {path.name}.bad "
            "and the default settings are used."
        )
        log.warning(warning)
        return {}, [warning]
    return data, []


def _keep_bad_copy(path: Path) -> None:
    write_private_file(path.with_name(path.name + ".bad"), path.read_bytes())


def _environment_values() -> dict[str, str]:
    values = {}
    for name in Settings.model_fields:
        raw = os.environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = raw
    return values


def _misspelled_variables() -> list[str]:
    """Warnings for `CLEO_*` variables that are no setting but look like one: a typo is otherwise
    ignored without a word."""
    names = [ENV_PREFIX + name.upper() for name in Settings.model_fields]
    warnings = []
    for variable in sorted(os.environ):
        if variable.startswith(ENV_PREFIX) and variable not in (*names, HOME_VARIABLE, API_TOKEN_VARIABLE):
            close = difflib.get_close_matches(variable, names, n=1, cutoff=0.9)
            if close:
                warnings.append(f"The variable {variable} is not a setting and was ignored; did you mean {close[0]}?")
    return warnings


def _split_valid(stored: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    good: dict[str, Any] = {}
    bad: list[str] = []
    for key, value in stored.items():
        try:
            _validate({key: value}, source="")
            good[key] = value
        except SettingsInvalid as exc:
            bad.append(exc.message)
    return good, bad


def _validate(values: dict[str, Any], *, source: str) -> Settings:
    env_values = _environment_values()
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        problems = [_describe(error, env_values) for error in exc.errors()]
        where = f" (in {source})" if source else ""
        from_environment = any(f" from {ENV_PREFIX}" in problem for problem in problems)
        hint = ("Unset that variable or give it an allowed value" if from_environment
                else "Fix or remove that setting") + "; every setting and its limits are listed in the README."
        raise SettingsInvalid("; ".join(problems) + where, hint=hint) from None


def _describe(error: ErrorDetails, env_values: dict[str, str]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        known = ", ".join(Settings.model_fields)
        return f"unknown setting '{key}' (known settings: {known})"
    origin = f" from {ENV_PREFIX}{key.upper()}" if key in env_values else ""
    return f"setting '{key}' = {error.get('input')!r}{origin} is not allowed: {error['msg']}"
