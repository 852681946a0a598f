"""``report.html``: the Markdown report as one self-contained HTML file (figures embedded).

The Markdown genbound writes uses a small subset (headings, paragraphs, bullet lists,
pipe tables, inline code, bold, images); this module renders exactly that subset, with
every image inlined as a base64 data URI so the file reads offline and travels alone.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
code { background: #f5f5f5; padding: 0 0.2em; }
img { max-width: 100%; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
"""

_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")


def _inline(text: str, folder: Path) -> str:
    out, last = [], 0
    for m in _IMAGE.finditer(text):
        out.append(_format(text[last : m.start()]))
        out.append(_image(m.group(1), folder / m.group(2)))
        last = m.end()
    out.append(_format(text[last:]))
    return "".join(out)


def _format(text: str) -> str:
    s = html.escape(text)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)


def _image(alt: str, path: Path) -> str:
    if not path.is_file():
        return f"<em>[missing figure {html.escape(str(path.name))}]</em>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table_cell(text: str) -> str:
    """``text`` for one cell of a Markdown table: a ``|`` in it (``||dW||_F``) escaped as
    ``\\|``, so it does not end the cell."""
    return text.replace("|", "\\|")


def _cells(line: str) -> list[str]:
    """The cells of one table row; ``\\|`` is a ``|`` inside a cell."""
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def markdown_to_html(markdown: str, folder: str | Path, title: str = "genbound report") -> str:
    """Render genbound's Markdown subset; images are read from ``folder`` and embedded."""
    folder = Path(folder)
    lines = markdown.splitlines()
    body: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line[level:].strip(), folder)}</h{level}>")
            i += 1
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            head, rest = rows[0], [r for r in rows[1:] if not all(set(c) <= set("-:") for c in r)]
            body.append("<table><thead><tr>")
            body.append("".join(f"<th>{_inline(c, folder)}</th>" for c in head))
            body.append("</tr></thead><tbody>")
            for r in rest:
                body.append("<tr>" + "".join(f"<td>{_inline(c, folder)}</td>" for c in r) + "</tr>")
            body.append("</tbody></table>")
        elif line.startswith("- "):
            body.append("<ul>")
            while i < len(lines) and lines[i].startswith("- "):
                body.append(f"<li>{_inline(lines[i][2:], folder)}</li>")
                i += 1
            body.append("</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("#", "|", "- ")):
                para.append(lines[i])
                i += 1
            body.append(f"<p>{_inline(' '.join(para), folder)}</p>")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
