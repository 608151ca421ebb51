"""The commands check every argument before the work it would waste, refuse what they cannot do
well with one line naming the option or the file (never a traceback), and say what they do
(issues 22 and 26)."""

import argparse
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pvae.cli import build_parser, main
from pvae.rundir import load_evaluation

QUICK = [
    "--set",
    "train.epochs=1",
    "--set",
    "model.latent_dim=3",
    "--set",
    "train.device=cpu",
    "--no-progress",
]

USER_MODULE = '''
import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pvae.program import PyroProgram


class Tiny(PyroProgram):
    """z ~ N(0, I), x ~ Bernoulli(logits = Linear(z)): no sample(), no reconstruct()."""

    def __init__(self, latent_dim=2):
        super().__init__()
        self.latent_dim = latent_dim
        self.data_shape = None

    def build(self, data_shape):
        self.data_shape = tuple(data_shape)
        d = math.prod(data_shape)
        self.enc = nn.Linear(d, 2 * self.latent_dim)
        self.dec = nn.Linear(self.latent_dim, d)

    def model(self, x=None, **kw):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.latent_dim), 1.0).to_event(1))
            logits = self.dec(z).reshape(*z.shape[:-1], *self.data_shape)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(len(self.data_shape)), obs=x)

    def guide(self, x=None, **kw):
        loc, raw = self.enc(x.flatten(1)).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))
'''


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("checks") / "run"
    assert main(["train", "--out", str(out), *QUICK]) == 0
    return out


@pytest.fixture
def run_copy(run_dir, tmp_path):
    """A copy of the trained run that a test may damage."""
    return Path(shutil.copytree(run_dir, tmp_path / "copy"))


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    """A run of a user's module (``model.class``), its module file beside it: (run, module)."""
    home = tmp_path_factory.mktemp("user")
    name = "pvae_checks_user_models"
    (home / f"{name}.py").write_text(USER_MODULE)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        mp.setattr(sys, "path", [str(home), *sys.path])
        out = home / "run"
        argv = ["--set", f"model.class={name}:Tiny", "--set", "model.kwargs.latent_dim=3"]
        argv += ["--set", "train.objective=elbo", "--set", "train.epochs=1"]
        assert main(["train", "--out", str(out), *argv, "--set", "train.device=cpu"]) == 0
    sys.modules.pop(name, None)
    return out, home / f"{name}.py"


@pytest.fixture
def in_user_home(user_run, monkeypatch):
    run, module = user_run
    monkeypatch.chdir(module.parent)
    monkeypatch.setattr(sys, "path", list(sys.path))  # main() puts the cwd first
    yield run
    sys.modules.pop(module.stem, None)


def never(what):
    def refuse(*a, **k):
        raise AssertionError(f"{what} ran before the arguments were checked")

    return refuse


def error_line(capsys, command):
    """Stderr: one line ``pvae COMMAND: error: ...`` (after the note naming a model.class
    module imported, if any); its message."""
    err = capsys.readouterr().err
    *notes, last = err.splitlines()
    assert all(n.startswith("pvae: importing model.class ") for n in notes), err
    assert err.endswith("\n") and last.startswith(f"pvae {command}: error: "), err
    assert "Traceback" not in err
    return last[len(f"pvae {command}: error: ") :]


# ---------------------------------------------------------------- 1. evaluate --k 0 --max-k N


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--k", "0", "--max-k", "100"], "--max-k 100"),
        (["--k", "0", "--target-se", "0.1"], "--target-se 0.1"),
        (["--k", "0", "--max-k", "100", "--target-se", "0.1"], "--max-k 100 and --target-se 0.1"),
    ],
    ids=["max-k", "target-se", "both"],
)
def test_evaluate_refuses_an_adaptive_mode_with_k_0(run_dir, argv, named, monkeypatch, capsys):
    monkeypatch.setattr("pvae.runs.load_run", never("loading the run"))
    assert main(["evaluate", str(run_dir), *argv, "--device", "cpu"]) == 2
    msg = error_line(capsys, "evaluate")
    assert msg.startswith(named) and "which --k 0 skips" in msg


def test_evaluate_run_refuses_an_adaptive_mode_without_log_px(run_dir):
    from pvae.runs import evaluate_run

    with pytest.raises(ValueError, match=r"max_k=100 ask for an adaptive log p\(x\), which k=0"):
        evaluate_run(run_dir, k=0, max_k=100, store=False)


# ---------------------------------------------------------------- 2. sample -n, --npy


def test_sample_refuses_a_grid_too_large_to_read(run_dir, monkeypatch, capsys):
    from pvae.cli.sample import MAX_GRID

    monkeypatch.setattr("pvae.cli.sample.load_run", never("loading the run"))
    assert main(["sample", str(run_dir), "-n", "100000"]) == 2
    msg = error_line(capsys, "sample")
    assert f"-n {MAX_GRID} at most for the PNG grid" in msg and "--npy FILE" in msg


def test_sample_writes_any_number_of_samples_as_an_array(run_copy, tmp_path, capsys):
    before = sorted(p.name for p in run_copy.iterdir())
    npy = tmp_path / "s.npy"
    assert main(["sample", str(run_copy), "-n", "300", "--npy", str(npy), "--device", "cpu"]) == 0
    assert capsys.readouterr().out == f"wrote 300 samples of shape (1, 8, 8) to {npy}\n"
    a = np.load(npy, allow_pickle=False)
    assert a.dtype == np.float32 and a.shape == (300, 1, 8, 8)
    assert ((a >= 0) & (a <= 1)).all() and a.std() > 0
    assert sorted(p.name for p in run_copy.iterdir()) == before  # no grid unless --out


def test_sample_npy_and_grid_together(run_dir, tmp_path, capsys):
    npy, png = tmp_path / "s.npy", tmp_path / "s.png"
    argv = ["-n", "16", "--npy", str(npy), "--out", str(png), "--device", "cpu"]
    assert main(["sample", str(run_dir), *argv]) == 0
    assert np.load(npy).shape == (16, 1, 8, 8)
    with Image.open(png) as im:
        assert im.format == "PNG"


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--npy", "s.txt"], "--npy must name a .npy file, got 's.txt'"),
        (["--npy", "no/s.npy"], "--npy 'no/s.npy': folder 'no' does not exist"),
        (["-n", "300", "--npy", "s.npy", "--out", "s.png"], "-n 300 is more than a grid shows"),
        (["--out", "s.xyz"], "--out 's.xyz': unknown figure format 'xyz'"),
    ],
    ids=["suffix", "folder", "grid-too", "format"],
)
def test_sample_checks_its_files_first(run_dir, argv, match, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("pvae.cli.sample.load_run", never("loading the run"))
    assert main(["sample", str(run_dir), *argv]) == 2
    assert error_line(capsys, "sample").startswith(match)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 3. no traceback from a file


def run_pvae(*argv, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "pvae", *argv], capture_output=True, text=True, cwd=cwd
    )


def test_a_metrics_json_of_numbers_is_refused_naming_the_file(run_copy):
    (run_copy / "metrics.json").write_text("[1, 2, 3]")
    proc = run_pvae("compare", str(run_copy))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr == (
        f"pvae compare: error: {run_copy / 'metrics.json'} is not a pvae history: entry 0 is 1, "
        'expected an object of per-epoch metrics such as {"epoch": 1, "train_elbo": -90.1}\n'
    )


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"epoch": 1}', "no completed epoch"),
        ('[{"epoch": 1, "train_elbo": "high"}]', "entry 0 has 'train_elbo' = 'high'"),
        ('[{"epoch": 1}, null]', "entry 1 is null"),
    ],
)
def test_read_history_names_what_is_wrong(run_copy, text, match):
    from pvae.rundir import read_history

    (run_copy / "metrics.json").write_text(text)
    with pytest.raises(ValueError, match=match):
        read_history(run_copy)


@pytest.fixture
def evaluated(run_copy, capsys):
    assert main(["evaluate", str(run_copy), "--k", "5", "--device", "cpu", "--quiet"]) == 0
    capsys.readouterr()
    return run_copy


def test_a_truncated_evaluation_is_refused_naming_the_file(evaluated):
    path = evaluated / "evaluation" / "test.npz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    proc = run_pvae("compare", str(evaluated))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(
        f"pvae compare: error: {path} is not a readable pvae evaluation (BadZipFile: "
    )
    assert proc.stderr.endswith(f"write it again with: pvae evaluate {evaluated} --split test\n")


def rewrite_header(path, change):
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    header = json.loads(str(arrays.pop("header")))
    change(header)
    buf = io.BytesIO()
    np.savez(buf, header=np.array(json.dumps(header)), **arrays)
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("key", ["n", "split", "fingerprint"])
def test_an_evaluation_header_without_a_key_is_refused(evaluated, key, capsys):
    path = evaluated / "evaluation" / "test.npz"
    rewrite_header(path, lambda h: h.pop(key))
    with pytest.raises(ValueError, match=f"its header lacks '{key}'"):
        load_evaluation(evaluated)
    assert main(["compare", str(evaluated)]) == 2
    assert error_line(capsys, "compare").startswith(f"{path}: its header lacks '{key}'")


def test_an_evaluation_header_of_the_wrong_types_is_refused(evaluated):
    path = evaluated / "evaluation" / "test.npz"
    rewrite_header(path, lambda h: h.update(n="many"))
    with pytest.raises(ValueError, match="header's 'n' must be an integer ≥ 0, got 'many'"):
        load_evaluation(evaluated)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--size", "1000", "1000"], "--size 1000 1000 at --dpi 150 is 22,500 megapixels"),
        (["--dpi", "1000000"], "--dpi 1000000 with a figure of up to 7 × 9 inches"),
        (["--size", "1000", "0.1", "--dpi", "100"], "--size 1000 0.1 at --dpi 100 is 1 mega"),
    ],
    ids=["size", "dpi", "side"],
)
def test_plot_bounds_the_pixels_before_drawing(run_dir, argv, match, monkeypatch, capsys):
    monkeypatch.setattr("pvae.cli.plot.load_run", never("loading the run"))
    assert main(["plot", str(run_dir), "--what", "curves", *argv]) == 2
    msg = error_line(capsys, "plot")
    assert msg.startswith(match) and "at most 50 megapixels" in msg and "at most --dpi" in msg


def test_check_pixels_allows_what_it_says_is_the_largest():
    from pvae.cli.common import check_pixels

    check_pixels((7.0, 9.0), 890, default_size=True)
    with pytest.raises(ValueError, match="at most --dpi 890 for this size"):
        check_pixels((7.0, 9.0), 891, default_size=True)


@pytest.mark.parametrize("what", ["samples", "recon", "kl", "traversals"])
def test_plot_refuses_what_a_users_module_cannot_draw(in_user_home, what, capsys):
    assert main(["plot", str(in_user_home), "--what", what, "--device", "cpu"]) == 2
    msg = error_line(capsys, "plot")
    need = "a model with" if what in ("samples", "recon") else "a one-layer pvae.VAE's encode()"
    assert msg.startswith(f"--what {what} needs {need}")
    assert msg.endswith(
        "this run trains a Tiny on datapoints of shape (1, 8, 8) (available: --what curves|khat)"
    )


def test_plot_draws_what_a_users_module_can(in_user_home, tmp_path, capsys):
    out = tmp_path / "c.svg"
    assert main(["plot", str(in_user_home), "--what", "curves", "--out", str(out)]) == 0
    assert out.read_text().lstrip().startswith("<?xml")


# ---------------------------------------------------------------- 4. checks before the work


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--ais-steps", "0"], "--ais-steps must be a positive integer, got 0"),
        (["--bdmc", "5"], "--bdmc 5 runs BDMC with the AIS settings: give --ais-steps N"),
        (["--ais-steps", "3", "--bdmc", "-1"], "--bdmc must be a number of datapoints"),
        (["--ais-steps", "3", "--ais-chains", "0"], "--ais-chains must be a positive integer"),
        (["--plot", "ladder.xyz"], "--plot 'ladder.xyz': unknown figure format 'xyz'"),
        (["--k", "5", "0"], "--k: ks entries must be a positive integer, got 0"),
    ],
    ids=["ais-steps", "bdmc-alone", "bdmc<0", "chains", "plot-suffix", "k"],
)
def test_bounds_checks_every_argument_first(run_dir, argv, match, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("pvae.cli.bounds.load_run", never("loading the run"))
    monkeypatch.setattr("pvae.cli.bounds.bounds", never("the ladder"))
    assert main(["bounds", str(run_dir), *argv]) == 2
    assert error_line(capsys, "bounds").startswith(match)


def test_plot_checks_the_figure_format_before_drawing(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("pvae.cli.plot.load_run", never("loading the run"))
    out = tmp_path / "x.xyz"
    assert main(["plot", str(run_dir), "--what", "curves", "--out", str(out)]) == 2
    msg = error_line(capsys, "plot")
    assert msg.startswith(f"--out {str(out)!r}: unknown figure format 'xyz'; valid suffixes: ")
    assert ".pdf" in msg and ".svg" in msg and not out.exists()


def test_compare_checks_the_figure_format_before_comparing(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("pvae.cli.compare.compare", never("comparing the runs"))
    out = tmp_path / "c.xyz"
    assert main(["compare", str(run_dir), "--plot", str(out)]) == 2
    assert error_line(capsys, "compare").startswith(f"--plot {str(out)!r}: unknown figure format")


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--steps", "0"], "--steps must be a positive integer, got 0"),
        (["--chains", "-2"], "--chains must be a positive integer, got -2"),
        (["--subset", "0"], "--subset must be a positive integer, got 0"),
        (["--bdmc", "-1"], "--bdmc must be a number of datapoints (0 or more), got -1"),
    ],
)
def test_ais_checks_its_arguments_before_loading(run_dir, argv, match, monkeypatch, capsys):
    monkeypatch.setattr("pvae.cli.ais.load_run", never("loading the run"))
    assert main(["ais", str(run_dir), *argv]) == 2
    assert error_line(capsys, "ais") == match


def test_ais_refuses_a_subset_beyond_the_split(run_dir, monkeypatch, capsys):
    monkeypatch.setattr("pvae.cli.ais.ais", never("AIS"))
    assert main(["ais", str(run_dir), "--subset", "100000", "--device", "cpu"]) == 2
    assert error_line(capsys, "ais") == (
        "--subset 100000 is more than the test split's 359 datapoints; give --subset 359 or "
        "fewer (or leave it out)"
    )


# ---------------------------------------------------------------- 5. say which module is imported


def test_evaluate_says_which_file_model_class_imports(in_user_home, capsys):
    module = in_user_home.parent / "pvae_checks_user_models.py"
    argv = ["evaluate", str(in_user_home), "--k", "0", "--no-store", "--device", "cpu"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"pvae: importing model.class pvae_checks_user_models from {module}\n" in err
    assert module.is_absolute()
    sys.modules.pop(module.stem, None)
    assert main([*argv, "--quiet"]) == 0
    assert "importing" not in capsys.readouterr().err


def test_a_run_of_pvaes_own_models_imports_nothing_to_announce(run_dir, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--k", "0", "--no-store", "--device", "cpu"]) == 0
    assert "importing" not in capsys.readouterr().err


# ---------------------------------------------------------------- 6. sample's default file


def test_sample_writes_into_the_run_folder_by_default(run_copy, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    trained = (run_copy / "samples.png").read_bytes()
    assert main(["sample", str(run_copy), "-n", "4", "--seed", "3", "--device", "cpu"]) == 0
    out = run_copy / "samples-4-seed3.png"
    assert capsys.readouterr().out == f"wrote 4 samples to {out}\n"
    with Image.open(out) as im:
        assert im.format == "PNG"
    assert (run_copy / "samples.png").read_bytes() == trained  # training's grid untouched
    assert list(tmp_path.iterdir()) == [run_copy]  # nothing in the working directory


# ---------------------------------------------------------------- 7. help for every option

MINE = ("train", "evaluate", "bounds", "ais", "plot", "sample", "compare")


def subparsers():
    (sub,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize("command", MINE)
def test_every_option_has_a_help_text(command):
    lacking = [
        "/".join(a.option_strings) or a.dest
        for a in subparsers()[command]._actions
        if not (a.help or "").strip()
    ]
    assert lacking == [], f"pvae {command}: no help for {lacking}"


def test_help_states_the_defaults_and_the_figure_formats():
    sub = subparsers()

    def help_of(command, option):
        (action,) = (a for a in sub[command]._actions if option in a.option_strings)
        return action.help

    assert "default RUN/samples-<n>-seed<seed>.png" in help_of("sample", "--out")
    for command, option in [("plot", "--out"), ("bounds", "--plot"), ("sample", "--out")]:
        text = help_of(command, option)
        assert ".png" in text and ".pdf" in text and ".svg" in text, (command, option)
    assert "default RUN/<what>.png" in help_of("plot", "--out")


def test_the_figure_formats_in_the_help_are_written():
    from matplotlib.backend_bases import FigureCanvasBase

    from pvae.cli.common import FIGURE_HELP

    named = {w.strip(".,;()") for w in FIGURE_HELP.split() if w.startswith(".")}
    assert named and named <= set(FigureCanvasBase.get_supported_filetypes())
