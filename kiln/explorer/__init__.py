"""The engine explorer: `kiln inspect model.kiln --html report.html` (or kiln.explorer.write_html(compiled, path))."""

from kiln.explorer.html import to_html, write_html

__all__ = ["to_html", "write_html"]
