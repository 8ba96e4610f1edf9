"""``report.html``: the Markdown summary of :mod:`enpheeph_onnx.report` as one
self-contained HTML file (the figures inlined as base64 PNG ``data:`` URIs, no external
file, script or font), for a reliability review or a CI artefact.

It renders only the Markdown that :func:`enpheeph_onnx.report.write_report` writes:
``#``/``##`` headings, pipe tables, ``![alt](file.png)`` images, paragraphs with
``**bold**`` and ``code`` spans. Every text is escaped (:func:`html.escape`).
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from .errors import EnpheephError

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 75em; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; }
th { background: #eee; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
code { background: #f3f3f3; padding: 0 0.2em; }
.failed { color: #b00020; font-weight: bold; }
.passed { color: #1b5e20; font-weight: bold; }
"""


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\bFAILED\b", '<span class="failed">FAILED</span>', out)
    return re.sub(r"\bPASSED\b", '<span class="passed">PASSED</span>', out)


def _cells(line: str) -> list[str]:
    body = line.strip()[1:-1]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", body)]


def _image(alt: str, name: str, folder: Path) -> str:
    path = folder / name
    try:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError as e:
        raise EnpheephError(f"cannot inline {path} into report.html: {e.strerror}") from None
    return (f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')


def markdown_to_html(text: str, folder: Path, title: str) -> str:
    """The HTML page of a report's Markdown ``text``, images read from ``folder``.

    Raises:
        EnpheephError: an image the Markdown links cannot be read.
    """
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"]
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            parts.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.startswith("# "):
            parts.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(lines[i])
                i += 1
            head, body = _cells(rows[0]), [_cells(r) for r in rows[2:]]
            parts.append("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head)
                         + "</tr></thead><tbody>"
                         + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r)
                                   + "</tr>" for r in body) + "</tbody></table>")
            continue
        elif (m := re.fullmatch(r"!\[([^\]]*)\]\(([^)]+)\)", line.strip())):
            parts.append(_image(m.group(1), m.group(2), folder))
        elif line.strip():
            parts.append(f"<p>{_inline(line)}</p>")
        i += 1
    parts.append("</body></html>\n")
    return "\n".join(parts)


__all__ = ["markdown_to_html"]
