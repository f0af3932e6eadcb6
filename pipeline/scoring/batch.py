"""Batch scoring: every image below a folder -> a CSV of predictions and class probabilities."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..backbones import backbone_from_spec
from ..dataset.sources import is_uri
from ..engines import check_options, featurize
from ..engines.report import RunReport
from ..errors import PipelineError, StoreError, UsageError
from ..featurizer.layers import PLACEHOLDER, layer_slug
from ..heads.classifier import Classifier, load
from ..heads.featuresets import head_chunks
from ..heads.ood import MISSING, OODScores, check_reject_ood
from ..hints import did_you_mean
from ..options import SCORE_FEATURIZE, FeaturizeOptions, ScoreOptions, split_keywords
from ..outputs import atomic_open, check_output, csv_writer
from ..spec import FeatureSpec
from ..store import FeatureStore
from ..store.exchange import StoreScoring, is_feature_store

UNKNOWN = "unknown"  # the prediction written when the top probability is below reject_below (or OOD, reject_ood)
OOD_COLUMNS = ["ood_distance", "ood"]  # written when the head has an OOD summary (pipeline/heads/ood.py)
log = logging.getLogger(__name__)


@dataclass
class ScoreReport:
    """What a score run did: the featurize RunReport (or the StoreScoring of a feature store), plus, in
    Kaggle mode, the unreadable images whose id got the training prior. Other attributes (``skipped``,
    ``store``, ``computed``...) are the run's."""

    run: object
    kaggle: str | None = None
    prior: float | None = None  # the (clipped) probability written for an unreadable image
    prior_source: str = ""
    prior_rows: list = field(default_factory=list)  # the run's skip entries ({path, reason, detail}) given the prior

    def __getattr__(self, name):
        if name == "run":
            raise AttributeError(name)
        return getattr(self.run, name)

    def summary(self, flags=None, renames=None) -> str:
        """What the CLI prints; hints name only `flags` (those of the command), renamed by `renames`."""
        if not isinstance(self.run, RunReport):
            return self.run.summary()
        text = self.run.summary(flags=flags, renames=renames, list_skipped=not self.prior_rows)
        if self.prior_rows:
            text += (f"\nkaggle: {len(self.prior_rows)} unreadable image(s), named in the warnings on stderr, got a row "
                     f"holding the prior {self.prior:.6f} of {self.kaggle!r} ({self.prior_source})")
        return text


def score_cache_path(data_dir, request, root=None) -> Path:
    """Where scoring caches the features of `data_dir`: keyed by the folder's resolved path and the
    backbone's identity, never by the folder's name alone (two folders named ``test`` never share).
    `request`: the backbone's FeatureSpec request (or its dict)."""
    request = FeatureSpec.of(request)
    root = Path(root or os.environ.get("TFP_FEATURES", "features")) / "score-cache"
    where = data_dir.rstrip("/") if is_uri(data_dir) else str(Path(data_dir).resolve())  # a URI as it is
    folder = Path(where)
    key = json.dumps({"folder": where, "features": request.identity(full=False)}, sort_keys=True, default=str)
    name = request.backbone
    tag = Path(name).stem if ("/" in name or "." in name) else name
    layer = PLACEHOLDER if "," in request.layer else layer_slug(request.layer)  # several: one store per layer
    return root / f"{folder.name}-{tag}-{layer}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def score(model, data_dir, out, options: ScoreOptions | None = None, *,
          featurize_options: FeaturizeOptions | None = None, trusted: bool = False, **keywords):
    """Featurize `data_dir` (all sub-folders, reusing the cache) with the head's backbone and write `out`.

    `options`: a ScoreOptions (pipeline.options: cache, no_cache, force, kaggle, clip, reject_below);
    `featurize_options`: a FeaturizeOptions, of which score uses progress, workers, follow_links,
    engine and cluster. Any of these fields may also be given as a keyword (``progress=False``).
    `data_dir` may also be a feature store: its rows are scored (``path`` is the row's id).

    Default CSV: ``path,prediction,<one probability column per class>``. With `kaggle`=CLASS:
    ``id,label`` where label is the probability of CLASS clipped to [clip, 1 - clip] and id comes
    from the file name (the Dogs vs Cats Redux submission format); every image gets a row: one that
    cannot be read gets the training prior of CLASS (its share of the training images, clipped
    alike), with a warning naming it (`strict`: such a file fails the run instead, no CSV is
    written). `reject_below`: the prediction is ``unknown`` where the top probability is below it.
    Returns a :class:`ScoreReport`.

    The features are cached in `cache` (default: :func:`score_cache_path`); `no_cache` uses a
    temporary store removed afterwards. Only images read successfully in this run get a row in
    the CSV (Kaggle mode: see above). `out` is written atomically and never over an input (the head, an image) or a file
    this tool did not write (unless `force`). `trusted`: also load an old pickle-based head file
    (see :func:`pipeline.load`). `engine`/`cluster`: featurize on Ray (see featurize).
    """
    o, run_options = _score_settings(options, featurize_options, keywords)
    clf = model if isinstance(model, Classifier) else load(model, trusted=trusted)
    check_output(out, "csv", inputs=[model if not isinstance(model, Classifier) else None],
                 data_dir=data_dir, force=o.force)
    _check_columns(clf, o)
    if is_feature_store(data_dir):  # a feature store's rows (made here or imported), scored as they are
        store = FeatureStore.open(data_dir)
        paths, (proba, ood), result = store.paths, _proba_and_ood(clf, store), StoreScoring(store)
    else:
        paths, (proba, ood), result = _featurize_and_predict(clf, data_dir, o, run_options)
    check_finite(paths, proba, out)
    report = ScoreReport(result)
    if o.kaggle is not None:
        report = kaggle_report(result, clf, o.kaggle, o.clip)
        _write_kaggle(out, paths, proba, clf.classes_, o.kaggle, o.clip,
                      {s["path"]: report.prior for s in report.prior_rows})
    else:
        _write_predictions(out, paths, proba, clf.classes_, o.reject_below, clf.thresholds_, ood, o.reject_ood)
    return report


def _score_settings(options, featurize_options, keywords: dict) -> tuple[ScoreOptions, FeaturizeOptions]:
    """score's settings from its objects and keywords (a keyword overrides the object's field)."""
    score_kw, run_kw = split_keywords("score", keywords, ScoreOptions, FeaturizeOptions)
    if set(run_kw) - set(SCORE_FEATURIZE):
        raise TypeError(f"score() got an unexpected keyword argument {sorted(set(run_kw) - set(SCORE_FEATURIZE))[0]!r}")
    base = featurize_options or FeaturizeOptions()
    run_kw = {k: run_kw.get(k, getattr(base, k)) for k in SCORE_FEATURIZE}
    run_options = FeaturizeOptions(labelled=False, **run_kw)
    check_options(run_options)  # e.g. workers= on Ray: refused before the head is loaded
    return replace(options or ScoreOptions(), **score_kw), run_options


def _check_columns(clf: Classifier, o: ScoreOptions) -> None:
    """Refuse, before any work, a Kaggle class or a reject threshold this head cannot honour."""
    if o.kaggle is not None:
        _check_kaggle_class(o.kaggle, clf.classes_)
    if o.reject_below is not None:
        check_reject_below(o.reject_below, clf.classes_, o.kaggle)
    if clf.multi_label and (o.kaggle is not None or o.reject_below is not None or o.reject_ood):
        raise UsageError("this head is multi-label: it writes the predicted tags and a probability per tag; "
                         "kaggle=, reject_below= and reject_ood= apply to single-label heads")
    if o.reject_ood:
        check_reject_ood(clf.ood_summary, clf.classes_, UNKNOWN)
        if o.kaggle is not None:
            raise UsageError("reject_ood= changes the prediction column, which kaggle= does not write; use one of them")


def _featurize_and_predict(clf: Classifier, data_dir, o: ScoreOptions, run_options: FeaturizeOptions):
    """(paths, probabilities, RunReport): featurize into the cache (or a temporary store) and predict."""
    bb = backbone_from_spec(clf.spec)
    tmp = Path(tempfile.mkdtemp(prefix="tfp-score-")) if o.no_cache else None
    try:
        store_dir = tmp / "features" if tmp else Path(o.cache) if o.cache else score_cache_path(data_dir, bb.request())
        if len(bb.layers) > 1 and PLACEHOLDER not in str(store_dir):  # a head on a join: a store per layer
            store_dir = Path(f"{store_dir}-{PLACEHOLDER}")
        try:
            run = featurize(data_dir, bb, out=store_dir, options=run_options, report=True)
            return (*_predict_listed(clf, run), run)
        except StoreError as e:
            if tmp is not None or "--overwrite" not in str(e):
                raise
            raise StoreError(f"{str(e).split('; featurize again with --overwrite')[0]}; this is score's feature "
                             f"cache: delete {store_dir} and score again (or score with --no-cache)") from e
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _predict_listed(clf: Classifier, run):
    """(paths, probabilities) of the images this run listed and could read: never a stale row."""
    store = run.store
    unusable = {s["path"] for s in run.skipped}
    wanted = set(run.listed) - unusable  # the store may also hold rows of images since removed
    keep = [i for i, p in enumerate(store.paths) if p in wanted]
    paths = [store.paths[i] for i in keep]
    return paths, _proba_and_ood(clf, store, keep)


def _proba_and_ood(clf: Classifier, store, keep=None):
    """(probabilities, OODScores or None for a head without an OOD summary), in one pass over the store."""
    summary, proba, ood = clf.ood_summary, [], []
    for x in head_chunks(clf, store, keep):
        proba.append(clf.predict_proba(x))
        ood.append(summary.score(x) if summary is not None else None)
    if summary is None:
        log.warning("%r %s (this CSV has no ood_distance/ood columns)", clf, MISSING)
        ood = None
    else:
        ood = OODScores(*(np.concatenate(a) for a in zip(*ood))) if ood else OODScores(np.zeros(0), np.zeros(0, bool))
    return (np.concatenate(proba) if proba else np.zeros((0, len(clf.classes_)))), ood


def check_finite(paths, proba, out) -> None:
    """Refuse to write probabilities that are not finite numbers (a damaged head, or features far outside
    anything it was probed with): PipelineError naming the rows, and nothing is written to `out`."""
    proba = np.asarray(proba, dtype=np.float64)
    bad = np.flatnonzero(~np.all(np.isfinite(proba.reshape(len(proba), -1)), axis=1))
    if len(bad):
        shown = ", ".join(str(paths[i]) for i in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise PipelineError(f"the head gave non-finite probabilities (nan or inf) for {len(bad)} of {len(proba)} "
                            f"rows: {shown}; nothing was written to {out}. The head file may be damaged or "
                            f"crafted: retrain it (the features stay cached)")


def check_reject_below(p: float, classes, kaggle: str | None = None) -> None:
    if not 0.0 < float(p) <= 1.0:
        raise UsageError(f"reject_below= must be a probability in (0, 1], got {p!r}")
    if kaggle is not None:
        raise UsageError("reject_below= changes the prediction column, which kaggle= does not write; use one of them")
    if UNKNOWN in [str(c) for c in classes]:
        raise UsageError(f"this head has a class named {UNKNOWN!r}, so reject_below= could not be told apart from it")


def predicted_labels(proba: np.ndarray, classes, reject_below: float | None = None, rejected=None) -> list[str]:
    """The top class of each row of `proba`, or UNKNOWN where its probability is below `reject_below` or
    where `rejected` (booleans, e.g. the OOD flags) is True."""
    classes = [str(c) for c in classes]
    top = np.argmax(proba, axis=1)
    rejected = np.zeros(len(proba), bool) if rejected is None else np.asarray(rejected, bool)
    return [UNKNOWN if (reject_below is not None and row[i] < reject_below) or out else classes[i]
            for row, i, out in zip(proba, top, rejected)]


def _write_predictions(out, paths, proba, classes, reject_below=None, thresholds=None, ood=None, reject_ood=False):
    """path,prediction,<class>... and, with the OODScores `ood` of a head's OOD summary, ood_distance,ood."""
    if thresholds is not None:  # multi-label: path,labels,<tag>... (pipeline/training/multilabel.py)
        from ..training.multilabel import write_label_sets

        return write_label_sets(out, paths, proba, classes, thresholds)
    labels = predicted_labels(proba, classes, reject_below, ood.flagged if reject_ood else None)
    extra = [[]] * len(paths) if ood is None else [[f"{d:.6f}", int(f)] for d, f in zip(*ood)]
    with atomic_open(out, newline="") as f:
        w = csv_writer(f)
        w.writerow(["path", "prediction", *[str(c) for c in classes], *([] if ood is None else OOD_COLUMNS)])
        for p, label, row, more in zip(paths, labels, proba, extra):
            w.writerow([p, label, *(f"{v:.6f}" for v in row), *more])


def kaggle_id(path: str) -> str:
    """'test/1234.jpg' -> '1234'."""
    return os.path.splitext(path.rsplit("/", 1)[-1])[0]


def _check_kaggle_class(column: str, classes) -> None:
    """Refuse, before any image is featurized, a Kaggle column that is not a class (with the close match)."""
    classes = [str(c) for c in classes]
    if column not in classes:
        raise UsageError(f"kaggle={column!r} is not a class of this head{did_you_mean(column, classes)}; "
                         f"classes: {', '.join(classes)}")


def class_prior(clf: Classifier, column: str) -> tuple[float, str]:
    """(the share of `column` among the head's training images, where it comes from); a head that does
    not record its class counts gives the uniform prior, and says so."""
    counts = (clf.metrics or {}).get("class_counts") or {}
    total = sum(counts.values())
    if total and str(column) in counts:
        return counts[str(column)] / total, f"its share of the {total} training images"
    n = len(clf.classes_)
    return 1.0 / n, f"uniform over {n} classes: this head does not record its training class counts"


def kaggle_report(run, clf: Classifier, column: str, clip: float | None) -> ScoreReport:
    """The ScoreReport of a Kaggle run: each unreadable image gets the (clipped) prior, with a warning."""
    prior, source = class_prior(clf, column)
    if clip:
        prior = float(np.clip(prior, clip, 1.0 - clip))
    unread = list(getattr(run, "skipped", []))
    for s in unread:
        log.warning("%s could not be read (%s%s): its row, id %s, holds the prior %.6f of %r", s["path"], s["reason"],
                    f": {s['detail']}" if s.get("detail") else "", kaggle_id(s["path"]), prior, column)
    return ScoreReport(run, column, prior, source, unread)


def _write_kaggle(out, paths, proba, classes, column, clip, filled=None):
    """id,label rows sorted by id; `filled`: {path: probability} of images without features (the prior)."""
    classes = [str(c) for c in classes]
    _check_kaggle_class(column, classes)
    p = proba[:, classes.index(column)]
    if clip:
        p = np.clip(p, clip, 1.0 - clip)
    filled = filled or {}
    paths = list(paths) + list(filled)
    p = np.concatenate([p, np.asarray(list(filled.values()), dtype=float)])
    ids = [kaggle_id(x) for x in paths]
    order = sorted(range(len(ids)), key=lambda i: (int(ids[i]) if re.fullmatch(r"\d+", ids[i]) else float("inf"), ids[i]))
    with atomic_open(out, newline="") as f:
        w = csv_writer(f)
        w.writerow(["id", "label"])
        for i in order:
            w.writerow([ids[i], f"{p[i]:.6f}"])
