"""Command-line arguments declared once from the settings dataclasses (pipeline/options.py).

`add_group(parser, BackboneOptions)` adds one flag per field that declares one (``--batch-size`` for
``batch_size``); `from_args(BackboneOptions, args)` builds the object back from the parsed
namespace. `as_flags(message, parser)` rewrites the ``name=`` of a library error as the flag of
that parser (``batch_size=0`` -> ``--batch-size 0``, ``overwrite=True`` -> ``--overwrite``).
"""
from __future__ import annotations

import argparse
import re
from dataclasses import MISSING, fields


def word_or_number(word: str, cast, low, option: str):
    """An argparse type accepting `word` or a number: a float above `low`, or an int of at least `low`."""
    def parse(value: str):
        if value == word:
            return value
        try:
            v = cast(value)
        except ValueError:
            v = None
        if v is None or (v <= low if cast is float else v < low):
            kind = "a positive number" if cast is float else f"an integer >= {low}"
            raise argparse.ArgumentTypeError(f"{option} must be {word!r} or {kind}, got {value!r}")
        return v
    return parse


def positive_int(option: str):
    """An argparse type accepting an integer >= 1 for `option`."""
    def parse(value: str) -> int:
        try:
            v = int(value)
        except ValueError:
            v = 0
        if v < 1:
            raise argparse.ArgumentTypeError(f"{option} must be an integer >= 1, got {value!r}")
        return v
    return parse


def sample(option: str):
    def parse(value: str):
        try:
            v = float(value)
        except ValueError:
            v = -1
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{option} must be a number of images per class or a fraction, "
                                             f"got {value!r}")
        return v if v < 1 else int(v)
    return parse


def C_per_head(option: str):
    """--C for compare: 'auto', a number, or per head: 'linear_svm=0.01,logreg=0.1'."""
    one = word_or_number("auto", float, 0, option)

    def parse(value: str):
        if "=" not in value:
            return one(value)
        return {head.strip(): one(c.strip()) for head, _, c in (item.partition("=") for item in value.split(","))}
    return parse


TYPES = {"positive_int": positive_int, "sample": sample, "C": lambda o: word_or_number("auto", float, 0, o),
         "folds": lambda o: word_or_number("loo", int, 2, o), "C_per_head": C_per_head,
         "float": lambda o: float, "int": lambda o: int}


def flag_of(name: str, meta) -> str:
    return meta.get("flag") or "--" + name.replace("_", "-")


def add_group(parser, cls, only=None, skip=(), defaults=None, **overrides) -> None:
    """Add the flags of settings class `cls` (those in `only`, less `skip`) to `parser`.

    `defaults`: {field: default} where a command differs from the class's; `overrides`:
    {field: {argparse keyword: value}} (e.g. another help text or type).
    """
    for f in fields(cls):
        if "help" not in f.metadata or (only is not None and f.name not in only) or f.name in skip:
            continue
        kw = {k: v for k, v in f.metadata.items() if k != "flag" and v is not None}
        kw.update(overrides.get(f.name, {}))
        flag = flag_of(f.name, f.metadata)
        if "type" in kw:
            kw["type"] = TYPES[kw["type"]](flag)
        default = (defaults or {}).get(f.name, f.default if f.default is not MISSING else None)
        parser.add_argument(flag, dest=f.name, default=default, **kw)


def from_args(cls, args: argparse.Namespace, **extra):
    """An instance of settings class `cls` from the parsed arguments that name its fields (plus `extra`)."""
    given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    return cls(**{**given, **extra})


def flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """{'name=': flag} for each option of `parser`, booleans as ``name=True`` (or False) -> the flag alone."""
    out = {}
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag = action.option_strings[-1]
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction)):
            out[f"{action.dest}={action.const!r}"] = flag
        else:
            out[f"{action.dest}="] = flag + " "
    return out


def as_flags(message: str, *parsers: argparse.ArgumentParser) -> str:
    """`message` with each ``name=`` of an option written as its flag: that of the first of `parsers`
    that has the option (the command's own, then e.g. featurize's for a hint to featurize again)."""
    table = {}
    for parser in reversed(parsers):
        table.update(flags(parser))
    if not table:
        return message
    keys = sorted(table, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w.-])(" + "|".join(re.escape(k) + (r"\b" if k[-1].isalnum() else "")
                                                       for k in keys) + ")")

    def flag(m: re.Match) -> str:
        after = message[m.end():m.end() + 1]
        return table[m.group(1)].rstrip() if after in ("", " ", ",", ";", ")", ":") else table[m.group(1)]
    return pattern.sub(flag, message)
