"""The commit log (rows.jsonl): one JSON line per committed row, or one per block of rows (an import's
batch, held as columns), each line with the index of its first row and a checksum."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path

from ..errors import StoreError
from ..jsontext import loads
from .sealed import check_name, open_read

_SORTED = json.JSONEncoder(sort_keys=True, ensure_ascii=False)  # built once: json.dumps(**kw) builds one per call
_LINE = json.JSONEncoder(ensure_ascii=False)


def _line_crc(row: dict) -> str:
    """Checksum of one log line's content (every field but the checksum itself)."""
    text = _SORTED.encode({k: v for k, v in row.items() if k != "crc"} if "crc" in row else row)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class RowBlock:
    """Consecutive rows committed as one log line, as columns: ``path`` (text, each non-empty), ``label``
    (text or None) and ``sha256`` (text), one value per row (the rows of an import)."""

    path: list
    label: list
    sha256: list

    def __len__(self) -> int:
        return len(self.path)

    def rows(self) -> list[dict]:
        """The block as the rows a per-row log line holds."""
        return [{"path": p, "label": lab, "sha256": h} for p, lab, h in zip(self.path, self.label, self.sha256)]


def _block_line(block: RowBlock, start: int) -> bytes:
    """The log line of a block whose first row is row `start`: ``{"block": n, "i": start, "label": [...],
    "path": [...], "sha256": [...], "crc": ...}``. Its keys are in sorted order, so the text the checksum
    covers (json.dumps(sort_keys=True) of the line without it, as for a row's line) is encoded once."""
    line = {"block": len(block), "i": start, "label": list(block.label), "path": list(block.path),
            "sha256": list(block.sha256)}
    text = _LINE.encode(line)
    crc = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return f'{text[:-1]}, "crc": "{crc}"}}\n'.encode("utf-8")


# what to do about a damaged log: the store is remade by the command that made it
REMAKE = "featurize again with --overwrite (imported features: import-features again with --overwrite)"


def _block_rows(where: str, row: dict) -> list[dict]:
    """The rows of a parsed block line; columns of the wrong kind or length are refused, naming the row."""
    n = row.get("block")
    cols = [row.get(k) for k in ("path", "label", "sha256")]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1 or not all(isinstance(c, list) and len(c) == n
                                                                         for c in cols):
        raise StoreError(f"{where} is a block of rows whose columns are not {n!r} values each; the store is damaged: "
                         f"{REMAKE}")
    for k, (p, lab, h) in enumerate(zip(*cols)):
        if not (isinstance(p, str) and p and isinstance(h, str) and (lab is None or isinstance(lab, str))):
            raise StoreError(f"{where}, row {row.get('i', 0) + k} of the block, is not a row (path {p!r}, label "
                             f"{lab!r}, sha256 {h!r}); the store is damaged: {REMAKE}")
    labels = {}  # one string per label, not one per row (a block's labels repeat)
    cols[1] = [labels.setdefault(lab, lab) for lab in cols[1]]
    return RowBlock(*cols).rows()


def _parse_line(path: Path, number: int, line: str, checked: bool, first: int | None = None) -> list[dict]:
    """Line `number` of the log, whose first row is row `first` (default: `number`) -> its rows (without
    ``i``/``crc``): one, or a block's; a damaged line is refused by number."""
    where = f"{path} line {number + 1}"
    first = number if first is None else first
    try:
        row = loads(line)
    except ValueError as e:
        raise StoreError(f"{where} is not valid JSON ({e}); the store is damaged: {REMAKE}") from None
    if not isinstance(row, dict) or "path" not in row:
        raise StoreError(f"{where} is not a row (no path); the store is damaged: {REMAKE}")
    if checked or "crc" in row or "block" in row:
        if row.get("i") != first:
            raise StoreError(f"{where} is row {row.get('i')!r}, not row {first}: a line was removed, added or "
                             f"moved, so rows and features no longer match; {REMAKE}")
        if row.get("crc") != _line_crc(row):
            what = (f"rows {first} to {first + len(row['path']) - 1}, a block" if "block" in row and
                    isinstance(row["path"], list) else row.get("path"))
            raise StoreError(f"{where} ({what}) was edited after it was written (checksum mismatch); "
                             f"{REMAKE}")
    if "block" in row:
        return _block_rows(where, row)
    return [{k: v for k, v in row.items() if k not in ("i", "crc")}]


def _read_rows(path: Path) -> tuple[list[dict], int]:
    """Committed rows and the byte length they occupy (a partial last line is not committed).

    Lines that carry an index and checksum (every line written by this version) are checked:
    a lost, extra, reordered or edited line is refused, naming the line. The log is read a line at
    a time (an import's log holds a few MB a line, and hundreds of MB in all).
    """
    try:
        f = open_read(path)  # never through a link
    except FileNotFoundError:
        return [], 0
    rows, end, checked = [], 0, None
    with f:
        for n, raw in enumerate(f):
            if not raw.endswith(b"\n"):
                break  # a partial last line: not committed
            try:
                line = raw[:-1].decode("utf-8")
            except UnicodeDecodeError as e:
                raise StoreError(f"{path} line {n + 1} is not UTF-8 text ({e}); the store is damaged: "
                                 f"{REMAKE}") from None
            checked = '"crc"' in line if checked is None else checked
            rows += _parse_line(path, n, line, checked, len(rows))  # a block line's `i` is its first row
            end += len(raw)
    return rows, end


def log_has_path(path: Path, wanted: str) -> bool:
    """True when a committed line of the log at `path` holds a row of path `wanted` (read a line at a time)."""
    needle = _string(wanted)
    try:
        f = open_read(path)
    except FileNotFoundError:
        return False
    with f:
        for n, line in enumerate(f):
            text = line.decode("utf-8", "replace")
            if line.endswith(b"\n") and needle in text:
                row = loads(text)
                if wanted == row.get("path") or (isinstance(row.get("path"), list) and wanted in row["path"]):
                    return True
    return False


def _flat_json(row: dict, keys) -> str | None:
    """`row` as json.dumps(sort_keys=True, ensure_ascii=False) writes it when every value is text, None or
    an int (a row of an import): a few string joins instead of the encoder; None for other rows."""
    parts = []
    for k in keys:
        v = row[k]
        if v.__class__ is str:
            v = _string(v)
        elif v is None:
            v = "null"
        elif v.__class__ is int:
            v = str(v)
        else:
            return None
        parts.append(f"{_string(k)}: {v}")
    return "{" + ", ".join(parts) + "}"


_string = json.encoder.encode_basestring  # the encoder's own escaping (ensure_ascii=False)


def _log_lines(rows: list[dict], start: int) -> bytes:
    """Log lines for `rows`, the first being row `start` of the log: each with its index and checksum
    (the checksum's text is json.dumps(sort_keys=True) of the line without it, built directly for flat rows)."""
    out = []
    for k, r in enumerate(rows):
        line = {**r, "i": start + k}
        text = _flat_json(line, sorted(line))
        if text is None:
            line["crc"] = _line_crc(line)
            out.append(_LINE.encode(line) + "\n")
        else:  # byte for byte the encoder's line: keys in their order, the checksum last
            crc = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
            out.append(f'{_flat_json(line, line)[:-1]}, "crc": "{crc}"}}\n')
    return "".join(out).encode("utf-8")


def live_indices(rows: list[dict]) -> list[int]:
    """Indices of the rows in force: the last row of each path, unless that row withdraws it."""
    last = dict(zip(map(itemgetter("path"), rows), range(len(rows))))
    if len(last) == len(rows):  # every path once (an import, a first run): no row superseded
        return [i for i, r in enumerate(rows) if not r.get("removed")]
    return sorted(i for i in last.values() if not rows[i].get("removed"))


# ---- immutable bcolz pieces: written to staging, fsynced, renamed into place --------------------


def _rows_path(root: Path, meta: dict) -> Path:
    """The commit log named by meta.json (a prune starts a new one): a plain name inside the store."""
    return root / check_name(root / "meta.json", "rows_file", meta.get("rows_file", "rows.jsonl"))
