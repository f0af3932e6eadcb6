"""What a command tells a person about a library result: the lines `train`, `compare`, `split` and
`suspects` print, and the cross-validated HTML report of a freshly trained head. Text only, built
from the same library calls a Python user makes; pipeline/cli/commands.py prints it."""
from __future__ import annotations

from collections import Counter

from ..backbones.base import describe
from ..options import HeadOptions


def train_summary(clf, path) -> str:
    """The lines after `train`: head, C, CV accuracy, calibration, tiny classes, validation, leakage."""
    from ..training.evaluation import format_metrics

    m = clf.metrics
    if clf.multi_label:
        from ..training.multilabel import summary

        lines = [summary(clf, path)]
    else:
        cv = f", {m['cv_folds']}-fold CV accuracy {m['cv_accuracy']:.4f}" if "cv_accuracy" in m else ""
        weighted = ", classes weighted balanced" if m.get("class_weight") else ""
        C = "-" if m.get("C") is None else f"{m['C']:g}"
        lines = [f"{m['head']} C={C} on {m['n_train']} images, {len(clf.classes_)} classes{cv} -> {path}",
                 f"probabilities: {m['calibration']}{weighted}"]
        if len(m.get("selection") or []) > 1:
            from ..training.search import format_table

            lines.append(f"chosen by {m['cv_folds']}-fold CV accuracy among (* the head saved):\n"
                         + format_table(m["selection"]))
        small = m.get("unvalidated_classes") or []
        if small:
            lines.append(f"{len(small)} classes have one image: trained on, too small to validate: "
                         f"{', '.join(small[:20])}{' ...' if len(small) > 20 else ''}")
    if "validation" in m:
        v = m["validation"]
        lines.append(f"validation ({v['n']} held-out images):\n{format_metrics(v)}")
        if v.get("leakage"):
            lines.append(f"warning: {len(v['leakage'])} validation images are identical to training images")
    return "\n".join(lines)


def train_report(store, C: float, options: HeadOptions, out_dir=None, learning_curve: bool = False,
                 selection: list | None = None, feature_set: str | None = None) -> str:
    """The learning curve (`learning_curve`) and an HTML report in `out_dir` of the cross-validated
    predictions of `options.head` with `C` on `store`; the lines saying what was made."""
    from .report import Predictions, report_predictions

    o, lines, curve = options, [], None
    if learning_curve and o.head == "zero_shot":
        lines.append("no learning curve: the chosen head is zero-shot (the network's own class scores, no training)")
    elif learning_curve:
        curve = _learning_curve(store, C, o, feature_set)
        lines.append("learning curve (held-out accuracy by training images per class): " +
                     ", ".join(f"{k}: {v:.3f}" for k, v in zip(curve["per_class"], curve["valid_mean"])))
    if out_dir is not None:
        if store.multi_label:
            from ..training.multilabel import cross_validated
        else:
            from ..training.evaluation import cross_validated
        if store.multi_label:
            metrics, y, proba, rows = cross_validated(store, o.head, C, o.folds, o.seed, o.pca)
        else:
            metrics, y, proba, rows = cross_validated(store, o.head, C, o.folds, o.seed, o.pca, feature_set)
        title = f"{o.head} on {store.root.name}: cross-validated predictions"
        extra = {"head": o.head, "C": C, "folds": o.folds, "PCA": o.pca or "none",
                 "features": f"{store.root} ({describe(store.spec)})"}
        if store.multi_label:
            title, extra = title + " (one-vs-rest tags)", {k: v for k, v in extra.items() if k != "PCA"}
        page = report_predictions(out_dir, metrics, Predictions.of_rows(y, proba, rows), store, curve=curve, title=title, extra=extra,
                                  selection=selection)
        lines.append(f"report -> {page}")
    return "\n".join(lines)


def _learning_curve(store, C: float, o: HeadOptions, feature_set: str | None = None) -> dict:
    """The learning curve of the head on the features it was trained on (`feature_set`: the set chosen)."""
    from ..errors import UsageError
    from ..training.evaluation import labelled_set
    from ..training.selection import learning_curve

    if store.multi_label:
        raise UsageError("learning_curve=True is for single-label stores; this one is multi-label")
    X, y, _ = labelled_set(store, feature_set)
    return learning_curve(o.head, X, y, C, 5 if o.folds == "loo" else o.folds, o.seed, pca=o.pca)


def compare_table(rows: list[dict], folds, seed: int, pca: int | None) -> str:
    """The rows of :func:`pipeline.training.evaluation.compare` as a table: one line per store, one column per head."""
    heads = list(dict.fromkeys(r["head"] for r in rows))
    sets = list(dict.fromkeys((r["features"], r["backbone"], r["layer"], r["dim"], r["n"]) for r in rows))
    cell = {(r["features"], r["head"]): f"{r['accuracy']:.4f} (C={r['C']:g})" for r in rows}
    width = max(len("features"), *(len(f) for f, *_ in sets))
    cv = "leave-one-out" if folds == "loo" else f"{folds}-fold"
    lines = [f"cross-validated accuracy ({cv}, seed {seed}{f', PCA {pca}' if pca else ''})",
             f"{'features':<{width}}  {'backbone':<20} {'layer':<12} {'D':>5} {'n':>6}  " +
             "  ".join(f"{h:<18}" for h in heads)]
    for f, backbone, layer, dim, n in sets:
        lines.append(f"{f:<{width}}  {backbone:<20} {layer:<12} {dim:>5} {n:>6}  " +
                     "  ".join(f"{cell.get((f, h), ''):<18}" for h in heads))
    return "\n".join(lines)


def split_summary(y, valid, out) -> str:
    """How many images of each class went to train and to validation."""
    counts = Counter(zip(y, valid))
    lines = [f"{int(valid.sum())} of {len(y)} labelled images in validation -> {out}"]
    lines += [f"  {c}: {counts[(c, False)]} train, {counts[(c, True)]} valid" for c in sorted(set(y))]
    return "\n".join(lines)


def suspects_table(found: list[dict], n_labelled: int, head: str, top: int | None) -> str:
    """The `top` most doubtful of :func:`pipeline.training.quality.suspects` (all with top 0 or None)."""
    if not found:
        return (f"0 of {n_labelled} labelled images are predicted as another class by a held-out {head}: "
                f"no suspects")
    shown = found[:top] if top else found
    lines = [f"{len(found)} of {n_labelled} labelled images are predicted as another class by a held-out "
             f"{head}; the {len(shown)} most doubtful:",
             f"{'p(label)':>8} {'label':<16} {'predicted':<16} path"]
    lines += [f"{r['p_label']:8.3f} {r['label']:<16} {r['predicted']:<16} {r['path']}" for r in shown]
    return "\n".join(lines)
