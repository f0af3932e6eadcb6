"""The argument parser: argparse's, with a "did you mean" for misspelled commands, flags and choices.

Python 3.11's argparse has no ``suggest_on_error``: a misspelled flag (``featurize ... --ouput x``) is
reported by the top-level parser with the usage of all the commands, and a misspelled command
(``featurise``) lists the choices. :class:`Parser` reports a misspelled flag with the usage line of
the command it was given to and the closest flag of that command, and a misspelled command or
choice with the closest valid one (difflib, through :func:`pipeline.hints.close_matches`).
"""
from __future__ import annotations

import argparse
import functools
import re
import shutil
import sys

from ..hints import close_matches

_INVALID_CHOICE = re.compile(r"argument (?P<arg>[^:]+): invalid choice: '(?P<given>.*)' \(choose from (?P<choices>.*)\)$")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors name the closest command, flag or choice (exit status 2)."""

    def __init__(self, *args, **kwargs):
        # the help width as argparse computes it, asked of the terminal once per parser, not at every flag
        # added (argparse builds a formatter for each: ~180 terminal queries per start)
        kwargs.setdefault("formatter_class", functools.partial(argparse.HelpFormatter,
                                                               width=shutil.get_terminal_size().columns - 2))
        # flags by their exact names only: argparse would take any unambiguous prefix (--lay for --layer), and a
        # script written so would break, or change meaning, the day a flag sharing the prefix is added
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        args, extras = self.parse_known_args(args, namespace)
        if extras:
            command = self._command_parser(args)
            (command or self).error(unrecognized(extras, command or self))
        return args

    def error(self, message: str):
        m = _INVALID_CHOICE.match(message)
        sub = self._subparsers_action()
        if m and sub is not None and m["arg"] in (sub.dest, sub.metavar):
            return self._unknown_command(m["given"])
        if m:
            choices = re.findall(r"'([^']*)'", m["choices"])
            found = close_matches(m["given"], choices, n=1)
            if found:
                message = f"{message}; did you mean {found[0]!r}?"
        return super().error(message)

    def _unknown_command(self, given: str):
        """A misspelled command: the usage of the closest command and its name, else the short usage."""
        commands = self._subparsers_action().choices
        found = close_matches(given, commands, n=1)
        if found:
            commands[found[0]].print_usage(sys.stderr)
            self.exit(2, f"{self.prog}: error: unknown command {given!r}; did you mean {found[0]}?\n")
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: unknown command {given!r}; the commands are {', '.join(commands)} "
                     f"(`{self.prog} -h` says what each does)\n")

    def _subparsers_action(self):
        return next((a for a in self._actions if isinstance(a, argparse._SubParsersAction)), None)

    def _command_parser(self, args) -> argparse.ArgumentParser | None:
        sub = self._subparsers_action()
        return sub.choices.get(getattr(args, sub.dest, None)) if sub is not None else None


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every long flag of `parser` (``--out``, ``--no-progress``...)."""
    return [s for a in parser._actions for s in a.option_strings if s.startswith("--")]


def unrecognized(extras: list[str], parser: argparse.ArgumentParser) -> str:
    """'unrecognized arguments: --ouput x (did you mean --out?)': the closest flag for each misspelled one."""
    flags = option_strings(parser)
    hints = []
    for word in extras:
        if word.startswith("-") and len(word) > 1:
            found = close_matches(word.split("=", 1)[0], flags, n=1)
            hints.append(f"{word.split('=', 1)[0]}: did you mean {found[0]}?" if found
                         else f"{word.split('=', 1)[0]}: {parser.prog} has no such flag (-h lists them)")
    return f"unrecognized arguments: {' '.join(extras)}" + (f" ({'; '.join(hints)})" if hints else "")
