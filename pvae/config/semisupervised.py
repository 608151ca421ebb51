"""``[model.semisupervised]`` and ``[data] labels_per_class``: the semi-supervised VAE
(:class:`pvae.SemiSupervisedVAE`, Kingma et al. 2014's M2) from a config.

.. code-block:: toml

    [data]
    name = "fashion-mnist"
    labels_per_class = 100      # a class-balanced labelled subset of the training split

    [model]
    latent_dim = 16

    [model.semisupervised]
    num_classes = 10            # K, the class latent y's values
    alpha = 5400.0              # eq. 9's α (default 0.1·N, N training datapoints)
    class_probs = [0.1, ...]    # p(y); uniform by default
    enumerate = true            # sum y out (train.objective = "enum_elbo"); false: sample it
    relaxed_temperature = 0.5   # with enumerate = false: a Concrete y (train.objective = "elbo")
    labelled_per_batch = 16     # labelled datapoints in every minibatch; 0: a uniform shuffle

    [train]
    objective = "enum_elbo"

The table turns the one-layer VAE of ``[model]`` into an M2 with the same prior, likelihood,
guide and networks: ``model.encoder`` builds both q(y | x) (the classifier, so it is the
encoder's size) and the network of q(z | x, y) (an ``mlp``, over [vec(x), onehot(y)]).
``labels_per_class`` keeps n labels of every class of the training split (seeded by
``data.seed``, :mod:`pvae.labels`); without it every training label is used. Validation and test
splits keep all their labels, for the test accuracy. ``labelled_per_batch`` (default 0, a uniform
shuffle) puts that many labelled datapoints in every training minibatch and weights the two
groups as the stratified sample they are (:class:`pvae.SemiSupervisedVAE`); it must be below
``train.batch_size``. ``relaxed_temperature`` = λ (default: absent, a discrete y) draws the
unlabelled y from the Concrete (Gumbel-softmax) relaxation at temperature λ, in the guide and
the prior: it needs ``enumerate = false`` and ``train.objective = "elbo"``, which then optimizes
the ELBO of the relaxed model, and ``pvae evaluate`` reports the relaxed model's log p(x)
(:class:`pvae.SemiSupervisedVAE`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from pvae._checks import lookup, positive_float, positive_int
from pvae.datasets import DataSplits
from pvae.guides import GUIDES
from pvae.labels import partial_labels
from pvae.nets import DECODERS, ENCODERS
from pvae.semisupervised import SemiSupervisedVAE, check_class_probs

__all__ = ["DEFAULTS", "attach_labels", "build", "canonical", "validate"]

DEFAULTS: dict[str, Any] = {
    "num_classes": 10,
    "alpha": None,
    "class_probs": None,
    "enumerate": True,
    "relaxed_temperature": None,
    "labelled_per_batch": 0,
}
"""The keys of ``[model.semisupervised]`` and their defaults."""


def _table(t: Any) -> dict[str, Any]:
    if not isinstance(t, Mapping):
        raise ValueError(f"model.semisupervised must be a table, got {t!r}")
    for key in t:
        if key not in DEFAULTS:
            raise ValueError(
                f"unknown key {key!r} in [model.semisupervised]; valid: {', '.join(DEFAULTS)}"
            )
    return {**DEFAULTS, **t}


def validate(cfg: Any) -> None:
    """Check ``[model.semisupervised]`` and ``data.labels_per_class`` against the rest of the
    config (``cfg``: a :class:`pvae.config.Config`)."""
    m, t = cfg.model, cfg.train
    n = cfg.data.labels_per_class
    if n is not None:
        positive_int("data.labels_per_class", n)
    if m.semisupervised is None:
        if n is not None:
            raise ValueError(
                "data.labels_per_class labels part of the training split for a semi-supervised "
                "model; add a [model.semisupervised] table (e.g. num_classes = 10)"
            )
        return
    s = _table(m.semisupervised)
    k = positive_int("model.semisupervised.num_classes", s["num_classes"])
    if k < 2:
        raise ValueError(f"model.semisupervised.num_classes must be at least 2, got {k}")
    if s["alpha"] is not None:
        positive_float("model.semisupervised.alpha", s["alpha"], allow_zero=True)
    if s["class_probs"] is not None:
        check_class_probs(s["class_probs"], k)
    if not isinstance(s["enumerate"], bool):
        raise TypeError(
            f"model.semisupervised.enumerate must be true or false, got {s['enumerate']!r}"
        )
    _check_labelled_per_batch(s["labelled_per_batch"], t.batch_size)
    _check_relaxed(s["relaxed_temperature"], s["enumerate"])
    if m.class_ is not None or m.hierarchical:
        raise ValueError(
            "[model.semisupervised] builds on the one-layer VAE (model.latent_dim an integer); "
            "remove model.class or give one latent width"
        )
    if m.encoder.get("name") != "mlp":
        raise ValueError(
            f"[model.semisupervised] needs model.encoder.name = 'mlp' (q(z | x, y) reads the "
            f"vector [vec(x), onehot(y)]), got {m.encoder.get('name')!r}"
        )
    want = "enum_elbo" if s["enumerate"] else "elbo"
    if t.objective != want:
        how = "sums y out" if s["enumerate"] else "samples y"
        if s["relaxed_temperature"] is not None:
            how = f"samples a relaxed y (relaxed_temperature = {s['relaxed_temperature']})"
        raise ValueError(
            f"[model.semisupervised] with enumerate = {str(s['enumerate']).lower()} {how}: "
            f"train.objective must be {want!r}, got {t.objective!r}"
        )
    if t.free_bits or t.labels:
        raise ValueError(
            "train.free_bits and train.labels do not apply to [model.semisupervised]: labels "
            "come from data.labels_per_class"
        )


def _check_relaxed(temperature: Any, enumerate_y: bool) -> None:
    key = "model.semisupervised.relaxed_temperature"
    if temperature is None:
        return
    temperature = positive_float(key, temperature)
    if enumerate_y:
        raise ValueError(
            f"{key} = {temperature} draws y from a Concrete relaxation instead of summing it "
            "out: set model.semisupervised.enumerate = false and train.objective = 'elbo' (or "
            f"remove {key} to enumerate y with 'enum_elbo')"
        )


def _check_labelled_per_batch(b_l: Any, batch_size: int) -> None:
    key = "model.semisupervised.labelled_per_batch"
    if isinstance(b_l, bool) or not isinstance(b_l, int):
        raise TypeError(f"{key} must be an integer in [0, train.batch_size - 1], got {b_l!r}")
    if not 0 <= b_l < batch_size:
        raise ValueError(
            f"{key} must be in [0, train.batch_size - 1] = [0, {batch_size - 1}] (0: a uniform "
            f"shuffle), got {b_l}"
        )


def canonical(table: Mapping[str, Any]) -> dict[str, Any]:
    """The table with its defaults filled in, floats as floats."""
    s = _table(table)
    for key in ("alpha", "relaxed_temperature"):
        if s[key] is not None:
            s[key] = float(s[key])
    if s["class_probs"] is not None:
        s["class_probs"] = [float(p) for p in s["class_probs"]]
    return s


def _call(where: str, cls: Callable[..., Any], kw: Mapping[str, Any], *args: Any, **fixed: Any):
    """``cls(*args, **fixed, **kw)``, refusing a keyword argument ``cls`` does not take."""
    params = list(inspect.signature(cls).parameters)[len(args) :]
    valid = sorted(p for p in params if p not in fixed)
    for key in kw:
        if key not in valid:
            raise ValueError(
                f"unknown keyword argument {key!r} for {where}; valid: {', '.join(valid)}"
            )
    return cls(*args, **fixed, **kw)


def build(model: Any, prior: nn.Module, likelihood: nn.Module, data_shape: tuple[int, ...]):
    """The :class:`~pvae.SemiSupervisedVAE` of a ``[model]`` section (``model``) with its
    prior and likelihood already built."""
    s = _table(model.semisupervised)
    k, d = s["num_classes"], int(prior.latent_dim)
    gkw = {key: v for key, v in model.guide.items() if key != "name"}
    guide_cls = lookup("model.guide.name", GUIDES, model.guide["name"])
    ekw = {key: v for key, v in model.encoder.items() if key != "name"}
    make = lookup("model.encoder.name", ENCODERS, model.encoder["name"])
    width_kw = {
        key: v
        for key, v in gkw.items()
        if key in inspect.signature(guide_cls.num_params).parameters
    }
    width = guide_cls.num_params(d, **width_kw)
    net = _call("model.encoder", make, ekw, math.prod(data_shape) + k, width)
    encoder = _call("model.guide", guide_cls, gkw, net=net, latent_dim=d)
    classifier = make(data_shape, k, **ekw)  # q(y | x): the encoder's size
    dkw = {key: v for key, v in model.decoder.items() if key != "name"}
    make_dec = lookup("model.decoder.name", DECODERS, model.decoder["name"])
    decoder = _call("model.decoder", make_dec, dkw, k + d, likelihood.param_shape(data_shape))
    return SemiSupervisedVAE(
        prior,
        k,
        likelihood,
        classifier=classifier,
        encoder=encoder,
        decoder=decoder,
        class_probs=s["class_probs"],
        alpha=s["alpha"],
        enumerate_y=s["enumerate"],
        relaxed_temperature=s["relaxed_temperature"],
        labelled_per_batch=s["labelled_per_batch"],
        data_shape=data_shape,
    )


def attach_labels(module: Any, data: DataSplits, data_cfg: Any) -> None:
    """Give a module that takes labels (``set_labels``) the training split's labels: n per class
    with ``data_cfg.labels_per_class`` = n (seeded by ``data_cfg.seed``), all of them without;
    nothing for other modules."""
    if not callable(getattr(module, "set_labels", None)):
        return
    y, n = data.train.y, data_cfg.labels_per_class
    if n is not None:
        y = partial_labels(y, n, seed=data_cfg.seed, key="data.labels_per_class")
    module.set_labels(y)
