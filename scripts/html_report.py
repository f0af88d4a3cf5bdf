"""``index.html`` of a sweep report: the figures, the claims and the tables in one page that
opens in any browser, made from the report's own markdown files (no extra dependency).

Only the markdown the report writes is understood: ``#``/``##`` headings, paragraphs, ``- ``
lists, pipe tables, ``**bold**`` and ``code`` spans.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 75em; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.4em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f2f2f2; }
td.num { text-align: right; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def inline(text: str) -> str:
    """Escape, then render ``**bold**`` and ``code`` spans."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def table(lines: list[str]) -> str:
    """A pipe table; columns aligned right in the markdown (``---:``) stay right-aligned."""
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    header, rule, body = cells[0], cells[1], cells[2:]
    right = [c.endswith(":") and not c.startswith(":") for c in rule]
    rows = ["<tr>" + "".join(f"<th>{inline(c)}</th>" for c in header) + "</tr>"]
    for row in body:
        rows.append(
            "<tr>"
            + "".join(
                f"<td{' class=num' * r}>{inline(c)}</td>" for c, r in zip(row, right, strict=False)
            )
            + "</tr>"
        )
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def markdown_to_html(text: str) -> str:
    """The report's markdown as HTML blocks."""
    blocks: list[str] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("|"):
            start = index
            while index < len(lines) and lines[index].startswith("|"):
                index += 1
            blocks.append(table(lines[start:index]))
            continue
        if line.startswith("- "):
            items = []
            while index < len(lines) and lines[index].startswith("- "):
                items.append(f"<li>{inline(lines[index][2:])}</li>")
                index += 1
            blocks.append("<ul>" + "".join(items) + "</ul>")
            continue
        heading = re.match(r"^(#{1,3}) (.*)$", line)
        if heading:
            level = len(heading.group(1)) + 1  # the page's own title is the h1
            blocks.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif line.strip():
            blocks.append(f"<p>{inline(line)}</p>")
        index += 1
    return "\n".join(blocks)


def write_index(out: Path, title: str, figures: list[Path], pages: list[Path]) -> Path:
    """``out/index.html``: the figures, then each markdown page in order."""
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *(f'<img src="{html.escape(f.name)}" alt="{html.escape(f.stem)}">' for f in figures),
        *(markdown_to_html(page.read_text()) for page in pages if page.is_file()),
        "</body></html>",
    ]
    path = out / "index.html"
    path.write_text("\n".join(parts) + "\n")
    return path
