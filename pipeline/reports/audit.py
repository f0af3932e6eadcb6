"""What `audit` prints and its HTML report: the findings side by side as thumbnails.

``audit_table`` is the text on stdout (counts, the accuracy with and without leaks, the first rows
of each kind); ``write_audit_report`` writes ``DIR/index.html`` with a summary and one section per
kind: near-duplicate pairs and leaks as two thumbnails side by side with their similarity, label
issues with the given and predicted class, outliers with their distance. Thumbnails come from each
store's data folder, named by content hash, and are never read from outside it.
"""
from __future__ import annotations

import html
from pathlib import Path

from ..outputs import REPORT_GENERATOR, check_report_dir
from .html import CSS, table
from .report import _thumb_key, image_inside, thumbnail

SHOWN = 24  # findings per section of the HTML report
TITLES = {"near_duplicate": "Near-duplicates", "leak": "Leaks: test images with a near-duplicate in training",
          "label_issue": "Label issues (confident learning)", "outlier": "Outliers: far from every training image"}
PAIR_CSS = (".pair{display:flex;gap:6px;padding:6px;border:1px solid #ddd;align-items:flex-start}"
            ".pair p{font-size:12px;margin:0 0 0 4px;width:90px}")


def accuracy_lines(acc: dict | None) -> list[str]:
    if not acc:
        return []
    without = acc["accuracy_without"]
    return [f"accuracy of a {acc['head']} head trained on the first store: {acc['accuracy']:.4f} on all {acc['n']} "
            f"labelled images of the second, "
            + (f"{without:.4f} on the {acc['n_without']} without a near-duplicate in training "
               f"({acc['leaked']} leaked)" if without is not None else "none left without the leaked images")]


def audit_table(result, top: int | None = 20) -> str:
    """Counts, accuracy with and without leaks, and the first `top` findings of each kind (all: 0/None)."""
    counts = result.counts()
    lines = [f"audit of {' against '.join(reversed(result.stores))}: threshold {result.threshold:g}, "
             f"neighbours {result.method or 'not searched'}",
             "found: " + ", ".join(f"{n} {k}" for k, n in counts.items())]
    lines += accuracy_lines(result.accuracy)
    lines += [f"note: {n}" for n in result.notes]
    for kind in counts:
        rows = [f for f in result.findings if f.kind == kind]
        if not rows:
            continue
        shown = rows[:top] if top else rows
        lines.append(f"\n{kind} ({len(shown)} of {len(rows)}):")
        lines.append(f"{'score':>7}  {'label':<14} {'other':<14} path  [other_path]")
        lines += [f"{f.score:7.4f}  {f.label[:14]:<14} {f.other_label[:14]:<14} {f.path}"
                  + (f"  {f.other_path}" if f.other_path else "") for f in shown]
    return "\n".join(lines)


def _figure(roots: dict, store: str, path: str, caption: str, thumbs: Path) -> str:
    src = image_inside(roots.get(store), path)
    thumb = thumbnail(src, _thumb_key(None, f"{store}/{path}"), thumbs) if src else None
    img = (f'<img src="{html.escape(thumb)}" alt="{html.escape(path)}" loading="lazy">' if thumb
           else '<div class="missing">no image</div>')
    return f"<figure>{img}<figcaption>{html.escape(path)}<br>{html.escape(caption)}</figcaption></figure>"


def _section(kind: str, rows: list, roots: dict, first: str, thumbs: Path) -> str:
    if not rows:
        return "<p>None.</p>"
    items = []
    for f in rows[:SHOWN]:
        if kind in ("near_duplicate", "leak"):
            other_store = f.store if kind == "near_duplicate" else first
            items.append('<div class="pair">' + _figure(roots, f.store, f.path, f.label, thumbs)
                         + _figure(roots, other_store, f.other_path, f.other_label, thumbs)
                         + f"<p>similarity<br><b>{f.score:.4f}</b>"
                         + (f"<br>group {f.group}" if f.group >= 0 else "") + "</p></div>")
        elif kind == "label_issue":
            items.append(_figure(roots, f.store, f.path, f"given: {f.label}, predicted: {f.other_label} "
                                 f"(doubt {f.score:.3f})", thumbs))
        else:
            items.append(_figure(roots, f.store, f.path, f"{f.label} distance {f.score:.3f}", thumbs))
    more = f"<p>The first {SHOWN} of {len(rows)}; all of them are in --csv / --json.</p>" if len(rows) > SHOWN else ""
    return more + f'<div class="gallery">{"".join(items)}</div>'


def write_audit_report(out_dir, result, data_dirs: dict) -> Path:
    """Write ``out_dir/index.html`` (and its thumbnails) for an :class:`~pipeline.audit.AuditResult`;
    `data_dirs`: {store folder as in the findings: its data folder (None: no thumbnails)}."""
    for d in data_dirs.values():
        check_report_dir(out_dir, d)
    out = Path(out_dir)
    thumbs = out / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    roots = {s: d if d and Path(d).is_dir() else None for s, d in data_dirs.items()}
    counts = result.counts()
    summary = [("stores", " against ".join(reversed(result.stores))), ("threshold", f"{result.threshold:g}"),
               ("neighbours", result.method or "-")] + [(k, n) for k, n in counts.items()]
    body = table(("", "value"), summary, cls="summary")
    if result.accuracy:
        a = result.accuracy
        body += table(("second store's images", "images", "accuracy"),
                      [("all", a["n"], f"{a['accuracy']:.4f}"),
                       ("without the leaked ones", a["n_without"],
                        "-" if a["accuracy_without"] is None else f"{a['accuracy_without']:.4f}")])
    body += "".join(f"<p>note: {html.escape(n)}</p>" for n in result.notes)
    sections = [("summary", "Summary", body)]
    for kind, title in TITLES.items():
        rows = [f for f in result.findings if f.kind == kind]
        sections.append((kind, f"{title} ({len(rows)})", _section(kind, rows, roots, result.stores[0], thumbs)))
    nav = " · ".join(f'<a href="#{k}">{html.escape(t)}</a>' for k, t, _ in sections)
    title = "Is my data clean? " + " against ".join(Path(s).name for s in reversed(result.stores))
    parts = [f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{REPORT_GENERATOR}'
             f"<title>{html.escape(title)}</title><style>{CSS}{PAIR_CSS}</style></head><body>"
             f"<h1>{html.escape(title)}</h1><nav>{nav}</nav>"]
    parts += [f'<section id="{k}"><h2>{html.escape(t)}</h2>{b}</section>' for k, t, b in sections]
    page = out / "index.html"
    page.write_text("\n".join(parts) + "\n</body></html>\n", encoding="utf-8")
    return page
