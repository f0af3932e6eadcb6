"""Identical images among a store's rows (same sha256): duplicate groups, and the same image under two
labels (left out of training, reported by featurize and `verify`)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np


def duplicate_groups(rows: list[dict]) -> list[list[str]]:
    """Groups of paths with identical content (same sha256), largest first."""
    by_sha = defaultdict(list)
    for r in rows:
        by_sha[r["sha256"]].append(r["path"])
    groups = [sorted(paths) for paths in by_sha.values() if len(paths) > 1]
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def label_conflicts(rows: list[dict]) -> list[dict]:
    """Identical images given different labels: [{sha256, paths, labels}]."""
    by_sha = defaultdict(list)
    for r in rows:
        if r.get("label") is not None:
            by_sha[r["sha256"]].append(r)
    out = []
    for sha, group in by_sha.items():
        labels = sorted({r["label"] for r in group})
        if len(labels) > 1:
            out.append({"sha256": sha, "paths": sorted(r["path"] for r in group), "labels": labels})
    return sorted(out, key=lambda c: c["paths"][0])


def conflict_mask(rows: list[dict]) -> np.ndarray:
    """True for rows whose image also appears under another label (never train on both)."""
    bad = {c["sha256"] for c in label_conflicts(rows)}
    return np.array([r["sha256"] in bad for r in rows], dtype=bool)
