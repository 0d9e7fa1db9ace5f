"""Catalogue text in reports: shown as the text it is, never read as HTML or markdown.

Product names, colours and brands come from a file anyone can edit. Executed notebooks are
rendered to HTML (`shoelib.run`), and markdown output passes raw HTML through, as does a
pandas Styler; so every catalogue value that reaches a report goes through `text` (markdown)
or `table` (Styler). Plain DataFrames need nothing: their HTML is escaped by pandas.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the Styler needs jinja2: only `table` imports it, through pandas
    import pandas as pd
    from pandas.io.formats.style import Styler

# Characters markdown reads as formatting (emphasis, links, code, tables, strike-through,
# math); a backslash makes each a literal character.
_MARKDOWN = re.compile(r"([\\`*_\[\]|~$])")


def text(value: Any) -> str:
    """`value` as markdown that renders as exactly its text, on one line.

    HTML's special characters become entities (`<script>` shows as text), markdown's get a
    backslash, and line breaks become spaces, so that a value cannot end the list item or
    table row it is written in.
    """
    one_line = " ".join(str(value).split())
    return _MARKDOWN.sub(r"\\\1", html.escape(one_line, quote=False))


def table(frame: pd.DataFrame, formats: Mapping[str, str] | None = None) -> Styler:
    """A Styler of `frame` whose cells, index and column labels are HTML-escaped.

    Args:
        frame: the table to show.
        formats: per-column format strings, e.g. {"share": "{:.1%}"}.
    """
    styler = frame.style.format(escape="html")
    if formats:
        styler = styler.format(dict(formats), escape="html")
    return styler.format_index(escape="html", axis=0).format_index(escape="html", axis=1)
