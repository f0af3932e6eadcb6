"""Exception types. Each message says what was wrong, where, and what to do.

They inherit from builtins so callers can catch ``ValueError`` / ``OSError`` as usual.
"""


class PipelineError(Exception):
    """Base class: the CLI prints the message on one line and exits with status 1."""


class UsageError(PipelineError, ValueError):
    """A bad argument or option value (CLI exit status 2)."""


class BackboneError(PipelineError, ValueError):
    """A backbone could not be found, loaded or understood."""


class StoreError(PipelineError, OSError):
    """A feature store is missing, damaged, locked or was made with other settings."""


class WriteError(PipelineError, OSError):
    """A file could not be written (disk full, no permission...): the message names the file and what to do."""


class SpecMismatchError(PipelineError, ValueError):
    """Features from one backbone/layer/preprocessing given to a head trained on another. The message
    is one line; `details` holds both specs in full (the CLI shows them with -v)."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


class ModelFileError(PipelineError, ValueError):
    """A persisted head cannot be loaded."""


class ImageError(PipelineError, ValueError):
    """One image cannot be used. Carries the path and a short reason code."""

    def __init__(self, path, reason: str, detail: str = ""):
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


class UnknownNameError(UsageError, BackboneError):
    """A backbone, layer or class name that does not exist (CLI exit status 2, with a close match)."""
