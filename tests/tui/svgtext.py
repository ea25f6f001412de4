"""Read a Textual SVG screenshot back as plain lines of text, to check what a screen says."""

from __future__ import annotations

import html
import re

_TEXT = re.compile(
    r'<text[^>]* x="([\d.]+)" y="[\d.]+"[^>]*clip-path="url\(#[^)]*-line-(\d+)\)">([^<]*)</text>'
)
CELL_WIDTH = 12.2  # pixels per terminal column in Textual's SVG export


def svg_lines(svg: str) -> list[str]:
    """The screen's rows, each as the characters drawn on it."""
    rows: dict[int, dict[int, str]] = {}
    for x, line, content in _TEXT.findall(svg):
        column = round(float(x) / CELL_WIDTH) - 1
        for offset, char in enumerate(html.unescape(content).replace("\xa0", " ")):
            rows.setdefault(int(line), {})[column + offset] = char
    out = []
    for index in range(max(rows, default=-1) + 1):
        cells = rows.get(index, {})
        out.append("".join(cells.get(c, " ") for c in range(max(cells, default=-1) + 1)).rstrip())
    return out


def svg_text(svg: str) -> str:
    """All rows joined by newlines."""
    return "\n".join(svg_lines(svg))
