"""Writing a report document as one self-contained HTML file or as Markdown with PNGs beside it.

A report is a flat list of blocks (headings, paragraphs, tables, figures, code, embedded HTML)
so the two formats say exactly the same thing. The HTML embeds every image as a base64 data URI
and uses no script, font or style sheet from elsewhere: it renders offline, mailed as one file.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str
    css: str = ""


@dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    caption: str = ""
    css: str = ""


@dataclass(frozen=True)
class Image:
    name: str
    png: bytes
    caption: str = ""


@dataclass(frozen=True)
class Code:
    text: str
    language: str = ""


@dataclass(frozen=True)
class EmbeddedHtml:
    """A standalone HTML page (e.g. an Optuna plot) shown in a sandboxed iframe, linked from Markdown."""

    name: str
    page: str
    caption: str = ""


@dataclass(frozen=True)
class Details:
    """A collapsed section in HTML (``<details>``); a level-3 heading and its blocks in Markdown."""

    summary: str
    blocks: Sequence[Block]
    open: bool = False


Block = Heading | Paragraph | Table | Image | Code | EmbeddedHtml | Details


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block | None) -> None:
        self.blocks.extend(b for b in blocks if b is not None)


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; margin: .3em 0 .5em; font-size: 1.6em; }
h2 { border-bottom: 1px solid #bbb; padding-bottom: .15em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0 1.4em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
tr:nth-child(even) td { background: #fafafa; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3em; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #555; }
details { margin: .6em 0; border: 1px solid #ddd; padding: .3em .8em; }
summary { cursor: pointer; font-weight: 600; }
table.summary td, table.summary th { font-size: 1.02em; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: .85em; }
p.verdict { background: #eef6ee; border-left: 4px solid #3a3; padding: .5em .8em; }
p.note { color: #555; font-size: .92em; }
iframe { width: 100%; height: 520px; border: 1px solid #ddd; }
"""


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def render_html(doc: Document) -> str:
    """The whole report as one HTML page with every image inline."""
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(doc.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(doc.title)}</h1>",
    ]
    _html_blocks(doc.blocks, out)
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _html_blocks(blocks: Sequence[Block], out: list[str]) -> None:
    esc = html.escape
    for block in blocks:
        match block:
            case Details(summary, inner, is_open):
                out.append(f"<details{' open' if is_open else ''}><summary>{esc(summary)}</summary>")
                _html_blocks(inner, out)
                out.append("</details>")
            case Heading(text, level):
                out.append(f'<h{level} id="{slug(text)}">{esc(text)}</h{level}>')
            case Paragraph(text, css):
                cls = f' class="{esc(css)}"' if css else ""
                out.append(f"<p{cls}>{esc(text)}</p>")
            case Table(headers, rows, caption, css):
                cls = f' class="{esc(css)}"' if css else ""
                out.append(f"<table{cls}>")
                if caption:
                    out.append(f"<caption>{esc(caption)}</caption>")
                out.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead>")
                out.append("<tbody>")
                for row in rows:
                    out.append("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>")
                out.append("</tbody></table>")
            case Image(name, png, caption):
                data = base64.b64encode(png).decode("ascii")
                out.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption or name)}" '
                    f'data-name="{esc(name)}">'
                    + (f"<figcaption>{esc(caption)}</figcaption>" if caption else "")
                    + "</figure>"
                )
            case Code(text, _language):
                out.append(f"<pre><code>{esc(text)}</code></pre>")
            case EmbeddedHtml(name, page, caption):
                out.append(
                    f'<figure><iframe title="{esc(name)}" sandbox="allow-scripts" '
                    f'srcdoc="{esc(page, quote=True)}"></iframe>'
                    + (f"<figcaption>{esc(caption)}</figcaption>" if caption else "")
                    + "</figure>"
                )


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(doc: Document, assets_dir: Path) -> str:
    """The report as Markdown; images and embedded pages are written into ``assets_dir`` and linked."""
    assets_dir.mkdir(parents=True, exist_ok=True)
    rel = assets_dir.name
    out = [f"# {doc.title}", ""]
    used: set[str] = set()

    def unique(stem: str, suffix: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) or "file"
        name, i = f"{base}{suffix}", 2
        while name in used:
            name, i = f"{base}_{i}{suffix}", i + 1
        used.add(name)
        return name

    def emit(blocks: Sequence[Block]) -> None:
        for block in blocks:
            emit_one(block)

    def emit_one(block: Block) -> None:
        nonlocal out
        match block:
            case Details(summary, inner, _open):
                out.extend([f"### {summary}", ""])
                emit(inner)
            case Heading(text, level):
                out += ["#" * level + " " + text, ""]
            case Paragraph(text, css):
                out += [f"> {text}" if css == "verdict" else text, ""]
            case Table(headers, rows, caption, _css):
                if caption:
                    out += [f"**{caption}**", ""]
                out.append("| " + " | ".join(_md_cell(h) for h in headers) + " |")
                out.append("|" + "---|" * len(headers))
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
                out.append("")
            case Image(name, png, caption):
                filename = unique(name, ".png")
                (assets_dir / filename).write_bytes(png)
                out += [f"![{name}]({rel}/{filename})", ""]
                if caption:
                    out += [f"*{caption}*", ""]
            case Code(text, language):
                out += [f"```{language}", text.rstrip("\n"), "```", ""]
            case EmbeddedHtml(name, page, caption):
                filename = unique(name, ".html")
                (assets_dir / filename).write_text(page, encoding="utf-8")
                out += [f"[{caption or name}]({rel}/{filename})", ""]

    emit(doc.blocks)
    return "\n".join(out)
