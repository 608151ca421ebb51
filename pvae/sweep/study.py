"""The study of a sweep (:mod:`pvae.sweep`): Optuna's storage with heartbeats, the trial that
trains a run folder and reports each epoch's objective, and the worker loop."""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvae.config import Config, load_data
from pvae.datasets import DataSplits
from pvae.runs import train_from_config
from pvae.sweep.space import (
    Dimension,
    check_objective,
    check_space,
    import_optuna,
    load_space,
    trial_config,
)
from pvae.training import Callback, TrainingDivergedError

__all__ = [
    "SweepSettings",
    "TrialFailed",
    "experimental",
    "fail_stale",
    "open_study",
    "prepare",
    "run_worker",
    "study_lock",
]


@dataclass
class SweepSettings:
    """What ``pvae sweep`` was asked for.

    Attributes:
        config: The base config file (``None``: the defaults).
        space: The search space file.
        trials: Trials the study should hold, finished (complete or pruned) or running.
        out: The sweep folder (trial folders, summaries, the default SQLite storage).
        storage: Optuna's storage URL (default ``sqlite:///OUT/study.db``).
        study: The study's name (default: the folder's name).
        objective: ``val_elbo`` or ``val_iwae_<k>``, maximized.
        pruner: ``"median"`` or ``"none"``.
        seed: The sampler's seed (``None``: random).
        heartbeat: Seconds between a running trial's heartbeats; a trial silent for
            ``grace`` seconds is marked failed.
        grace: See ``heartbeat`` (default: 2 heartbeats and 5 seconds).
        startup_trials: Trials that finish before the median pruner prunes any.
        overrides: ``--set`` overrides applied to the base config before the trial's values.
    """

    config: str | Path | None
    space: str | Path
    trials: int
    out: Path
    storage: str | None = None
    study: str | None = None
    objective: str = "val_elbo"
    pruner: str = "median"
    seed: int | None = None
    heartbeat: int = 30
    grace: int | None = None
    startup_trials: int = 5
    overrides: list[str] = field(default_factory=list)

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"

    @property
    def study_name(self) -> str:
        return self.study or self.out.resolve().name


def _same_sweep(study: Any, s: SweepSettings, space: Mapping[str, Dimension]) -> None:
    """A study is one sweep: a worker with another objective or space is refused."""
    mine = {
        "objective": s.objective,
        "space": {
            k: [d.kind, d.low, d.high, d.log, d.step, list(d.choices)] for k, d in space.items()
        },
    }
    theirs = study.user_attrs.get("pvae_sweep")
    if theirs is None:
        study.set_user_attr("pvae_sweep", mine)
    elif theirs != mine:
        raise ValueError(
            f"study {s.study_name!r} in {s.storage_url} was started with objective "
            f"{theirs['objective']!r} and space keys {sorted(theirs['space'])}; this worker has "
            f"{mine['objective']!r} and {sorted(mine['space'])} (or other bounds): use another "
            "--study-dir or --study-name for another sweep"
        )


def _announce_stale(study: Any, trial: Any) -> None:
    print(
        f"pvae sweep: trial {trial.number} stopped beating (its worker died): marked FAIL; "
        "another trial takes its place",
        file=sys.stderr,
        flush=True,
    )


@contextlib.contextmanager
def experimental() -> Iterator[None]:
    """Optuna's heartbeats are marked experimental (since Optuna 2.9): we rely on them
    knowingly, so their ``ExperimentalWarning`` is not shown."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", import_optuna().exceptions.ExperimentalWarning)
        yield


def fail_stale(study: Any) -> None:
    """Mark ``FAIL`` the running trials whose heartbeat stopped more than the grace period ago
    (their worker died); the storage's callback says so on stderr."""
    with experimental():
        import_optuna().storages.fail_stale_trials(study)


def _storage(s: SweepSettings) -> Any:
    optuna = import_optuna()
    grace = s.grace if s.grace is not None else 2 * s.heartbeat + 5
    params = inspect.signature(optuna.storages.RDBStorage).parameters
    stale = (  # renamed in Optuna 4
        "heartbeat_stale_trial_callback"
        if "heartbeat_stale_trial_callback" in params
        else "failed_trial_callback"
    )
    url = s.storage_url
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    with experimental():
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine,
            heartbeat_interval=s.heartbeat,
            grace_period=grace,
            **{stale: _announce_stale},
        )


def open_study(s: SweepSettings, space: Mapping[str, Dimension], worker: int = 0) -> Any:
    """Create the study, or join it: Optuna's TPE sampler (seeded ``seed + worker``) and the
    median pruner (or none), maximizing the objective. The default SQLite storage is created
    under a file lock in the sweep folder, so workers that start together do not race."""
    optuna = import_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # pvae sweep prints its own lines
    s.out.mkdir(parents=True, exist_ok=True)
    sampler = optuna.samplers.TPESampler(seed=None if s.seed is None else s.seed + worker)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=s.startup_trials)
        if s.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    with study_lock(s.out / ".study.lock"):
        study = optuna.create_study(
            storage=_storage(s),
            study_name=s.study_name,
            direction="maximize",
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
        _same_sweep(study, s, space)
    return study


class study_lock:
    """An exclusive ``flock`` on ``path`` (nothing where ``fcntl`` is missing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: Any = None

    def __enter__(self) -> None:
        try:
            import fcntl
        except ImportError:
            return
        self.fd = open(self.path, "a")
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            self.fd.close()  # releases the lock


# --------------------------------------------------------------------------- one trial


class TrialFailed(Exception):
    """A trial that cannot count (its config refused, its training diverged, or one trial too
    many started at once by several workers): recorded as ``FAIL`` with a note."""


class _Reporter(Callback):
    """Each epoch's objective to Optuna; ``optuna.TrialPruned`` when the pruner says so."""

    def __init__(self, trial: Any, key: str) -> None:
        self.trial, self.key = trial, key
        self.last: float | None = None

    def on_epoch_end(self, record: dict[str, float]) -> None:
        epoch = int(record["epoch"])
        self.trial.set_user_attr("epochs", epoch)
        value = record.get(self.key)
        if value is None:
            return
        value = float(value)
        if not math.isfinite(value):
            self._prune(f"pruned at epoch {epoch}: {self.key} is not finite")
        self.last = value
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self._prune(
                f"pruned at epoch {epoch}: {self.key} {value:.3f} below the median of the "
                "earlier trials at that epoch"
            )

    def _prune(self, note: str) -> None:
        self.trial.set_user_attr("note", note)
        raise import_optuna().TrialPruned(note)


@dataclass
class _Objective:
    settings: SweepSettings
    space: Mapping[str, Dimension]
    data: DataSplits | None
    parent: str | None
    number: int | None = None

    def __call__(self, trial: Any) -> float:
        s = self.settings
        self.number = trial.number
        params = {k: d.suggest(trial) for k, d in self.space.items()}
        _check_not_surplus(trial, s.trials)
        try:
            cfg = trial_config(s.config, s.overrides, params)
        except (ValueError, TypeError) as err:
            _fail(trial, f"config refused: {err}")
        cfg.log.quiet, cfg.train.progress = True, False
        run_dir = s.out / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        reporter = _Reporter(trial, s.objective)
        tags = {"pvae.sweep": str(s.out.resolve()), "optuna.trial": str(trial.number)}
        try:
            train_from_config(
                cfg,
                run_dir,
                data=self.data,
                callbacks=[reporter],
                mlflow_parent=self.parent,
                mlflow_tags=tags,
            )
        except TrainingDivergedError as err:
            _fail(trial, f"diverged: {err}")
        if reporter.last is None:
            raise ValueError(f"trial {trial.number} recorded no {s.objective} ({run_dir})")
        return reporter.last


def _fail(trial: Any, note: str) -> None:
    trial.set_user_attr("note", note[:500])
    raise TrialFailed(note)


def _check_not_surplus(trial: Any, wanted: int) -> None:
    """Workers that start a trial at the same moment may start one too many: the later one
    (by number) steps back as ``FAIL``, so exactly ``wanted`` trials finish."""
    optuna = import_optuna()
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    busy = (*states, optuna.trial.TrialState.RUNNING)
    numbers = sorted(t.number for t in trial.study.get_trials(deepcopy=False, states=busy))
    if trial.number in numbers and numbers.index(trial.number) >= wanted:
        _fail(trial, f"not needed: {wanted} trials were already running or done when it started")


# --------------------------------------------------------------------------- the workers


def prepare(s: SweepSettings) -> tuple[dict[str, Dimension], Config]:
    """Every check before any work: the trials count, the pruner, the space against the base
    config, the objective; returns the space and the base config."""
    if isinstance(s.trials, bool) or not isinstance(s.trials, int) or s.trials < 1:
        raise ValueError(f"--trials must be a positive integer, got {s.trials!r}")
    if s.pruner not in ("median", "none"):
        raise ValueError(f"--pruner must be 'median' or 'none', got {s.pruner!r}")
    if isinstance(s.heartbeat, bool) or not isinstance(s.heartbeat, int) or s.heartbeat < 1:
        raise ValueError(f"--heartbeat must be a positive number of seconds, got {s.heartbeat!r}")
    import_optuna()
    space = load_space(s.space)
    base = trial_config(s.config, s.overrides, {})
    check_objective(s.objective, base)
    check_space(s.config, s.overrides, space)
    return space, base


def run_worker(
    s: SweepSettings, *, worker: int = 0, say: Callable[[Any], None] | None = None
) -> int:
    """Run trials of the study until it holds ``s.trials`` finished or running ones; returns
    how many this worker ran. ``say`` hears each trial this worker ran (Optuna's
    ``FrozenTrial``), once it ended."""
    optuna = import_optuna()
    space, base = prepare(s)
    study = open_study(s, space, worker)
    data = None if any(k.startswith("data.") for k in space) else load_data(base.data)
    parent = _mlflow_parent(study, s, base) if base.log.mlflow else None
    states = optuna.trial.TrialState
    ran = failed = 0
    while True:
        fail_stale(study)
        busy = (states.COMPLETE, states.PRUNED, states.RUNNING)
        if len(study.get_trials(deepcopy=False, states=busy)) >= s.trials:
            return ran
        objective = _Objective(s, space, data, parent)
        with experimental():  # Optuna's heartbeat thread, inside optimize
            study.optimize(objective, n_trials=1, catch=(TrialFailed,))
        ran += 1
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == objective.number)
        failed += trial.state == states.FAIL
        if say is not None:
            say(trial)
        if failed >= s.trials:
            raise ValueError(
                f"{failed} trials of this worker failed (their notes are in the summary: "
                f"{s.out / 'summary.md'}); stopping rather than failing on"
            )


def _mlflow_parent(study: Any, s: SweepSettings, base: Config) -> str:
    """The sweep's MLflow run, the trials' parent: one per study, made by the first worker."""
    from pvae.training import mlflow as tracking

    with study_lock(s.out / ".study.lock"):
        found = study.user_attrs.get("mlflow_parent_run_id")
        if found is not None:
            return str(found)
        client = tracking.client(base.log.mlflow_tracking_uri)
        exp = tracking.experiment_id(
            client, base.log.mlflow_experiment, base.log.mlflow_tracking_uri
        )
        tags = {"pvae.sweep": str(s.out.resolve()), "optuna.study": s.study_name}
        run_id = client.create_run(exp, tags=tags, run_name=f"sweep {s.study_name}").info.run_id
        client.log_param(run_id, "sweep.objective", s.objective)
        client.log_param(run_id, "sweep.trials", s.trials)
        client.log_param(run_id, "sweep.space", ", ".join(load_space(s.space)))
        study.set_user_attr("mlflow_parent_run_id", run_id)
        return run_id
