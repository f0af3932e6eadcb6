"""Labels from a Kaggle-style CSV (``id,label``) instead of class sub-folders.

An id may be a file name with or without its extension, or a path relative to the data
folder; it is matched against each image's relative path, then its name, then its stem.
"""
from __future__ import annotations

import csv
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import UsageError


@dataclass
class CsvLabels:
    """The labels read from a CSV: {normalised id: label}, plus where they came from."""

    path: str
    by_id: dict[str, str]
    id_column: str
    label_column: str

    def __post_init__(self):
        # ids given as paths ("train/Cat1.jpg") also match by file name and stem, unless ambiguous
        short: dict[str, list[str]] = {}
        for key in self.by_id:
            p = PurePosixPath(key)
            for k in {p.name, p.stem} - {key}:
                short.setdefault(k, []).append(key)
        self._short = {k: ids for k, ids in short.items() if len({self.by_id[i] for i in ids}) == 1}

    def match(self, relpath: str) -> list[str]:
        """The CSV ids that label the image at `relpath` (empty: none)."""
        p = PurePosixPath(relpath)
        keys = (relpath, str(p.with_suffix("")), p.name, p.stem)
        for key in keys:
            if key in self.by_id:
                return [key]
        for key in keys:
            if key in self._short:
                return self._short[key]
        return []

    def lookup(self, relpath: str) -> str | None:
        ids = self.match(relpath)
        return self.by_id[ids[0]] if ids else None


@dataclass
class LabelMatch:
    """How a CSV's labels met a folder's images."""

    labels: dict[str, str | None]  # relpath -> label (None: the CSV has no row for it)
    unlabelled: list[str] = field(default_factory=list)
    unused_ids: list[str] = field(default_factory=list)  # CSV ids that match no image


def _dialect(f):
    """Comma by default; semicolon- or tab-separated files are recognised from their header."""
    head = f.readline()
    f.seek(0)
    for sep in (",", ";", "\t"):
        if sep in head:
            return csv.excel_tab if sep == "\t" else type("sep", (csv.excel,), {"delimiter": sep})
    return csv.excel


def _norm_id(value: str) -> str:
    v = value.strip().replace("\\", "/")
    while v.startswith("./"):
        v = v[2:]
    return unicodedata.normalize("NFC", v)


def _pick(header: list[str], wanted: str | None, default: str, fallback: int, what: str, path) -> str:
    if wanted is not None:
        if wanted not in header:
            raise UsageError(f"{path}: no column {wanted!r} for the {what}; columns are {', '.join(header)}")
        return wanted
    if default in header:
        return default
    if len(header) > fallback:
        return header[fallback]
    raise UsageError(f"{path}: cannot tell which column holds the {what}; columns are {', '.join(header)} "
                     f"(use --{what.replace(' ', '-')}-column)")


def read_labels_csv(path, id_column: str | None = None, label_column: str | None = None,
                    class_names: bool = True, multi_label: bool = False) -> CsvLabels:
    """Read `path` (header row required). Default columns: 'id' (else the first), 'label' (else the second).

    multi_label: each label cell holds several tags separated by spaces or '|'; labels are stored
    as the tags sorted and joined by one space (pipeline/training/multilabel.py), and tags are checked as class names.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, dialect=_dialect(f))
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            id_col = _pick(header, id_column, "id", 0, "id", path)
            label_col = _pick(header, label_column, "label", 1, "label", path)
            by_id, clashes = {}, []
            for line, row in enumerate(reader, start=2):
                key, label = _norm_id(row.get(id_col) or ""), (row.get(label_col) or "").strip()
                label = normalise(label) if multi_label else label
                if not key or not label:
                    continue  # a row without an id or a label labels nothing
                if key in by_id and by_id[key] != label:
                    clashes.append(f"{key!r} (line {line}: {label!r}, before: {by_id[key]!r})")
                by_id[key] = label
    except FileNotFoundError:
        raise UsageError(f"labels file {str(path)!r} does not exist") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise UsageError(f"{path} is not a readable CSV file ({e})") from None
    if not header:
        raise UsageError(f"{path} is empty; expected a header such as 'id,label'")
    if clashes:
        raise UsageError(f"{path} gives some ids two different labels: {'; '.join(clashes[:5])}")
    if not by_id:
        raise UsageError(f"{path} has no rows with both an id ({id_col}) and a label ({label_col})")
    if class_names:
        check_class_names({t for v in by_id.values() for t in v.split(" ")} if multi_label else set(by_id.values()),
                          str(path))
    return CsvLabels(str(path), by_id, id_col, label_col)


def match_labels(relpaths: list[str], labels: CsvLabels) -> LabelMatch:
    """Label each image from the CSV; list the images it does not label and the ids that match no image."""
    out, used = {}, set()
    for rel in relpaths:
        ids = labels.match(_norm_id(rel))
        out[rel] = labels.by_id[ids[0]] if ids else None
        used.update(ids)
    unlabelled = [r for r, lab in out.items() if lab is None]
    return LabelMatch(out, unlabelled, sorted(k for k in labels.by_id if k not in used))


def check_class_names(names, where: str) -> None:
    """Refuse class names that differ only by case or Unicode normalisation (they merge on some disks)."""
    seen: dict[str, str] = {}
    clashes = []
    for n in sorted(names):
        key = unicodedata.normalize("NFC", n).casefold()
        if key in seen:
            clashes.append(f"{seen[key]!r} and {n!r}")
        else:
            seen[key] = n
    if clashes:
        raise UsageError(f"{where}: class names that differ only by case or accents encoding: {', '.join(clashes)}; "
                         f"rename one of each pair")


# ---- several labels per image (multi-label CSVs) -------------------------------------------------
SEPARATORS = re.compile(r"[\s|]+")


def split_tags(value) -> list[str]:
    """'b a|c' -> ['a', 'b', 'c']: the tags of one label cell (spaces or '|' separate them)."""
    return sorted({t for t in SEPARATORS.split(str(value or "")) if t})


def normalise(value) -> str:
    """A label cell as stored: its tags sorted and joined by one space ('' when it holds none)."""
    return " ".join(split_tags(value))


def tags_of(labels) -> list[str]:
    """Every tag used by some label, sorted."""
    return sorted({t for v in labels for t in split_tags(v)})
