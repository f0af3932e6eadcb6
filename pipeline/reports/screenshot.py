"""Full-page screenshot of an HTML report with headless Chromium: ``make screenshot REPORT=DIR``.

Chromium's ``--screenshot`` captures the window, not the page, and has no full-page switch. The
page is drawn in a window taller than any report (16,000 px) and the empty background below its
end is cut off, so the PNG holds the whole page whatever its length.

    python -m pipeline.reports.screenshot REPORT_DIR [--chromium chromium]   # writes REPORT_DIR/screenshot.png
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

WIDTH = 1280
TALL = 16000  # window height; a page longer than this is cut, and the message says so
MARGIN = 24  # background kept below the last drawn row


def trim_bottom(png: Path, margin: int = MARGIN) -> tuple[int, int]:
    """Cut the rows below the page's last non-background row (background: the bottom row's colour)."""
    from PIL import Image

    with Image.open(png) as im:
        px = np.asarray(im.convert("RGB"))
    background = px[-1, 0]
    drawn = np.flatnonzero((px != background).any(axis=(1, 2)))
    height = min(len(px), int(drawn[-1]) + 1 + margin) if len(drawn) else len(px)
    if height < len(px):
        Image.fromarray(px[:height]).save(png)
    return px.shape[1], height


def screenshot(report_dir, chromium: str = "chromium", width: int = WIDTH, tall: int = TALL) -> tuple[Path, int]:
    """(path of REPORT_DIR/screenshot.png, page height in px) of REPORT_DIR/index.html."""
    page = Path(report_dir).resolve() / "index.html"
    if not page.is_file():
        raise FileNotFoundError(f"no {page}: run make demo, or make report REPORT=dir")
    exe = shutil.which(chromium)
    if exe is None:
        raise FileNotFoundError(f"{chromium} is not installed (Debian: apt-get install chromium)")
    out = page.parent / "screenshot.png"
    out.unlink(missing_ok=True)
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={width},{tall}", f"--screenshot={out}", page.as_uri()],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, check=False)
    if not out.is_file():
        raise RuntimeError(f"{chromium} wrote no screenshot of {page}")
    return out, trim_bottom(out)[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.reports.screenshot", description=__doc__.splitlines()[0])
    p.add_argument("report_dir")
    p.add_argument("--chromium", default="chromium")
    a = p.parse_args(argv)
    try:
        out, height = screenshot(a.report_dir, a.chromium)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, FileNotFoundError) else 1
    cut = f" (the page is longer than {TALL} px: cut there)" if height >= TALL else ""
    print(f"screenshot -> {out} ({WIDTH}x{height}){cut}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
