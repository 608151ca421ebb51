"""MLflow tracking ([log] mlflow = true): a run trained on the digits, read back from a real
local SQLite store with MlflowClient: the flattened config as params, one metric point per
epoch, the figures and files as artifacts, the run folder as a tag; a resume continues the same
MLflow run; a stored evaluation is added to it; without the package, a clear message."""

import json
import sys

import pytest
import torch

import pvae
from pvae.cli import main
from pvae.config import Config, load_data
from pvae.runs import evaluate_run, read_run_config
from pvae.training.callbacks import run_loggers
from pvae.training.mlflow import RUN_DIR_TAG, find_run, flat_params

TINY = {
    "model": {
        "latent_dim": 2,
        "encoder": {"name": "mlp", "hidden": [16]},
        "decoder": {"name": "mlp", "hidden": [16]},
    },
    "train": {"epochs": 2, "progress": False, "device": "cpu"},
    "log": {"quiet": True, "mlflow": True, "mlflow_experiment": "tiny"},
    "eval": {"k": 10, "num_samples": 2, "curve_ks": [5], "curve_every": 1, "curve_subset": 32},
}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A run of 2 epochs, logged to a SQLite store in a temporary folder, then resumed to 3."""
    mlflow = pytest.importorskip("mlflow")  # the dev extra installs it; CI runs these
    root = tmp_path_factory.mktemp("mlflow")
    d = json.loads(json.dumps(TINY))
    d["log"]["mlflow_tracking_uri"] = f"sqlite:///{root / 'mlflow.db'}"
    cfg = Config.from_dict(d)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = load_data(cfg.data)
        run = root / "run"
        pvae.train_from_config(cfg, run, data=data)
        client = mlflow.MlflowClient(cfg.log.mlflow_tracking_uri)
        first = find_run(client, "tiny", run)
        cfg.train.epochs = 3
        pvae.train_from_config(cfg, run, data=data, resume=True)
        report = evaluate_run(run, "test").report
    finally:
        torch.set_num_threads(threads)
    return {
        "root": root,
        "run": run,
        "cfg": cfg,
        "client": client,
        "first": first,
        "report": report,
    }


def test_params_tags_metrics_and_artifacts_read_back(tracked):
    client, run = tracked["client"], tracked["run"]
    exp = client.get_experiment_by_name("tiny")
    (found,) = client.search_runs([exp.experiment_id])  # the resume continued the same run
    assert found.info.run_id == tracked["first"]
    assert found.info.status == "FINISHED"
    assert found.data.tags[RUN_DIR_TAG] == str(run.resolve())
    written = read_run_config(run).to_dict()
    params = flat_params(written)
    # the first process logged the config; MLflow keeps a param's first value (epochs was 2)
    assert found.data.params == {**params, "train.epochs": "2"}
    assert params["train.lr"] == str(tracked["cfg"].train.lr) and params["log.mlflow"] == "true"
    history = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for key in ("train_elbo", "val_elbo", "val_iwae_5", "epoch_seconds"):
        points = client.get_metric_history(found.info.run_id, key)
        assert [p.step for p in points] == [1, 2, 3], key  # one point per epoch
        assert [p.value for p in points] == pytest.approx([h[key] for h in history], rel=1e-12)
    top = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"config.toml", "metrics.json", "metrics.csv", "figures"} <= top
    figures = {a.path for a in client.list_artifacts(found.info.run_id, "figures")}
    assert figures == {f"figures/{p.name}" for p in run.glob("*.png")}
    assert "figures/curves.png" in figures
    # artifacts lie beside the SQLite database, not in the current folder
    location = client.get_experiment_by_name("tiny").artifact_location
    assert location == (tracked["root"] / "mlartifacts").as_uri()


def test_the_stored_evaluation_is_logged(tracked):
    client, report = tracked["client"], tracked["report"]
    metrics = client.get_run(tracked["first"]).data.metrics
    assert metrics["test_elbo"] == pytest.approx(report["elbo"], rel=1e-12)
    assert metrics["test_log_px"] == pytest.approx(report["log_px"], rel=1e-12)
    (point,) = client.get_metric_history(tracked["first"], "test_log_px")
    assert point.step == 3 == report["epoch"]


def test_without_mlflow_a_clear_message_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    cfg = Config.from_dict(TINY)
    with pytest.raises(ModuleNotFoundError, match=r"pip install pyro-vae-toolkit\[mlflow\]"):
        run_loggers(cfg.log, tmp_path / "r")
    out = tmp_path / "run"
    status = main(["train", "--out", str(out), "--set", "log.mlflow=true", "--quiet"])
    assert status == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "log.mlflow = true needs MLflow, which is not installed" in err
    assert "pip install pyro-vae-toolkit[mlflow]" in err


def test_log_keys_are_checked(tmp_path):
    with pytest.raises(TypeError, match="log.mlflow must be true or false, got 'yes'"):
        Config.from_dict({"log": {"mlflow": "yes"}})
    with pytest.raises(TypeError, match="log.mlflow_tracking_uri must be a non-empty string"):
        Config.from_dict({"log": {"mlflow_tracking_uri": ""}})


def test_sweep_trials_are_nested_runs_of_the_sweep_run(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("optuna")
    from pvae.sweep import SweepSettings, log_summary, run_worker, summarize

    space = tmp_path / "space.toml"
    space.write_text('["train.lr"]\ntype = "float"\nlow = 1e-3\nhigh = 1e-2\nlog = true\n')
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = [
        "train.epochs=1",
        "model.latent_dim=2",
        "model.encoder.hidden=[16]",
        "model.decoder.hidden=[16]",
        "eval.curve_ks=[]",
        "log.mlflow=true",
        f"log.mlflow_tracking_uri={json.dumps(uri)}",
        'log.mlflow_experiment="sweeps"',
    ]
    s = SweepSettings(None, space, 2, tmp_path / "sweep", seed=0, heartbeat=1, overrides=sets)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_worker(s) == 2
    finally:
        torch.set_num_threads(threads)
    summarize(s)
    log_summary(s)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("sweeps")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = sorted(
        (r for r in runs if "mlflow.parentRunId" in r.data.tags),
        key=lambda r: int(r.data.tags["optuna.trial"]),
    )
    assert len(children) == 2 and len(runs) == 3
    assert parent.data.tags["pvae.sweep"] == str(s.out.resolve())
    assert parent.data.params["sweep.objective"] == "val_elbo"
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "summary.csv",
        "summary.md",
        "best.toml",
    }
    for i, child in enumerate(children):
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        folder = (s.out / f"trial-{i:04d}").resolve()
        assert child.data.tags[RUN_DIR_TAG] == str(folder)
        assert float(child.data.params["train.lr"]) == read_run_config(folder).train.lr
        (point,) = client.get_metric_history(child.info.run_id, "val_elbo")
        assert point.step == 1
    best = max(c.data.metrics["val_elbo"] for c in children)
    assert parent.data.metrics["best_val_elbo"] == pytest.approx(best, rel=1e-12)
