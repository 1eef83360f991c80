"""The two families of errors Cleo knows (docs/ARCHITECTURE.md, decision 8).

A `KnownError` is something the user or their machine can fix: the message says what happened
in the user's words and `hint` says what to do. The CLI and the GUI show it as it is, with no
traceback. Anything that is not a `KnownError` is a bug: it is logged with its traceback and
reported once, and the app keeps running. `InternalError` is how a bug reaches the user in the
middle of a turn; it is deliberately not a `KnownError`, so nothing handles a bug as the user's
problem by accident.
"""

from __future__ import annotations


class ShownError(Exception):
    """An error with words for the user: what happened, and on its own line what to do."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def user_text(self) -> str:
        """The message and, on its own line, what to do about it."""
        return f"{self.message}\n{self.hint}" if self.hint else self.message


class KnownError(ShownError):
    """An error with a message the user can act on."""


class InternalError(ShownError):
    """A bug, as the user sees it: what failed, and that the details (the traceback) are in the log."""


class FolderNotWritable(KnownError):
    """A folder Cleo must write to cannot be created or written."""


class SettingsInvalid(KnownError):
    """A setting has an unknown name or a value outside its limits."""


class ModelMissing(KnownError):
    """A model file Cleo needs is not where it should be."""


class ProcessorUnsupported(KnownError):
    """The processor lacks instructions the engine was compiled to use."""


class ModelFileInvalid(KnownError):
    """A model file exists but is damaged, truncated or of an unsupported kind."""


class DownloadFailed(KnownError):
    """A package that carries model weights could not be fetched from the package index."""


class ChatTemplateInvalid(KnownError):
    """A model's chat template does not compile, fails on a conversation, or is unsafe."""


class ContextFull(KnownError):
    """A prompt does not fit the model's context."""


class GenerationFailed(KnownError):
    """llama.cpp could not compute a reply."""


class Busy(KnownError):
    """A request that must wait: a reply is being written, or too many are waiting."""


class NotReady(KnownError):
    """A request arrived before Cleo finished opening the profile and the model."""
