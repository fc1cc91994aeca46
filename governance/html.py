"""The reviewers' site's page frame, shared by its pages: the style, escaping, links, tables, the header and footer."""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterable, Sequence
from urllib.parse import quote

# At the site root: browsers ask for /favicon.ico on pages that name no icon (the copied cards), and a 404
# there is a console error.
FAVICON = "favicon.ico"
EXPERIMENTS_PAGE = "experiments.html"
OPERATIONS_PAGE = "operations.html"

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d232a;background:#fafbfc}
header{background:#1f3a5f;color:#fff;padding:.6rem 1.5rem}header a{color:#fff;margin-right:1.2rem}
header strong{margin-right:2rem}main{padding:1rem 1.5rem 2rem;max-width:1400px}
h1{font-size:1.5rem;margin:.6rem 0}h2{font-size:1.2rem;margin-top:1.8rem}h3{font-size:1.05rem}
table{border-collapse:collapse;width:100%;background:#fff;margin:.5rem 0}
th,td{border:1px solid #d5dbe1;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#eef1f4}td.when{white-space:nowrap}td ul{margin:0;padding-left:1.1rem}code{font-size:.85em}
.badge{display:inline-block;padding:0 .45rem;border-radius:.7rem;font-size:.85em;font-weight:600;color:#fff}
.promoted{background:#1e7d32}.blocked{background:#b3261e}.waived{background:#b26a00}.rolled_back{background:#5f6b76}
.unknown{background:#8a94a0}.alias{background:#1f3a5f}
tr.waived-row{background:#fff4e0}.waiver{font-weight:600;color:#8a4f00}
tr.malformed td,li.malformed{background:#fdecea;font-family:monospace}
.muted{color:#66707a}figure{display:inline-block;margin:.5rem 1rem .5rem 0}
figure img{max-width:420px;border:1px solid #d5dbe1;background:#fff}figcaption{font-size:.85em;color:#66707a}
footer{color:#66707a;font-size:.85em;padding:0 1.5rem 1.5rem}
"""


def escape(value: object) -> str:
    """`value` as text safe inside HTML and its attributes."""
    return html.escape(str(value), quote=True)


def href(path: str, depth: int) -> str:
    """A site-relative path as an escaped href from a page `depth` folders below the root."""
    return escape("../" * depth + quote(path))


def table(headers: Sequence[str], rows: Iterable[str], empty: str) -> str:
    """A table of ready-made `<tr>` rows under `headers`, or the `empty` line when there is no row."""
    body = "".join(rows)
    if not body:
        return f'<p class="muted">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def when(value: dt.datetime | None) -> str:
    """A time to the minute in UTC, or a dash."""
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "—"


REGISTRY_SOURCE = "the MLflow registry and the gate's decision log"


def page(title: str, body: str, depth: int, built: dt.datetime, source: str = REGISTRY_SOURCE) -> str:
    """A whole page: the site's header with its links, `body`, and a footer saying when and from what it was built."""
    nav = (
        f'<strong>custintel governance</strong><a href="{href("index.html", depth)}">Models</a>'
        f'<a href="{href("decisions.html", depth)}">Decision log</a>'
        f'<a href="{href(EXPERIMENTS_PAGE, depth)}">Experiments</a>'
        f'<a href="{href("index.html", depth)}#drift">Drift reports</a>'
        f'<a href="{href(OPERATIONS_PAGE, depth)}">Operations</a>'
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="{href(FAVICON, depth)}"><title>{escape(title)}</title><style>{CSS}</style></head>\n'
        f"<body><header><nav>{nav}</nav></header>\n<main>{body}</main>\n"
        f"<footer>Built {escape(when(built))} by <code>custintel report</code> from {escape(source)}.</footer>"
        "</body></html>\n"
    )
