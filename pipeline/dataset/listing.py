"""Find the images below a data folder: a sorted walk where every file is an image record or an
ignored / unusable entry with a reason code.

Symlinks are followed (``follow_links=False``: not outside the folder), loops and mazes of links are
cut, hidden files and folders are left out, and names that are not UTF-8 are reported. Classes are
the top-level sub-folders, or a labels CSV (:mod:`pipeline.dataset.labels`). One ``scandir`` per folder
says which entries are links and regular files, so a million files need no million stat calls.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..decode.formats import IMAGE_EXTENSIONS
from ..errors import UsageError
from ..logs import IN_SUMMARY
from .labels import check_class_names, match_labels

log = logging.getLogger(__name__)

MAX_FOLDER_VISITS = 4  # a folder reached through more links than this is not listed again
JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})


@dataclass(frozen=True)
class ImageRecord:
    """One image found below a data folder."""

    path: Path  # absolute
    relpath: str  # relative to the data folder, forward slashes
    label: str | None


@dataclass
class Listing:
    """What a folder walk found: images, plus what it ignored and why."""

    records: list[ImageRecord]
    ignored: list[tuple[str, str]]  # (relpath, reason)
    classes: list[str]
    labelled: bool
    unlabelled: list[str] = field(default_factory=list)  # images a labels CSV gives no label
    unused_label_ids: list[str] = field(default_factory=list)  # CSV ids that match no image
    unusable: list[dict] = field(default_factory=list)  # images/folders that cannot be used: {path, reason, detail}
    stats: dict = field(default_factory=dict)  # object storage: path -> [size, mtime_ns] as listed (sources.py)
    links: dict[str, str] = field(default_factory=dict)  # symlinks met (relpath, folders ending in /) -> target
    unreadable: list[str] = field(default_factory=list)  # folders that could not be listed (relpath/, ./ the root)

    def below_unreadable(self, path: str) -> bool:
        """True when `path` lies below a folder this walk could not list (its file may still exist)."""
        return any(d == "./" or path.startswith(d) for d in self.unreadable)


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in JUNK_NAMES


@dataclass
class _Walk:
    """What a folder walk met besides files: folders it did not enter, and symlinks (relpath -> target)."""

    follow_links: bool = True
    skipped_dirs: list[tuple[str, str, str]] = field(default_factory=list)  # (relpath/, reason, detail)
    links: dict[str, str] = field(default_factory=dict)


def _rel_dir(root: Path, dirpath) -> str:
    rel = Path(dirpath).relative_to(root).as_posix()
    return "./" if rel == "." else rel + "/"


def _walk_files(root: Path, walk: _Walk):
    """Yield (relpath, path to read, allowed) for files below root.

    Hidden folders are skipped; a folder that is its own ancestor (a symlink loop) is not walked
    again, nor one already reached MAX_FOLDER_VISITS times through links (so a maze of links
    cannot make the walk explode). Symlinks to files and folders are followed wherever they
    lead, unless ``walk.follow_links`` is False: then those leading outside the root are not
    (allowed=False for such a file). Folders not walked are recorded in ``walk.skipped_dirs`` (``link_loop``,
    ``duplicate_folder``, ``link_outside_root``, ``io_error:<Exception>`` when it cannot be
    listed), links in ``walk.links``.
    """
    real_root, seen, chains = root.resolve(), Counter(), {}

    def unlistable(e: OSError) -> None:
        walk.skipped_dirs.append((_rel_dir(root, e.filename or root), f"io_error:{type(e).__name__}",
                                  f"the folder cannot be listed: {e.strerror or e}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unlistable, followlinks=True):
        real_dir = Path(dirpath).resolve()
        if os.path.islink(dirpath):
            walk.links[_rel_dir(root, dirpath)] = str(real_dir)
        reason = _dir_reason(dirpath, real_dir, real_root, seen, chains, walk.follow_links)
        if reason:
            dirnames[:] = []
            walk.skipped_dirs.append((_rel_dir(root, dirpath), reason, f"-> {real_dir}"))
            continue
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        rel_dir = _rel_dir(root, dirpath)
        prefix, real_prefix, kinds = ("" if rel_dir == "./" else rel_dir), str(real_dir) + os.sep, _kinds(dirpath)
        for name in sorted(filenames):
            rel = prefix + name
            link, regular = kinds.get(name, (True, None))  # not seen by scandir: take the careful path
            if link:
                real = (real_dir / name).resolve()
                walk.links[rel] = str(real)
                yield rel, real, walk.follow_links or real.is_relative_to(real_root), None
            else:
                yield rel, real_prefix + name, True, regular


def _kinds(dirpath) -> dict[str, tuple[bool, bool]]:
    """name -> (is a symlink, is a regular file) for a folder's entries, from one scandir: the folder's
    listing already says so on most file systems, so a million files need no million stat calls."""
    try:
        with os.scandir(dirpath) as entries:
            return {e.name: (e.is_symlink(), e.is_file(follow_symlinks=False)) for e in entries}
    except OSError:
        return {}


def _dir_reason(dirpath, real_dir: Path, real_root: Path, seen: Counter, chains: dict, follow: bool) -> str | None:
    """Why the folder `dirpath` is not walked (None: walk it); records it as walked otherwise."""
    try:
        st = os.stat(dirpath)
    except OSError as e:
        return f"io_error:{type(e).__name__}"
    key, ancestors = (st.st_dev, st.st_ino), chains.get(os.path.dirname(dirpath), frozenset())
    if key in ancestors:
        return "link_loop"
    if seen[key] >= MAX_FOLDER_VISITS:
        return "duplicate_folder"
    if not follow and not real_dir.is_relative_to(real_root):
        return "link_outside_root"
    seen[key] += 1
    chains[dirpath] = ancestors | {key}
    return None


def displayable(name: str) -> str:
    """`name` with bytes that are not UTF-8 (kept by Python as surrogates) shown as U+FFFD."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _image_or_reason(rel: str, p, allowed: bool, link: bool, regular: bool | None = None) -> str | None:
    """None when `rel` names an image file to featurize (`p`: where it really is; `regular`: whether it
    is a regular file, None when not known yet), else why it is ignored."""
    name = rel.rsplit("/", 1)[-1]
    if not allowed:
        return "link_outside_root"
    if _is_hidden(name):
        return "ignored_hidden"
    if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
        return "ignored_extension"
    if not (regular if regular is not None else os.path.isfile(p)):
        return "broken_link" if link and not os.path.exists(p) else "not_a_file"
    return None


def list_images(root, labelled: bool | None = None, labels=None, follow_links: bool = True) -> Listing:
    """List images below `root` in a stable sorted order.

    labelled=True: each top-level sub-folder is a class; images at any depth below it belong
    to it; images directly in `root` are reported as ``unlabelled_ignored``.
    labelled=False: every image at any depth, no labels.
    labelled=None: True when `root` has sub-folders holding images, else False.
    labels (a :class:`pipeline.dataset.labels.CsvLabels`): every image at any depth, labelled from the CSV;
    images it does not label are kept (label None) and listed in ``unlabelled``.
    follow_links=False: symlinks (to files or folders) leading outside `root` are not followed
    (``link_outside_root``), for folders you do not trust; by default they are, like links inside.
    Folders that cannot be listed are in ``unusable`` (``io_error:<Exception>``) and ``unreadable``.
    """
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"data folder {str(root)!r} does not exist or is not a folder")
    found, ignored, walk = [], [], _Walk(follow_links)
    unusable = []
    for rel, p, allowed, regular in _walk_files(root, walk):
        reason = _image_or_reason(rel, p, allowed, rel in walk.links, regular)
        if reason:
            ignored.append((displayable(rel), reason))
        elif displayable(rel) != rel:  # not valid UTF-8: could not be written to the store, CSVs or reports
            unusable.append({"path": displayable(rel), "reason": "undecodable_name",
                             "detail": "the file name is not valid UTF-8; rename the file"})
        else:
            found.append((rel, Path(p)))
    found.sort(key=lambda item: item[0])
    unreadable = _folder_entries(walk, ignored, unusable)
    listing = (_csv_listing(found, ignored, unusable, labels) if labels is not None
               else _folder_listing(root, found, ignored, unusable, labelled, unreadable))
    listing.links, listing.unreadable = {displayable(k): v for k, v in walk.links.items()}, unreadable
    return listing


def _folder_entries(walk: _Walk, ignored: list, unusable: list) -> list[str]:
    """Book the folders the walk did not enter; return those it could not list."""
    unreadable = []
    for rel, reason, detail in walk.skipped_dirs:
        if reason.startswith("io_error"):
            unreadable.append(rel)
            unusable.append({"path": displayable(rel), "reason": reason, "detail": detail})
        else:
            ignored.append((displayable(rel), reason))
    return unreadable


def folder_records(where: str, found, ignored, labelled: bool | None):
    """(records, classes, labelled) of (relpath, path) pairs labelled by their top-level folder.

    labelled=None: True when some image is in a sub-folder. Images directly in a labelled root are
    appended to `ignored` as ``unlabelled_ignored``; class names are checked (`where` names the root).
    """
    if labelled is None:
        labelled = any("/" in rel for rel, _ in found)
    records = []
    for rel, p in found:
        if not labelled:
            records.append(ImageRecord(p, rel, None))
        elif "/" not in rel:
            ignored.append((rel, "unlabelled_ignored"))
        else:
            records.append(ImageRecord(p, rel, rel.split("/", 1)[0]))
    classes = sorted({r.label for r in records if r.label is not None})
    if labelled:
        check_class_names(classes, where)
    return records, classes, labelled


def _folder_listing(root: Path, found, ignored, unusable, labelled, unreadable) -> Listing:
    records, classes, labelled = folder_records(str(root), found, ignored, labelled)
    if labelled:
        not_walked = set(unreadable) | {p for p, _ in ignored if p.endswith("/")}  # reported already
        _warn_empty_classes(root, classes, not_walked)
    return Listing(records, ignored, classes, labelled, unusable=unusable)


def _csv_listing(found, ignored, unusable, labels) -> Listing:
    match = match_labels([rel for rel, _ in found], labels)
    records = [ImageRecord(p, rel, match.labels[rel]) for rel, p in found]
    if match.unlabelled:
        log.warning("%d image(s) have no label in %s, e.g. %s", len(match.unlabelled), labels.path,
                    ", ".join(match.unlabelled[:3]), extra=IN_SUMMARY)
    if match.unused_ids:
        log.warning("%d id(s) of %s match no image, e.g. %s", len(match.unused_ids), labels.path,
                    ", ".join(match.unused_ids[:3]), extra=IN_SUMMARY)
    classes = sorted({r.label for r in records if r.label is not None})
    return Listing(records, ignored, classes, True, match.unlabelled, match.unused_ids, unusable)


def _warn_empty_classes(root: Path, classes: list[str], not_walked: set[str]) -> None:
    for d in sorted(root.iterdir()):
        if d.is_dir() and not _is_hidden(d.name) and d.name not in classes and d.name + "/" not in not_walked:
            log.warning("class folder %s holds no images; it is not a class", d)


_HINTS = {
    "link_outside_root": "links leading outside the folder are not followed with follow_links=False: "
                         "drop it if you trust where they lead",
    "broken_link": "the links' targets are gone",
    "ignored_extension": f"images need one of the extensions {', '.join(sorted(IMAGE_EXTENSIONS))}",
    "unlabelled_ignored": "images directly in a folder of class folders have no class: move them into "
                          "class folders, or pass labelled=False",
    "io_error:PermissionError": "make the folders readable",
}


def no_images_message(root, listing: Listing) -> str:
    """Why `root` gave no image: what was found and ignored, counted by reason, with an example each."""
    entries = list(listing.ignored) + [(u["path"], u["reason"]) for u in listing.unusable]
    if not entries:
        return f"no images found in {root}: it holds no files (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
    counts, example = Counter(r for _, r in entries), {}
    for path, reason in entries:
        example.setdefault(reason, path)

    def shown(path: str) -> str:
        return f"{path} -> {listing.links[path]}" if path in listing.links else path

    folders = sum(p.endswith("/") for p, _ in entries)
    what = " and ".join(f"{n} {word}{'s' if n != 1 else ''}" for n, word in
                        ((len(entries) - folders, "file"), (folders, "folder")) if n)
    found = "; ".join(f"{n} {r}, e.g. {shown(example[r])}" for r, n in counts.most_common())
    hints = [_HINTS[r] for r in counts if r in _HINTS]
    return f"no images found in {root}: {what} ignored ({found})" + "".join(f"; {h}" for h in hints)
