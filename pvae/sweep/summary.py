"""The summary of a sweep (:mod:`pvae.sweep`): a table of its trials written as CSV and
Markdown, the best trial's config as ``best.toml``, and the sweep's MLflow run."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from pvae.config import dumps_toml
from pvae.files import atomic_write_bytes
from pvae.sweep.space import import_optuna, load_space, trial_config
from pvae.sweep.study import SweepSettings, fail_stale, open_study

__all__ = ["BEST", "SUMMARY_CSV", "SUMMARY_MD", "log_summary", "summarize", "trial_line"]

SUMMARY_CSV, SUMMARY_MD, BEST = "summary.csv", "summary.md", "best.toml"


# --------------------------------------------------------------------------- the summary

COLUMNS = ("trial", "state", "objective", "epochs", "seconds", "note")


def _value(trial: Any) -> float | None:
    """A complete trial's value; a pruned one's last reported value."""
    if trial.value is not None:
        return float(trial.value)
    if trial.intermediate_values:
        return float(trial.intermediate_values[max(trial.intermediate_values)])
    return None


def _row(trial: Any, keys: Sequence[str]) -> dict[str, Any]:
    seconds = None
    if trial.datetime_start is not None and trial.datetime_complete is not None:
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    note = trial.user_attrs.get("note")
    if trial.state.name == "FAIL" and note is None:
        note = "its worker stopped (killed, or no heartbeat)"
    return {
        "trial": trial.number,
        "state": trial.state.name,
        **{k: trial.params.get(k) for k in keys},
        "objective": _value(trial),
        "epochs": trial.user_attrs.get("epochs"),
        "seconds": seconds,
        "note": note or "",
    }


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.3f}".rstrip("0").rstrip(".")
    return str(v)


def trial_line(trial: Any, objective: str) -> str:
    """One line on a trial that ended: its state, value, epochs, params and note."""
    r = _row(trial, list(trial.params))
    params = ", ".join(f"{k}={_cell(v)}" for k, v in trial.params.items())
    what = f"{objective} {_cell(r['objective'])}" if r["objective"] is not None else "no value"
    tail = f" ({r['note']})" if r["note"] else ""
    epochs = f"{r['epochs']} epoch{'' if r['epochs'] == 1 else 's'}"
    return f"trial {trial.number} {r['state']}: {what} after {epochs}, {params}{tail}"


def summarize(s: SweepSettings) -> str:
    """Write ``summary.csv``, ``summary.md`` and ``best.toml`` into the sweep folder from the
    study as it is now; returns the Markdown table and a line of counts."""
    optuna = import_optuna()
    space = load_space(s.space)
    study = open_study(s, space)
    fail_stale(study)
    keys = list(space)
    trials = study.get_trials(deepcopy=False)
    rows = [_row(t, keys) for t in trials]
    header = ["trial", "state", *keys, "objective", "epochs", "seconds", "note"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: "" if r[k] is None else r[k] for k in header} for r in rows])
    atomic_write_bytes(s.out / SUMMARY_CSV, buf.getvalue().encode())
    counts = {st: sum(r["state"] == st for r in rows) for st in ("COMPLETE", "PRUNED", "FAIL")}
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_cell(r[k]) for k in header) + " |" for r in rows),
        "",
        f"{len(rows)} trials: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, "
        f"{counts['FAIL']} failed (objective: {s.objective}, maximized)",
    ]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = max(complete, key=lambda t: t.value)
        lines.append(_write_best(s, best))
    text = "\n".join(lines) + "\n"
    atomic_write_bytes(s.out / SUMMARY_MD, text.encode())
    return text


def _write_best(s: SweepSettings, best: Any) -> str:
    cfg = trial_config(s.config, s.overrides, best.params)
    head = (
        f"# The best trial of sweep {s.study_name!r}: trial {best.number} "
        f"({s.objective} {best.value:.4f}), {best.user_attrs.get('run_dir')}\n"
        f"# pvae train --config {s.out / BEST}\n\n"
    )
    atomic_write_bytes(s.out / BEST, (head + dumps_toml(cfg.to_dict())).encode())
    return f"best: trial {best.number}, {s.objective} {best.value:.4f}; its config: {s.out / BEST}"


def log_summary(s: SweepSettings) -> None:
    """The summary files and the best value into the sweep's MLflow run (``log.mlflow``)."""
    base = trial_config(s.config, s.overrides, {})
    if not base.log.mlflow:
        return
    from pvae.training import mlflow as tracking

    study = open_study(s, load_space(s.space))
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if run_id is None:
        return
    client = tracking.client(base.log.mlflow_tracking_uri)
    for name in (SUMMARY_CSV, SUMMARY_MD, BEST):
        if (s.out / name).is_file():
            client.log_artifact(run_id, str(s.out / name))
    complete = [t for t in study.get_trials(deepcopy=False) if t.value is not None]
    if complete:
        client.log_metric(run_id, f"best_{s.objective}", max(t.value for t in complete))
    client.set_terminated(run_id, "FINISHED")
