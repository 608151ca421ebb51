"""pvae.compare: per-datapoint evaluations on disk, seeds pooled per configuration, paired
differences on the same datapoints, checked against numpy computed by hand on real runs."""

import argparse
import json
import math
import shutil

import numpy as np
import pytest
import torch

import pvae
from pvae.cli.compare import add_parser, run
from pvae.compare import (
    compare,
    data_fingerprint,
    evaluate_run,
    load_evaluation,
    save_evaluation,
)
from pvae.config import Config, load_data

TINY = {
    "model": {
        "latent_dim": 2,
        "encoder": {"name": "mlp", "hidden": [16]},
        "decoder": {"name": "mlp", "hidden": [16]},
    },
    "train": {"epochs": 2, "progress": False, "device": "cpu"},
    "log": {"quiet": True, "csv": False},
    "eval": {"k": 20, "curve_ks": [5], "curve_every": 1, "curve_subset": 32},
}
MOG = {"name": "mog", "num_components": 3}
SEEDS = {"normal": [0, 1, 2], "mog": [0, 1]}


def _config(prior, seed):
    d = json.loads(json.dumps(TINY))
    d["train"]["seed"] = seed
    if prior is not None:
        d["model"]["prior"] = prior
    return Config.from_dict(d)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two configurations (standard normal prior: 3 seeds; mixture prior: 2 seeds), trained for
    2 epochs and evaluated on the test split with k = 20."""
    root = tmp_path_factory.mktemp("compare")
    data = load_data(_config(None, 0).data)
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is several times faster on shared CPUs
    try:
        for name, prior in (("normal", None), ("mog", MOG)):
            out[name] = []
            for seed in SEEDS[name]:
                path = root / name / f"seed-{seed}"
                pvae.train_from_config(_config(prior, seed), path, data=data)
                evaluate_run(path, "test", seed=seed)
                out[name].append(path)
    finally:
        torch.set_num_threads(threads)
    return out


def test_save_and_load_round_trip_float64(tmp_path):
    torch.manual_seed(0)
    vae = pvae.VAE(pvae.priors.StandardNormal(2), data_shape=(4,))
    x = torch.bernoulli(torch.full((5, 4), 0.5))
    elbo = pvae.evaluate_elbo(vae, x, num_samples=3)
    lp = pvae.log_px(vae, x, k=10, seed=0)
    path = save_evaluation(tmp_path, "test", x, elbo=elbo, log_px=lp, epoch=7, meta={"seed": 3})
    assert path == tmp_path / "evaluation" / "test.npz"
    ev = load_evaluation(tmp_path, "test")
    assert ev.n == 5 and ev.epoch == 7 and ev.k == 10 and ev.meta == {"seed": 3}
    assert ev.log_px.dtype == np.float64
    np.testing.assert_array_equal(ev.log_px, lp.log_px.double().numpy())
    np.testing.assert_array_equal(ev.elbo, elbo.elbo.double().numpy())
    np.testing.assert_array_equal(ev.log_px_se, lp.se.double().numpy())
    assert ev.fingerprint == data_fingerprint(x) == data_fingerprint(x.double())
    assert ev.fingerprint != data_fingerprint(x.flip(0))


def test_save_evaluation_refuses_bad_input(tmp_path):
    vae = pvae.VAE(pvae.priors.StandardNormal(2), data_shape=(4,))
    x = torch.ones(3, 4)
    elbo = pvae.evaluate_elbo(vae, x)
    with pytest.raises(ValueError, match="split must be a name"):
        save_evaluation(tmp_path, "../x", x, elbo=elbo)
    with pytest.raises(ValueError, match=r"elbo\.elbo must hold one value per datapoint \(2\)"):
        save_evaluation(tmp_path, "test", x[:2], elbo=elbo)
    with pytest.raises(TypeError, match="elbo must be a pvae.ElboEstimate"):
        save_evaluation(tmp_path, "test", x, elbo=elbo.elbo)
    with pytest.raises(TypeError, match="meta must hold JSON values"):
        save_evaluation(tmp_path, "test", x, elbo=elbo, meta={"a": float("nan")})


def test_pooled_metrics_match_numpy(runs):
    c = compare([*runs["normal"], *runs["mog"]])
    assert [g.label for g in c.groups] == [
        "model.prior.name=standard_normal",
        "model.prior.name=mog, model.prior.num_components=3",
    ]
    for g, name in zip(c.groups, ("normal", "mog"), strict=True):
        assert g.seeds == SEEDS[name]
        lp = np.array([load_evaluation(r).log_px.mean() for r in runs[name]])
        assert g.metrics["test_log_px"].mean == pytest.approx(lp.mean(), abs=1e-12)
        assert g.metrics["test_log_px"].se == pytest.approx(
            np.std(lp, ddof=1) / np.sqrt(len(lp)), rel=1e-9
        )
        train = np.array([json.loads((r / "metrics.json").read_text())[-1] for r in runs[name]])
        tr = np.array([h["train_elbo"] for h in train])
        assert g.metrics["train_elbo"].mean == pytest.approx(tr.mean(), abs=1e-9)
        assert g.metrics["train_elbo"].se == pytest.approx(tr.std(ddof=1) / math.sqrt(len(tr)))
        assert g.metrics["val_log_px"].values == pytest.approx([h["val_log_px"] for h in train])
        # different seeds give different models: the spread over seeds is not zero
        assert g.metrics["test_log_px"].se > 1e-4


def test_paired_differences_match_a_hand_computation(runs):
    c = compare([*runs["normal"], *runs["mog"]], reference=0)
    assert c.reference == c.groups[0].label and c.metric == "log_px"
    (d,) = c.differences
    a = np.stack([load_evaluation(r).log_px for r in runs["mog"]])
    b = np.stack([load_evaluation(r).log_px for r in runs["normal"]])
    sa = np.stack([load_evaluation(r).log_px_se for r in runs["mog"]])
    sb = np.stack([load_evaluation(r).log_px_se for r in runs["normal"]])
    n = a.shape[1]
    diff = a.mean(0) - b.mean(0)
    assert d.n_points == n == 359
    assert d.mean == pytest.approx(diff.mean(), abs=1e-12)
    # the paired mean is the difference of the groups' pooled means
    assert d.mean == pytest.approx(
        c.groups[1].metrics["test_log_px"].mean - c.groups[0].metrics["test_log_px"].mean, abs=1e-9
    )
    assert d.se_datapoints == pytest.approx(diff.std(ddof=1) / math.sqrt(n), rel=1e-9)
    ma, mb = a.mean(1), b.mean(1)
    assert d.se_seeds == pytest.approx(math.sqrt(ma.var(ddof=1) / 2 + mb.var(ddof=1) / 3), rel=1e-9)
    mc = math.sqrt(((sa**2).sum(0) / 4 + (sb**2).sum(0) / 9).sum()) / n
    assert d.se_mc == pytest.approx(mc, rel=1e-9)
    # default reference: the best group by mean test log p(x)
    best = max(c.groups, key=lambda g: g.metrics["test_log_px"].mean)
    auto = compare([*runs["normal"], *runs["mog"]])
    assert auto.reference == best.label and auto.differences[0].mean <= 0


def test_folders_of_runs_and_one_group(runs):
    parent = runs["normal"][0].parent
    c = compare([parent])
    assert len(c.groups) == 1 and c.groups[0].label == parent.name
    assert c.groups[0].runs == runs["normal"] and c.differences == []
    assert "nothing to compare" in c.table()


def test_strict_json_table_and_plot(runs, tmp_path):
    # one seed of the mixture: its s.e. over seeds does not exist and is null in JSON
    c = compare([*runs["normal"], runs["mog"][0]])
    d = c.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text) == d
    mog = d["groups"][1]
    assert mog["metrics"]["test_log_px"]["se"] is None and mog["seeds"] == [0]
    assert d["differences"][0]["se_seeds"] is None
    assert d["differences"][0]["se_datapoints"] > 0
    table = c.table()
    for g in c.groups:
        assert g.label in table
    assert "1 seed" in table and "paired differences of test log p(x)" in table
    fig = c.plot(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000
    ax = fig.axes[0]
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() and ax.get_title()
    assert len(ax.get_lines()) == 4  # val ELBO and val log p(x) for each group
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:2] == [f"{c.groups[0].label} (3 seeds)", f"{c.groups[1].label} (1 seed)"]


def test_command_line(runs, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "compare",
            *map(str, runs["normal"] + runs["mog"]),
            "--json",
            "--plot",
            str(tmp_path / "c.png"),
        ]
    )
    assert args.func(args) == 0 and args.func is run
    out = json.loads(capsys.readouterr().out)
    assert [g["seeds"] for g in out["groups"]] == [[0, 1, 2], [0, 1]]
    assert (tmp_path / "c.png").is_file()


def test_errors_name_the_run_and_the_fix(runs, tmp_path):
    a, b = runs["normal"][0], tmp_path / "copy"
    shutil.copytree(runs["mog"][0], b)
    # another set of datapoints: the fingerprints differ
    ev = load_evaluation(b)
    x = load_data(_config(None, 0).data).test.observed()
    vae = pvae.load_run(b).vae
    save_evaluation(b, "test", x[:-1], elbo=pvae.evaluate_elbo(vae, x[:-1]), epoch=ev.epoch)
    with pytest.raises(ValueError, match=rf"runs '{a}' and '{b}' were evaluated on different"):
        compare([a, b])
    # a datapoint with no mass: one NaN would make every mean and s.e. NaN
    elbo = pvae.evaluate_elbo(vae, x)
    elbo.elbo[3] = -math.inf
    save_evaluation(b, "test", x, elbo=elbo, epoch=ev.epoch)
    with pytest.raises(ValueError, match=rf"run '{b}': 1 of the 359 stored test ELBO values"):
        compare([a, b])
    # a stale evaluation
    save_evaluation(b, "test", x, elbo=pvae.evaluate_elbo(vae, x), epoch=1)
    with pytest.raises(ValueError, match=rf"is of epoch 1.*pvae evaluate {b} --split test"):
        compare([a, b])
    # no evaluation at all
    shutil.rmtree(b / "evaluation")
    with pytest.raises(ValueError, match=rf"run '{b}' has no stored evaluation.*pvae evaluate {b}"):
        compare([a, b])
    with pytest.raises(ValueError, match="does not exist"):
        compare([a, tmp_path / "nowhere"])
    (tmp_path / "file.txt").write_text("")
    with pytest.raises(ValueError, match="is not a pvae run folder"):
        compare([a, tmp_path / "file.txt"])
    with pytest.raises(ValueError, match="is given twice"):
        compare([a, a])
    # the same configuration and seed twice: repeats, not seeds
    shutil.rmtree(b)
    shutil.copytree(a, b)
    with pytest.raises(ValueError, match="same train.seed"):
        compare([a, b])
    with pytest.raises(
        ValueError, match="neither a group label, one of the runs nor a group index"
    ):
        compare([a], reference="vamp")


def test_compare_evaluates_runs_without_a_stored_evaluation(runs, tmp_path, capsys):
    """pvae compare evaluates (and stores) a run with no evaluation, or a stale one, with the
    run's own [eval] settings and seed 0, exactly as pvae evaluate does; it says so on stderr;
    --no-evaluate refuses instead and writes nothing."""
    fresh, kept = tmp_path / "fresh", tmp_path / "kept"
    shutil.copytree(runs["normal"][0], fresh)
    shutil.copytree(runs["normal"][1], kept)
    shutil.rmtree(fresh / "evaluation")
    before = (kept / "evaluation" / "test.npz").read_bytes()
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    refused = parser.parse_args(["compare", str(fresh), str(kept), "--no-evaluate"])
    with pytest.raises(ValueError, match=rf"run '{fresh}' has no stored evaluation"):
        refused.func(refused)
    assert not (fresh / "evaluation").exists()
    args = parser.parse_args(["compare", str(fresh), str(kept), "--json", "--device", "cpu"])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    notices = [line for line in captured.err.splitlines() if "evaluating" in line]
    assert notices == [
        f"pvae compare: evaluating {fresh} (no stored test evaluation) with its [eval] "
        "settings, as pvae evaluate does; the values are stored in the run folder "
        "(--no-evaluate refuses instead)"
    ]
    assert (kept / "evaluation" / "test.npz").read_bytes() == before  # a current one is kept
    stored = load_evaluation(fresh)
    expected = evaluate_run(fresh, "test", store=False)  # pvae evaluate's defaults: seed 0
    assert stored.k == TINY["eval"]["k"] == 20 and stored.meta["num_samples"] == 100
    np.testing.assert_array_equal(stored.log_px, expected.log_px)
    np.testing.assert_array_equal(stored.elbo, expected.elbo)
    out = json.loads(captured.out)
    assert out["groups"][0]["seeds"] == [0, 1]
    assert out["groups"][0]["metrics"]["test_log_px"]["values"][0] == pytest.approx(
        float(stored.log_px.mean()), abs=1e-12
    )
    # a stale evaluation (the run trained on) is evaluated again, of the new last epoch
    cfg = _config(None, 0)
    cfg.train.epochs = 3
    pvae.train_from_config(cfg, fresh, resume=True)
    notes = []
    c = compare([fresh, kept], evaluate=True, on_evaluate=lambda p, why: notes.append((p, why)))
    assert notes == [
        (fresh, "its stored test evaluation is of epoch 2, the run's last is 3"),
    ]
    assert load_evaluation(fresh).epoch == 3
    assert [g.seeds for g in c.groups] == [[0], [1]]  # 3 epochs and 2: two configurations
