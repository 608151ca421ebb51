import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pvae.rundir
from pvae.cli import PLOTS, main

QUICK = [
    "--set",
    "train.epochs=2",
    "--set",
    "model.latent_dim=3",
    "--set",
    "train.device=cpu",
    "--no-progress",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--out", str(out), *QUICK]) == 0
    return out


def test_evaluate_json_is_one_object(run_dir, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--split", "val", "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"] == "val" and out["n"] == 144 and out["epoch"] == 2
    assert -60 < out["elbo"] < 0 and out["elbo_se"] > 0 and out["analytic_kl"] is True
    assert out["elbo"] == pytest.approx(out["recon"] - out["kl"], rel=1e-5)


def test_evaluate_reports_log_px_next_to_the_elbo(run_dir, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--k", "200", "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["log_px_k"] == 200 and out["log_px_se"] > 0
    # log p(x) ≥ E[IWAE_200] ≥ ELBO, up to Monte Carlo error.
    assert out["log_px"] > out["elbo"] - 4 * out["log_px_se"]
    assert main(["evaluate", str(run_dir), "--k", "5", "--device", "cpu"]) == 0
    assert "max k̂ n/a" in capsys.readouterr().out
    assert main(["evaluate", str(run_dir), "--k", "-1"]) == 2
    assert "--k must be a positive integer" in capsys.readouterr().err


def test_ais_and_bdmc_from_the_shell(run_dir, capsys):
    capsys.readouterr()
    args = ["ais", str(run_dir), "--subset", "6", "--steps", "10", "--chains", "3", "--bdmc", "4"]
    assert main([*args, "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ais"]["n"] == 6 and out["ais"]["steps"] == 10 and out["ais"]["chains"] == 3
    assert out["bdmc"]["n"] == 4 and out["bdmc"]["upper"] >= out["bdmc"]["lower"] - 1.0
    assert main([*args, "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "AIS forward (lower bound) log p(x)" in text and "BDMC" in text
    assert main(["ais", str(run_dir), "--steps", "0", "--device", "cpu"]) == 2
    assert "steps must be a positive integer" in capsys.readouterr().err
    ladder = ["bounds", str(run_dir), "--k", "1", "10", "--ais-steps", "5", "--ais-chains", "2"]
    assert main([*ladder, "--bdmc", "3", "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ais"]["steps"] == 5 and out["bdmc"]["n"] == 3
    assert main([*ladder, "--device", "cpu"]) == 0
    assert "AIS T=5 C=2" in capsys.readouterr().out


def test_evaluate_adaptive_mode_reports_what_it_did(run_dir, capsys):
    capsys.readouterr()
    args = ["evaluate", str(run_dir), "--k", "20", "--max-k", "80", "--device", "cpu"]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rep = out["log_px_adaptive"]
    assert rep["max_k"] == 80 and 20 <= rep["k_mean"] <= 80 and rep["rounds"] >= 1
    assert rep["n_settled"] + rep["n_capped"] == out["n"]
    assert main(args) == 0
    assert f"{rep['n_settled']}/{out['n']} datapoints reached k̂ < 0.7" in capsys.readouterr().out
    assert main([*args[:-2], "--max-k", "10", "--device", "cpu"]) == 2
    assert "max_k must be at least k=20" in capsys.readouterr().err


@pytest.mark.parametrize("threshold,warned", [(-1.0, True), (1.0, False)])
def test_evaluate_says_when_the_log_px_se_is_unreliable(
    run_dir, capsys, monkeypatch, threshold, warned
):
    # The warning rule is k̂'s (tested on exact answers in test_log_px); here: where it shows.
    module = importlib.import_module("pvae.evaluation.log_px")  # the module, not the function
    monkeypatch.setattr(module, "KHAT_WARN_FRACTION", threshold)
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--k", "50", "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["log_px_warning"] is not None) == warned
    assert main(["evaluate", str(run_dir), "--k", "50", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert ("WARNING: PSIS k̂ ≥ 0.7" in text) == warned
    assert main(["bounds", str(run_dir), "--k", "1", "50", "--device", "cpu"]) == 0
    assert ("WARNING (IWAE k=50)" in capsys.readouterr().out) == warned


def test_bounds_prints_the_ladder_and_a_plot(run_dir, tmp_path, capsys):
    capsys.readouterr()
    png = tmp_path / "ladder.png"
    assert (
        main(
            [
                "bounds",
                str(run_dir),
                "--k",
                "1",
                "10",
                "100",
                "--json",
                "--plot",
                str(png),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert set(out["iwae"]) == {"1", "10", "100"} and out["n"] == 359
    assert out["iwae"]["100"]["mean"] > out["iwae"]["1"]["mean"]
    assert out["elbo_mc"] == out["iwae"]["1"] and out["gap"]["mean"] > 0
    with Image.open(png) as im:
        assert im.format == "PNG"
    assert main(["bounds", str(run_dir), "--k", "1", "10", "--device", "cpu"]) == 0
    assert "IWAE k=10" in capsys.readouterr().out
    assert main(["bounds", str(run_dir), "--k", "0"]) == 2
    assert "ks entries must be a positive integer, got 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("plot", "match"),
    [
        ("no/x.png", "--plot 'no/x.png': folder 'no' does not exist"),
        (".", "--plot must be a file path such as ./x.png, got the folder '.'"),
    ],
)
def test_bounds_refuses_a_bad_plot_path_before_computing(
    run_dir, plot, match, tmp_path, monkeypatch, capsys
):
    def never(*a, **k):
        raise AssertionError("the ladder was computed before the --plot path was checked")

    monkeypatch.setattr("pvae.cli.bounds.bounds", never)
    monkeypatch.chdir(tmp_path)
    assert main(["bounds", str(run_dir), "--plot", plot, "--device", "cpu"]) == 2
    assert capsys.readouterr().err == f"pvae bounds: error: {match}\n"


def test_sample_writes_a_png_grid(run_dir, tmp_path, capsys):
    assert (
        main(
            [
                "sample",
                str(run_dir),
                "-n",
                "16",
                "--out",
                str(tmp_path / "s.png"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    with Image.open(tmp_path / "s.png") as im:
        assert im.format == "PNG" and im.size[0] > 8 * 8


def test_resume_extends_a_run(run_dir, capsys):
    assert (
        main(
            [
                "train",
                "--resume",
                str(run_dir),
                "--set",
                "train.epochs=3",
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["epoch"] == 3
    assert len(json.loads((run_dir / "metrics.json").read_text())) == 3


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--set", "model.prior.name=vampp"], "unknown model.prior.name 'vampp'"),
        (["--set", "data.name=svhn"], "unknown dataset 'svhn'"),
        (["--set", "train.batch_size=0"], "train.batch_size must be a positive integer, got 0"),
        (["--set", "model.encoder.hidden=[0]"], "hidden must be a positive integer, got 0"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(argv, match, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--out", str(out), *argv, "--no-progress"]) == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


def test_data_outside_the_likelihoods_support_writes_nothing(tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "x.npy", np.linspace(0, 5, 400).reshape(40, 10).astype(np.float32))
    out = tmp_path / "r"
    argv = [
        "train",
        "--out",
        str(out),
        "--set",
        "data.name=file",
        "--set",
        f"data.path={str(tmp_path / 'x.npy')!r}".replace("'", '"'),
        "--set",
        "data.binarize=none",
        "--no-progress",
    ]
    assert main(argv) == 2
    assert r"data must lie in [0, 1] for a Bernoulli likelihood" in capsys.readouterr().err
    assert not out.exists()


def test_evaluate_rejects_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "is not a pvae run folder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def installed_help():
    """``pvae --help`` from the installed command, run once for the tests that read it."""
    exe = Path(sys.executable).with_name("pvae")
    return subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True)


def test_installed_command_and_module_entry_point(installed_help):
    proc = installed_help
    assert "train" in proc.stdout and "evaluate" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "pvae", "sample", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "-n N" in proc.stdout


def test_readme_opens_with_the_two_commands_ci_runs():
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in readme.strip().splitlines()]
    assert commands == ["make run", "make test"]
    ci = [
        line.strip()
        for line in (root / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "make test" in ci and "make run" in ci


def test_zoo_components_are_recorded_and_rebuilt_by_evaluate(tmp_path, capsys):
    out = tmp_path / "zoo"
    argv = [
        "train",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "train.epochs=1",
        "--set",
        "model.prior.name=vamp",
        "--set",
        "model.prior.num_pseudo_inputs=10",
        "--set",
        "model.guide.name=low_rank",
        "--set",
        "model.guide.rank=3",
        "--set",
        "model.likelihood.name=continuous_bernoulli",
        "--set",
        "data.binarize=none",
        "--set",
        "train.device=cpu",
    ]
    assert main(argv) == 0
    assert "no closed-form KL" in capsys.readouterr().err  # one notice, then MC KL
    import pvae

    run = pvae.load_run(out)
    assert type(run.vae.prior).__name__ == "VampPrior"
    assert run.vae.prior.pseudo_inputs.shape == (10, 1, 8, 8)
    assert type(run.vae.encoder).__name__ == "LowRankNormal" and run.vae.encoder.rank == 3
    assert run.checkpoint["config"]["model"]["likelihood"] == {"name": "continuous_bernoulli"}
    assert main(["evaluate", str(out), "--k", "50", "--json", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["analytic_kl"] is False and res["log_px"] > res["elbo"] - 4 * res["log_px_se"]


@pytest.mark.parametrize("what", PLOTS)
def test_plot_writes_each_figure(run_dir, what, tmp_path):
    out = tmp_path / f"{what}.png"
    assert (
        main(
            [
                "plot",
                str(run_dir),
                "--what",
                what,
                "--out",
                str(out),
                "--k",
                "50",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    with Image.open(out) as im:
        assert im.format == "PNG"


def test_evaluate_json_carries_the_diagnostics(run_dir, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--k", "50", "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    d = out["diagnostics"]
    assert 0 <= d["active_units"] <= 3 and len(d["kl_per_dim"]) == 3
    assert 0 <= d["mutual_information"] <= math.log(359) + 4 * d["mutual_information_se"]
    assert 0 <= d["prior_hole_fraction"] <= 1
    assert len(out["weights"]["worst"]) == 5


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["-n", "0"], "-n must be a positive integer, got 0"),
        (["-n", "-3"], "-n must be a positive integer, got -3"),
        (["--out", "no/x.png"], "--out 'no/x.png': folder 'no' does not exist"),
        (["--out", "."], "--out must be a file path such as ./x.png, got the folder '.'"),
    ],
    ids=["n=0", "n<0", "no-folder", "folder"],
)
def test_sample_refuses_bad_arguments_with_a_message(
    run_dir, argv, match, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", str(run_dir), *argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err == f"pvae sample: error: {match}\n"
    assert list(tmp_path.iterdir()) == []


def test_sample_draws_from_the_prior_without_the_training_data(tmp_path, capsys):
    import numpy as np

    data = tmp_path / "x.npy"
    np.save(data, (np.random.default_rng(0).random((60, 1, 8, 8)) > 0.5).astype(np.float32))
    out = tmp_path / "r"
    argv = ["--set", "data.name=file", "--set", f'data.path="{data}"']
    assert main(["train", "--out", str(out), *argv, "--set", "data.binarize=none", *QUICK]) == 0
    data.unlink()
    png = tmp_path / "s.png"
    assert main(["sample", str(out), "-n", "5", "--out", str(png), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote 5 samples to {png}"
    with Image.open(png) as im:
        assert im.format == "PNG"


def strict_json(text: str) -> dict:
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "--k", "5"],  # k < 10: k̂ is NaN, also inside weights.worst[]
        ["bounds", "--k", "1", "5"],
        ["ais", "--subset", "3", "--steps", "3", "--chains", "2"],
    ],
    ids=["evaluate", "bounds", "ais"],
)
def test_every_json_output_is_strict_json(run_dir, argv, capsys):
    capsys.readouterr()
    command, *rest = argv
    assert main([command, str(run_dir), *rest, "--json", "--device", "cpu"]) == 0
    out = strict_json(capsys.readouterr().out)
    assert out["run"] == str(run_dir)
    if command == "evaluate":
        assert out["weights"]["worst"] and out["weights"]["worst"][0]["khat"] is None


def test_train_json_is_strict_json(tmp_path, capsys):
    argv = ["train", "--out", str(tmp_path / "r"), *QUICK, "--set", "train.epochs=1", "--json"]
    assert main(argv) == 0
    assert strict_json(capsys.readouterr().out.splitlines()[-1])["epoch"] == 1


def test_help_lists_every_command_without_markup(installed_help):
    proc = installed_help
    for command in ("train", "evaluate", "bounds", "ais", "compare", "plot", "sample"):
        assert command in proc.stdout
    assert "``" not in proc.stdout and ":class:" not in proc.stdout


def test_evaluate_scores_an_external_file_like_the_runs_own_data(run_dir, tmp_path, capsys):
    from pvae.runs import load_run

    data = load_run(run_dir, device="cpu").data
    arr = (data.test.x[:50].numpy() * 255).round().astype("uint8")  # uint8 → /255 as the run
    np.save(tmp_path / "x.npy", arr)
    capsys.readouterr()
    args = ["evaluate", str(run_dir), "--k", "0", "--device", "cpu", "--json"]
    assert main([*args, "--data", str(tmp_path / "x.npy")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 50 and out["split"] == f"file:{tmp_path / 'x.npy'}"
    assert -60 < out["elbo"] < 0
    np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 3, 3), dtype="float32"))
    assert main([*args, "--data", str(tmp_path / "wrong.npz")]) == 2
    err = capsys.readouterr().err
    assert "(1, 3, 3) do not fit" in err and "(1, 8, 8)" in err
    np.save(tmp_path / "big.npy", np.full((4, 8, 8), 3.0, dtype="float32"))
    assert main([*args, "--data", str(tmp_path / "big.npy")]) == 2
    assert "intensities in [0, 1]" in capsys.readouterr().err


def test_train_seeds_makes_one_comparable_run_per_seed(tmp_path, capsys):
    out = tmp_path / "seeds"
    quick = [a for a in QUICK if a != "--no-progress"]
    assert main(["train", "--out", str(out), *quick, "--seeds", "3", "5", "--quiet"]) == 0
    assert capsys.readouterr().out == ""  # --quiet: nothing but errors
    runs = sorted(p.name for p in out.iterdir())
    assert runs == ["seed-3", "seed-5"]
    h3 = json.loads((out / "seed-3" / "metrics.json").read_text())
    h5 = json.loads((out / "seed-5" / "metrics.json").read_text())
    assert h3[-1]["epoch"] == h5[-1]["epoch"] == 2
    assert h3[-1]["train_elbo"] != h5[-1]["train_elbo"]  # different seeds, different runs
    assert "seed = 3" in (out / "seed-3" / "config.toml").read_text()
    assert main(["train", "--out", str(out), *quick, "--seeds", "1", "1"]) == 2
    assert "--seeds must be distinct" in capsys.readouterr().err
    assert main(["train", "--out", str(out), *quick, "--seeds", "7"]) == 2
    assert "must be a new or empty folder" in capsys.readouterr().err


def test_plot_size_dpi_and_datapoints(run_dir, tmp_path, capsys):
    out = tmp_path / "t.png"
    base = ["plot", str(run_dir), "--device", "cpu", "--out", str(out)]
    assert main([*base, "--what", "traversals", "--size", "4", "3", "--dpi", "50"]) == 0
    with Image.open(out) as im:
        assert im.size == (200, 150)  # 4 × 3 inches at 50 dpi
    args = ["--what", "traversals", "--index", "7", "--around", "prior", "--sd", "prior"]
    assert main([*base, *args, "--dims", "2"]) == 0
    assert main([*base, "--what", "interpolation", "--index", "3", "9", "--steps", "5"]) == 0
    capsys.readouterr()
    for argv, match in [
        (["--what", "interpolation", "--index", "3"], "--index takes 2 test-set position"),
        (["--what", "traversals", "--index", "359"], "--index must be in [0, 359)"),
        (["--what", "samples", "--size", "0", "3"], "--size takes a positive width"),
        (["--what", "samples", "--dpi", "0"], "--dpi must be a positive integer, got 0"),
    ]:
        assert main([*base, *argv]) == 2, argv
        assert match in capsys.readouterr().err


def test_evaluate_and_bounds_print_the_same_elbo(run_dir, capsys):
    """Both average the reconstruction term over 100 draws per datapoint (eval.num_samples):
    the same analytic-KL ELBO up to their Monte Carlo errors, which both report."""
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--k", "0", "--json", "--device", "cpu"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert (
        main(["bounds", str(run_dir), "--k", "1", "--json", "--device", "cpu", "--seed", "1"]) == 0
    )
    bd = json.loads(capsys.readouterr().out)["elbo_analytic"]
    assert 0 < ev["elbo_mc_se"] < 0.05 and 0 < bd["se"] < 0.05
    assert abs(ev["elbo"] - bd["mean"]) < 4 * math.hypot(ev["elbo_mc_se"], bd["se"])


def test_evaluate_stores_what_compare_pools(run_dir, tmp_path, capsys):
    capsys.readouterr()
    stored = run_dir / "evaluation" / "test.npz"
    stored.unlink(missing_ok=True)
    assert main(["evaluate", str(run_dir), "--k", "5", "--device", "cpu", "--no-store"]) == 0
    assert not stored.exists()
    assert main(["evaluate", str(run_dir), "--k", "20", "--device", "cpu", "--quiet"]) == 0
    assert f"per-datapoint values in {stored} (read by pvae compare)" in capsys.readouterr().out
    assert stored.is_file()
    plot = tmp_path / "curves.png"
    assert main(["compare", str(run_dir), "--json", "--plot", str(plot)]) == 0
    out = json.loads(capsys.readouterr().out)
    (group,) = out["groups"]
    assert group["runs"] == [str(run_dir)] and group["seeds"] == [0]
    assert out["n_points"] == 359 and out["k"] == {str(run_dir): 20}
    assert plot.is_file()
    assert main(["compare", str(run_dir)]) == 0
    assert "log p(x)" in capsys.readouterr().out


def test_evaluate_subset_scores_the_first_datapoints_of_the_same_draw(run_dir, capsys):
    """--subset N: the first N datapoints of the split (as the full evaluation draws it),
    stored for compare with the subset in its settings; more than the split refused."""
    capsys.readouterr()
    args = ["evaluate", str(run_dir), "--k", "30", "--device", "cpu", "--json", "--no-store"]
    assert main(args) == 0
    full = json.loads(capsys.readouterr().out)
    assert main([*args[:-1], "--subset", "50", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 50
    ev = pvae.rundir.load_evaluation(run_dir)
    assert ev.log_px.shape == (50,) and ev.meta["subset"] == 50 and full["n"] == 359
    assert main([*args, "--subset", "360"]) == 2
    assert "subset 360 is more than the test split's 359 datapoints" in capsys.readouterr().err
    assert main([*args, "--subset", "0"]) == 2
    assert "--subset must be a positive integer, got 0" in capsys.readouterr().err


def test_long_evaluations_report_progress_on_stderr(run_dir, monkeypatch, capsys):
    """Every phase of evaluate, bounds and ais reaches 100% of its own total on stderr (the
    plain lines a log file gets; here one per update); --quiet silences them; stdout stays
    JSON."""
    import functools

    import pvae.cli.common
    from pvae.training.progress import task_progress

    monkeypatch.setattr(
        pvae.cli.common, "task_progress", functools.partial(task_progress, every=0.0)
    )
    capsys.readouterr()
    base = ["--device", "cpu", "--json"]
    assert main(["evaluate", str(run_dir), "--k", "30", "--no-store", *base]) == 0
    out = capsys.readouterr()
    json.loads(out.out)
    assert "log p(x) 10770/10770 (100%)" in out.err  # 359 test points × 30 draws
    args = ["--k", "1", "40", "--ais-steps", "6", "--ais-chains", "2", "--bdmc", "3"]
    assert main(["bounds", str(run_dir), *args, *base]) == 0
    out = capsys.readouterr()
    json.loads(out.out)
    for line in (
        "IWAE draws (k=40) 14360/14360 (100%)",
        "AIS 2154/2154 (100%)",  # 359 × 6 annealing steps
        "BDMC forward AIS 18/18 (100%)",
        "BDMC reverse AIS 18/18 (100%)",
    ):
        assert line in out.err, line
    ais_args = ["--subset", "4", "--steps", "5", "--chains", "2", "--bdmc", "2"]
    assert main(["ais", str(run_dir), *ais_args, *base]) == 0
    err = capsys.readouterr().err
    assert "AIS 20/20 (100%)" in err and "BDMC reverse AIS 10/10 (100%)" in err
    assert main(["ais", str(run_dir), *ais_args, *base, "--quiet"]) == 0
    assert capsys.readouterr().err == ""
