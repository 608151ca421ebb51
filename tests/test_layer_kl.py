"""KL and active units per layer of a hierarchical VAE: the estimates (pvae.diagnostics.
layer_summary), the per-epoch history columns, the closing summary, pvae evaluate's diagnostics
and pvae plot --what kl."""

from __future__ import annotations

import math
from pathlib import Path

import pyro
import pytest
import torch

import pvae
from pvae.cli import main
from pvae.cli.plot import available
from pvae.datasets import DataSplits, Split
from pvae.diagnostics import layer_columns, layer_history, layer_summary, report, report_lines
from pvae.plotting.kl import layer_kl_curves
from pvae.training import validation
from pvae.training.progress import summary_table

EXAMPLE = Path(__file__).parent.parent / "examples" / "configs" / "iwae-2layer.toml"


def binary(n: int, d: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, d), 0.5), generator=g)


def small() -> pvae.HierarchicalVAE:
    torch.manual_seed(0)
    return pvae.HierarchicalVAE((3, 2), hidden=[[8], [8]], data_shape=(6,)).double().eval()


def test_layer_kl_is_the_sum_of_its_units_and_estimates_what_layer_kls_does():
    m = small()
    x = binary(8).double().repeat(100, 1)  # 800 rows: Monte Carlo over the chain's draws
    pyro.set_rng_seed(0)
    summary = layer_summary(m, x, num_samples=2)
    assert [(s.site, s.dim) for s in summary] == [("z1", 3), ("z2", 2)]
    for s in summary:
        assert s.units.shape == (s.dim,)
        assert s.kl == pytest.approx(float(s.units.sum()), rel=1e-12)
    # layer_kls is an independent one-draw estimator of the same expectations: 20 chunks give
    # its spread, against which the two must agree.
    chunks = torch.tensor([m.layer_kls(c) for c in x.chunk(20)], dtype=torch.float64)
    se = chunks.std(0) / math.sqrt(20)  # s.e. of their mean; summary's is √20 smaller
    for s, mean, err in zip(summary, chunks.mean(0), se, strict=True):
        assert abs(s.kl - float(mean)) < 5 * float(err) * math.sqrt(1 + 1 / 20), s.site


def test_active_units_per_layer_follow_the_posterior_means():
    m = small()
    with torch.no_grad():
        last0 = [p for p in m.encoders[0].net.modules() if isinstance(p, torch.nn.Linear)][-1]
        last0.weight.mul_(40.0)  # z1's means move strongly with x: every unit active
        last1 = [p for p in m.encoders[1].net.modules() if isinstance(p, torch.nn.Linear)][-1]
        last1.weight.zero_()  # z2's mean no longer depends on z1: no unit active
    x = binary(64).double()
    pyro.set_rng_seed(1)
    active = {s.site: s.active for s in layer_summary(m, x)}
    assert active == {"z1": 3, "z2": 0}
    assert [s.active for s in layer_summary(m, x[:1])] == [None, None]  # no variance of one


def test_a_one_layer_vae_has_no_layer_summary():
    vae = pvae.VAE(pvae.priors.StandardNormal(2), data_shape=(6,))
    assert layer_summary(vae, binary(10)) is None
    assert validation.layer_points(vae, binary(10)) == {}


def splits(n: int) -> DataSplits:
    x = binary(n)
    return DataSplits("toy", Split(x[: n // 2], None), Split(x[n // 2 :], None), Split(x[:4], None))


def fit(m, data, epochs=2):
    return pvae.fit(
        m, data, objective="elbo", epochs=epochs, batch_size=8, progress=False, device="cpu"
    )


def test_each_epoch_records_kl_and_active_units_per_layer_without_moving_training(monkeypatch):
    data = splits(48)
    torch.manual_seed(0)
    res = fit(pvae.HierarchicalVAE((3, 2), hidden=[[8], [8]]), data)
    for r in res.history:
        assert {"val_kl_z1", "val_kl_z2", "val_active_z1", "val_active_z2"} <= set(r)
        assert sorted(k for k in r if k.startswith("val_unit_kl_z2_")) == [
            "val_unit_kl_z2_0",
            "val_unit_kl_z2_1",
        ]
        units = sum(r[f"val_unit_kl_z1_{u}"] for u in range(3))
        assert r["val_kl_z1"] == pytest.approx(units, rel=1e-6)  # float32 units
        assert all(r[f"val_active_z{i}"] in range(d + 1) for i, d in ((1, 3), (2, 2)))
    # The draws come from a forked random state: training is what it is without them.
    monkeypatch.setattr(validation, "layer_points", lambda module, x: {})
    torch.manual_seed(0)
    bare = fit(pvae.HierarchicalVAE((3, 2), hidden=[[8], [8]]), data)
    assert [r["train_elbo"] for r in bare.history] == [r["train_elbo"] for r in res.history]
    assert [r["val_elbo"] for r in bare.history] == [r["val_elbo"] for r in res.history]
    assert "val_kl_z1" not in bare.history[0]
    # The closing table names the layers' KL and active units, not the per-unit columns.
    table = summary_table(res.final)
    assert "val KL of layer z1" in table and "active units of layer z2" in table
    assert "val_unit_kl" not in table
    line = next(t for t in table.splitlines() if t.startswith("val KL of layer z2"))
    assert line.endswith(" nats")


def test_a_one_layer_run_records_no_layer_columns():
    torch.manual_seed(0)
    res = fit(pvae.VAE(pvae.priors.StandardNormal(2)), splits(24), epochs=1)
    assert "val_elbo" in res.final
    assert not any(k.startswith(("val_kl_", "val_active_", "val_unit_kl_")) for k in res.final)


def test_layer_history_reads_the_columns_back_and_fills_missing_epochs_with_nan():
    summary = layer_summary(small(), binary(20).double())
    history = [{"epoch": 1, "val_elbo": -4.0}, {"epoch": 2, **layer_columns(summary)}]
    epochs, layers, units = layer_history(history)
    assert epochs == [1.0, 2.0] and list(layers) == ["z1", "z2"]
    assert math.isnan(layers["z1"][0]) and layers["z1"][1] == summary[0].kl
    assert [len(row) for row in units["z1"]] == [3, 3]
    assert units["z2"][1] == [float(v) for v in summary[1].units]


def test_layer_kl_curves_draw_one_panel_per_layer_and_refuse_a_history_without_them(tmp_path):
    m = small()
    history = []
    for epoch in (1, 2, 3):
        summary = layer_summary(m, binary(20, seed=epoch).double())
        history.append({"epoch": epoch, **layer_columns(summary)})
    fig = layer_kl_curves(history, path=tmp_path / "kl.png")
    assert len([a for a in fig.axes if a.get_label() != "<colorbar>"]) == 3
    assert [line.get_label().split()[0] for line in fig.axes[0].get_lines()] == ["z1", "z2"]
    assert (tmp_path / "kl.png").stat().st_size > 0
    with pytest.raises(ValueError, match="no KL per layer"):
        layer_kl_curves([{"epoch": 1, "val_elbo": -3.0}])


def test_evaluate_diagnostics_give_kl_per_layer():
    dg = report(small(), binary(30).double())
    assert set(dg["kl_by_site"]) == {"z1", "z2"}
    assert all(math.isfinite(v) for v in dg["kl_by_site"].values())
    assert report_lines(dg)[1].startswith("KL per layer  z1 ")


def test_pvae_plot_what_kl_draws_a_hierarchical_runs_layers(tmp_path, capsys):
    assert "kl" in available(small(), (6,))
    out = tmp_path / "run"
    argv = ["--set", "train.epochs=2", "--set", "train.device=cpu", "--no-progress"]
    argv += ["--set", "train.batch_size=256", "--set", "model.latent_dim=[6, 3]"]
    argv += ["--set", "model.hidden=[[16], [8]]", "--set", "train.num_particles=1"]
    assert main(["train", "--config", str(EXAMPLE), "--out", str(out), *argv]) == 0
    capsys.readouterr()
    assert main(["plot", str(out), "--what", "kl", "--device", "cpu"]) == 0
    assert (out / "kl.png").stat().st_size > 0
