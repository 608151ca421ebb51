"""The search space of a sweep (:mod:`pvae.sweep`): distributions over config keys read from a
TOML file, checked against the base config before the first trial, and a trial's config."""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from pvae.config import Config, load_config

__all__ = [
    "INSTALL",
    "KINDS",
    "OBJECTIVE_HELP",
    "Dimension",
    "check_objective",
    "check_space",
    "import_optuna",
    "load_space",
    "trial_config",
]

INSTALL = "pip install pyro-vae-toolkit[sweep]"
KINDS = ("float", "int", "categorical")
OBJECTIVE_HELP = "val_elbo or val_iwae_K (K one of eval.curve_ks)"


def import_optuna() -> Any:
    """The ``optuna`` module, or ``ModuleNotFoundError`` giving the pip command."""
    try:
        return importlib.import_module("optuna")
    except ModuleNotFoundError as err:  # also sys.modules["optuna"] = None
        if err.name != "optuna":
            raise
        raise ModuleNotFoundError(
            f"pvae sweep needs Optuna, which is not installed: {INSTALL}", name="optuna"
        ) from None


# --------------------------------------------------------------------------- the space


@dataclass(frozen=True)
class Dimension:
    """One key of the search space and its distribution.

    Attributes:
        key: The config key, dotted (``train.lr``).
        kind: ``"float"``, ``"int"`` or ``"categorical"``.
        low: The smallest value (numbers).
        high: The largest value (numbers).
        log: Draw uniformly in log space (numbers; ``low`` > 0).
        step: The spacing of the values (numbers; ``None``: continuous floats, 1 for ints).
        choices: The values of a categorical key (strings, numbers or booleans).
    """

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """Draw this key's value for an Optuna ``trial``."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            step = 1 if self.step is None else int(self.step)
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), step=step, log=self.log
            )
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def examples(self) -> list[Any]:
        """The values that bound what this dimension can draw (checked against the config)."""
        if self.kind == "categorical":
            return list(self.choices)
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]


def _dimension(where: str, key: str, table: Mapping[str, Any]) -> Dimension:
    kind = table.get("type")
    if kind not in KINDS:
        raise ValueError(f"{where}: [{key!r}] type must be one of {list(KINDS)}, got {kind!r}")
    allowed = (
        {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log", "step"}
    )
    extra = sorted(set(table) - allowed)
    if extra:
        raise ValueError(
            f"{where}: [{key!r}] of type {kind!r} takes {sorted(allowed)}, got {extra}"
        )
    if kind == "categorical":
        choices = table.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError(
                f"{where}: [{key!r}] choices must be a non-empty list, got {choices!r}"
            )
        if any(isinstance(c, dict | list) for c in choices):
            raise ValueError(f"{where}: [{key!r}] choices must be strings, numbers or booleans")
        return Dimension(key, kind, choices=tuple(choices))
    return _numeric(where, key, kind, table)


def _numeric(where: str, key: str, kind: str, table: Mapping[str, Any]) -> Dimension:
    want = int if kind == "int" else int | float
    low, high, log, step = (table.get(k) for k in ("low", "high", "log", "step"))
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, want) or not math.isfinite(v):
            raise ValueError(f"{where}: [{key!r}] {name} must be a finite {kind}, got {v!r}")
    if not low < high:
        raise ValueError(f"{where}: [{key!r}] low must be below high, got {low} and {high}")
    if log is not None and not isinstance(log, bool):
        raise ValueError(f"{where}: [{key!r}] log must be true or false, got {log!r}")
    if log and low <= 0:
        raise ValueError(f"{where}: [{key!r}] log = true needs low > 0, got {low}")
    if step is not None and (isinstance(step, bool) or not isinstance(step, want) or step <= 0):
        raise ValueError(f"{where}: [{key!r}] step must be a positive {kind}, got {step!r}")
    if step is not None and log:
        raise ValueError(f"{where}: [{key!r}] takes log or step, not both")
    return Dimension(key, kind, float(low), float(high), bool(log), step)


def load_space(path: str | Path) -> dict[str, Dimension]:
    """Read a search space (see :mod:`pvae.sweep`): config keys, quoted and dotted
    (``["train.lr"]``) or as nested tables (``[train.lr]``), each a table with a ``type``.

    Raises:
        ValueError: the file is missing or not TOML, a key has no ``type``, or a distribution
            is malformed (the file and key are named).
    """
    where = f"space file {str(path)!r}"
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{where} does not exist")
    try:
        d = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{where} is not valid TOML: {err}") from err
    out: dict[str, Dimension] = {}

    def walk(table: Mapping[str, Any], prefix: str) -> None:
        for key, value in table.items():
            name = f"{prefix}{key}"
            if not isinstance(value, Mapping):
                raise ValueError(
                    f"{where}: {name!r} must be a table with a type (float, int, categorical), "
                    f"got {value!r}"
                )
            if "type" in value:
                out[name] = _dimension(where, name, value)
            else:
                walk(value, f"{name}.")

    walk(d, "")
    if not out:
        raise ValueError(f"{where} defines no key to search over")
    return out


def _literal(value: Any) -> str:
    """A value as ``--set`` reads it (TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def trial_config(
    base: str | Path | None, overrides: Sequence[str], params: Mapping[str, Any]
) -> Config:
    """The base config (file and ``--set`` overrides) with a trial's values set."""
    sets = [*overrides, *(f"{k}={_literal(v)}" for k, v in params.items())]
    return load_config(base, sets)


def check_space(
    base: str | Path | None, overrides: Sequence[str], space: Mapping[str, Dimension]
) -> None:
    """Every value a dimension can take at its bounds (and every choice) makes a valid config
    with the base: checked before the first trial, so a typo fails now, not at trial 7."""
    for dim in space.values():
        for value in dim.examples():
            try:
                trial_config(base, overrides, {dim.key: value})
            except (ValueError, TypeError) as err:
                raise ValueError(f"search space key {dim.key!r} = {value!r}: {err}") from err


def check_objective(objective: str, cfg: Config) -> None:
    """``val_elbo``, or ``val_iwae_<k>`` with ``k`` in ``eval.curve_ks``; a validation split."""
    m = re.fullmatch(r"val_iwae_(\d+)", objective)
    if objective != "val_elbo" and m is None:
        raise ValueError(f"--objective must be {OBJECTIVE_HELP}, got {objective!r}")
    if m is not None and int(m.group(1)) not in cfg.eval.curve_ks:
        raise ValueError(
            f"--objective {objective} needs {m.group(1)} in eval.curve_ks, which is "
            f"{list(cfg.eval.curve_ks)}; add it (--set eval.curve_ks=[{m.group(1)}])"
        )
    if cfg.data.val_fraction == 0:
        raise ValueError(
            f"--objective {objective} is measured on the validation split, and "
            "data.val_fraction = 0 leaves none; set data.val_fraction > 0"
        )
