"""A store is a closed folder: the names meta.json gives stay inside it, and nothing in it is a link.

* :func:`check_meta_names`: every name read from meta.json (the rows file, each segment, each file of
  a segment) is a plain name inside its folder: no separator, no ``..``, nothing absolute; anything
  else is a damaged store, refused before anything is read, written or deleted.
* :func:`links_in` / :func:`refuse_links`: no file or folder of a store is a symbolic link (or a
  pipe, socket or device); every command refuses such a store before touching it, and ``verify``
  lists them. The store's own folder may be reached through a link: what it holds may not.
* :func:`read_bytes` and :func:`open_append` open a store's files with ``O_NOFOLLOW`` and check they
  are regular files (the log appended to must have no second name: a hard link to a file outside).
  bcolz opens its own files: :func:`check_tree` checks a piece's folder with ``lstat`` first.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..errors import StoreError

_SEPARATORS = ("/", "\\", "\0")


def plain_name(name) -> bool:
    """True for a name that stays inside its folder: no separator, not '.', '..' or empty."""
    return (isinstance(name, str) and name not in ("", ".", "..") and not any(s in name for s in _SEPARATORS)
            and not os.path.isabs(name))


def _refuse_name(where: Path, entry: str, name) -> None:
    raise StoreError(f"{where}: {entry} is {name!r}, not a plain name inside the store: the store is damaged or "
                     f"was crafted, and nothing it names is read, written or deleted; featurize again with "
                     f"--overwrite (which removes only the store's own files)")


def check_name(where: Path, entry: str, name) -> str:
    """`name` when it is a plain name inside its folder; otherwise the store is refused, naming `entry`."""
    if not plain_name(name):
        _refuse_name(where, entry, name)
    return name


def check_relpath(where: Path, entry: str, rel) -> str:
    """A file inside a piece's folder (``data/__0.blp``): forward slashes between plain names only."""
    if not isinstance(rel, str) or not all(plain_name(p) for p in rel.split("/")):
        _refuse_name(where, entry, rel)
    return rel


def check_manifest_names(where: Path, entry: str, files) -> dict:
    """A piece's checksums ({relative file: [size, sha256]}), every name checked."""
    if not isinstance(files, dict):
        raise StoreError(f"{where}: {entry} is not a list of files with checksums; the store is damaged: "
                         f"featurize again with --overwrite")
    for rel, value in files.items():
        check_relpath(where, f"{entry} file", rel)
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int)):
            raise StoreError(f"{where}: {entry} file {rel!r} has no size and checksum; the store is damaged: "
                             f"featurize again with --overwrite")
    return files


def check_meta_names(root: Path, meta: dict) -> None:
    """Refuse a meta.json naming anything outside the store (its rows file, segments, segment files)."""
    where = root / "meta.json"
    check_name(where, "rows_file", meta.get("rows_file", "rows.jsonl"))
    segments = meta.get("segments", [])
    if not isinstance(segments, list):
        raise StoreError(f"{where}: 'segments' is not a list; the store is damaged: featurize again with --overwrite")
    for k, seg in enumerate(segments):
        if not isinstance(seg, dict):
            raise StoreError(f"{where}: segment {k} is not an object; the store is damaged: featurize again "
                             f"with --overwrite")
        check_name(where, f"segment {k}", seg.get("name"))
        rows = seg.get("rows")
        if rows is not None and (not isinstance(rows, int) or isinstance(rows, bool) or rows < 0):
            raise StoreError(f"{where}: segment {seg['name']!r} holds {rows!r} rows, not a count; the store is "
                             f"damaged: featurize again with --overwrite")
        if seg.get("files") is not None:
            check_manifest_names(where, f"segment {seg['name']!r}", seg["files"])


def _unsafe(mode: int) -> str | None:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "not a regular file or folder"
    return None


def links_in(root: Path, limit: int | None = None) -> list[tuple[Path, str]]:
    """(path, what) of every link or special file below `root` (not `root` itself), at most `limit`.
    Entries that vanish while walked (a run's staging folders) are passed over."""
    found, todo = [], [Path(root)]
    while todo:
        try:
            entries = list(os.scandir(todo.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for e in sorted(entries, key=lambda e: e.name):
            try:
                mode = e.stat(follow_symlinks=False).st_mode
            except FileNotFoundError:
                continue
            what = _unsafe(mode)
            if what:
                found.append((Path(e.path), what))
                if limit and len(found) >= limit:
                    return found
            elif stat.S_ISDIR(mode):
                todo.append(Path(e.path))
    return found


def link_message(root: Path, path: Path, what: str) -> str:
    target = f" (to {os.readlink(path)})" if what == "a symbolic link" else ""
    return (f"{path} is {what}{target} inside the feature store {root}: a store's files are never links, and "
            f"no command reads, writes or deletes through one; remove it (rm {path}) or featurize again into "
            f"a new folder")


def refuse_links(root: Path) -> None:
    """Refuse a store holding a link or special file anywhere inside it (every command calls this)."""
    found = links_in(root, limit=1) if Path(root).is_dir() else []
    if found:
        raise StoreError(link_message(Path(root), *found[0]))


def check_tree(folder: Path) -> None:
    """A piece's folder, checked with lstat before bcolz opens it: a real folder holding no link."""
    try:
        mode = os.lstat(folder).st_mode
    except FileNotFoundError:
        raise StoreError(f"{folder} is missing: the store is damaged; featurize again with --overwrite") from None
    what = "a symbolic link" if stat.S_ISLNK(mode) else None if stat.S_ISDIR(mode) else "not a folder"
    found = [(folder, what)] if what else links_in(folder, limit=1)
    if found:
        raise StoreError(link_message(folder.parent.parent, *found[0]))


def _open_nofollow(path: Path, flags: int, mode: int = 0o666) -> int:
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:  # the last part of the path is a link
            raise StoreError(link_message(path.parent, path, "a symbolic link")) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise StoreError(f"{path} is not a regular file; the store is damaged: featurize again with --overwrite")
    return fd


def read_bytes(path: Path) -> bytes:
    """The bytes of a store's file, opened without following a link (a link is refused)."""
    with os.fdopen(_open_nofollow(Path(path), os.O_RDONLY), "rb") as f:
        return f.read()


def open_read(path: Path):
    """A store's file opened to read (binary) without following a link (a link is refused)."""
    return os.fdopen(_open_nofollow(Path(path), os.O_RDONLY), "rb")


def read_text(path: Path) -> str:
    return read_bytes(path).decode("utf-8")


def open_append(path: Path):
    """The store's log, opened to append (created if new) without following a link; a file with a second
    name (a hard link, maybe to a file outside the store) is refused: appending would change it too."""
    path = Path(path)
    fd = _open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    if os.fstat(fd).st_nlink != 1:
        os.close(fd)
        raise StoreError(f"{path} has another name (a hard link): appending to it would change a file outside "
                         f"the store; remove it or featurize again into a new folder")
    return os.fdopen(fd, "ab")
