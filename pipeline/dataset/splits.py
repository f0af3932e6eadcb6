"""Train/validation splits and samples without moving files.

Every decision comes from a stable hash of a *group key*, so a file keeps its side of the split
when files are added. Identical images (same sha256) always share a group, so a duplicate can
never sit on both sides; a group key from a file-name regex or a CSV column keeps related
images together too (e.g. all photos of one photographer).
"""
from __future__ import annotations

import hashlib
import re
from collections import defaultdict

import numpy as np

from ..errors import UsageError
from .labels import read_labels_csv

SPLIT_METHODS = ("hash", "stratified")


def stable_fraction(key: str, seed: int = 0) -> float:
    """A number in [0, 1) that depends only on `key` and `seed`."""
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def _regex_key(pattern: str):
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise UsageError(f"group_by={pattern!r} is not a valid regular expression ({e})") from None

    def key(path: str) -> str:
        m = rx.search(path.rsplit("/", 1)[-1])
        if m is None:
            return path  # no match: the image is its own group
        return m.group(1) if rx.groups else m.group(0)
    return key


def group_keys(rows: list[dict], group_by: str | None = None, groups: dict[str, str] | None = None) -> list[str]:
    """One group key per row; rows with the same content end up with the same key.

    group_by: a regex searched in the file name (its first group, else the whole match).
    groups: {relative path: group} (e.g. from a CSV column); rows it does not cover are their own group.
    """
    if group_by is not None:
        base = [_regex_key(group_by)(r["path"]) for r in rows]
    elif groups is not None:
        base = [groups.get(r["path"], r["path"]) for r in rows]
    else:
        base = [r["path"] for r in rows]
    return _merge_duplicates(base, [r["sha256"] for r in rows])


def _merge_duplicates(keys: list[str], shas: list[str]) -> list[str]:
    """Union-find over (group key, sha256): a key's group absorbs every group sharing an image with it."""
    parent: dict[str, str] = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for k, sha in zip(keys, shas):
        a, b = find("k:" + k), find("s:" + sha)
        if a != b:
            parent[max(a, b)] = min(a, b)
    roots = [find("k:" + k) for k in keys]
    # name each merged group by its smallest original key, so the hash is stable
    name: dict[str, str] = {}
    for k, r in zip(keys, roots):
        name[r] = min(name.get(r, k), k)
    return [name[r] for r in roots]


def validation_mask(rows: list[dict], labels, fraction: float = 0.2, method: str = "hash",
                    group_by: str | None = None, groups: dict | None = None, seed: int = 0) -> np.ndarray:
    """True for rows in the validation split.

    hash: a group is in validation when its stable hash is below `fraction` (stable as files
    are added; class proportions hold on average). stratified: per class, the `fraction` of its
    images whose groups hash lowest (exact class proportions; adding files moves only a few).
    """
    if not 0 < fraction < 1:
        raise UsageError(f"holdout={fraction!r} must be a validation fraction between 0 and 1, e.g. 0.2")
    if method not in SPLIT_METHODS:
        raise UsageError(f"split={method!r} is not a split method; choose one of {', '.join(SPLIT_METHODS)}")
    keys = group_keys(rows, group_by, groups)
    h = np.array([stable_fraction(k, seed) for k in keys])
    if method == "hash":
        return h < fraction
    labels = np.asarray(labels, dtype=str)
    valid_groups = set()
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        want = int(round(fraction * len(idx)))
        taken = 0
        for i in idx[np.argsort(h[idx], kind="stable")]:
            if taken >= want:
                break
            valid_groups.add(keys[i])
            taken += 1
    return np.array([k in valid_groups for k in keys], dtype=bool)


def sample_mask(paths: list[str], labels, per_class: int | float, seed: int = 0) -> np.ndarray:
    """A stable sample: `per_class` images per class (an int), or that fraction of each class (a float < 1).

    Chosen by a hash of each relative path: the same files whether the sample is taken when
    featurizing or when training, and mostly the same ones after files are added.
    """
    labels = np.asarray(labels, dtype=str)
    h = np.array([stable_fraction(p, seed + 1) for p in paths])
    keep = np.zeros(len(paths), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = int(round(per_class * len(idx))) if isinstance(per_class, float) and per_class < 1 else int(per_class)
        keep[idx[np.argsort(h[idx], kind="stable")[:max(1, n)]]] = True
    return keep


def leaked(train_rows: list[dict], valid_rows: list[dict]) -> list[tuple[str, str]]:
    """(train path, validation path) pairs of identical images on both sides."""
    by_sha = defaultdict(list)
    for r in train_rows:
        by_sha[r["sha256"]].append(r["path"])
    return [(t, r["path"]) for r in valid_rows for t in by_sha.get(r["sha256"], [])]


def write_split_csv(out, rows, labels, valid, force: bool = False) -> None:
    """Write ``path,label,split`` (train or valid) for each labelled row, atomically and spreadsheet-safe."""
    from ..outputs import atomic_open, check_output, csv_writer

    check_output(out, "csv", force=force)
    with atomic_open(out, newline="") as f:
        w = csv_writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows((r["path"], str(label), "valid" if v else "train") for r, label, v in zip(rows, labels, valid))


def split_store(store, options) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """(rows, labels, validation mask) of the labelled rows of `store` split by `options` (a SplitOptions)."""
    o = options
    _, y, rows = store.labelled(with_rows=True)
    groups = groups_by_path(o.groups, o.group_column, rows)
    return rows, y, validation_mask(rows, y, o.holdout, o.split, o.group_by, groups, o.seed)


def groups_by_path(groups, group_column, rows) -> dict | None:
    """{path: group} from a dict, or from a CSV (id column + `group_column`)."""
    if groups is None or isinstance(groups, dict):
        return groups
    table = read_labels_csv(groups, label_column=group_column, class_names=False)
    return {r["path"]: g for r in rows if (g := table.lookup(r["path"])) is not None}
