"""A resume cannot damage its run or change it silently (issue 22), and what training stores and
reports is true: strict JSON metrics, the true validation ELBO under free bits, a quiet run that
is quiet (issue 26), a broken TensorBoard found before anything is written."""

import errno
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_faults import failing_writes  # the one helper that makes a file's writes fail

import pvae
from pvae.checkpoint import load_checkpoint
from pvae.cli import main
from pvae.rundir import read_history
from pvae.training.changes import RESUMABLE, canonical, config_changes, resumable

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "--set",
    "model.latent_dim=3",
    "--set",
    "model.encoder.hidden=[32]",
    "--set",
    "model.decoder.hidden=[32]",
    "--set",
    "train.batch_size=256",
    "--set",
    "eval.curve_ks=[]",
    "--set",
    "train.device=cpu",
    "--no-progress",
]
FILES = ("checkpoint.pt", "config.toml", "metrics.json", "metrics.csv")


def env(**extra):
    path = os.pathsep.join([*extra.pop("path", []), str(REPO)])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **extra}


def pvae_cli(*argv, cwd, **env_extra):
    return subprocess.run(
        [sys.executable, "-m", "pvae", *argv],
        cwd=cwd,
        env=env(**env_extra),
        capture_output=True,
        text=True,
        timeout=600,
    )


def snapshot(run):
    return {name: (run / name).read_bytes() for name in FILES if (run / name).is_file()}


def error_line(stderr):
    lines = [line for line in stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--out", str(run), "--set", "train.epochs=1", *SMALL]) == 0
    return run


@pytest.fixture
def run(one_epoch, tmp_path):
    """A fresh copy of a one-epoch run, for each test to damage as it likes."""
    copy = tmp_path / "run"
    shutil.copytree(one_epoch, copy)
    return copy


# -- 1. nothing written before the resumed run's first checkpoint ---------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "change",
    [[], ["--set", "model.encoder.activation=tanh", "--allow-change", "model.encoder"]],
    ids=["epochs-only", "allowed-model-change"],
)
def test_a_resume_that_fails_at_start_leaves_the_run_as_it_was(run, change):
    # The run's metrics.csv is a folder: the resume cannot write it.
    (run / "metrics.csv").unlink()
    (run / "metrics.csv").mkdir()
    before = snapshot(run)
    argv = ["train", "--resume", str(run), "--set", "train.epochs=2", *change, "--no-progress"]
    failed = pvae_cli(*argv, cwd=run.parent)
    assert failed.returncode == 2, failed.stderr
    assert "metrics.csv" in error_line(failed.stderr) and "is a folder" in failed.stderr
    assert snapshot(run) == before  # config.toml, checkpoint.pt, metrics.json: byte for byte
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []

    (run / "metrics.csv").rmdir()
    plain = ["train", "--resume", str(run), "--set", "train.epochs=2", "--no-progress"]
    assert main(plain) == 0  # the original run continues
    loaded = pvae.load_run(run)
    assert loaded.checkpoint["epoch"] == 2
    assert loaded.config.model.encoder.get("activation", "relu") == "relu"


@pytest.mark.parametrize("file", ["checkpoint.pt", "config.toml"])
def test_a_failed_write_of_a_resumes_first_checkpoint_or_config_changes_neither(
    run, monkeypatch, capsys, file
):
    before = snapshot(run)
    failing_writes(monkeypatch, file, OSError(errno.ENOSPC, "No space left on device"))
    argv = ["train", "--resume", str(run), "--set", "train.epochs=2", "--set", "train.lr=0.002"]
    argv += ["--set", "model.encoder.activation=tanh", "--allow-change", "model.encoder"]
    assert main([*argv, "--no-progress"]) == 1
    assert f"cannot write {str(run / file)!r}" in error_line(capsys.readouterr().err)
    assert snapshot(run) == before  # the checkpoint written before config.toml was put back
    monkeypatch.undo()
    pvae.load_run(run)  # config and checkpoint still a pair
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2", "--quiet"]) == 0


# -- 2. what a resume may change ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sets", "named"),
    [
        (
            ["model.likelihood.name=continuous_bernoulli", "data.binarize=none"],
            ['data.binarize: "dynamic" → "none"', 'model.likelihood.name: "bernoulli" → '],
        ),
        (["model.encoder.activation=tanh"], ['model.encoder.activation: "relu" → "tanh"']),
        (["data.binarize=static"], ['data.binarize: "dynamic" → "static"']),
        (["train.objective=elbo"], ['train.objective: "meanfield_elbo" → "elbo"']),
        (["data.seed=1", "train.seed=2"], ["data.seed: 0 → 1", "train.seed: 0 → 2"]),
    ],
    ids=["likelihood", "activation", "binarization", "objective", "seeds"],
)
def test_a_resume_that_changes_the_model_data_or_objective_is_refused_naming_each_key(
    run, capsys, sets, named
):
    before = snapshot(run)
    argv = ["train", "--resume", str(run), "--set", "train.epochs=2", "--no-progress"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 2
    line = error_line(capsys.readouterr().err)
    assert "a resumed run continues the same model on the same data" in line
    for text in named:
        assert text in line
    assert "train.epochs" not in line  # allowed: not named
    for s in sets:
        assert f"--allow-change {s.split('=')[0]}" in line
    assert snapshot(run) == before


def test_a_change_allowed_explicitly_is_made_and_recorded(run, capsys):
    argv = ["train", "--resume", str(run), "--set", "train.epochs=2", "--no-progress"]
    argv += ["--set", "train.objective=elbo", "--allow-change", "train.objective"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert 'train.objective: "meanfield_elbo" → "elbo" (allowed by --allow-change' in err
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["config"]["train"]["objective"] == "elbo"
    assert ckpt["changes"] == [
        {
            "epoch": 1,
            "changes": {"train.epochs": [1, 2], "train.objective": ["meanfield_elbo", "elbo"]},
        }
    ]
    text = (run / "config.toml").read_text()
    assert (
        '# after epoch 1: train.epochs: 1 → 2; train.objective: "meanfield_elbo" → "elbo"' in text
    )
    assert pvae.load_run(run).config.train.objective == "elbo"
    # The change is now the run's: a plain resume continues with it.
    assert main(["train", "--resume", str(run), "--set", "train.epochs=3", "--quiet"]) == 0
    assert len(load_checkpoint(run / "checkpoint.pt")["changes"]) == 2


def test_allow_change_is_checked(run, tmp_path, capsys):
    argv = ["train", "--resume", str(run), "--allow-change", "train.objectiv"]
    assert main(argv) == 2
    assert "--allow-change 'train.objectiv' names no key" in error_line(capsys.readouterr().err)
    assert main(["train", "--out", str(tmp_path / "new"), "--allow-change", "model"]) == 2
    assert "--allow-change applies to --resume" in error_line(capsys.readouterr().err)
    assert not (tmp_path / "new").exists()


def test_the_same_configuration_spelled_differently_is_no_change(run):
    before = (run / "config.toml").read_bytes()
    argv = ["train", "--resume", str(run), "--set", "model.latent_dim=[3]", "--quiet"]
    argv += ["--set", "model.encoder.activation=relu", "--set", "model.guide.scale=softplus"]
    assert main(argv) == 0  # nothing to train (epoch 1 of 1): nothing written either
    assert (run / "config.toml").read_bytes() == before
    assert config_changes({"model": {"latent_dim": 8}}, {"model": {"latent_dim": [8]}}) == {}
    written = {"model": {"encoder": {"name": "mlp", "hidden": [256, 128], "activation": "relu"}}}
    assert config_changes({}, written) == {}
    assert canonical({"train": {"labels": False}}) == canonical({})
    hier = {"latent_dim": [4, 2]}
    spelled = {**hier, "hidden": [[8, 8], [4, 4]], "activation": "tanh"}
    assert (
        config_changes(
            {"model": hier, "train": {"objective": "elbo"}},
            {
                "model": spelled,
                "train": {"objective": "elbo"},
            },
        )
        == {}
    )
    assert config_changes({"model": {"likelihood": {"name": "gaussian"}}}, {}) == {
        "model.likelihood.name": ("gaussian", "bernoulli")  # one change, not one per argument
    }
    assert all(resumable(k) for k in ("train.epochs", "eval.k", "log.csv", "train.lr"))
    assert not any(resumable(k) for k in ("model.latent_dim", "data.name", "train.free_bits"))
    assert "train.objective" not in RESUMABLE


def test_a_new_learning_rate_takes_effect_on_resume(run):
    argv = ["train", "--resume", str(run), "--set", "train.epochs=2", "--set", "train.lr=0.01"]
    assert main([*argv, "--quiet"]) == 0
    groups = load_checkpoint(run / "checkpoint.pt")["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [0.01]


# -- 3. a TensorBoard that is installed but fails to import ---------------------------------------
@pytest.mark.slow
def test_a_tensorboard_that_fails_to_import_is_found_before_anything_is_written(tmp_path, run):
    fake = tmp_path / "site"
    (fake / "tensorboard").mkdir(parents=True)
    (fake / "tensorboard" / "__init__.py").write_text("raise RuntimeError('a broken install')\n")
    argv = ["train", "--out", "new", "--set", "log.tensorboard=true", "--set", "train.epochs=1"]
    proc = pvae_cli(*argv, *SMALL, cwd=tmp_path, path=[str(fake)])
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc.stderr)
    assert "installed but fails to import (RuntimeError: a broken install)" in line
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "site"]  # no stub run
    before = snapshot(run)
    argv = ["train", "--resume", str(run), "--set", "log.tensorboard=true"]
    proc = pvae_cli(*argv, "--set", "train.epochs=2", cwd=tmp_path, path=[str(fake)])
    assert proc.returncode == 2 and "fails to import" in proc.stderr
    assert snapshot(run) == before and not (run / "tensorboard").exists()


# -- 4. strict JSON, empty CSV cells --------------------------------------------------------------
def test_stored_metrics_are_strict_json_and_read_back(tmp_path):
    x = torch.rand(41, 1, 4, 4).bernoulli(generator=torch.Generator().manual_seed(0))
    data = pvae.datasets.DataSplits(
        "tiny",
        pvae.datasets.Split(x[:40], None),
        pvae.datasets.Split(x[40:], None),  # one validation point: its ELBO has no s.e.
        pvae.datasets.Split(x[:1], None),
    )
    cfg = pvae.config.Config.from_dict(
        {
            "model": {"latent_dim": 2, "encoder": {"hidden": [8]}, "decoder": {"hidden": [8]}},
            "train": {"epochs": 2, "batch_size": 20, "device": "cpu"},
            "eval": {"curve_ks": []},
            "log": {"quiet": True},
        }
    )
    res = pvae.train_from_config(cfg, tmp_path / "r", data=data)
    assert math.isnan(res.final["val_elbo_se"])  # in memory: NaN, as computed

    def refuse(constant):
        raise AssertionError(f"metrics.json holds {constant}")

    text = (tmp_path / "r" / "metrics.json").read_text()
    stored = json.loads(text, parse_constant=refuse)
    assert [r["val_elbo_se"] for r in stored] == [None, None]
    assert stored[-1]["val_elbo"] == res.final["val_elbo"]
    csv_rows = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    column = csv_rows[0].split(",").index("val_elbo_se")
    assert [row.split(",")[column] for row in csv_rows[1:]] == ["", ""]
    history = read_history(tmp_path / "r")
    assert history[-1]["val_elbo_se"] is None and history[-1]["epoch"] == 2
    pvae.plotting.training_curves(history, path=tmp_path / "curves.png")  # None: no point


# -- 5. --quiet is quiet --------------------------------------------------------------------------
def test_quiet_silences_the_monte_carlo_kl_note(capsys):
    x = torch.rand(16, 1, 4, 4).bernoulli(generator=torch.Generator().manual_seed(0))

    def mog_vae():
        return pvae.VAE(pvae.priors.MixtureOfGaussians(2), hidden=(8,))

    pvae.fit(mog_vae(), x, epochs=1, batch_size=8, device="cpu", quiet=True, curve_ks=())
    assert capsys.readouterr().err == ""
    pvae.fit(mog_vae(), x, epochs=1, batch_size=8, device="cpu", progress=False, curve_ks=())
    assert "no closed-form KL" in capsys.readouterr().err


# -- 6. validation reports the true ELBO ----------------------------------------------------------
def test_validation_reports_the_true_elbo_under_free_bits(monkeypatch, digits):
    from pvae.training import validation

    seen = []
    real = validation.evaluate_elbo

    def spy(module, x, **kw):  # records what the validation ran with, changes nothing
        seen.append((module.beta, module.free_bits, x, torch.get_rng_state()))
        return real(module, x, **kw)

    monkeypatch.setattr(validation, "evaluate_elbo", spy)
    torch.manual_seed(0)
    vae = pvae.VAE(pvae.priors.StandardNormal(3), hidden=(32,))
    res = pvae.fit(
        vae, digits, epochs=1, free_bits=1e6, beta=0.5, device="cpu", quiet=True, curve_ks=()
    )
    (beta, free_bits, x, rng), rec = seen[0], res.final
    assert (beta, free_bits) == (1.0, 0.0)
    assert (res.vae.beta, res.vae.free_bits) == (1.0, 0.0)  # as returned
    torch.set_rng_state(rng)
    expected = real(res.vae, x, batch_size=1024).summary()
    assert rec["val_elbo"] == expected["elbo"] and rec["val_kl"] == expected["kl"]
    assert rec["val_kl"] > 0  # free bits masked the KL to 0 before
