"""The command line: parses arguments into the settings dataclasses and calls the library
(``python -m pipeline`` and the ``tf-feature-pipeline`` console script run :func:`main` through
:func:`console_main`)."""
from .commands import console_main, main

__all__ = ["main", "console_main"]
