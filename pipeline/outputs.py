"""Files the tool hands to users: written atomically, never over an input, safe to open in a spreadsheet.

* :func:`atomic_open` writes through a new temp file in the target folder (created with
  ``O_EXCL``, so a planted link is never followed), fsyncs it and renames it over the target:
  a crash or a full disk leaves the old file whole. The temp file is private (0600) while it is
  written; the final file gets the permissions the umask gives a new file (umask 022: 0644).
* :func:`check_output` refuses to write over an input (an image being read, the head in use),
  over a folder, or over a file this tool did not write (``force`` allows the last only).
* :func:`csv_writer` neutralises cells a spreadsheet would run as a formula (OWASP: a leading
  ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a leading apostrophe).
"""
from __future__ import annotations

import contextlib
import csv
import errno
import os
import tempfile
from pathlib import Path

from .errors import PipelineError, UsageError, WriteError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# first header cells of the CSVs this tool writes (score, multi-label score, --kaggle, split, suspects)
OUR_CSV_HEADERS = (("path", "prediction"), ("path", "labels"), ("id", "label"), ("path", "label", "split"),
                   ("path", "label"))


def current_umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status; elsewhere set and reset)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def final_mode() -> int:
    """The permissions of a finished output: those a new file gets under the umask (umask 022: 0644)."""
    return 0o666 & ~current_umask()


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def write_failure(path, e: OSError, kept: str = "") -> str:
    """What to say when writing `path` failed with `e`: the file at fault, the reason, what to do, what was kept."""
    at = e.filename or path
    code = errno.errorcode.get(e.errno, e.errno)
    if e.errno in _DISK_FULL:
        todo = f"the disk holding {Path(at).parent} is full: free space on it, or choose another --out on another disk"
    elif e.errno in _NOT_WRITABLE:
        todo = f"{Path(at).parent} is not writable: fix its permissions, or choose another --out"
    else:
        todo = "check the disk, or choose another --out"
    return f"could not write {at}: {e.strerror or e} ({code}); {todo}" + (f"; {kept}" if kept else "")


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", newline: str | None = None):
    """Open a new temp file beside `path` for writing; on success fsync it and rename it to `path`.

    The temp file stays 0600 while it is written; just before the rename it gets :func:`final_mode`."""
    path = Path(path)
    kept = f"the previous {path.name}, if there was one, is unchanged"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise WriteError(write_failure(path, e, kept)) from e
    try:
        binary = "b" in mode
        with os.fdopen(fd, mode, newline=newline, **({} if binary else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), final_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, PipelineError):  # a full disk, no permission...
            raise WriteError(write_failure(path, e, kept)) from e
        raise


def safe_cell(value):
    """A CSV cell a spreadsheet shows as text: formulas get a leading apostrophe (OWASP)."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class _SafeWriter:
    def __init__(self, f):
        self._w = csv.writer(f)

    def writerow(self, row):
        self._w.writerow([safe_cell(v) for v in row])

    def writerows(self, rows):
        for row in rows:
            self.writerow(row)


def csv_writer(f) -> _SafeWriter:
    """A csv.writer whose string cells are neutralised with :func:`safe_cell`."""
    return _SafeWriter(f)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _looks_like_our_csv(path: Path) -> bool:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader([f.readline()]), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return any(tuple(header[:len(h)]) == h for h in OUR_CSV_HEADERS)


def _looks_like_our_head(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError:
        return False
    return magic.startswith(b"PK\x03\x04") or (magic[:1] == b"\x80" and path.suffix == ".joblib")


def check_output(path, kind: str, *, inputs=(), data_dir=None, force: bool = False, option: str = "out") -> Path:
    """Refuse an output path that would destroy something: return it when it is safe to write.

    kind: "csv" or "head" (what will be written). inputs: files this command reads (the head in
    use); data_dir: the image folder being read (no image in it may be written over). An
    existing file that this tool did not write is refused unless `force`.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option}={str(path)!r} is a folder; give the path of a {kind} file to write")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise UsageError(f"{option}={str(path)!r} names an image file; give a .csv or model file name instead")
    for inp in inputs:
        if inp is not None and _same_file(path, Path(inp)):
            raise UsageError(f"{option}={str(path)!r} is {inp}, an input of this command; writing it would "
                             f"destroy it: choose another file")
    if data_dir is not None and path.exists() and _inside(path, Path(data_dir)) and _is_image_file(path):
        raise UsageError(f"{option}={str(path)!r} is an image in the folder being read; choose another file")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise UsageError(f"{option}={str(path)!r} exists and is not a regular file; choose another path")
    if path.exists() and not force:
        ours = _looks_like_our_csv(path) if kind == "csv" else _looks_like_our_head(path)
        if not ours:
            raise UsageError(f"{option}={str(path)!r} exists and is not a {kind} file this tool wrote; "
                             f"choose another path, or pass force=True to replace it")
    return path


REPORT_GENERATOR = '<meta name="generator" content="tf-feature-pipeline">'  # in every HTML report's head


def check_report_dir(path, data_dir=None) -> Path:
    """Refuse a report folder that would destroy or pollute something: return it when it is safe to write.

    A report goes to a new or empty folder, or over a report this tool wrote (its index.html); never
    into the image folder `data_dir`, where its thumbnails would become images of the data set.
    """
    path = Path(path)
    if data_dir is not None and _inside(path, Path(data_dir)):
        raise UsageError(f"--report {str(path)!r} is inside the data folder {data_dir}: its thumbnails would be "
                         f"featurized as images next time; choose a folder outside it")
    if path.exists() and not path.is_dir():
        raise UsageError(f"--report {str(path)!r} exists and is not a folder; give a new folder for the report")
    if path.is_dir() and any(path.iterdir()) and not _looks_like_our_report(path / "index.html"):
        raise UsageError(f"--report {str(path)!r} is a folder holding files that are not a report of this tool; "
                         f"choose a new or empty folder")
    return path


def _looks_like_our_report(page: Path) -> bool:
    """index.html written by this tool (reports before the generator tag show their confusion or PR plot)."""
    try:
        text = page.read_text(encoding="utf-8", errors="replace")[:200_000]
    except OSError:
        return False
    return REPORT_GENERATOR in text or 'src="confusion.png"' in text or 'src="pr.png"' in text


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def _is_image_file(path: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return True
    except (UnidentifiedImageError, OSError, ValueError):
        return False
