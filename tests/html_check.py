"""A strict HTML check for the reports: balanced tags, alt text on every image, and every image on disk."""
from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class StrictHTML(HTMLParser):
    """Collects <img src> and fails on any unbalanced or misnested tag."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.images, self.errors, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            a = dict(attrs)
            self.images.append(a.get("src"))
            if not a.get("alt"):
                self.errors.append(f"<img src={a.get('src')}> without alt text")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}>")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse_report(page: Path) -> StrictHTML:
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    p = StrictHTML()
    p.feed(text)
    p.close()
    assert p.errors == [] and p.stack == []
    for src in p.images:  # every image the page references exists beside it
        assert (page.parent / src).is_file(), src
    return p
