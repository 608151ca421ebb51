"""MLflow tracking of a run (``[log] mlflow = true``): :class:`MLflowLogger`, a training
callback, and :func:`log_evaluation`, which adds a stored evaluation to the run's MLflow run.

One pvae run folder is one MLflow run, found again by its tag ``pvae.run_dir`` (the folder's
absolute path): a resumed run continues it, ``pvae evaluate`` (and ``pvae compare``, when it
evaluates) adds the evaluation to it. What is logged:

* params: the flattened configuration (``train.lr``, ``model.prior.name``...), values as text;
  a resume logs only the keys its first process had not (MLflow keeps a param's first value;
  what a resume changed is in ``config.toml``, logged as an artifact);
* metrics: every numeric entry of every epoch's record at step ``epoch`` (``train_elbo``,
  ``val_elbo``, ``val_iwae_500``, ``epoch_seconds``...); values that are not finite are left
  out, as ``metrics.csv`` leaves them empty;
* artifacts, when training ends: the figures of the run folder (``figures/``), its
  ``config.toml``, ``metrics.json`` and ``metrics.csv``;
* the evaluation, by :func:`log_evaluation`: the report's numbers as ``<split>_elbo``,
  ``<split>_log_px``... at the step of the evaluated epoch;
* tags: ``pvae.run_dir``; for a sweep's trial, ``mlflow.parentRunId`` (a nested run of the
  sweep's run) and the trial's number.

The tracking store is ``log.mlflow_tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else
``sqlite:///mlflow.db`` in the current folder (MLflow 3 refuses its old ``./mlruns`` file
store by default); an experiment created here in a SQLite store keeps its artifacts beside the
database, in ``mlartifacts/``. MLflow is an optional dependency:
``pip install pyro-vae-toolkit[mlflow]``.
"""

from __future__ import annotations

import importlib
import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pvae.options import LogOptions
from pvae.training.callbacks import Callback, TrainInfo

__all__ = [
    "DEFAULT_TRACKING_URI",
    "RUN_DIR_TAG",
    "MLflowLogger",
    "experiment_id",
    "find_run",
    "import_mlflow",
    "log_evaluation",
    "tracking_uri",
]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
RUN_DIR_TAG = "pvae.run_dir"
INSTALL = "pip install pyro-vae-toolkit[mlflow]"
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
RUN_FILES = ("config.toml", "metrics.json", "metrics.csv")
_PARAM_LENGTH = 6000  # MLflow's limit on a param's value


def import_mlflow() -> Any:
    """The ``mlflow`` module, imported now, so that a missing package is reported before any
    run folder is written.

    Raises:
        ModuleNotFoundError: ``mlflow`` is not installed (the message gives the pip command),
            or it is installed but fails to import (the error is named).
    """
    try:
        return importlib.import_module("mlflow")
    except ModuleNotFoundError as err:  # also sys.modules["mlflow"] = None
        if err.name != "mlflow":  # one of MLflow's own dependencies is missing
            raise _broken(err) from err
        raise ModuleNotFoundError(
            f"log.mlflow = true needs MLflow, which is not installed: {INSTALL} "
            "(or turn it off: log.mlflow = false)",
            name="mlflow",
        ) from None
    except Exception as err:
        raise _broken(err) from err


def _broken(err: BaseException) -> ModuleNotFoundError:
    return ModuleNotFoundError(
        f"log.mlflow = true needs MLflow, which is installed but fails to import "
        f"({type(err).__name__}: {err}); repair it ({INSTALL} --force-reinstall) or turn it off "
        "(log.mlflow = false)",
        name="mlflow",
    )


def tracking_uri(uri: str | None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else :data:`DEFAULT_TRACKING_URI`."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _artifact_location(uri: str) -> str | None:
    """For a SQLite store, ``mlartifacts/`` beside the database (MLflow's own default is
    ``./mlruns`` in whatever folder the process runs in); ``None`` (MLflow's default) else."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri == prefix + ":memory:":
        return None
    db = Path(uri[len(prefix) :]).resolve()
    return (db.parent / "mlartifacts").as_uri()


def client(uri: str | None) -> Any:
    """An ``MlflowClient`` of the store :func:`tracking_uri` resolves ``uri`` to."""
    return import_mlflow().MlflowClient(tracking_uri(uri))


def experiment_id(mlflow_client: Any, name: str, uri: str | None = None) -> str:
    """The id of the experiment ``name`` in the client's store, created if missing (another
    process creating it at the same moment is not an error); ``uri`` is the store's
    (:func:`tracking_uri`), which places a new experiment's artifacts."""
    mlflow = import_mlflow()
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return mlflow_client.create_experiment(
            name, artifact_location=_artifact_location(tracking_uri(uri))
        )
    except mlflow.exceptions.MlflowException:
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def find_run(mlflow_client: Any, experiment: str, run_dir: str | Path) -> str | None:
    """The id of the latest MLflow run of ``experiment`` tagged with the run folder
    ``run_dir`` (:data:`RUN_DIR_TAG`), or ``None``."""
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        return None
    folder = str(Path(run_dir).resolve()).replace("'", "\\'")
    runs = mlflow_client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{RUN_DIR_TAG}` = '{folder}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested configuration as MLflow params: dotted keys, values as text (lists as JSON-like
    text, as TOML writes them), cut to MLflow's limit."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{name}."))
        elif value is not None:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            out[name] = text[:_PARAM_LENGTH]
    return out


def _scalars(record: Mapping[str, Any], skip: Iterable[str] = ("epoch",)) -> dict[str, float]:
    """The finite numbers of a record (booleans, text and ``epoch`` itself left out)."""
    return {
        k: float(v)
        for k, v in record.items()
        if k not in skip
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(float(v))
    }


def _log_metrics(mlflow_client: Any, run_id: str, values: Mapping[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, step) for k, v in values.items()]
    for i in range(0, len(metrics), 1000):  # MLflow's batch limit
        mlflow_client.log_batch(run_id, metrics=metrics[i : i + 1000])


class MLflowLogger(Callback):
    """Log a run to MLflow: params, per-epoch metrics, figures and files, tags (see
    :mod:`pvae.training.mlflow`). On the main process only; MLflow is imported when the logger
    is made, so a missing package fails before a run folder is written.

    Args:
        uri: The tracking store (:func:`tracking_uri`: ``None`` is ``$MLFLOW_TRACKING_URI`` or
            ``sqlite:///mlflow.db``).
        experiment: The experiment's name (created if missing).
        run_dir: The run folder to tag and take artifacts from (default: ``fit``'s).
        parent_run_id: Make the run a nested run of this one (a sweep's run).
        run_name: The MLflow run's name (default: the run folder's name).
        tags: More tags.

    Attributes:
        run_id: The MLflow run's id, once training has begun (``None`` before, and on other
            processes than the main one).
    """

    def __init__(
        self,
        uri: str | None = None,
        experiment: str = "pvae",
        *,
        run_dir: str | Path | None = None,
        parent_run_id: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        import_mlflow()
        if not isinstance(experiment, str) or not experiment:
            raise TypeError(f"experiment must be a non-empty string, got {experiment!r}")
        self.uri = tracking_uri(uri)
        self.experiment = experiment
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.parent_run_id = parent_run_id
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.run_id: str | None = None
        self.client: Any = None
        self.epochs = 0

    def on_train_begin(self, info: TrainInfo) -> None:
        if not info["main"]:
            return
        self.client = client(self.uri)
        self.epochs = info["epochs"]
        folder = self.run_dir or info["run_dir"]
        self.run_dir = None if folder is None else Path(folder).resolve()
        exp = experiment_id(self.client, self.experiment, self.uri)
        previous = None
        if info["resumed"] and self.run_dir is not None:
            previous = find_run(self.client, self.experiment, self.run_dir)
        if previous is not None:
            self.run_id = previous
            self.client.update_run(previous, status="RUNNING")
        else:
            tags = dict(self.tags)
            if self.run_dir is not None:
                tags[RUN_DIR_TAG] = str(self.run_dir)
            if self.parent_run_id is not None:
                tags["mlflow.parentRunId"] = self.parent_run_id
            name = self.run_name or (self.run_dir.name if self.run_dir is not None else None)
            self.run_id = self.client.create_run(exp, tags=tags, run_name=name).info.run_id
        self._log_params(info["config"] or {})

    def _log_params(self, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        have = self.client.get_run(self.run_id).data.params
        params = [Param(k, v) for k, v in flat_params(config).items() if k not in have]
        for i in range(0, len(params), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def on_epoch_end(self, record: dict[str, float]) -> None:
        if self.run_id is None:
            return
        _log_metrics(self.client, self.run_id, _scalars(record), int(record["epoch"]))

    def on_train_end(self, history: list[dict[str, float]]) -> None:
        if self.run_id is None:
            return
        if self.run_dir is not None:
            self._log_files(self.run_dir)
        done = bool(history) and int(history[-1]["epoch"]) >= self.epochs
        self.client.set_terminated(self.run_id, "FINISHED" if done else "KILLED")

    def _log_files(self, folder: Path) -> None:
        for path in sorted(folder.iterdir()):
            if path.suffix in FIGURE_SUFFIXES and path.is_file():
                self.client.log_artifact(self.run_id, str(path), "figures")
            elif path.name in RUN_FILES and path.is_file():
                self.client.log_artifact(self.run_id, str(path))


def log_evaluation(log: LogOptions, run_dir: str | Path, report: Mapping[str, Any]) -> str:
    """Add a stored evaluation (:func:`pvae.runs.evaluate_run`'s ``report``) to the MLflow run
    of ``run_dir``: its numbers as ``<split>_<name>`` metrics (``test_elbo``, ``test_log_px``,
    ``test_log_px_se``, ``test_bits_per_dim``...) at the step of the evaluated epoch. A run
    folder without an MLflow run (trained before ``log.mlflow`` was turned on) gets one.

    Returns:
        The MLflow run's id.
    """
    mlflow_client = client(log.mlflow_tracking_uri)
    run_id = find_run(mlflow_client, log.mlflow_experiment, run_dir)
    if run_id is None:
        exp = experiment_id(mlflow_client, log.mlflow_experiment, log.mlflow_tracking_uri)
        folder = Path(run_dir).resolve()
        tags = {RUN_DIR_TAG: str(folder)}
        run_id = mlflow_client.create_run(exp, tags=tags, run_name=folder.name).info.run_id
        mlflow_client.set_terminated(run_id, "FINISHED")
    split = str(report["split"])
    values = _scalars(report, skip=("epoch", "n"))
    named = {f"{split}_{k}": v for k, v in values.items()}
    _log_metrics(mlflow_client, run_id, named, int(report.get("epoch") or 0))
    return run_id
