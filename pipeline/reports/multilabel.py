"""The HTML report of a multi-label head: ``DIR/index.html`` with a summary, a precision-recall plot
and a per-tag table (support, average precision, tuned threshold, precision, recall, F1)."""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from ..outputs import REPORT_GENERATOR
from .html import CSS, pyplot, table


def precision_recall_png(Y, P, classes, path: Path, most: int = 12) -> Path:
    """Micro-averaged precision-recall curve, and the curves of the `most` most frequent tags."""
    from sklearn.metrics import precision_recall_curve

    plt = pyplot()
    Y, P = np.asarray(Y, dtype=bool), np.asarray(P)
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for k in np.argsort(-Y.sum(0), kind="stable")[:most]:
        if Y[:, k].any():
            p, r, _ = precision_recall_curve(Y[:, k], P[:, k])
            ax.plot(r, p, lw=1, alpha=0.6, label=str(classes[k]))
    p, r, _ = precision_recall_curve(Y.ravel(), P.ravel())
    ax.plot(r, p, lw=2.5, color="black", label="all tags (micro)")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower left")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def _summary(m: dict, extra: dict) -> str:
    rows = [("images", m["n"]), ("tags", len(m["classes"])), ("micro-F1", f"{m['micro_f1']:.4f}"),
            ("macro-F1", f"{m['macro_f1']:.4f}"), ("micro precision", f"{m['micro_precision']:.4f}"),
            ("micro recall", f"{m['micro_recall']:.4f}"), ("subset accuracy", f"{m['subset_accuracy']:.4f}"),
            ("micro-F1 at threshold 0.5", f"{m['micro_f1_at_0.5']:.4f}")]
    if m.get("mean_average_precision") is not None:
        rows.append(("mean average precision", f"{m['mean_average_precision']:.4f}"))
    rows += list(extra.items())
    return table(("", "value"), rows, cls="summary")


def _per_tag(m: dict) -> str:
    def ap(v):
        return "-" if v["average_precision"] is None else f"{v['average_precision']:.3f}"

    order = sorted(m["per_class"].items(), key=lambda kv: -kv[1]["support"])
    return table(("tag", "support", "average precision", "threshold", "precision", "recall", "F1"),
                  [(c, v["support"], ap(v), f"{v['threshold']:.2f}", f"{v['precision']:.3f}", f"{v['recall']:.3f}",
                    f"{v['f1']:.3f}") for c, v in order])


def write_multilabel_report(out_dir, metrics: dict, Y, P, *, title: str, extra: dict | None = None) -> Path:
    """Write ``out_dir/index.html`` and ``pr.png``; return the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    precision_recall_png(Y, P, metrics["classes"], out / "pr.png")
    warn = ""
    if metrics.get("seen_in_training"):
        warn = (f'<p class="warning">{len(metrics["seen_in_training"])} of these images were in the training set: '
                f"these figures are optimistic.</p>")
    body = (f"<h1>{html.escape(title)}</h1>"
            f'<section id="summary"><h2>Summary</h2>{_summary(metrics, extra or {})}{warn}</section>'
            f'<section id="precision-recall"><h2>Precision and recall</h2><img src="pr.png" alt="precision-recall">'
            f"<p>A tag is predicted when its probability reaches its threshold; each threshold was tuned by "
            f"cross-validation on the training images to maximise the micro-F1 of all tags.</p></section>"
            f'<section id="per-class"><h2>Per tag</h2>{_per_tag(metrics)}</section>')
    page = out / "index.html"
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'>{REPORT_GENERATOR}<title>{html.escape(title)}</title>"
                    f"<style>{CSS}</style></head><body>{body}</body></html>", encoding="utf-8")
    return page
