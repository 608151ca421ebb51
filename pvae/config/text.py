"""TOML text in and out for :mod:`pvae.config`: ``--set key=value`` overrides applied to nested
dicts, and nested dicts written as TOML (``config.toml`` of a run)."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import tomllib

__all__ = ["apply_overrides", "dumps_toml"]


def _parse_value(text: str) -> Any:
    """A ``--set`` value as TOML (numbers, booleans, lists, quoted strings), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(d: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides to a nested dict (a copy is returned)."""
    d = copy.deepcopy(d)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value (e.g. train.epochs=5), got {item!r}")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) < 2 or not all(parts):
            raise ValueError(f"--set key must be section.key (e.g. train.lr), got {key!r}")
        node = d
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {p!r} is not a table")
        node[parts[-1]] = _parse_value(text.strip())
    return d


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        if isinstance(v, float) and not math.isfinite(v):
            return {math.inf: "inf", -math.inf: "-inf"}.get(v, "nan")
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps_toml(d: Mapping[str, Any], prefix: str = "") -> str:
    """Write nested dicts of scalars and lists as TOML (``None`` values are omitted)."""
    lines = [
        f"{k} = {_toml_value(v)}"
        for k, v in d.items()
        if not isinstance(v, Mapping) and v is not None
    ]
    out = []
    if lines:
        out.append((f"[{prefix}]\n" if prefix else "") + "\n".join(lines) + "\n")
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.append(dumps_toml(v, f"{prefix}.{k}" if prefix else k))
    return "\n".join(out)
