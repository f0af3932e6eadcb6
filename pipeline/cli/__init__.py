"""The command line: parses arguments into the settings dataclasses and calls the library
(``python -m pipeline`` and the ``tf-feature-pipeline`` console script run :func:`main`)."""
from .commands import main

__all__ = ["main"]
