"""A self-contained HTML report of a head's predictions: ``DIR/index.html`` plus PNGs beside it.

Summary table, confusion-matrix heat map, per-class table, accuracy against coverage (to pick
``score --reject-below P``), the learning curve when given, the suggested clipping bound for
log loss, and thumbnail galleries of the most confident mistakes, the uncertain images (top
probability below UNCERTAIN_BELOW, closest calls first, each with its margin over the next
class) and a sample of correct ones. Galleries are capped and thumbnails
are made once (named by the image's content hash), so large sets stay fast.
"""
from __future__ import annotations

import hashlib
import html
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..outputs import REPORT_GENERATOR, check_report_dir
from .html import CSS, pyplot, table

log = logging.getLogger(__name__)

GALLERY_SIZE = 24
REJECT_THRESHOLDS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)  # the --reject-below values tabulated
CURVE_POINTS = 200
THUMB_PX = 160
UNCERTAIN_BELOW = 0.8  # "uncertain": the most likely class has a probability below this


def confusion_png(cm, classes, path: Path) -> Path:
    """Heat map of the confusion matrix (rows: true, columns: predicted), counts annotated."""
    plt = pyplot()
    cm = np.asarray(cm)
    n = len(classes)
    size = min(4 + 0.45 * n, 16)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels=classes, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_yticks(range(n), labels=classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if norm[i, j] > 0.5 else "black", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def learning_curve_png(curve: dict, path: Path) -> Path:
    """Accuracy against training images per class, mean and spread over the folds."""
    plt = pyplot()
    x = np.asarray(curve["per_class"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("train", "training"), ("valid", "held-out")):
        mean, std = np.asarray(curve[key + "_mean"]), np.asarray(curve[key + "_std"])
        ax.plot(x, mean, marker="o", label=label)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_xscale("log")
    ax.set_xticks(x, labels=[str(k) for k in x])
    ax.minorticks_off()
    ax.set_xlabel("training images per class")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def coverage_curve(y_true, proba, classes, thresholds=None) -> dict:
    """What ``score --reject-below P`` would do, for each P in `thresholds` (default: the
    distinct top probabilities, at most CURVE_POINTS of them): ``coverage`` (the fraction of
    images whose top probability is at least P, which keep their prediction), ``accuracy`` on
    those (None when none is kept) and ``kept`` (their number)."""
    proba = np.asarray(proba)
    conf = proba.max(axis=1)
    correct = np.asarray(classes, dtype=str)[np.argmax(proba, axis=1)] == np.asarray(y_true, dtype=str)
    order = np.argsort(-conf, kind="stable")
    ascending, hits = conf[order][::-1], np.cumsum(correct[order])
    if thresholds is None:
        thresholds = np.unique(conf)
        if len(thresholds) > CURVE_POINTS:
            thresholds = np.unique(np.quantile(thresholds, np.linspace(0, 1, CURVE_POINTS), method="nearest"))
    kept = len(conf) - np.searchsorted(ascending, np.asarray(thresholds, dtype=conf.dtype), side="left")
    return {"threshold": [float(t) for t in thresholds], "kept": kept.tolist(),
            "coverage": (kept / max(len(conf), 1)).tolist(),
            "accuracy": [float(hits[k - 1] / k) if k else None for k in kept]}


def coverage_png(curve: dict, marks: dict, path: Path) -> Path:
    """Accuracy against coverage as the rejection threshold rises, tabulated thresholds marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    pts = [(c, a) for c, a in zip(curve["coverage"], curve["accuracy"]) if a is not None]
    ax.plot([c for c, _ in pts], [a for _, a in pts], marker=".", label="accuracy of the images kept")
    for t, c, a in zip(marks["threshold"], marks["coverage"], marks["accuracy"]):
        if a is not None:
            ax.annotate(f"P={t:g}", (c, a), textcoords="offset points", xytext=(4, 4), fontsize=8)
            ax.plot([c], [a], "o", color="#d33")
    ax.set_xlim(1.02, -0.02)  # coverage falls as P rises
    ax.set_xlabel("coverage (fraction of images given a class, not 'unknown')")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def _coverage_section(y_true, proba, classes, out: Path) -> str:
    marks = coverage_curve(y_true, proba, classes, REJECT_THRESHOLDS)
    coverage_png(coverage_curve(y_true, proba, classes), marks, out / "coverage.png")
    rows = [(f"{t:g}", k, f"{c:.4f}", f"{a:.4f}" if a is not None else "-")
            for t, k, c, a in zip(marks["threshold"], marks["kept"], marks["coverage"], marks["accuracy"])]
    return ("<p>With <code>score ... --reject-below P</code>, images whose top probability is below P are "
            "predicted <code>unknown</code>: fewer images get a class (coverage), and those that do are "
            'right more often.</p><div class="row"><img src="coverage.png" alt="accuracy against coverage">'
            + table(("P", "images kept", "coverage", "accuracy"), rows) + "</div>")


def thumbnail(src: Path, key: str, folder: Path) -> str | None:
    """Make (once) a JPEG thumbnail of `src` in `folder`; its name relative to the report, or None."""
    from PIL import Image, ImageOps

    name = f"{key[:24]}.jpg"
    out = folder / name
    if not out.exists():
        try:
            with Image.open(src) as im:
                im.draft("RGB", (THUMB_PX * 2, THUMB_PX * 2))
                im = ImageOps.exif_transpose(im).convert("RGB")
                im.thumbnail((THUMB_PX, THUMB_PX))
                im.save(out, "JPEG", quality=80)
        except Exception as e:  # noqa: BLE001 - a report never fails on one image
            log.info("no thumbnail for %s: %s", src, e)
            return None
    return f"{folder.name}/{name}"


def margins(proba) -> np.ndarray:
    """Per row: probability of the most likely class minus that of the runner-up."""
    top2 = np.sort(proba, axis=1)[:, -2:] if proba.shape[1] > 1 else np.zeros((len(proba), 2))
    return top2[:, 1] - top2[:, 0]


def gallery_indices(y_true, proba, classes, size: int = GALLERY_SIZE, seed: int = 0,
                    uncertain_below: float = UNCERTAIN_BELOW) -> dict[str, list[int]]:
    """Rows to show: the most confident mistakes; the uncertain ones (top probability below
    `uncertain_below`), closest calls first; a stable sample of correct ones."""
    y_true = np.asarray(y_true, dtype=str)
    pred = np.asarray(classes, dtype=str)[np.argmax(proba, axis=1)]
    p_pred = proba.max(axis=1)
    wrong = np.flatnonzero(pred != y_true)
    right = np.flatnonzero(pred == y_true)
    margin = margins(proba)
    uncertain = np.flatnonzero(p_pred < uncertain_below)
    rng = np.random.default_rng(seed)
    return {
        "mistakes": wrong[np.argsort(-p_pred[wrong], kind="stable")][:size].tolist(),
        "uncertain": uncertain[np.argsort(margin[uncertain], kind="stable")][:size].tolist(),
        "correct": sorted(rng.choice(right, min(size, len(right)), replace=False).tolist()) if len(right) else [],
    }


def _summary(m: dict, extra: dict) -> str:
    rows = [("images", m["n"]), ("accuracy", f"{m['accuracy']:.4f}"),
            ("balanced accuracy", f"{m['balanced_accuracy']:.4f}"), ("log loss", f"{m['log_loss']:.4f}")]
    if "top_5_accuracy" in m:
        rows.append(("top-5 accuracy", f"{m['top_5_accuracy']:.4f}"))
    rows += [(k, v) for k, v in extra.items()]
    return table(("", "value"), rows, cls="summary")  # long values (a feature spec) wrap


def confused_pairs(cm, classes, top: int = 10) -> list[tuple[str, str, int, float]]:
    """The largest off-diagonal cells: (true class, predicted class, count, share of the true class)."""
    cm = np.asarray(cm)
    support = np.maximum(cm.sum(axis=1), 1)
    cells = [(classes[i], classes[j], int(cm[i, j]), float(cm[i, j] / support[i]))
             for i in range(len(classes)) for j in range(len(classes)) if i != j and cm[i, j]]
    return sorted(cells, key=lambda c: (-c[2], -c[3], c[0], c[1]))[:top]


def _confused(m: dict) -> str:
    pairs = confused_pairs(m["confusion_matrix"], m["classes"])
    if not pairs:
        return "<p>No class is confused with another.</p>"
    return "<h3>Most confused classes</h3>" + table(
        ("true class", "predicted as", "images", "share of the true class"),
        [(t, p, n, f"{share:.1%}") for t, p, n, share in pairs])


def _per_class(m: dict) -> str:
    return table(("class", "precision", "recall", "F1", "support"),
                  [(c, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", v["support"])
                   for c, v in m["per_class"].items()])


def _figure(thumb: str | None, path: str, true: str, pred: str, p: float, margin: float | None = None) -> str:
    cls = "right" if true == pred else "wrong"
    img = (f'<img src="{html.escape(thumb)}" alt="{html.escape(path)}" loading="lazy">' if thumb
           else '<div class="missing">no image</div>')
    extra = f"<br>margin: {margin:.3f}" if margin is not None else ""
    return (f'<figure class="{cls}">{img}<figcaption>{html.escape(path)}<br>true: <b>{html.escape(true)}</b>'
            f"<br>predicted: <b>{html.escape(pred)}</b> ({p:.3f}){extra}</figcaption></figure>")


def _leakage(m: dict) -> str:
    seen = m.get("seen_in_training") or []
    if not seen:
        return ""
    return (f'<p class="warning"><b>Warning:</b> {len(seen)} of these images were in the training set '
            f"(identical content), e.g. {html.escape(seen[0])}: these figures are optimistic.</p>")


def _clipping(clip: dict) -> str:
    rows = [(f"{c:g}" if c else "none", f"{loss:.4f}") for c, loss in clip["table"]]
    best = clip["best"]
    advice = (f"Clipping probabilities to [{best:g}, {1 - best:g}] gives the lowest cross-validated log loss: "
              f"<code>score ... --kaggle CLASS --clip {best:g}</code>." if best else
              "Clipping does not lower the log loss of these predictions.")
    return f"<p>{advice}</p>" + table(("clip", "log loss"), rows)


@dataclass(frozen=True)
class Predictions:
    """What a report shows: true labels, probabilities (N x classes) and the images they belong to.

    `hashes`: the images' sha256 (thumbnails are named by them); `image_root`: the folder `paths` are
    relative to (None: no thumbnails)."""

    y_true: Any
    proba: Any
    paths: list[str]
    hashes: list[str] | None = None
    image_root: Any = None

    @classmethod
    def of_rows(cls, y_true, proba, rows) -> "Predictions":
        """The predictions on a store's rows (dicts with "path" and "sha256")."""
        return cls(y_true, proba, [r["path"] for r in rows], [r["sha256"] for r in rows])


def write_report(out_dir, metrics: dict, predictions: Predictions, *, title: str, extra: dict | None = None,
                 curve: dict | None = None, clip: dict | None = None, gallery_size: int = GALLERY_SIZE,
                 selection: list | None = None) -> Path:
    """Write ``out_dir/index.html`` and its PNGs; return the HTML path."""
    p = predictions
    y_true, proba, paths, hashes, image_root = p.y_true, p.proba, p.paths, p.hashes, p.image_root
    out = Path(out_dir)
    thumbs = out / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    classes = metrics["classes"]
    proba = np.asarray(proba)
    confusion_png(metrics["confusion_matrix"], classes, out / "confusion.png")
    galleries = _galleries(y_true, proba, classes, paths, hashes, image_root, thumbs, gallery_size)
    sections = [("summary", "Summary", _summary(metrics, extra or {}) + _leakage(metrics)),
                ("confusion", "Confusion matrix and per-class scores",
                 '<div class="row"><img src="confusion.png" alt="confusion matrix heat map">'
                 f"<div>{_per_class(metrics)}{_confused(metrics)}</div></div>"),
                ("mistakes", *galleries["mistakes"]), ("uncertain", *galleries["uncertain"])]
    if len(proba):
        sections.append(("coverage", "Accuracy against coverage: choosing --reject-below",
                         _coverage_section(y_true, proba, classes, out)))
    if curve is not None:
        learning_curve_png(curve, out / "learning_curve.png")
        sections.append(("learning-curve", "Learning curve: will more images help?",
                         '<div class="row"><img src="learning_curve.png" alt="learning curve">' +
                         table(("images per class", "held-out accuracy"),
                                [(n, f"{a:.4f}") for n, a in zip(curve["per_class"], curve["valid_mean"])]) +
                         "</div>"))
    if selection:
        sections.append(("selection", "How the head was chosen: cross-validated candidates",
                         "<p>Every candidate (features read, head kind, C) on the same folds; * marks the one "
                         "chosen.</p>" + table(("", "features", "head", "C", "CV accuracy"),
                                               [("*" if r["chosen"] else "", r["features"], r["head"],
                                                 "-" if r["C"] is None else f"{r['C']:g}", f"{r['cv_accuracy']:.4f}")
                                                for r in selection])))
    if clip is not None:
        sections.append(("clipping", "Log loss and clipping", _clipping(clip)))
    sections.append(("correct", *galleries["correct"]))
    nav = " · ".join(f'<a href="#{k}">{html.escape(t)}</a>' for k, t, _ in sections)
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">{REPORT_GENERATOR}"
             f"<title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><nav>{nav}</nav>"]
    parts += [f'<section id="{k}"><h2>{html.escape(t)}</h2>{body}</section>' for k, t, body in sections]
    parts.append("</body></html>\n")
    page = out / "index.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return page


def _galleries(y_true, proba, classes, paths, hashes, image_root, thumbs: Path, size: int) -> dict:
    """{key: (title, html)} for the mistakes, uncertain and correct galleries."""
    pred = np.asarray(classes, dtype=str)[np.argmax(proba, axis=1)]
    margin = margins(proba)
    titles = {"mistakes": "Most confident mistakes", "uncertain": "Most uncertain images",
              "correct": "A sample of correct predictions"}
    out = {}
    for key, idx in gallery_indices(y_true, proba, classes, size).items():
        figs = []
        for i in idx:
            src = image_inside(image_root, paths[i])
            thumb = thumbnail(src, _thumb_key(hashes[i] if hashes else None, paths[i]), thumbs) if src else None
            figs.append(_figure(thumb, paths[i], str(y_true[i]), pred[i], float(proba[i].max()),
                                float(margin[i]) if key == "uncertain" else None))
        body = f'<div class="gallery">{"".join(figs)}</div>' if figs else "<p>None.</p>"
        out[key] = (f"{titles[key]} ({len(idx)})", body)
        if key == "uncertain":
            out[key] = _uncertain_section(len(idx), int((proba.max(axis=1) < UNCERTAIN_BELOW).sum()),
                                          len(proba), body)
    return out


def image_inside(image_root, relpath: str) -> Path | None:
    """The image file `relpath` names below `image_root`, or None: a row path (from a store, which a
    user may have been handed) never makes the report read outside the data folder."""
    parts = relpath.replace("\\", "/").split("/")
    if not image_root or relpath.startswith("/") or any(p in ("", ".", "..") for p in parts) or ":" in parts[0]:
        return None  # absolute, or climbing out: not a path a folder listing produces
    src = Path(image_root).joinpath(*parts)
    return src if src.is_file() else None


def _thumb_key(sha: str | None, path: str) -> str:
    """A file name for a thumbnail: the content hash when it is one, else a hash (never a path)."""
    if sha and re.fullmatch(r"[0-9a-f]{16,64}", sha):
        return sha
    return hashlib.sha256(f"{sha}:{path}".encode("utf-8", "surrogatepass")).hexdigest()


def _uncertain_section(shown: int, uncertain: int, total: int, gallery: str) -> tuple[str, str]:
    """Title and body of the uncertain gallery, saying which images it holds."""
    title = f"Most uncertain images (top probability below {UNCERTAIN_BELOW:g}: {uncertain} of {total})"
    if not uncertain:
        return title, (f"<p>None: every prediction gives its class a probability of at least "
                       f"{UNCERTAIN_BELOW:g}.</p>")
    which = f"the {shown} closest calls" if shown < uncertain else "all of them"
    return title, (f"<p>Images whose most likely class has a probability below {UNCERTAIN_BELOW:g}: {which}, "
                   f"the smallest margin (top probability minus the next class's) first.</p>" + gallery)


def report_predictions(out_dir, metrics, shown: Predictions, store, *, title: str, extra: dict | None = None,
                       curve: dict | None = None, selection: list | None = None) -> Path:
    """The report of predictions on a store's labelled rows (`shown`: ``Predictions.of_rows``), thumbnails
    from the store's data folder; `selection`: the table the head was chosen from (its metrics'
    ``selection``), shown when given."""
    from ..training.evaluation import clip_suggestion

    root = store.meta.get("data_dir")
    check_report_dir(out_dir, root)
    if metrics.get("multi_label"):  # tags: a per-tag table with AP and threshold (pipeline/reports/multilabel.py)
        from ..training.multilabel import tag_matrix
        from .multilabel import write_multilabel_report

        y_true = shown.y_true
        Y = y_true if np.ndim(y_true) == 2 else tag_matrix(y_true, metrics["classes"])
        return write_multilabel_report(out_dir, metrics, Y, shown.proba, title=title, extra=extra)
    shown = replace(shown, image_root=root if root and Path(root).is_dir() else None)
    return write_report(out_dir, metrics, shown, title=title, extra=extra, curve=curve,
                        clip=clip_suggestion(shown.y_true, shown.proba, metrics["classes"]), selection=selection)
