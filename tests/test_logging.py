"""Logging: the callback protocol of fit, the CSV and TensorBoard loggers, the [log] section,
progress lines for terminals and for log files, and the closing summary table."""

import csv
import importlib.util
import io
import math
import re

import pytest
import torch

import pvae
from pvae.config import Config, load_config
from pvae.training import TIMING_KEYS, Callback, CSVLogger, TensorBoardLogger, drop_timings
from pvae.training.progress import Progress, summary_table, task_progress


def toy_data(n=80, val_fraction=0.25):
    x = torch.bernoulli(torch.full((n, 6), 0.3), generator=torch.Generator().manual_seed(0))
    return pvae.datasets.load(x, val_fraction=val_fraction)


def toy_vae():
    torch.manual_seed(0)
    return pvae.VAE(pvae.priors.StandardNormal(2), hidden=(8,))


def quick_fit(**kw):
    kw = {"epochs": 3, "batch_size": 16, "device": "cpu", "quiet": True, **kw}
    return pvae.fit(kw.pop("vae", None) or toy_vae(), kw.pop("data", None) or toy_data(), **kw)


class Recorder(Callback):
    def __init__(self, fail_at=None):
        self.calls, self.fail_at = [], fail_at

    def on_train_begin(self, info):
        self.calls.append(("begin", dict(info)))

    def on_epoch_end(self, record):
        self.calls.append(("epoch", record))
        if record["epoch"] == self.fail_at:
            raise OSError("the log disk is gone")

    def on_train_end(self, history):
        self.calls.append(("end", list(history)))


# -- the protocol ---------------------------------------------------------------------------------
def test_callbacks_hear_begin_every_epoch_and_end_in_order(tmp_path):
    rec, seen = Recorder(), []
    res = quick_fit(run_dir=tmp_path / "r", callbacks=[rec], on_epoch=seen.append, config={"a": 1})
    kinds = [c[0] for c in rec.calls]
    assert kinds == ["begin", "epoch", "epoch", "epoch", "end"]
    info = rec.calls[0][1]
    assert info == {
        "run_dir": tmp_path / "r",
        "epochs": 3,
        "start_epoch": 0,
        "resumed": False,
        "history": [],
        "config": {"a": 1},
        "main": True,
    }
    assert [c[1] for c in rec.calls[1:4]] == res.history == seen  # on_epoch still works
    assert rec.calls[-1][1] == res.history
    # Every record carries the clock's numbers; they are positive and consistent.
    for r in res.history:
        assert set(TIMING_KEYS) - {"compile_seconds"} <= set(r)  # compile: its epoch only
        assert 0 < r["val_seconds"] < r["epoch_seconds"]
        train_seconds = r["epoch_seconds"] - r["val_seconds"]
        assert r["images_per_second"] * train_seconds == pytest.approx(48, rel=1e-9)  # 80·0.8·0.75

    resumed = Recorder()
    quick_fit(run_dir=tmp_path / "r", resume=True, epochs=4, callbacks=[resumed])
    info = resumed.calls[0][1]
    assert (info["start_epoch"], info["resumed"], info["history"]) == (3, True, res.history)
    assert [c[1]["epoch"] for c in resumed.calls if c[0] == "epoch"] == [4]


def test_an_exception_in_a_callback_stops_training_and_is_not_swallowed(tmp_path):
    rec = Recorder(fail_at=2)
    with pytest.raises(OSError, match="the log disk is gone"):
        quick_fit(run_dir=tmp_path / "r", callbacks=[rec])
    assert [c[0] for c in rec.calls] == ["begin", "epoch", "epoch", "end"]  # end heard anyway
    assert [r["epoch"] for r in rec.calls[-1][1]] == [1, 2]
    # The epoch's checkpoint was written before its callbacks ran: the run resumes after it.
    res = quick_fit(run_dir=tmp_path / "r", resume=True)
    assert [r["epoch"] for r in res.history] == [1, 2, 3]


def test_every_hook_hears_the_end_and_the_runs_own_error_is_the_one_raised(tmp_path):
    class BadEnd(Recorder):
        def on_train_end(self, history):
            super().on_train_end(history)
            raise RuntimeError("could not close")

    first, second = BadEnd(fail_at=2), Recorder()
    with pytest.raises(OSError, match="the log disk is gone"):  # not the end hook's error
        quick_fit(run_dir=tmp_path / "a", callbacks=[first, second])
    assert first.calls[-1][0] == second.calls[-1][0] == "end"  # the second still closed
    first, second = BadEnd(), Recorder()
    with pytest.raises(RuntimeError, match="could not close"):  # a clean run: raised after all
        quick_fit(run_dir=tmp_path / "b", callbacks=[first, second])
    assert second.calls[-1][0] == "end"


def test_a_csv_logger_into_a_missing_folder_fails_before_the_first_epoch(tmp_path):
    rec = Recorder()
    with pytest.raises(ValueError, match="CSVLogger path .* its folder .*nowhere' does not exist"):
        quick_fit(callbacks=[rec, CSVLogger(tmp_path / "nowhere" / "m.csv")])
    assert [c[0] for c in rec.calls] == ["begin", "end"]


def test_callbacks_must_be_callback_objects():
    with pytest.raises(TypeError, match=r"callbacks\[0\] must be a pvae.training.Callback"):
        quick_fit(callbacks=[print])
    with pytest.raises(TypeError, match="callbacks must be a list"):
        quick_fit(callbacks=Recorder())
    with pytest.raises(ValueError, match="log_every must be a finite number >= 0, got -1"):
        quick_fit(log_every=-1)


# -- CSV ------------------------------------------------------------------------------------------
def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_has_one_row_per_epoch_equal_to_the_history_and_resume_appends(tmp_path):
    path = tmp_path / "m.csv"
    kw = {"curve_ks": (2,), "curve_every": 2}  # IWAE columns join at epoch 2
    res = quick_fit(callbacks=[CSVLogger(path)], **kw)
    rows = read_csv(path)
    first = list(res.history[0])
    assert list(rows[0]) == [*first, "val_iwae_2", "val_log_px"]  # the keys in first-seen order
    assert "val_iwae_2" not in res.history[0] and rows[0]["val_iwae_2"] == ""
    for row, rec in zip(rows, res.history, strict=True):
        assert {k: float(v) for k, v in row.items() if v} == rec  # exact: repr round trips

    run = tmp_path / "run"
    quick_fit(run_dir=run, epochs=2, callbacks=[CSVLogger(path)], **kw)
    # A process that died between its checkpoint and its row: the resumed run repairs the file.
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    full = quick_fit(run_dir=run, resume=True, epochs=4, callbacks=[CSVLogger(path)], **kw)
    rows = read_csv(path)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert list(rows[0]) == [*first, "val_iwae_2", "val_log_px"]  # stable across the resume
    for row, rec in zip(rows, full.history, strict=True):
        assert {k: float(v) for k, v in row.items() if v} == rec
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# -- TensorBoard ----------------------------------------------------------------------------------
def scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="no tensorboard")
def test_tensorboard_scalars_equal_the_history_and_a_resume_purges_the_dead_epochs(tmp_path):
    log_dir = tmp_path / "tb"
    run = tmp_path / "run"
    quick_fit(run_dir=run, epochs=2, callbacks=[TensorBoardLogger(log_dir)])
    # The next process wrote epoch 3 to TensorBoard, then died before its checkpoint.
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(log_dir)) as w:
        w.add_scalar("train_elbo", 123.0, global_step=3)
    res = quick_fit(run_dir=run, resume=True, epochs=4, callbacks=[TensorBoardLogger(log_dir)])
    got = scalars(log_dir)
    keys = {k for r in res.history for k in r} - {"epoch"}
    assert set(got) == keys
    for key in keys:
        want = [(r["epoch"], r[key]) for r in res.history]
        assert [s for s, _ in got[key]] == [s for s, _ in want]  # each epoch once
        for (_, a), (_, b) in zip(got[key], want, strict=True):
            assert a == pytest.approx(b, rel=1e-6)  # stored as float32


def test_tensorboard_missing_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name)
    )
    with pytest.raises(ModuleNotFoundError, match="pip install tensorboard"):
        TensorBoardLogger("tb")


# -- [log] and train_from_config ------------------------------------------------------------------
def quick_config(**log):
    return Config.from_dict(
        {
            "model": {"latent_dim": 2, "encoder": {"hidden": [8]}, "decoder": {"hidden": [8]}},
            "train": {"epochs": 2, "batch_size": 16, "device": "cpu"},
            "eval": {"curve_ks": []},
            "log": log,
        }
    )


def test_log_section_turns_the_loggers_on_in_the_run_folder(tmp_path, capsys):
    res = pvae.train_from_config(quick_config(quiet=True), tmp_path / "a", data=toy_data())
    assert capsys.readouterr() == ("", "")  # quiet: nothing at all
    assert len(read_csv(tmp_path / "a" / "metrics.csv")) == 2
    assert not (tmp_path / "a" / "tensorboard").exists()
    if importlib.util.find_spec("tensorboard") is not None:
        cfg = quick_config(csv=False, tensorboard=True, every=0)
        res = pvae.train_from_config(cfg, tmp_path / "b", data=toy_data())
        assert not (tmp_path / "b" / "metrics.csv").exists()
        got = scalars(tmp_path / "b" / "tensorboard")
        assert [v for _, v in got["val_elbo"]] == pytest.approx(
            [r["val_elbo"] for r in res.history], rel=1e-6
        )
        err = capsys.readouterr().err
        assert "\r" not in err and "step 1/6 (17%)" in err  # every=0: a line per step


def test_log_and_compile_keys_are_checked():
    with pytest.raises(
        ValueError,
        match=r"unknown key in \[log\] 'csvv'; valid: csv, every, mlflow, mlflow_experiment, "
        r"mlflow_tracking_uri, quiet, tensorboard",
    ):
        Config.from_dict({"log": {"csvv": True}})
    with pytest.raises(TypeError, match="log.tensorboard must be true or false, got 'yes'"):
        Config.from_dict({"log": {"tensorboard": "yes"}})
    with pytest.raises(ValueError, match="log.every must be a finite number >= 0, got -1"):
        Config.from_dict({"log": {"every": -1}})
    with pytest.raises(TypeError, match="train.compile must be true or false, got 1"):
        Config.from_dict({"train": {"compile": 1}})
    cfg = load_config(None, ["log.every=5", "train.compile=true", "log.tensorboard=true"])
    assert (cfg.log.every, cfg.train.compile, cfg.log.tensorboard, cfg.log.csv) == (
        5,
        True,
        True,
        True,
    )
    assert Config.from_dict(cfg.to_dict()) == cfg


# -- progress -------------------------------------------------------------------------------------
class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_log_files_get_plain_lines_and_never_a_redrawn_bar(capsys):
    res = quick_fit(quiet=False, log_every=0)  # pytest's capture is not a terminal
    out = capsys.readouterr()
    assert out.out == "" and "\r" not in out.err
    lines = out.err.splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert steps[0].startswith("step 1/9 (11%)  ") and steps[-1].startswith("step 9/9 (100%)")
    assert all(" img/s  ETA " in line for line in steps)
    assert len([line for line in lines if line.startswith("epoch ")]) == len(res.history) == 3

    quick_fit(quiet=False, progress=False, log_every=0)  # no progress, the epoch lines stay
    lines = capsys.readouterr().err.splitlines()
    assert [line[:12] for line in lines] == ["epoch    1/3", "epoch    2/3", "epoch    3/3"]
    quick_fit(quiet=True, log_every=0)
    assert capsys.readouterr() == ("", "")


def test_plain_lines_are_rate_limited():
    out = io.StringIO()
    with Progress(True, True, total=1000, epochs=1, every=3600, stream=out) as p:
        for _ in range(1000):
            p.step()
    assert out.getvalue() == ""
    with task_progress("log p(x)", 100, every=0, unit="datapoint", stream=out) as advance:
        for _ in range(4):
            advance(25)
    lines = out.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == [
        "log p(x) 25/100 (25%)",
        "log p(x) 50/100 (50%)",
        "log p(x) 75/100 (75%)",
        "log p(x) 100/100 (100%)",
    ]
    assert all(" datapoint/s  ETA " in line for line in lines)


def test_a_terminal_gets_the_bar_and_nothing_when_hidden():
    term = Terminal()
    with Progress(True, True, total=5, epochs=1, stream=term) as p:
        for _ in range(5):
            p.step()
        p.epoch_done({"epoch": 1, "train_elbo": -3.0, "epoch_seconds": 0.5})
    assert "\r" in term.getvalue() and "5/5" in term.getvalue()
    assert "epoch    1/1  train ELBO     -3.000  0.50s\n" in term.getvalue()
    term = Terminal()
    with task_progress("eval", 3, show=False, stream=term) as advance:
        advance(3)
    with Progress(True, False, total=5, epochs=1, stream=term) as p:  # not rank 0
        p.step()
        p.interrupted(1, None)
    assert term.getvalue() == ""


def test_summary_table_names_the_metrics_and_pairs_values_with_their_se():
    table = summary_table(
        {
            "run": "runs/a",
            "epoch": 5,
            "step": 55,
            "train_elbo": -27.47658,
            "val_elbo": -27.24475,
            "val_elbo_se": 0.29957,
            "val_iwae_500": -26.5012,
            "images_per_second": 5122.2,
            "epoch_seconds": 0.257,
            "custom": math.pi,
        }
    )
    lines = table.splitlines()
    assert lines[0].split() == ["run", "folder", "runs/a"]
    assert "val ELBO" in lines[4] and lines[4].endswith("-27.245 ± 0.300 nats (s.e. over data)")
    assert lines[5].endswith("-26.501 nats") and "IWAE k=500" in lines[5]
    assert lines[6].endswith(" 5122") and lines[-1].endswith(" 3.142")
    col = lines[0].index("runs/a")
    assert all(line[col - 1] == " " and line[col] != " " for line in lines)  # one value column
    assert "val_elbo_se" not in table
    assert "WARNING" not in table
    for frac, warned in ((0.05, False), (0.056, True)):  # more than 5%: said where it is read
        table = summary_table({"val_log_px": -22.15, "val_log_px_khat_frac": frac})
        assert ("WARNING: PSIS k̂ ≥ 0.7 for 6% of the validation points" in table) is warned
        assert re.search(rf"share of PSIS k̂ ≥ 0.7 +{frac:.3f}", table)


# -- no validation split --------------------------------------------------------------------------
def test_val_fraction_zero_trains_on_every_image(tmp_path, capsys):
    data = toy_data(val_fraction=0)
    assert len(data.val) == 0 and len(data.train) + len(data.test) == 80
    seen = []

    class Counting(pvae.VAE):
        def model(self, x, size=None, subsample=None, **kw):
            seen.append(subsample)
            return super().model(x, size, subsample)

    torch.manual_seed(0)
    vae = Counting(pvae.priors.StandardNormal(2), hidden=(8,))
    res = quick_fit(vae=vae, data=data, epochs=1, run_dir=tmp_path / "r", fast=False)
    assert torch.cat(seen).sort().values.tolist() == list(range(len(data.train)))
    assert not any(k.startswith("val_") for k in res.final)
    assert {"curves.png", "metrics.json"} <= {p.name for p in (tmp_path / "r").iterdir()}
    assert drop_timings(res.history)[0].keys() == {"epoch", "step", "train_elbo"}
