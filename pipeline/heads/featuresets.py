"""The feature sets a store offers to ``train``: its own layer, the layers written beside it, and their join.

A multi-layer featurize run (``--layer penultimate,predictions --out features/x-{layer}``) writes one
store per layer from one forward pass (pipeline/featurizer/layers.py) and records in each store's
``meta.json`` where the others are (``"layers": {"predictions": "../x-predictions", ...}``, relative
paths). ``feature_sets(store)`` gives ``train`` every set it can choose from, each with the exact spec
a head trained on it records (so ``score`` featurizes exactly those features):

- the store's own layer, then each layer beside it whose store holds the same images in the same order;
- the penultimate features joined with a class-score layer (``logits`` or ``predictions``), spec layer
  ``"penultimate,predictions"``: what a backbone asked for both layers computes in one pass, side by side.

Stores without ``layers`` (every store made before, and single-layer runs) offer their own layer only.
``store_features(store, spec)`` finds the features of a spec among a store's sets (``evaluate`` and
``score`` on a store with a head trained on a layer beside it or on a join); ``head_chunks(clf, store)``
gives them a chunk of rows at a time, or the store's own features when they are the head's.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..spec import FeatureSpec
from ..store import FeatureStore
from ..store.exchange import store_chunks

log = logging.getLogger(__name__)

CLASS_SCORES = ("predictions", "logits")  # preferred first when joining
LAYER_PARTS = {"layer", "tensor", "dim"}  # what the stores of one multi-layer pass may differ in


@dataclass
class FeatureSet:
    """One set of features over a store's rows: its name (a layer, or two joined by '+'), the features of
    every row, and the spec (a dict as stored) that a head trained on them records."""

    name: str
    features: np.ndarray
    spec: dict


def _layer_name(store: FeatureStore) -> str:
    return str(store.spec.get("layer") or "features")


def beside(store: FeatureStore) -> list[FeatureStore]:
    """The stores of the other layers of the run that wrote `store`, holding the same rows (others skipped)."""
    out = []
    for layer, rel in (store.meta.get("layers") or {}).items():
        path = (Path(store.root) / rel).resolve()
        if layer == _layer_name(store) or not (path / "meta.json").is_file():
            continue
        other = FeatureStore.open(path)
        if [r["sha256"] for r in other.rows] != [r["sha256"] for r in store.rows]:
            log.warning("%s holds other images than %s; its layer %s is not offered", path, store.root, layer)
            continue
        network = sorted(set(FeatureSpec.of(store.spec).differences(other.spec)) - LAYER_PARTS)
        if network:  # featurized again since, with another network or other settings: not the same pass
            log.warning("%s holds features of %s, not of the network of %s (%s differ); its layer %s is not "
                        "offered", path, FeatureSpec.of(other.spec).describe(), store.root, ", ".join(network), layer)
            continue
        out.append(other)
    return out


def same_pass(a: dict, b: dict) -> bool:
    """True when specs a and b differ in the layer read alone (its name, tensor and width): one network, one
    preprocessing, as one forward pass gives them."""
    return not set(FeatureSpec.of(a).differences(b)) - LAYER_PARTS


def joined_spec(a: dict, b: dict) -> dict:
    """The spec of layers a and b read side by side in one pass (what a backbone asked for 'a,b' records);
    a ValueError for specs of two networks or two preprocessings."""
    if not same_pass(a, b):
        raise ValueError(f"cannot join {FeatureSpec.of(a).describe()} and {FeatureSpec.of(b).describe()}: "
                         f"they come from different networks or settings")
    sa, sb = FeatureSpec.of(a), FeatureSpec.of(b)
    return replace(sa, layer=f"{sa.layer},{sb.layer}", tensor=f"{sa.tensor},{sb.tensor}",
                   dim=int(sa.dim) + int(sb.dim)).to_dict()


def feature_sets(store: FeatureStore) -> list[FeatureSet]:
    """Every feature set `store` offers, its own layer first (see the module docstring)."""
    stores = [store, *beside(store)]
    sets = [FeatureSet(_layer_name(s), s.features, s.spec) for s in stores]
    by = {s.name: s for s in sets}
    scores = next((by[n] for n in CLASS_SCORES if n in by), None)
    if "penultimate" in by and scores is not None:
        p = by["penultimate"]
        sets.append(FeatureSet(f"penultimate+{scores.name}", np.hstack([p.features, scores.features]),
                               joined_spec(p.spec, scores.spec)))
    return sets


def store_features(store: FeatureStore, spec) -> np.ndarray | None:
    """The features of `store`'s rows that `spec` describes, if the store offers them; else None."""
    want = FeatureSpec.of(spec)
    for s in feature_sets(store) if store.meta.get("layers") else []:
        if not want.differences(s.spec):
            return s.features
    return None


def head_chunks(clf, store: FeatureStore, keep=None, rows: int = 16384):
    """The features `clf` (a Classifier) reads of the store's live rows (or those at the sorted positions
    `keep`), a chunk at a time: the store's own, or for a head trained on a layer written beside it or on a
    join of two (the default featurize pass) that set's; any other spec is refused (SpecMismatchError)."""
    if store.meta.get("layers") and clf.feature_spec.differences(store.spec):
        found = store_features(store, clf.spec)
        if found is not None:
            found = found if keep is None else found[np.asarray(keep, np.int64)]
            return (found[i:i + rows] for i in range(0, len(found), rows))
    clf.check_spec(store.spec, str(store.root), store.meta.get("data_dir"))
    return store_chunks(store, keep)
