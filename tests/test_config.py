import pytest
import tomllib

import pvae
from pvae.config import Config, build_vae, dumps_toml, load_config


def test_defaults_round_trip_through_toml(tmp_path):
    cfg = Config()
    path = tmp_path / "c.toml"
    path.write_text(dumps_toml(cfg.to_dict()))
    assert load_config(path) == cfg
    assert tomllib.loads(dumps_toml(cfg.to_dict()))["model"]["prior"] == {"name": "standard_normal"}


def test_set_overrides_parse_toml_values(tmp_path):
    cfg = load_config(
        None,
        [
            "train.epochs=5",
            "model.latent_dim=20",
            "train.lr=3e-4",
            "model.encoder.hidden=[32, 16]",
            "data.name=fashion-mnist",
            "model.prior.name=standard_normal",
            "train.vectorize_particles=true",
        ],
    )
    assert cfg.train.epochs == 5 and cfg.model.latent_dim == 20 and cfg.train.lr == 3e-4
    assert cfg.model.encoder == {"name": "mlp", "hidden": [32, 16]}
    assert cfg.data.name == "fashion-mnist" and cfg.train.vectorize_particles is True


def test_switching_a_component_drops_the_old_components_arguments():
    cfg = load_config(None, ["model.encoder.name=conv", "model.decoder.name=conv"])
    assert cfg.model.encoder == {"name": "conv"}
    vae = build_vae(cfg.model, (1, 28, 28))
    assert isinstance(vae.decoder, pvae.nets.ConvDecoder)
    cfg = load_config(None, ["model.likelihood.name=gaussian", "model.likelihood.learn_scale=true"])
    vae = build_vae(cfg.model, (5,))
    assert vae.likelihood.learn_scale


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["train.epochz=3"], r"unknown key in \[train\] 'epochz'; valid: .*epochs"),
        (
            ["trian.epochs=3"],
            "unknown config section 'trian'; valid: data, eval, log, model, train",
        ),
        (
            ["model.prior.name=gauss"],
            "unknown model.prior.name 'gauss'; valid: flow, learned_gaussian, mog, "
            "standard_normal, student_t, vamp",
        ),
        (
            ["model.likelihood.name=poisson"],
            "unknown model.likelihood.name 'poisson'; valid: bernoulli, categorical, "
            "continuous_bernoulli, discretized_logistic, discretized_logistic_mixture, "
            "gaussian, laplace",
        ),
        (["data.name=cifar"], "unknown dataset 'cifar'; valid: cifar10, digits"),
        (
            ["train.objective=iwa"],
            "unknown train.objective 'iwa'; valid: elbo, enum_elbo, iwae, meanfield_elbo",
        ),
        (["model.latent_dim=0"], "model.latent_dim must be a positive integer, got 0"),
        (["train.batch_size=-2"], "train.batch_size must be a positive integer, got -2"),
        (["train.epochs"], "--set expects key=value"),
    ],
)
def test_bad_config_values_list_the_valid_ones(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, overrides)


def test_unknown_component_keyword_lists_valid_ones():
    cfg = load_config(None, ["model.likelihood.name=gaussian", "model.likelihood.sigma=0.2"])
    with pytest.raises(
        ValueError,
        match="unknown keyword argument 'sigma' for model.likelihood; "
        "valid: learn_scale, min_scale, scale",
    ):
        build_vae(cfg.model, (5,))
    cfg = load_config(None, ["model.encoder.width=3"])
    with pytest.raises(
        ValueError, match="'width' for model.encoder 'mlp'; valid: activation, hidden"
    ):
        build_vae(cfg.model, (5,))


def test_bad_config_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "none.toml")
    (tmp_path / "bad.toml").write_text("[train\nepochs = ")
    with pytest.raises(ValueError, match="is not valid TOML"):
        load_config(tmp_path / "bad.toml")


# -- hierarchical models --------------------------------------------------------------------------
HIER = ["model.latent_dim=[6, 3]", "train.objective=iwae", "train.num_particles=5"]


def test_hierarchical_config_round_trips_and_builds(tmp_path):
    cfg = load_config(
        None,
        [*HIER, "model.hidden=[[16, 16], [8]]", "model.activation=relu", "model.prior.name=mog"],
    )
    path = tmp_path / "h.toml"
    path.write_text(dumps_toml(cfg.to_dict()))
    assert load_config(path) == cfg
    m = build_vae(cfg.model, (1, 8, 8))
    assert isinstance(m, pvae.HierarchicalVAE)
    assert m.latent_dims == (6, 3) and m.hidden == ((16, 16), (8,)) and m.activation == "relu"
    assert isinstance(m.prior, pvae.priors.MixtureOfGaussians) and m.prior.latent_dim == 3
    # Defaults: the paper's 2 · dim widths, tanh.
    m = build_vae(load_config(None, HIER).model, (5,))
    assert m.hidden == ((12, 12), (6, 6)) and m.activation == "tanh"


def test_one_layer_configs_are_read_and_written_as_before():
    # Checkpoints store config.to_dict(); unset new keys must not appear in it.
    assert list(Config().to_dict()["model"]) == [
        "latent_dim",
        "prior",
        "likelihood",
        "encoder",
        "decoder",
        "guide",
    ]
    assert isinstance(build_vae(load_config(None, ["model.latent_dim=[4]"]).model, (5,)), pvae.VAE)
    assert build_vae(load_config(None, ["model.latent_dim=[4]"]).model, (5,)).latent_dim == 4


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["model.latent_dim=[]"], "model.latent_dim must be a positive integer or a non-empty"),
        (["model.latent_dim=[4, 0]"], "model.latent_dim entries must be a positive integer"),
        (["model.hidden=[[8]]"], "model.hidden applies to a hierarchical model"),
        (["model.activation=tanh"], "model.activation applies to a hierarchical model"),
        ([*HIER, "model.hidden=[[8]]"], r"model.hidden must be a list of 2 lists"),
        ([*HIER, "model.hidden=[8, 8]"], r"model.hidden\[0\] must be a list of widths"),
        ([*HIER, "model.activation=sigmoid"], "unknown model.activation 'sigmoid'; valid: "),
        ([*HIER, "model.encoder.hidden=[8]"], "model.encoder describes the one-layer VAE"),
        ([*HIER, "model.guide.name=iaf"], "model.guide describes the one-layer VAE"),
        (
            ["model.latent_dim=[6, 3]"],
            "train.objective='meanfield_elbo' is biased for a hierarchical model",
        ),
        (["model.kwargs.a=1"], "model.kwargs is the keyword arguments of model.class"),
        (["model.class=nocolon"], "model.class must be 'package.module:ClassName'"),
        (["model.class=a:b:c"], "model.class must be 'package.module:ClassName'"),
        (["model.class=m:C", "model.latent_dim=3"], r"remove model.latent_dim"),
        (["model.claas=m:C"], r"unknown key in \[model\] 'claas'; valid: .*class"),
    ],
)
def test_bad_hierarchical_and_class_configs_say_why(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, overrides)


# -- a user's module ------------------------------------------------------------------------------
USER_MODULE = '''
import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pvae.program import PyroProgram


class Tiny(PyroProgram):
    """z ~ N(0, I), x ~ Bernoulli(logits = Linear(z)), any data shape."""

    def __init__(self, latent_dim=2, width=8):
        super().__init__()
        self.latent_dim, self.width = latent_dim, width
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


def not_a_class():
    pass


class NoGuide(nn.Module):
    def model(self, x):
        pass
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module ``pvae_user_models_<n>`` in a temporary working directory, forgotten after."""
    import sys

    name = f"pvae_user_models_{len(sys.modules)}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    yield name
    sys.modules.pop(name, None)


def test_class_config_builds_the_users_module(user_module, tmp_path):
    cfg = load_config(None, [f"model.class={user_module}:Tiny", "model.kwargs.latent_dim=3"])
    assert cfg.to_dict()["model"]["class"] == f"{user_module}:Tiny"
    path = tmp_path / "c.toml"
    path.write_text(dumps_toml(cfg.to_dict()))
    assert "[model.kwargs]" in path.read_text() and load_config(path) == cfg
    m = build_vae(cfg.model, (1, 8, 8))
    assert type(m).__name__ == "Tiny" and m.latent_dim == 3 and m.data_shape == (1, 8, 8)


@pytest.mark.parametrize(
    ("cls", "kwargs", "error", "match"),
    [
        ("no_such_module_xyz:C", {}, ValueError, "cannot import module 'no_such_module_xyz'"),
        ("{m}:Missing", {}, ValueError, "has no attribute 'Missing'; its classes: NoGuide, Tiny"),
        ("{m}:not_a_class", {}, TypeError, "must be an nn.Module class with model and guide"),
        ("{m}:NoGuide", {}, TypeError, "must be an nn.Module class with model and guide"),
        (
            "{m}:Tiny",
            {"depth": 2},
            ValueError,
            "'depth' in model.kwargs .* valid: latent_dim, width",
        ),
    ],
)
def test_bad_class_configs_say_why(user_module, cls, kwargs, error, match):
    overrides = [f"model.class={cls.format(m=user_module)}"]
    overrides += [f"model.kwargs.{k}={v}" for k, v in kwargs.items()]
    cfg = load_config(None, overrides)
    with pytest.raises(error, match=match):
        build_vae(cfg.model, (1, 8, 8))


def test_the_cli_trains_and_evaluates_a_users_module(user_module, tmp_path, capsys):
    import json

    from pvae.cli import main

    out = tmp_path / "run"
    argv = ["--set", f"model.class={user_module}:Tiny", "--set", "model.kwargs.latent_dim=3"]
    argv += ["--set", "train.epochs=1", "--set", "train.objective=elbo", "--no-progress"]
    assert main(["train", "--out", str(out), *argv, "--set", "train.device=cpu"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--k", "10", "--json", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["diagnostics"]["units_by_site"] == {"z": 3}
    assert res["log_px"] >= res["elbo"] - 4 * res["elbo_se"]


# -- a file and its --set overrides are validated as one ------------------------------------------
def test_a_file_valid_only_with_its_overrides_loads(tmp_path):
    path = tmp_path / "two.toml"
    path.write_text("[model]\nlatent_dim = [100, 50]\n")
    cfg = load_config(path, ["train.objective=elbo"])
    assert cfg.model.latent_dim == [100, 50] and cfg.train.objective == "elbo"
    with pytest.raises(ValueError, match="train.objective='meanfield_elbo' is biased"):
        load_config(path)  # the file alone is refused, as before


def test_an_invalid_merge_of_file_and_overrides_is_refused_by_key(tmp_path):
    path = tmp_path / "two.toml"
    path.write_text('[model]\nlatent_dim = [100, 50]\n[train]\nobjective = "elbo"\n')
    assert load_config(path).train.objective == "elbo"
    with pytest.raises(ValueError, match="train.objective='meanfield_elbo' is biased"):
        load_config(path, ["train.objective=meanfield_elbo"])
    with pytest.raises(ValueError, match="train.epochs must be a positive integer, got 0"):
        load_config(path, ["train.epochs=0"])
    path.write_text('[model.prior]\nname = "mog"\nn_components = 3\n')
    cfg = load_config(path, ["model.prior.name=vamp"])  # the file's mog arguments are dropped
    assert cfg.model.prior == {"name": "vamp"}


# -- one options object: the TOML tables are fit's options ----------------------------------------
def test_the_config_sections_are_fits_options_with_one_set_of_defaults():
    from pvae.options import FitOptions

    cfg = Config()
    assert cfg.options == FitOptions()
    assert FitOptions().train.epochs == 200 and FitOptions().eval.curve_ks == [5, 500]
    opts = cfg.options.replace(epochs=3, eval_batch_size=7, log_every=0, quiet=True)
    assert (opts.train.epochs, opts.eval.batch_size, opts.log.every, opts.log.quiet) == (
        3,
        7,
        0,
        True,
    )
    assert cfg.train.epochs == 200  # replace copies


def test_fit_refuses_an_unknown_keyword_listing_the_valid_ones():
    vae = pvae.VAE(pvae.priors.StandardNormal(2))
    with pytest.raises(TypeError, match=r"unknown option 'epoch' .*valid: .*curve_ks, .*epochs"):
        pvae.fit(vae, [[0.0, 1.0]], epoch=3)
    with pytest.raises(TypeError, match="options must be a pvae.options.FitOptions"):
        pvae.fit(vae, [[0.0, 1.0]], {"epochs": 3})


def test_fit_takes_a_configs_options(tmp_path):
    cfg = load_config(None, ["train.epochs=2", "train.batch_size=8", "log.quiet=true"])
    x = [[0.0, 1.0, 1.0]] * 16
    res = pvae.fit(pvae.VAE(pvae.priors.StandardNormal(2), hidden=(4,)), x, cfg.options)
    assert [r["epoch"] for r in res.history] == [1, 2] and res.final["step"] == 4
    res = pvae.fit(pvae.VAE(pvae.priors.StandardNormal(2), hidden=(4,)), x, cfg.options, epochs=1)
    assert len(res.history) == 1
