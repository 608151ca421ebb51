"""Argument validation shared by the public API: errors name the argument, the expectation and
what was received (never ``assert``: asserts vanish under ``python -O``)."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def positive_int(name: str, value: Any) -> int:
    """Return ``value`` as an ``int`` if it is a positive integer, else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be a positive integer, got {value!r} ({type(value).__name__})"
        )
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def positive_float(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a ``float`` if it is a finite number > 0 (or >= 0), else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not ok or value != value or value in (float("inf"), float("-inf")):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")
    return value


def figure_path(name: str, value: str) -> Path:
    """A figure file to write (PNG, PDF or SVG by its suffix) in a folder that exists, checked
    before the work that draws it; ``name`` is the option (``"--out"``, ``"--plot"``)."""
    path = Path(value)
    if path.is_dir():
        raise ValueError(
            f"{name} must be a file path such as {value}/x.png, got the folder {value!r}"
        )
    if not path.parent.is_dir():
        raise ValueError(f"{name} {value!r}: folder {str(path.parent)!r} does not exist")
    return path


def one_of(name: str, value: Any, valid: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``valid`` names, else raise listing them."""
    valid = list(valid)
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(sorted(valid))}")
    return value


def lookup(kind: str, registry: Mapping[str, Any], name: Any) -> Any:
    """Look ``name`` up in a registry, raising ``ValueError`` that lists the valid names."""
    if not isinstance(name, str):
        raise TypeError(f"{kind} name must be a string, got {name!r} ({type(name).__name__})")
    one_of(kind, name, registry)
    return registry[name]


def check_data_fits(module: Any, x: Any, name: str = "data") -> None:
    """Raise ``ValueError`` if ``x`` lies outside the support of ``module``'s likelihood (its
    ``likelihood.check_data``, e.g. [0, 1] for a Bernoulli; it may also warn). The one check
    :func:`pvae.fit` and every estimator apply to data, so that an estimator never reports a
    number for data the model cannot have generated."""
    check = getattr(getattr(module, "likelihood", None), "check_data", None)
    if callable(check):
        check(x, name=name)
