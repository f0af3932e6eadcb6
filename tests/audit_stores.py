"""Feature stores the audit tests build from arrays: classes around their centres, planted near-copies."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.store.exchange import import_features

DIM = 48


def centres(k: int = 3, seed: int = 99) -> np.ndarray:
    return np.maximum(np.random.default_rng(seed).normal(0, 1, (k, DIM)), 0)


def features(n: int, seed: int, classes: int = 3, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """`n` non-negative rows around `classes` centres (like a ReLU layer's), labels c0, c1, ...; with the
    default `noise`, distinct rows' cosine similarities stay below 0.8, under audit's threshold."""
    rng = np.random.default_rng(seed)
    lab = np.arange(n) % classes
    x = np.maximum(centres(classes)[lab] + rng.normal(0, noise, (n, DIM)), 0).astype(np.float32)
    return x, np.array([f"c{v}" for v in lab])


def near_copy(v: np.ndarray, seed: int, noise: float = 0.02) -> np.ndarray:
    """What a re-encoded or resized copy does to a feature vector: a slight scale and a little noise."""
    rng = np.random.default_rng(seed)
    return (v * 1.03 + np.abs(rng.normal(0, noise, v.shape))).astype(np.float32)


def store_of(path: Path, x: np.ndarray, labels=None):
    """A feature store of the rows of `x`, image paths LABEL/imgNNN.jpg (or imgNNN.jpg unlabelled)."""
    ids = [f"{labels[i]}/img{i:03d}.jpg" if labels is not None else f"img{i:03d}.jpg" for i in range(len(x))]
    arrays = {"id": np.array(ids), "features": x}
    if labels is not None:
        arrays["label"] = np.asarray(labels)
    np.savez(path.with_suffix(".npz"), **arrays)
    return import_features(path.with_suffix(".npz"), path)
