"""Catalogue text in reports: shown as the text it is, never read as HTML or markdown.

Product names, colours and brands come from a file anyone can edit. Executed notebooks are
rendered to HTML (`shoelib.run`), and markdown output passes raw HTML through, as does a
pandas Styler; so every catalogue value that reaches a report goes through `text` (markdown)
or `table` (Styler). Plain DataFrames need nothing: their HTML is escaped by pandas.

`table` is also the one format of every table a notebook shows: numbers to a few significant
digits (more where a column's quantity needs them), one marker for a missing value, no index
column, text left-aligned and numbers right-aligned.
"""

from __future__ import annotations

import html
import math
import numbers
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


MISSING = "—"  # the one marker of a missing value in every table
DIGITS = 3  # significant digits of a number unless its column asks for more
MAX_ROWS = 60  # rows a table shows (pandas' own display limit); the caption says how many more


def is_missing(value: Any) -> bool:
    """None, NaN, pandas' NA or NaT (a list or array is a value, not missing)."""
    import pandas as pd

    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def number(value: Any, digits: int = DIGITS) -> str:
    """`value` as a table shows it: whole numbers with thousands separators, other numbers to
    `digits` significant digits (never in exponent form above 1), a missing value as MISSING,
    anything else as its text."""
    if is_missing(value):
        return MISSING
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    if isinstance(value, numbers.Integral) or float(value).is_integer() and abs(value) >= 10 ** digits:
        return f"{int(value):,}"
    value = float(value)
    if math.isinf(value):
        return str(value)
    if abs(value) >= 10 ** (digits - 1):  # e.g. 1234.5 at 3 digits: 1,235, not 1.23e+03
        return f"{round(value):,}"
    return f"{value:#.{digits}g}"  # "#": 2.70, not 2.7, so a column lines up


def table(frame: pd.DataFrame, formats: Mapping[str, str] | None = None,
          digits: int | Mapping[str, int] = DIGITS) -> Styler:
    """`frame` as a report shows it: a Styler whose cells and labels are HTML-escaped, numbers
    formatted by `number`, missing values shown as MISSING, no index column (a meaningful
    index, e.g. the colour of each row, becomes the first column), text left-aligned.

    Args:
        frame: the table to show.
        formats: per-column format strings, e.g. {"share": "{:.1%}"}.
        digits: significant digits of every number (e.g. 4 for a table of losses), or per
            column where a quantity needs other than DIGITS, e.g. {"loss": 4}.

    Only the first MAX_ROWS rows are shown (a Styler, unlike a DataFrame, would render every
    row); the caption says how many there are.
    """
    import pandas as pd

    default_index = isinstance(frame.index, pd.RangeIndex) and frame.index.name is None
    if not default_index:  # unnamed index levels get blank (distinct) headers, not "level_0"
        frame = frame.rename_axis([name if name is not None else " " * i
                                   for i, name in enumerate(frame.index.names)])
    shown = frame.copy() if default_index else frame.reset_index()
    shown.columns = [str(c) for c in shown.columns]
    caption = f"first {MAX_ROWS} of {len(shown):,} rows" if len(shown) > MAX_ROWS else None
    shown = shown.head(MAX_ROWS)
    every = digits if isinstance(digits, int) else DIGITS
    styler = shown.style.format(lambda v: number(v, every), escape="html", na_rep=MISSING)
    if caption:
        styler = styler.set_caption(caption)
    for column, n in ({} if isinstance(digits, int) else digits).items():
        if column in shown:
            styler = styler.format(lambda v, n=n: number(v, n), subset=[column], escape="html",
                                   na_rep=MISSING)
    if formats:
        # subset: a dict alone would reset every other column to pandas' own format
        styler = styler.format(dict(formats), subset=[c for c in formats if c in shown],
                               escape="html", na_rep=MISSING)
    text_columns = [c for c in shown.columns if not pd.api.types.is_numeric_dtype(shown[c])
                    or pd.api.types.is_bool_dtype(shown[c])]
    styler = styler.hide(axis="index").format_index(escape="html", axis=1)
    if text_columns:
        styler = styler.set_properties(subset=text_columns, **{"text-align": "left"})
    return styler.set_table_styles([{"selector": "th", "props": [("text-align", "left")]}])
