"""Configurations read by their meaning (issues 22 and 26): one spelling per configuration for
``pvae compare``, errors that name the file and the run they came from, a user's failing module
reported as the user's code, a likelihood that does not fit its data refused, and a file that is
valid only with its ``--set`` overrides."""

import json
import sys

import numpy as np
import pytest
import torch

import pvae
from pvae.cli import main
from pvae.compare import compare
from pvae.config import Config, UserCodeError, build_vae, canonical, load_config
from pvae.rundir import Evaluation, data_fingerprint, save_evaluation

MOG_10 = {"model": {"prior": {"name": "mog", "num_components": 10}}}


def hier(latent_dim, **model):
    """A hierarchical model's config (which trains on the plain ELBO)."""
    return {"model": {"latent_dim": latent_dim, **model}, "train": {"objective": "elbo"}}


X = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])


# -- canonical: one spelling per configuration ----------------------------------------------------
@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"model": {"latent_dim": 8}}, {"model": {"latent_dim": [8]}}),
        ({}, {"model": {"encoder": {"activation": "relu"}}}),  # a default written out
        ({}, {"model": {"encoder": {"name": "mlp", "hidden": [256, 128], "norm": None}}}),
        ({"train": {"lr": 1}}, {"train": {"lr": 1.0}}),  # an integer where the value is a float
        ({"model": {"guide": {"min_scale": 1}}}, {"model": {"guide": {"min_scale": 1.0}}}),
        ({"model": {"prior": {"name": "mog"}}}, MOG_10),  # a component's default written out
        (hier([6, 3]), hier([6, 3], activation="tanh", hidden=[[12, 12], [6, 6]])),
    ],
)
def test_two_spellings_of_one_configuration_are_one_canonical_config(a, b):
    assert canonical(a) == canonical(b)
    assert json.dumps(canonical(a)) == json.dumps(canonical(b))  # key order and number types
    assert canonical(canonical(a)) == canonical(a)  # a canonical config is its own canonical form


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"model": {"latent_dim": 8}}, {"model": {"latent_dim": 9}}),
        (hier([8, 4]), hier([4, 8])),
        (
            {"model": {"prior": {"name": "mog"}}},
            {"model": {"prior": {"name": "mog", "init_spread": 2}}},
        ),
        ({}, {"model": {"encoder": {"activation": "tanh"}}}),
        ({"train": {"lr": 1e-3}}, {"train": {"lr": 1e-2}}),
    ],
)
def test_configurations_that_mean_different_things_stay_apart(a, b):
    assert canonical(a) != canonical(b)


def test_canonical_says_what_a_config_sets_beyond_its_defaults():
    assert canonical(Config(), defaults=False) == {}
    said = canonical(
        {
            "model": {"latent_dim": [8], "prior": {"name": "mog", "num_components": 3}},
            "train": {"lr": 1, "epochs": 200},
        },
        defaults=False,
    )
    assert said == {
        "model": {"prior": {"name": "mog", "num_components": 3}},
        "train": {"lr": 1.0},
    }
    # a user's module: class and kwargs as written (its module is not imported)
    user = canonical({"model": {"class": "nowhere_xyz:Net", "kwargs": {"width": 3}}})
    assert user["model"] == {"class": "nowhere_xyz:Net", "kwargs": {"width": 3}}


# -- compare groups runs by meaning ---------------------------------------------------------------
def _run(folder, toml: str, *, x=X, n=None):
    """A run folder as compare reads it: config.toml (as given), metrics.json of one epoch, and a
    stored test evaluation of ``x`` (or of 0 datapoints with ``n=0``)."""
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(toml)
    record = {"epoch": 1, "train_elbo": -3.0, "val_elbo": -3.1}
    (folder / "metrics.json").write_text(json.dumps([record]))
    if n == 0:
        empty = np.zeros(0)
        arrays = {"elbo": empty, "elbo_se": empty}
        fp = data_fingerprint(x[:0])
        Evaluation(folder, "test", fp, 0, 1, empty, empty, None, None, None, {}, arrays).save()
        return folder
    seed = int(toml.split("seed = ")[1].split()[0]) if "seed = " in toml else 0
    torch.manual_seed(seed)
    vae = pvae.VAE(pvae.priors.StandardNormal(2), data_shape=(4,))
    save_evaluation(folder, "test", x, elbo=pvae.evaluate_elbo(vae, x, num_samples=3), epoch=1)
    return folder


def test_compare_pools_one_configuration_spelled_two_ways(tmp_path):
    a = _run(tmp_path / "a", "[model]\nlatent_dim = 8\n[train]\nseed = 0\n")
    b = _run(
        tmp_path / "b",
        '[model]\nlatent_dim = [8]\n[model.encoder]\nactivation = "relu"\n[train]\nseed = 1\n'
        "lr = 0.001\n",
    )
    c = _run(
        tmp_path / "c",
        '[model.prior]\nname = "mog"\nnum_components = 3\n[train]\nseed = 0\n',
    )
    result = compare([a, b, c])
    assert [g.runs for g in result.groups] == [[a, b], [c]]
    assert [g.seeds for g in result.groups] == [[0, 1], [0]]
    # the labels name what tells the groups apart, not the defaults the mixture fills in
    assert [g.label for g in result.groups] == [
        "model.prior.name=standard_normal",
        "model.prior.name=mog, model.prior.num_components=3",
    ]


def test_same_configuration_and_seed_spelled_two_ways_is_refused_as_a_repeat(tmp_path):
    a = _run(tmp_path / "a", "[model]\nlatent_dim = 8\n[train]\nseed = 0\n")
    b = _run(tmp_path / "b", "[model]\nlatent_dim = [8]\n[train]\nseed = 0\nlr = 1e-3\n")
    with pytest.raises(ValueError, match=r"same configuration and the same train.seed \(0\)"):
        compare([a, b])


def test_compare_refuses_an_evaluation_of_no_datapoints_naming_run_and_file(tmp_path, capsys):
    run = _run(tmp_path / "empty", "[train]\nseed = 0\n", n=0)
    with pytest.raises(ValueError, match="holds 0 datapoints") as err:
        compare([run])
    assert str(run) in str(err.value) and str(run / "evaluation" / "test.npz") in str(err.value)
    assert main(["compare", str(run)]) == 2
    out = capsys.readouterr()
    assert "nan" not in out.out + out.err and str(run / "evaluation" / "test.npz") in out.err


# -- errors name the file and the run -------------------------------------------------------------
def test_config_file_errors_name_the_file_and_where_in_it(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepochs = 5\nlr = = 0.1\n")
    with pytest.raises(ValueError, match=r"config file '.*bad\.toml' is not valid TOML: .*line 3"):
        load_config(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[train]\nepoch = 5\n")
    with pytest.raises(
        ValueError, match=r"config file '.*unknown\.toml': unknown key in \[train\] 'epoch'"
    ):
        load_config(unknown)
    ok = tmp_path / "ok.toml"
    ok.write_text("[train]\nepochs = 5\n")
    with pytest.raises(ValueError, match=r"ok\.toml' with --set train.epochs=0: train.epochs must"):
        load_config(ok, ["train.epochs=0"])
    with pytest.raises(ValueError, match=r"^config.toml of run 'r': unknown key in \[train\]"):
        load_config(unknown, name="config.toml of run 'r'")
    with pytest.raises(ValueError, match=r"^train.epochs must be a positive"):  # no file, no name
        load_config(None, ["train.epochs=0"])


def test_a_runs_broken_config_is_named_by_run(tmp_path, capsys):
    run = _run(tmp_path / "r", "[train]\nseed = 0\n")
    (run / "config.toml").write_text("[train]\nseed = 0\nepoch = 3\n")
    with pytest.raises(ValueError, match=rf"config.toml of run '{run}': unknown key in \[train\]"):
        compare([run])
    (run / "config.toml").write_text("[train\nseed = 0\n")
    assert main(["compare", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"config.toml of run '{run}' is not valid TOML" in err and "line 1" in err


# -- a user's module that fails is the user's code failing ----------------------------------------
FAILING = {
    "import": "x = 1 / 0\n",
    "dependency": "import no_such_dependency_xyz\n",
    "init": "class Net(BaseNet):\n    def __init__(self, width=2):\n        super().__init__()\n"
    "        self.w = width / 0\n",
    "build": "class Net(BaseNet):\n    def build(self, data_shape):\n"
    "        raise ValueError('bad shape')\n",
}
BASE = """import torch
from torch import nn


class BaseNet(nn.Module):
    def model(self, x=None):
        pass

    def guide(self, x=None):
        pass


"""


@pytest.fixture
def failing_module(tmp_path, monkeypatch):
    made = []

    def make(kind):
        name = f"pvae_failing_{kind}_{len(sys.modules)}"
        (tmp_path / f"{name}.py").write_text(BASE + FAILING[kind])
        made.append(name)
        return name

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    yield make
    for name in made:
        sys.modules.pop(name, None)


@pytest.mark.parametrize(
    ("kind", "kwargs", "message"),
    [
        ("import", [], "{m}.py raised ZeroDivisionError: division by zero on import"),
        (
            "dependency",
            [],
            "{m}.py raised ModuleNotFoundError: No module named 'no_such_dependency_xyz' on import",
        ),
        ("init", ["model.kwargs.width=3"], "Net(width=3) in {m}.py raised ZeroDivisionError: "),
        ("build", [], "Net.build((1, 8, 8)) in {m}.py raised ValueError: bad shape"),
    ],
)
def test_a_users_failing_module_is_reported_as_the_users_code(
    failing_module, kind, kwargs, message
):
    m = failing_module(kind)
    cfg = load_config(None, [f"model.class={m}:Net", *kwargs])
    with pytest.raises(UserCodeError) as err:
        build_vae(cfg.model, (1, 8, 8))
    assert str(err.value).startswith(f"model.class {m}:Net failed: {message.format(m=m)}")
    assert "\n" not in str(err.value) and isinstance(err.value, ValueError)
    assert err.value.__cause__ is not None  # the user's traceback, for PVAE_DEBUG=1


def test_the_cli_says_the_users_module_failed_in_one_line(
    failing_module, tmp_path, capsys, monkeypatch
):
    m = failing_module("import")
    argv = ["train", "--set", f"model.class={m}:Net", "--set", "train.objective=elbo"]
    argv += ["--set", "train.epochs=1", "--no-progress", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"pvae train: error: model.class {m}:Net failed: {m}.py raised ZeroDivisionError: "
        "division by zero on import"
    ]
    monkeypatch.setenv("PVAE_DEBUG", "1")
    assert main([*argv[:-1], str(tmp_path / "run2")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and f"{m}.py" in err and "x = 1 / 0" in err


# -- a likelihood that does not fit its data ------------------------------------------------------
@pytest.mark.parametrize("binarize", ["dynamic", "static"])
def test_continuous_bernoulli_on_binarized_data_is_refused(binarize):
    over = ["model.likelihood.name=continuous_bernoulli", f"data.binarize={binarize}"]
    with pytest.raises(ValueError) as err:
        load_config(None, over)
    msg = str(err.value)
    assert "model.likelihood.name = 'continuous_bernoulli'" in msg
    assert f"data.binarize = {binarize!r}" in msg and "density on [0, 1]" in msg
    assert "'bernoulli' for binarized data" in msg and "data.binarize = 'none'" in msg
    cfg = load_config(None, [over[0], "data.binarize=none"])  # continuous data in [0, 1]: fine
    assert cfg.model.likelihood == {"name": "continuous_bernoulli"}


# -- issue 26: the README's hierarchical block, made valid by --set ------------------------------
README_BLOCK = """[model]
latent_dim = [100, 50]              # z1 (bottom) ... zL (top)
hidden = [[200, 200], [100, 100]]   # per layer: the MLP widths between z_{l-1} and z_l
activation = "tanh"
"""


def test_the_readmes_hierarchical_block_trains_with_the_objective_its_error_asks_for(
    tmp_path, capsys
):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(README_BLOCK)
    fast = ["--set", "train.epochs=1", "--set", "eval.curve_ks=[5]", "--set", "train.device=cpu"]
    base = ["train", "--config", str(cfg), "--quiet", "--no-progress", *fast]
    assert main([*base, "--out", str(tmp_path / "refused")]) == 2
    assert "use train.objective = 'elbo'" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main([*base, "--set", "train.objective=elbo", "--out", str(out)]) == 0
    run = pvae.load_run(out)
    assert type(run.vae).__name__ == "HierarchicalVAE" and run.config.train.objective == "elbo"
