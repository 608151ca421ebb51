"""pvae sweep on Optuna: the search space file and its checks, trials as run folders with
pruning from the per-epoch validation ELBO, the summary and best.toml, two worker processes on
one SQLite study (no trial lost or duplicated), a killed worker's trial marked FAIL by the
heartbeat and replaced, and the message without Optuna."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pvae.cli import main
from pvae.config import load_config
from pvae.sweep import (
    SweepSettings,
    check_objective,
    check_space,
    load_space,
    open_study,
    run_worker,
    summarize,
    trial_config,
)

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "examples" / "sweeps" / "digits-space.toml"
BASE = ROOT / "examples" / "sweeps" / "digits-base.toml"
TINY = [  # one small epoch per trial
    "train.epochs=1",
    "model.encoder.hidden=[16]",
    "model.decoder.hidden=[16]",
    "train.batch_size=128",
]
LR_SPACE = """
["train.lr"]
type = "float"
low = 1e-5
high = 3e-2
log = true

[model.latent_dim]
type = "int"
low = 2
high = 4
"""


def settings(tmp_path, trials, **kw):
    space = tmp_path / "space.toml"
    if not space.exists():
        space.write_text(LR_SPACE)
    kw.setdefault("overrides", list(TINY))
    return SweepSettings(BASE, space, trials, tmp_path / "sweep", heartbeat=1, **kw)


def optuna_states(s):
    import optuna

    study = optuna.load_study(study_name=s.study_name, storage=s.storage_url)
    return {t.number: t for t in study.get_trials(deepcopy=False)}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def optuna():
    return pytest.importorskip("optuna")  # the dev extra installs it; CI runs these


def test_the_shipped_space_and_its_checks(tmp_path, optuna):
    space = load_space(SPACE)
    assert list(space) == ["train.lr", "model.prior.name", "model.latent_dim"]
    lr, prior, dim = space.values()
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 3e-4, 3e-2, True)
    assert prior.choices == ("standard_normal", "mog", "vamp")
    assert (dim.kind, dim.low, dim.high) == ("int", 2, 16)
    check_space(BASE, [], space)  # every bound and choice makes a valid config
    cfg = trial_config(BASE, TINY, {"model.prior.name": "vamp", "train.lr": 0.01})
    assert cfg.model.prior["name"] == "vamp" and cfg.train.lr == 0.01 and cfg.train.epochs == 1
    bad = tmp_path / "bad.toml"
    for text, match in [
        ('["train.lr"]\ntype = "float"\nlow = 1\nhigh = 1', "low must be below high"),
        ('["train.lr"]\ntype = "float"\nlow = 0\nhigh = 1\nlog = true', "log = true needs low > 0"),
        ('["train.lr"]\ntype = "normal"', "type must be one of"),
        ('["model.prior.name"]\ntype = "categorical"\nchoices = []', "non-empty list"),
        ('["train.lr"]\nlow = 1', "'train.lr.low' must be a table with a type"),
        ('["model.latent_dim"]\ntype = "int"\nlow = 2.5\nhigh = 4', "low must be a finite int"),
    ]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=match):
            load_space(bad)
    bad.write_text(
        '["model.prior.name"]\ntype = "categorical"\nchoices = ["standard_normal", "nope"]'
    )
    with pytest.raises(ValueError, match=r"search space key 'model.prior.name' = 'nope'"):
        check_space(BASE, [], load_space(bad))
    bad.write_text('["train.nonsense"]\ntype = "int"\nlow = 1\nhigh = 2')
    with pytest.raises(ValueError, match=r"search space key 'train.nonsense' = 1"):
        check_space(BASE, [], load_space(bad))
    cfg = load_config(BASE)
    with pytest.raises(ValueError, match=r"needs 50 in eval.curve_ks"):
        check_objective("val_iwae_50", cfg)
    with pytest.raises(ValueError, match="--objective must be val_elbo or val_iwae_K"):
        check_objective("test_elbo", cfg)


def test_trials_are_run_folders_pruned_from_the_validation_elbo(tmp_path, optuna):
    s = settings(tmp_path, 3, startup_trials=1)
    s.overrides = [*TINY, "train.epochs=2"]
    study = open_study(s, load_space(s.space))
    # a good learning rate, then one far too small: below the median at epoch 1, pruned there
    study.enqueue_trial({"train.lr": 1e-2, "model.latent_dim": 2})
    study.enqueue_trial({"train.lr": 1e-5, "model.latent_dim": 2})
    heard = []
    assert run_worker(s, say=heard.append) == 3
    trials = optuna_states(s)
    assert sorted(trials) == [0, 1, 2] and [t.number for t in heard] == [0, 1, 2]
    good, bad = trials[0], trials[1]
    assert good.state.name == "COMPLETE" and bad.state.name == "PRUNED"
    assert good.value == pytest.approx(good.intermediate_values[2])
    assert good.user_attrs["epochs"] == 2 and bad.user_attrs["epochs"] == 1
    assert bad.user_attrs["note"].startswith("pruned at epoch 1: val_elbo")
    assert bad.intermediate_values[1] < good.intermediate_values[1]
    for t in trials.values():  # every trial is an ordinary run folder
        folder = s.out / f"trial-{t.number:04d}"
        assert t.user_attrs["run_dir"] == str(folder)
        assert (folder / "checkpoint.pt").is_file() and (folder / "config.toml").is_file()
        assert load_config(folder / "config.toml").train.lr == t.params["train.lr"]
    text = summarize(s)
    assert "3 trials: " in text and " pruned" in text
    assert (s.out / "summary.csv").read_text().splitlines()[0] == (
        "trial,state,train.lr,model.latent_dim,objective,epochs,seconds,note"
    )
    complete = [t for t in trials.values() if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value)
    assert f"best: trial {best.number}" in text
    # best.toml is a full config: the base with the best trial's values
    written = load_config(s.out / "best.toml")
    assert written.to_dict() == trial_config(BASE, s.overrides, best.params).to_dict()


def start_worker(s, seed, *extra):
    args = ["--config", str(s.config), "--space", str(s.space), "--trials", str(s.trials)]
    args += ["--study-dir", str(s.out), "--seed", str(seed), "--heartbeat", "1"]
    for item in s.overrides:
        args += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "pvae", "sweep", *args, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_two_worker_processes_share_one_sqlite_study(tmp_path, optuna):
    s = settings(tmp_path, 4)
    a, b = start_worker(s, 0), start_worker(s, 1)
    outs = [p.communicate(timeout=600) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    trials = optuna_states(s)
    done = [t for t in trials.values() if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == 4  # none lost, none more than asked
    assert sorted(trials) == list(range(len(trials)))  # unique numbers, no gap
    assert all(t.state.name != "RUNNING" for t in trials.values())
    for t in done:
        assert (s.out / f"trial-{t.number:04d}" / "checkpoint.pt").is_file()
    # each worker said which trials it ran: together, every trial once
    lines = [line for out, _ in outs for line in out.splitlines() if line.startswith("trial ")]
    numbers = sorted(int(line.split()[1]) for line in lines)
    assert numbers == sorted(trials)


def test_a_killed_workers_trial_is_marked_failed_and_replaced(tmp_path, capsys, optuna):
    s = settings(tmp_path, 1, grace=3)
    s.overrides = [*TINY, "train.epochs=500"]  # still training when killed
    worker = start_worker(s, 0, "--grace", "3")
    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(0.5)
        if (s.out / "trial-0000" / "metrics.json").is_file():
            break  # mid-trial: an epoch is on disk, 499 to go
    assert optuna_states(s)[0].state.name == "RUNNING"
    worker.send_signal(signal.SIGKILL)
    worker.communicate()
    assert optuna_states(s)[0].state.name == "RUNNING"  # nobody told the storage
    time.sleep(4)  # past the grace period
    s.overrides = list(TINY)  # the replacement: one epoch
    assert run_worker(s) == 1
    trials = optuna_states(s)
    assert trials[0].state.name == "FAIL" and trials[1].state.name == "COMPLETE"
    assert "trial 0 stopped beating (its worker died): marked FAIL" in capsys.readouterr().err
    assert (s.out / "trial-0000" / "checkpoint.pt").is_file()  # the folder is kept
    text = summarize(s)
    assert "| 0 | FAIL |" in text and "its worker stopped" in text
    assert "2 trials: 1 complete, 0 pruned, 1 failed" in text


def test_without_optuna_a_clear_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)
    out = tmp_path / "sweep"
    status = main(["sweep", "--space", str(SPACE), "--trials", "2", "--study-dir", str(out)])
    assert status == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "pvae sweep needs Optuna, which is not installed" in err
    assert "pip install pyro-vae-toolkit[sweep]" in err
