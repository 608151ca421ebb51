"""What a resumed run may change, and how a change is found, refused or recorded.

A resume continues the *same* model on the *same* data: its checkpoint's weights mean something
only under the configuration they were trained with. So ``pvae train --resume RUN`` compares
the configuration it is asked to continue with against the one the checkpoint records, by
meaning (:func:`canonical`: defaults filled in, ``latent_dim = 8`` and ``[8]`` the same, a
component's default keyword arguments written out or not), and

* lets through the keys of :data:`RESUMABLE`: how long and how fast to train, where, and what to
  evaluate and log;
* refuses every other change, naming each key with its recorded and its new value, unless the
  caller allows that key explicitly (``--allow-change KEY``). An allowed change is recorded in
  the run: the checkpoint's ``changes`` and comments at the top of ``config.toml``.

>>> old = {"model": {"latent_dim": 8}, "train": {"epochs": 5}}
>>> new = {"model": {"latent_dim": [8]}, "train": {"epochs": 10}}
>>> config_changes(old, new)
{'train.epochs': (5, 10)}
>>> resumable("train.epochs"), resumable("model.likelihood.name")
(True, False)
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pvae.checkpoint import load_checkpoint
from pvae.config import Config
from pvae.files import finite
from pvae.guides import GUIDES
from pvae.likelihoods import LIKELIHOODS
from pvae.nets import DECODERS, ENCODERS
from pvae.priors import PRIORS
from pvae.rundir import CHECKPOINT, read_run_config

__all__ = [
    "RESUMABLE",
    "canonical",
    "check_resume",
    "config_changes",
    "describe",
    "record_lines",
    "resumable",
]

RESUMABLE: Mapping[str, str] = {
    "train.epochs": "the last epoch: continue for longer (or stop sooner)",
    "train.lr": "the learning rate, from the next step on",
    "train.clip_norm": "gradient clipping, from the next step on",
    "train.batch_size": "the minibatch size, from the next epoch on",
    "train.device": "where the run trains (a checkpoint moves between CPU and GPU)",
    "train.compile": "torch.compile of the same loss",
    "train.fast": "the fused fast path, which computes the same loss as Pyro's",
    "train.vectorize_particles": "the same samples, drawn in one batched pass or one by one",
    "train.progress": "the progress bar",
    "data.root": "where torchvision's copy of the data lies",
    "data.download": "whether torchvision may download it",
    "eval": "every [eval] key: what validation and pvae evaluate compute",
    "log": "every [log] key: what the run reports",
}
"""The keys (or whole sections) a resume may change freely, each with what it governs. Every
other key (all of ``[model]``; ``[data]``'s name, path, binarization, split fractions and split
seed; the objective, its particles and estimator, β, warm-up, free bits, the optimizer, the
training seed, labels) changes what the checkpoint's weights mean or which numbers the run
draws, and is refused unless allowed explicitly."""

_POSITIONAL = {"in_shape", "out_shape", "out_features", "latent_dim", "net"}
_COMPONENTS = {
    "prior": PRIORS,
    "likelihood": LIKELIHOODS,
    "encoder": ENCODERS,
    "decoder": DECODERS,
    "guide": GUIDES,
}


def resumable(key: str) -> bool:
    """Whether a resume may change the dotted ``key`` without being allowed to."""
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE)


def canonical(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` flattened to dotted keys, with its meaning spelled one way: read through
    :class:`~pvae.config.Config` (defaults filled in; a dict that is not a valid config is taken
    as it is), each component's keyword arguments completed with its constructor's defaults,
    a one-entry ``latent_dim`` as an integer, a hierarchical model's default networks written
    out, tuples as lists, and unset optional keys as their defaults."""
    try:
        d = Config.from_dict(config).to_dict()
    except (ValueError, TypeError):
        d = _plain(config)
    model = d.get("model")
    if isinstance(model, dict) and "class" not in model:
        _canonical_model(model)
    train = d.get("train")
    if isinstance(train, dict) and train.get("labels") is None:
        train["labels"] = False
    return dict(_flatten(d))


def _canonical_model(model: dict[str, Any]) -> None:
    dims = model.get("latent_dim")
    if isinstance(dims, list) and len(dims) == 1:
        model["latent_dim"] = dims = dims[0]
    for kind, registry in _COMPONENTS.items():
        table = model.get(kind)
        if isinstance(table, dict) and table.get("name") in registry:
            model[kind] = {**_defaults(registry[table["name"]]), **table}
    if isinstance(dims, list) and len(dims) > 1:  # hierarchical: its networks' defaults
        model["activation"] = model.get("activation") or "tanh"
        if model.get("hidden") is None:
            model["hidden"] = [[2 * d, 2 * d] for d in dims]


def _defaults(fn: Any) -> dict[str, Any]:
    """The keyword arguments of ``fn`` that have defaults (shapes aside), as plain data."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {
        p.name: _plain(p.default)
        for p in params
        if p.default is not p.empty and p.name not in _POSITIONAL
    }


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def _flatten(d: Mapping[str, Any], prefix: str = ""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            yield from _flatten(v, key + ".")
        else:
            yield key, v


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Each dotted key whose canonical value differs between ``old`` and ``new``, mapped to
    ``(old value, new value)`` (``None`` where a key is absent), in sorted order. A table whose
    ``name`` changed (another component) is one change, of its ``name``: its other keys are the
    keyword arguments of another class."""
    a, b = canonical(old), canonical(new)
    out = {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}
    switched = [k[: -len("name")] for k in out if k.endswith(".name") and k.count(".") >= 2]
    return {
        k: v for k, v in out.items() if k.endswith(".name") or not k.startswith(tuple(switched))
    }


def describe(changes: Mapping[str, tuple[Any, Any]]) -> str:
    """``key: old → new`` for each change, separated by ``; ``."""
    return "; ".join(f"{k}: {_show(o)} → {_show(n)}" for k, (o, n) in changes.items())


def _show(v: Any) -> str:
    return json.dumps(finite(v))


def check_resume(
    run_dir: str | Path, config: Mapping[str, Any], allow: Sequence[str] = ()
) -> dict[str, tuple[Any, Any]]:
    """Refuse to resume the run in ``run_dir`` with ``config`` if that changes a key outside
    :data:`RESUMABLE` that ``allow`` does not name (a key, or a table such as ``model`` or
    ``model.likelihood``, allows every key under it).

    The recorded configuration is the checkpoint's (what its weights were trained with), else
    the run's ``config.toml``.

    Returns:
        The changes ``allow`` let through (each key: ``(old, new)``).

    Raises:
        ValueError: a refused change (each key named, with its recorded and its new value), or
            an ``allow`` entry that names no key of the configuration.
        CheckpointError: the checkpoint is missing or unreadable.
    """
    run = Path(run_dir)
    recorded = load_checkpoint(run / CHECKPOINT).get("config")
    if recorded is None:
        recorded = read_run_config(run).to_dict()
    known = canonical(config).keys() | canonical(recorded).keys()
    for a in allow:
        if not isinstance(a, str) or not any(k == a or k.startswith(a + ".") for k in known):
            raise ValueError(
                f"--allow-change {a!r} names no key of the configuration (a key such as "
                "train.objective or model.likelihood.name, or a table such as model)"
            )
    guarded = {k: v for k, v in config_changes(recorded, config).items() if not resumable(k)}
    refused = {
        k: v for k, v in guarded.items() if not any(k == a or k.startswith(a + ".") for a in allow)
    }
    if refused:
        flags = " ".join(f"--allow-change {k}" for k in refused)
        raise ValueError(
            f"--resume {str(run)!r}: a resumed run continues the same model on the same data, "
            f"but this changes (recorded → new) {describe(refused)}. Train a new run (--out) "
            f"for another configuration, or allow the change deliberately, recorded in the "
            f"run: {flags}"
        )
    return {k: v for k, v in guarded.items() if k not in refused}


def note(run_dir: str | Path, allowed: Mapping[str, tuple[Any, Any]]) -> None:
    """Say on stderr which guarded changes a resume makes (allowed explicitly)."""
    if allowed:
        print(
            f"pvae: note: resuming {str(run_dir)!r} with {describe(allowed)} (allowed by "
            "--allow-change; recorded in checkpoint.pt and config.toml)",
            file=sys.stderr,
        )


def record_lines(changes: Sequence[Mapping[str, Any]]) -> list[str]:
    """TOML comment lines telling a run's recorded changes (the checkpoint's ``changes``:
    ``{"epoch": e, "changes": {key: [old, new]}}`` for each resume that changed something)."""
    if not changes:
        return []
    lines = ["# Changed when the run was resumed (also recorded in checkpoint.pt):"]
    for c in changes:
        what = {k: tuple(v) for k, v in c.get("changes", {}).items()}
        lines.append(f"# after epoch {c.get('epoch')}: {describe(what)}")
    return lines
