"""The one caption template: 02's training captions, 04's test prompts and 06's prompts.

    fill(DEFAULT_TEMPLATE, {"colour": "Navy Blue", "article": "Casual Shoes",
                            "season": "Summer", "gender": "Men", "view": "side view"})
    -> "A professional product photo of navy blue casual shoes, Summer collection, Men,
        side view, centered on white background, high quality, product photography"

A template is read as comma-separated clauses. A clause whose placeholders all lack a value
is dropped, so one template serves every step: a catalogue row has no view phrase (02 drops
the `{view}` clause), a planned image has no brand (04 and 06 drop the `{brand}` clause), and
a caption never holds ", ," or "None".
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping
from typing import Any

DEFAULT_TEMPLATE = (
    "A professional product photo of {colour} {article}, {season} collection, {gender}, "
    "{brand}, {view}, centered on white background, high quality, product photography"
)
# placeholder -> what fills it
FIELDS: dict[str, str] = {
    "colour": "baseColour, lowercased, e.g. 'navy blue'",
    "article": "articleType, lowercased, e.g. 'casual shoes'",
    "season": "season as written, e.g. 'Summer'",
    "gender": "gender as written, e.g. 'Men'",
    "brand": "brand as parsed from the name, e.g. 'United Colors of Benetton' (02 only)",
    "usage": "usage as written, e.g. 'Casual' (02 only)",
    "year": "four digits, e.g. '2012' (02 only)",
    "name": "productDisplayName, the full product name (02 only)",
    "view": "a view phrase of 06's plan, e.g. 'side view' (04 and 06 only)",
}
LOWERCASED = ("colour", "article")
# Cell values that mean "no value": the catalogue writes "NA" for not available.
MISSING_TEXT = frozenset({"", "na", "n/a", "nan", "none", "null", "<na>"})


class CaptionTemplateError(ValueError):
    """A caption template with an unknown or malformed placeholder."""


def is_missing(value: Any) -> bool:
    """None, NaN, pandas' NA or a text in MISSING_TEXT."""
    if value is None or type(value).__name__ == "NAType":
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in MISSING_TEXT


def check_template(template: Any, param: str = "caption_template",
                   required: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The placeholders a template uses, in order.

    Args:
        template: the template text.
        param: the parameter it came from (named in every error).
        required: placeholders it must use (06 needs {colour}: 07 scores colour faithfulness).
    Raises:
        CaptionTemplateError: not text, a placeholder not in FIELDS, a positional ({}) one, a
            format spec/conversion, an unbalanced brace, or a required placeholder missing.
    """
    valid = ", ".join("{" + k + "}" for k in FIELDS)
    if not isinstance(template, str):
        raise CaptionTemplateError(f"{param}={template!r} must be text with placeholders {valid}")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise CaptionTemplateError(
            f"{param} {template!r} is malformed ({err}); write {{{{ }}}} for a literal brace; "
            f"placeholders: {valid}") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in FIELDS:
            raise CaptionTemplateError(
                f"{param} has unknown placeholder {{{name}}}; valid placeholders: {valid}")
        if spec or conversion:
            raise CaptionTemplateError(
                f"{param} placeholder {{{name}}} has a format spec or conversion; "
                f"write plain {{{name}}}")
        names.append(name)
    for name in required:
        if name not in names:
            raise CaptionTemplateError(f"{param} has no {{{name}}}; add it, e.g. {DEFAULT_TEMPLATE!r}")
    return tuple(names)


def fill(template: str, values: Mapping[str, Any]) -> str:
    """Fill a template, dropping clauses whose placeholders all lack a value.

    Args:
        template: text with placeholders from FIELDS (checked by `check_template`).
        values: placeholder -> value; absent or missing values (`is_missing`) count as none.
            A missing placeholder in a clause that keeps another value becomes nothing
            ("photo of {colour} {article}" without colour reads "photo of casual shoes").
    Returns:
        The caption: spaces collapsed, colour and article lowercased, no empty clause.
    """
    check_template(template)
    text = {}
    for name in FIELDS:
        value = values.get(name)
        if is_missing(value):
            text[name] = None
        else:
            words = " ".join(str(value).split())
            text[name] = words.lower() if name in LOWERCASED else words
    clauses = []
    for clause in template.split(","):
        used = [name for _, name, _, _ in string.Formatter().parse(clause) if name]
        if used and all(text[name] is None for name in used):
            continue
        filled = " ".join(clause.format(**{k: v or "" for k, v in text.items()}).split())
        if filled:
            clauses.append(filled)
    return ", ".join(clauses)
