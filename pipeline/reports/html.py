"""What every HTML report shares: its style sheet, escaped tables, and matplotlib without a display."""
from __future__ import annotations

import html

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.row{display:flex;gap:2em;align-items:flex-start;flex-wrap:wrap}nav{margin-bottom:1em}
.gallery{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;width:170px;font-size:12px}
figure img{width:160px;height:160px;object-fit:cover;border:3px solid #ccc}
figure.wrong img{border-color:#d33}figure.right img{border-color:#3a3}
figcaption{word-break:break-all}table.summary td{max-width:45em;overflow-wrap:anywhere}
table.summary td:last-child{text-align:left}.warning{background:#fff3cd;padding:8px;border:1px solid #e0c36c}.missing{width:160px;height:160px;background:#eee;display:flex;
align-items:center;justify-content:center;color:#888}
"""


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: reports only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def table(header, rows, cls: str = "") -> str:
    """An HTML table, every cell escaped."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
