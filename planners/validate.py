"""Checks that the configs run in `__post_init__` (the planners' and the facade's alike): one message
shape for all of them, `ValueError("<Class>.<field> must be ...; got <value>")`."""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

__all__ = ["check_choice", "check_int", "check_min", "check_positive", "check_range"]


def _fail(config: Any, name: str, rule: str) -> None:
    raise ValueError(f"{type(config).__name__}.{name} must be {rule}; got {getattr(config, name)!r}")


def _given(config: Any, names: Iterable[str], optional: bool) -> Iterable[tuple[str, Any]]:
    """`(name, value)` of each field, skipping the `None` of an optional one."""
    for name in names:
        v = getattr(config, name)
        if not (optional and v is None):
            yield name, v


def check_min(config: Any, minimum: float, *names: str) -> None:
    """Each field `names` of `config` is a number `>= minimum`.

    Raises:
        ValueError: naming the class and the first field that is smaller (or NaN).
    """
    for name in names:
        if not getattr(config, name) >= minimum:
            _fail(config, name, f">= {minimum}")


def check_int(config: Any, *names: str, minimum: int | None = None, optional: bool = False) -> None:
    """Each field `names` of `config` is an integer (`int` or numpy's; not a bool, not a float such as 2.5), at least
    `minimum` when given (or, with `optional`, `None`).

    Raises:
        ValueError: naming the class and the first field that is not.
    """
    for name, v in _given(config, names, optional):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or (minimum is not None and v < minimum):
            _fail(config, name, ("an int" if minimum is None else f"an int >= {minimum}") + (" or None" if optional else ""))


def check_positive(config: Any, *names: str, optional: bool = False) -> None:
    """Each field `names` of `config` is a finite number `> 0` (or, with `optional`, `None`).

    Raises:
        ValueError: naming the class and the first field that is not.
    """
    for name, v in _given(config, names, optional):
        if not (v > 0 and math.isfinite(v)):
            _fail(config, name, "a positive number" + (" or None" if optional else ""))


def check_range(config: Any, name: str, low: float, high: float, *, low_open: bool = False,
                high_open: bool = False) -> None:
    """The field `name` of `config` lies in the interval from `low` to `high` (each end closed
    unless `low_open`/`high_open`).

    Raises:
        ValueError: naming the class, the field and the interval, e.g. `in [0, 1)`.
    """
    v = getattr(config, name)
    above = v > low if low_open else v >= low
    below = v < high if high_open else v <= high
    if not (above and below):
        _fail(config, name, f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")


def check_choice(config: Any, name: str, choices: Iterable[Any]) -> None:
    """The field `name` of `config` is one of `choices`.

    Raises:
        ValueError: naming the class, the field and the choices.
    """
    choices = tuple(choices)
    if getattr(config, name) not in choices:
        _fail(config, name, "one of " + ", ".join(map(repr, choices)))
