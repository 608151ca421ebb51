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
        (["trian.epochs=3"], "unknown config section 'trian'; valid: data, eval, model, train"),
        (
            ["model.prior.name=gauss"],
            "unknown model.prior.name 'gauss'; valid: flow, learned_gaussian, mog, "
            "standard_normal, student_t, vamp",
        ),
        (
            ["model.likelihood.name=poisson"],
            "unknown model.likelihood.name 'poisson'; valid: bernoulli, categorical, "
            "continuous_bernoulli, discretized_logistic, gaussian, laplace",
        ),
        (["data.name=cifar"], "unknown dataset 'cifar'; valid: digits"),
        (
            ["train.objective=iwa"],
            "unknown train.objective 'iwa'; valid: elbo, iwae, meanfield_elbo",
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
