"""Reports that can be trusted (issues 22 and 26): one definition of an unreliable k̂ (inf
included) in text, JSON and figures; a single datapoint evaluated with its s.e. over datapoints
n/a; no orphaned temporary after a killed writer, never a live writer's removed; .npz loaders
that refuse pickles without numpy's advice to unpickle; BDMC's signed gap instead of a false
inequality; the adaptive mode's k as the draws behind its ESS; STL/DReG on a module that calls
pyro.module without Pyro's warnings."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pvae
from pvae import diagnostics, plotting
from pvae.datasets import read_array_file
from pvae.evaluation.adaptive import AdaptiveReport
from pvae.evaluation.ais import AISEstimate, BDMCResult
from pvae.evaluation.log_px import (
    LogPxEstimate,
    format_khat,
    khat_max,
    unreliable,
    unreliable_fraction,
)
from pvae.evaluation.sandwich import gap_verdict, sandwich_text
from pvae.files import atomic_write_bytes, dumps, load_npy, load_npz, remove_orphans

ROOT = Path(__file__).resolve().parents[1]
INF, NAN = math.inf, math.nan


def small_vae(latent=2, d=6):
    torch.manual_seed(0)
    return pvae.VAE(pvae.priors.StandardNormal(latent), data_shape=(d,))


def binary(n, d=6):
    return torch.bernoulli(torch.full((n, d), 0.5), generator=torch.Generator().manual_seed(1))


# -- 1. one definition of an unreliable k̂ ---------------------------------------------------------
def test_the_one_definition_counts_inf_and_leaves_out_what_was_not_computed():
    kh = [-INF, 0.2, NAN, 0.7, INF, 0.69]
    assert unreliable(kh).tolist() == [False, False, False, True, True, False]
    assert unreliable_fraction(kh) == pytest.approx(2 / 5)
    assert unreliable_fraction(torch.tensor([INF, INF])) == 1.0
    assert unreliable_fraction([NAN, NAN]) is None
    assert khat_max([0.1, INF, NAN]) == INF and khat_max([NAN]) is None
    assert [format_khat(v) for v in (0.534, INF, -INF, None, NAN)] == [
        "0.53",
        "inf",
        "-inf",
        "n/a",
        "n/a",
    ]


def test_an_infinite_khat_is_reported_alike_in_text_json_and_warning():
    """k between 10 and ~25: PSIS's tail fit fails and k̂ = inf for every datapoint. The warning
    said 100%, the summary said nothing (fraction null, max n/a); now all agree."""
    est = pvae.log_px(small_vae(), binary(4), k=15, seed=0)
    assert torch.isinf(est.khat).all() and (est.khat > 0).all()
    s = est.summary()
    assert s["khat_frac_above_0.7"] == 1.0 == est.unreliable_fraction
    assert s["khat_max"] == INF
    assert "for 100% of datapoints" in s["warning"]
    stored = json.loads(dumps(s))  # strict JSON: inf has no spelling there, the fraction does
    assert stored["khat_max"] is None and stored["khat_frac_above_0.7"] == 1.0
    for shown in (str(est), repr(est)):
        assert "max k̂ inf" in shown and "WARNING: PSIS k̂ ≥ 0.7 for 100%" in shown


def test_a_finite_khat_still_reads_as_before():
    est = pvae.log_px(small_vae(), binary(4), k=200, seed=0)
    s = est.summary()
    assert math.isfinite(s["khat_max"]) and f"max k̂ {s['khat_max']:.2f}" in str(est)
    assert s["khat_frac_above_0.7"] == unreliable_fraction(est.khat)


def test_weight_diagnostics_and_the_bound_ladder_count_inf_as_unreliable():
    x = binary(4)
    est = pvae.log_px(small_vae(), x, k=15, seed=0)
    assert diagnostics.weight_diagnostics(est)["fraction_above_0.7"] == 1.0
    ladder = pvae.bounds(small_vae(), x, ks=(1, 15), seed=0, elbo_samples=2)
    assert ladder.log_px["khat_frac_above_0.7"] == 1.0 and ladder.log_px["khat_max"] == INF
    assert "WARNING (IWAE k=15)" in ladder.table()
    assert json.loads(dumps(ladder.to_dict()))["log_px"]["khat_frac_above_0.7"] == 1.0


def test_the_khat_figure_counts_inf_with_the_unreliable_and_says_so():
    kh = torch.tensor([INF, INF, 0.2], dtype=torch.float64)
    z = torch.zeros(3, dtype=torch.float64)
    est = LogPxEstimate(log_px=z, se=z, ess=z + 1, khat=kh, k=15, num_dims=6)
    ax = plotting.khat_plot(est).axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "k̂ ≥ 0.7 (2)" in legend and "k̂ ≤ 0.5 (1)" in legend
    assert any("2 k̂ = inf" in t.get_text() for t in ax.texts)
    import matplotlib.pyplot as plt

    plt.close("all")


def test_the_adaptive_mode_keeps_drawing_where_khat_is_inf():
    """At k = 10 every k̂ is inf: no datapoint may count as settled there."""
    est = pvae.log_px(small_vae(), binary(3), k=10, max_k=10, seed=0)
    assert torch.isinf(est.khat).all()
    assert not est.adaptive.settled.any() and est.adaptive.summary()["n_capped"] == 3


# -- 2. a single datapoint ----------------------------------------------------------------------
class TwoLatents(nn.Module):
    """docs/howto/own-model.md's module: two latents per datapoint, registered through
    pyro.module (Pyro's documented idiom), as a user writes it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.dec = nn.Linear(2, 6)
        self.enc = nn.Linear(6, 4)
        self.enc_u = nn.Linear(8, 2)

    def model(self, x):
        pyro.module("two_latents", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            u = pyro.sample("u", dist.Normal(x.new_zeros(()), 1.0))
            pyro.sample("x", dist.Normal(self.dec(z) + u.unsqueeze(-1), 0.5).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("two_latents", self)
        loc, raw = self.enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw)).to_event(1))
            u_loc, u_raw = self.enc_u(torch.cat([x.expand(*z.shape[:-1], -1), z], -1)).unbind(-1)
            pyro.sample("u", dist.Normal(u_loc, nn.functional.softplus(u_raw)))


def test_one_datapoints_diagnostics_say_n_a_instead_of_failing_after_the_estimates():
    vae, x = small_vae(), binary(1)
    with pytest.raises(ValueError, match="at least 2 datapoints"):  # the library call still says
        diagnostics.active_units(vae, x)
    dg = diagnostics.report(vae, x)
    assert dg["active_units"] is None and dg["mutual_information"] is None and "note" in dg
    assert json.loads(dumps(dg))["active_units"] is None
    lines = diagnostics.report_lines(dg)
    assert lines[0].startswith("active units    n/a of 2   I(x; z) n/a ± n/a nats")
    assert any(line.startswith("note: one datapoint") for line in lines)
    est = pvae.log_px(vae, x, k=100, seed=0)
    assert est.summary()["log_px_sd"] is None and json.loads(dumps(est.summary()))["n"] == 1


def test_one_datapoint_of_a_users_module_reports_units_per_site_as_n_a():
    dg = diagnostics.report(TwoLatents(), torch.randn(1, 6))
    assert dg["active_units_by_site"] == {"z": None, "u": None}
    assert dg["units_by_site"] == {"z": 2, "u": 1}
    assert diagnostics.report_lines(dg)[0] == "active units  z n/a of 2, u n/a of 1"


def test_the_report_of_many_datapoints_matches_the_library_calls():
    vae, x = small_vae(), binary(40)
    dg = diagnostics.report(vae, x)
    assert dg["active_units"] == diagnostics.active_units(vae, x, warn=False).count
    assert "note" not in dg and dg["latent_dim"] == 2 and len(dg["kl_per_dim"]) == 2
    by_site = diagnostics.report(TwoLatents(), torch.randn(40, 6))
    assert set(by_site["active_units_by_site"]) == {"z", "u"}
    assert all(isinstance(v, int) for v in by_site["active_units_by_site"].values())


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from pvae.cli import main

    run = tmp_path_factory.mktemp("trust") / "run"
    quick = ["--set", "model.latent_dim=3", "--set", "train.device=cpu", "--no-progress"]
    assert main(["train", "--out", str(run), "--set", "train.epochs=1", *quick]) == 0
    return run


@pytest.mark.slow
def test_evaluate_on_a_single_datapoint_reports_the_s_e_over_datapoints_as_n_a(
    trained_run, tmp_path, capsys
):
    from pvae.cli import main

    one = tmp_path / "one.npy"
    np.save(one, np.ones((1, 1, 8, 8), dtype=np.float32))
    capsys.readouterr()
    assert main(["evaluate", str(trained_run), "--data", str(one), "--k", "100"]) == 0
    text = capsys.readouterr().out
    assert "n/a s.e. over datapoints" in text and "nan" not in text
    assert main(["evaluate", str(trained_run), "--data", str(one), "--k", "100", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 1 and out["elbo_se"] is None and out["diagnostics"]["active_units"] is None


# -- 3. orphaned temporaries -----------------------------------------------------------------------
WRITER = textwrap.dedent(
    """
    import os, sys, time
    from pvae import files

    def held(src, dst):  # the data is written and synced; the rename never comes
        print("written", flush=True)
        time.sleep(600)

    os.replace = held
    files.atomic_write_bytes(sys.argv[1], b"old writer")
    """
)


def start_writer(target: Path) -> subprocess.Popen:
    """A process that writes ``target`` through atomic_write_bytes and stops before the rename."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "written\n", "the writer did not reach the rename"
    return proc


def stop(proc: subprocess.Popen) -> None:
    """SIGKILL, then reap (a zombie still counts as a live process)."""
    proc.kill()
    proc.wait()
    proc.stdout.close()


def temporaries(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.*.tmp"))


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "test.npz"
    proc = start_writer(target)
    (orphan,) = temporaries(target)
    stop(proc)  # SIGKILL between the write and the rename
    assert orphan.exists() and not target.exists()
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and temporaries(target) == []


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    target = tmp_path / "test.npz"
    proc = start_writer(target)
    try:
        (live,) = temporaries(target)
        atomic_write_bytes(target, b"mine")
        assert remove_orphans(target) == []
        assert live.exists() and live.read_bytes() == b"old writer"
        assert target.read_bytes() == b"mine"
    finally:
        stop(proc)
    atomic_write_bytes(target, b"after")  # its writer is gone now
    assert temporaries(target) == []


def test_temporaries_of_unknown_writers_and_other_files_are_left_alone(tmp_path, monkeypatch):
    target = tmp_path / "test.npz"
    names, real = [], os.replace
    monkeypatch.setattr(
        os, "replace", lambda src, dst: names.append(Path(src).name) or real(src, dst)
    )
    atomic_write_bytes(target, b"first")
    monkeypatch.undo()
    host = names[0].removesuffix(".tmp").rpartition(".")[2].partition("-")[0]
    assert names[0].endswith(f".{host}-{os.getpid()}.tmp")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    pid = int(dead.stdout)  # a process that has exited
    keep = [
        tmp_path / ".test.npz.abcd1234.tmp",  # an older pvae's: writer unknown
        tmp_path / f".test.npz.abcd1234.0badc0de-{pid}.tmp",  # another machine's
        tmp_path / f".other.npz.abcd1234.{host}-{pid}.tmp",  # another file's
        tmp_path / f".test.npz.abcd1234.{host}-{os.getpid()}.tmp",  # this process's
    ]
    gone = tmp_path / f".test.npz.abcd1234.{host}-{pid}.tmp"  # a dead writer's, for comparison
    for p in [*keep, gone]:
        p.write_bytes(b"?")
    atomic_write_bytes(target, b"new")
    assert all(p.exists() for p in keep) and not gone.exists()


# -- 4. .npz files: no advice to unpickle -------------------------------------------------------
def test_an_object_array_in_a_data_file_is_refused_naming_the_file_without_numpys_advice(
    tmp_path,
):
    npz, npy = tmp_path / "data.npz", tmp_path / "data.npy"
    np.savez(npz, x=np.array([{"a": 1}, None], dtype=object))
    np.save(npy, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for path in (npz, npy):
        with pytest.raises(ValueError) as info:
            read_array_file(path=path)
        text = str(info.value)
        assert str(path) in text and "object array" in text and "never unpickles" in text
        assert "allow_pickle" not in text and "pickle.load" not in text


@pytest.mark.parametrize("content", [b"hello, not numpy", b"", "truncated"])
def test_a_file_that_is_no_npz_is_refused_naming_it(tmp_path, content):
    path = tmp_path / "test.npz"
    if content == "truncated":
        np.savez(path, x=np.arange(10_000.0))
        content = path.read_bytes()[:3000]
    path.write_bytes(content)
    with pytest.raises(ValueError, match="cannot read") as info:
        load_npz(path)
    assert str(path) in str(info.value) and "allow_pickle" not in str(info.value)


def test_load_npz_and_load_npy_read_numeric_arrays_and_tell_one_from_the_other(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.arange(3), header=np.array('{"n": 3}'))
    got = load_npz(tmp_path / "a.npz")
    assert got["x"].tolist() == [0, 1, 2] and str(got["header"]) == '{"n": 3}'
    np.save(tmp_path / "b.npy", np.ones(2))
    assert load_npy(tmp_path / "b.npy").tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="not a single .npy array"):
        load_npy(tmp_path / "a.npz")
    with pytest.raises(ValueError, match="not an .npz archive"):
        load_npz(tmp_path / "b.npy")


# -- 5. BDMC: the signed gap --------------------------------------------------------------------
def ais_estimate(values, se, direction):
    t = torch.tensor(values, dtype=torch.float64)
    s = torch.full_like(t, se)
    return AISEstimate(t, s, t[:, None], s, s, 10, 4, 1, "sigmoid", "guide", direction, 0.1, 6)


def test_bdmc_never_prints_an_inequality_its_numbers_break():
    """The issue's numbers: lower −26.9451 above upper −26.9469, within noise."""
    res = BDMCResult(
        torch.zeros(2, 6),
        {},
        ais_estimate([-26.9451, -26.9451], 0.0015, "forward"),
        ais_estimate([-26.9469, -26.9469], 0.0015, "reverse"),
    )
    s = res.summary()
    assert s["lower"] > s["upper"] and s["gap"] < 0
    for shown in (str(res), repr(res)):
        assert "≤ log p(x) ≤" not in shown
        assert "gap upper − lower -0.0018 ± 0.0015" in shown
        assert "within 2 s.e.: the bounds agree up to Monte Carlo noise" in shown
    ladder = pvae.BoundLadder(
        n=2, iwae={1: {"mean": -27.0, "se": 0.1}}, elbo_analytic=None,
        recon={"mean": 0.0, "se": 0.0}, kl={"mean": 0.0, "se": 0.0},
        gap={"mean": 0.0, "se": 0.0}, bdmc=s,
    )  # fmt: skip
    table = ladder.table()
    assert "≤ log p(x) ≤" not in table and "gap upper − lower -0.0018" in table


def test_the_gap_verdict_follows_the_sign_and_the_s_e():
    assert gap_verdict(0.001, 0.002).startswith("within its s.e.")
    assert gap_verdict(-0.003, 0.002).startswith("within 2 s.e.")
    assert gap_verdict(-0.01, 0.002).startswith("negative by 5.0 s.e.: the bounds cross")
    assert gap_verdict(0.5, 0.01).startswith("50.0 s.e. above 0")
    assert gap_verdict(0.5, NAN) == "no s.e. to judge it by"
    s = {"lower": -1.0, "lower_se": NAN, "upper": -0.5, "upper_se": 0.1, "gap": 0.5}
    assert "± n/a" in sandwich_text({**s, "gap_se": None})


# -- 6. the adaptive mode's k ---------------------------------------------------------------------
def test_the_adaptive_mode_shows_the_draws_its_ess_was_computed_over():
    vae = small_vae(latent=3)
    x = binary(30)
    est = pvae.log_px(vae, x, k=10, max_k=640, seed=0)
    lo, hi = int(est.adaptive.k_used.min()), int(est.adaptive.k_used.max())
    assert lo < hi, "this test needs datapoints that drew different numbers"
    s = est.summary()
    assert s["ess_mean"] > est.k  # the issue: "k=100, mean ESS 263"
    assert est.draws == f"{lo}..{hi}" and s["adaptive"]["k_min"] == lo
    text = str(est)
    assert f"k={lo}..{hi};" in text and f"k={est.k};" not in text
    ess = float(text.split("mean ESS ")[1].split(",")[0])
    assert ess <= hi
    assert f"(k {lo}..{hi} per datapoint, mean" in str(est.adaptive)
    fixed = pvae.log_px(vae, x, k=50, seed=0)
    assert fixed.draws == "50" and "k=50;" in str(fixed)


def test_the_khat_figure_titles_the_draws_used():
    kh = torch.tensor([0.2, 0.3], dtype=torch.float64)
    z = torch.zeros(2, dtype=torch.float64)
    report = AdaptiveReport(torch.tensor([100, 6400]), torch.tensor([True, True]), 7, None, 6400)
    est = LogPxEstimate(z, z, z + 300, kh, 100, 6, report)
    assert "k = 100..6400 samples" in plotting.khat_plot(est).axes[0].get_title()
    import matplotlib.pyplot as plt

    plt.close("all")


# -- 7. STL and DReG on a user's module -------------------------------------------------------
@pytest.mark.parametrize("estimator", ["stl", "dreg"])
def test_stl_and_dreg_on_a_module_that_calls_pyro_module_warn_nothing(estimator):
    m, x = TwoLatents(), torch.randn(8, 6)
    objective = pvae.objectives.IWAE(num_particles=4, estimator=estimator)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            objective.differentiable_loss(m.model, m.guide, x).backward()
    assert [str(w.message) for w in caught] == []
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
