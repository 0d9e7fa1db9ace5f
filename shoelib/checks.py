"""Checks of single parameter values, shared by every notebook's config.

Each check returns the value and raises a one-line error that names the parameter the user
set, the value, and a value that works:

    checks.whole_number("abc", "top_n", minimum=1, example=15)
    -> SettingError: top_n='abc' must be a whole number >= 1; use e.g. 15
"""

from __future__ import annotations

from typing import Any


class SettingError(ValueError):
    """A parameter value that cannot work."""


def _is_text(value: Any) -> str:
    return " (it is text)" if isinstance(value, str) else ""


def whole_number(value: Any, param: str, minimum: int = 0, example: int | None = None,
                 error: type[ValueError] = SettingError) -> int:
    """An int >= minimum (a bool or a float such as 4.0 is refused: it is a typo)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        hint = f"; use e.g. {example}" if example is not None else ""
        raise error(f"{param}={value!r}{_is_text(value)} must be a whole number >= {minimum}{hint}")
    return value


def number(value: Any, param: str, minimum: float | None = None, *, above: bool = False,
           example: float | None = None, error: type[ValueError] = SettingError) -> float:
    """An int or float, >= minimum (> minimum with above=True)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value == value
    if ok and minimum is not None:
        ok = value > minimum if above else value >= minimum
    if not ok:
        bound = f" {'>' if above else '>='} {minimum:g}" if minimum is not None else ""
        hint = f"; use e.g. {example:g}" if example is not None else ""
        raise error(f"{param}={value!r}{_is_text(value)} must be a number{bound}{hint}")
    return value


def random_seed(value: Any, param: str, error: type[ValueError] = SettingError) -> int:
    """A random seed: a whole number >= 0."""
    return whole_number(value, param, 0, 42, error)


def text(value: Any, param: str, example: str, error: type[ValueError] = SettingError) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise error(f"{param}={value!r} must be a non-empty text; use e.g. {example!r}")
    return value


def categories(category: Any, categories: Any, error: type[ValueError] = SettingError
               ) -> tuple[str, ...]:
    """The article types a notebook works on: `categories` when it lists any, else
    `category` alone (the one-item case, with the layout of a single-category run).

    `category` stays the run's main type (04's test prompts, 09's focus), so with a list it
    must be one of its entries.
    """
    main = text(category, "category", "Casual Shoes", error)
    if categories is None or (isinstance(categories, list | tuple) and not categories):
        return (main,)
    if not isinstance(categories, list | tuple):
        raise error(f"categories={categories!r} must be a list of article types, e.g. "
                    "['Casual Shoes', 'Sandals']; [] for `category` alone")
    names = tuple(text(c, "categories", "Casual Shoes", error) for c in categories)
    from shoelib.paths import slug  # folder names: two spellings of one type would share one

    seen: dict[str, str] = {}
    for name in names:
        if slug(name) in seen:
            raise error(f"categories lists {seen[slug(name)]!r} and {name!r}, which name the same "
                        "folder; list each article type once")
        seen[slug(name)] = name
    if main not in names:
        raise error(f"category={main!r} is not in categories={list(names)}; add it, or set "
                    f"category to one of them (e.g. {names[0]!r})")
    return names
