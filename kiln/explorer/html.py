"""The engine explorer as one self-contained HTML file: data as JSON, the page's own CSS and JS inlined.

Nothing is fetched when it opens (no CDN, no fonts), so it works offline and can be mailed around.
"""

from __future__ import annotations

import html
import json
import math
import os
from importlib import resources

from kiln.explorer.model import explorer_data

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<div id="app"></div>
<script type="application/json" id="kiln-data">{data}</script>
<script>{js}</script>
</body>
</html>
"""


def _asset(name: str) -> str:
    return resources.files("kiln.explorer").joinpath(name).read_text(encoding="utf-8")


def to_html(compiled, title: str = "") -> str:
    data = json.dumps(_finite(explorer_data(compiled, title)), allow_nan=False, default=str)
    # Inside <script>, "</script" would end the element early and "<!--" changes how it is parsed;
    # written as a JSON escape (backslash-u003c) it is "<" to JSON.parse and plain text to the HTML parser.
    data = data.replace("<", "\\u003c")
    return _PAGE.format(
        title=html.escape(f"Kiln engine explorer {title}".strip()), css=_asset("explorer.css"), js=_asset("explorer.js"), data=data
    )


def _finite(value):
    """JSON.parse takes no NaN or Infinity: a timing that is not a number is shown as absent."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_html(compiled, path: str | os.PathLike, title: str = "") -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(to_html(compiled, title))
