"""Strict JSON for what pvae prints and stores: JSON has no NaN or infinity."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["dumps", "finite"]


def finite(v: Any) -> Any:
    """``v`` with non-finite floats, at any depth, as ``None`` and paths as strings."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, Mapping):
        return {str(k): finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [finite(x) for x in v]
    return v


def dumps(obj: Any) -> str:
    """One line of strict JSON (:func:`finite` first, so that nothing is refused)."""
    return json.dumps(finite(obj), allow_nan=False)
