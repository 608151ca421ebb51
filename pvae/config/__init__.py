"""Configuration: dataclasses loadable from TOML and ``--set key=value`` overrides; names become
components here, looked up in the registries beside them (:data:`pvae.priors.PRIORS`,
:data:`pvae.likelihoods.LIKELIHOODS`, :data:`pvae.guides.GUIDES`, :data:`pvae.nets.ENCODERS`,
:data:`pvae.nets.DECODERS`). Every key, its default and examples: ``docs/reference.md``.

Sections: ``data``, ``model`` (with component tables ``prior``, ``likelihood``, ``encoder``,
``decoder``, ``guide``: each ``{name = "...", <keyword arguments>}``), and ``train``, ``eval`` and
``log``, which are :func:`pvae.fit`'s options (:mod:`pvae.options`, where their defaults are
documented). Unknown keys, names and keyword arguments raise ``ValueError`` listing the valid ones;
an error in a file names the file (:func:`load_config`).

``[model]`` describes one of three kinds of model:

* **A one-layer** :class:`~pvae.VAE`: ``latent_dim`` an integer (or a one-entry list), with the
  five component tables.
* **A hierarchical VAE** (:class:`~pvae.HierarchicalVAE`): ``latent_dim`` a list of two or more
  layer widths, bottom (z_1) to top (z_L). ``prior`` is p(z_L), ``likelihood`` is p(x | z_1).
  Its MLPs are set by ``hidden`` (one list of widths per layer, default ``[2·dim_l, 2·dim_l]``)
  and ``activation`` (default ``"tanh"``). ``encoder``, ``decoder`` and ``guide`` stay at their
  defaults, and ``train.objective`` is not ``"meanfield_elbo"`` (its closed-form KL is biased for
  a bottom-up guide). ``inference = "top_down"`` builds a :class:`~pvae.LadderVAE` instead, with
  the keys of :mod:`pvae.config.ladder` (merging, paths, per-layer KL control).
* **A user's module**: ``class = "package.module:ClassName"`` names an ``nn.Module`` class with
  ``model`` and ``guide`` methods, instantiated with the ``[model.kwargs]`` table and built for
  the data's shape if it has ``build(data_shape)``; no other ``[model]`` key applies. The ``pvae``
  command imports it from the current directory, as ``python -m`` does; an error its code raises
  is a :class:`UserCodeError`.

:func:`canonical` is a configuration's meaning, one spelling of it: ``pvae compare`` groups runs
by it.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
from torch import nn

from pvae import datasets, nets
from pvae._checks import lookup, one_of, positive_int
from pvae.config import ladder, semisupervised
from pvae.config.text import apply_overrides, dumps_toml
from pvae.config.usercode import UserCodeError, build_class, class_path
from pvae.guides import GUIDES
from pvae.hierarchical import HierarchicalVAE
from pvae.likelihoods import LIKELIHOODS
from pvae.model import VAE
from pvae.nets import DECODERS, ENCODERS
from pvae.options import OPTIONAL, EvalOptions, FitOptions, LogOptions, TrainOptions
from pvae.priors import PRIORS

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "UserCodeError",
    "apply_overrides",
    "build_vae",
    "canonical",
    "dumps_toml",
    "load_config",
    "load_data",
]

_REGISTRIES = {
    "prior": PRIORS,
    "likelihood": LIKELIHOODS,
    "encoder": ENCODERS,
    "decoder": DECODERS,
    "guide": GUIDES,
}
_NET_POSITIONAL = {"in_shape", "out_shape", "out_features", "latent_dim"}
_ACTIVATION = "tanh"  # a hierarchical model's default activation


def _table(name: str, **kw: Any) -> Callable[[], dict[str, Any]]:
    return lambda: {"name": name, **kw}


@dataclass
class DataConfig:
    """``[data]``: which dataset, how to binarize it, how to split it.

    ``val_fraction`` is the share of the training data held out for validation; 0 trains on all
    of it (no validation ELBO per epoch: the run reports the training objective only).
    """

    name: str = "digits"
    binarize: str = "dynamic"
    path: str | None = None
    root: str | None = None
    download: bool = True
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    labels_per_class: int | None = field(default=None, metadata=OPTIONAL)  # see .semisupervised


@dataclass
class ModelConfig:
    """``[model]``: latent size (one integer, or one width per stochastic layer), one table per
    component, or a user's module class (see the module docstring)."""

    latent_dim: int | list[int] = 8
    prior: dict[str, Any] = field(default_factory=_table("standard_normal"))
    likelihood: dict[str, Any] = field(default_factory=_table("bernoulli"))
    encoder: dict[str, Any] = field(default_factory=_table("mlp", hidden=[256, 128]))
    decoder: dict[str, Any] = field(default_factory=_table("mlp", hidden=[128, 256]))
    guide: dict[str, Any] = field(default_factory=_table("diagonal"))
    hidden: list[list[int]] | None = field(default=None, metadata=OPTIONAL)
    activation: str | None = field(default=None, metadata=OPTIONAL)
    class_: str | None = field(default=None, metadata={**OPTIONAL, "key": "class"})
    kwargs: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)
    semisupervised: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)
    # Inference of a hierarchical model, and the top-down ladder's keys (pvae.config.ladder).
    inference: str | None = field(default=None, metadata=OPTIONAL)
    merge: str | None = field(default=None, metadata=OPTIONAL)
    norm: str | None = field(default=None, metadata=OPTIONAL)
    skip: bool | None = field(default=None, metadata=OPTIONAL)
    generative_skip: bool | None = field(default=None, metadata=OPTIONAL)
    min_scale: float | None = field(default=None, metadata=OPTIONAL)
    layer_warmup: int | list[int] | None = field(default=None, metadata=OPTIONAL)
    layer_free_bits: float | list[float] | None = field(default=None, metadata=OPTIONAL)
    free_bits_groups: int | list[int] | None = field(default=None, metadata=OPTIONAL)
    paths: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)

    @property
    def layers(self) -> list[int]:
        """The stochastic layers' widths, bottom to top (one entry for a one-layer VAE)."""
        d = self.latent_dim
        return list(d) if isinstance(d, list | tuple) else [d]

    @property
    def hierarchical(self) -> bool:
        return self.class_ is None and len(self.layers) >= 2


def _keys(section_cls: type) -> dict[str, str]:
    """TOML key → field name of a section (``class`` is a Python keyword: field ``class_``)."""
    return {f.metadata.get("key", f.name): f.name for f in dataclasses.fields(section_cls)}


@dataclass
class Config:
    """A whole run's configuration."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainOptions = field(default_factory=TrainOptions)
    eval: EvalOptions = field(default_factory=EvalOptions)
    log: LogOptions = field(default_factory=LogOptions)

    def to_dict(self) -> dict[str, Any]:
        """Nested dicts keyed as in TOML; optional keys that are unset are left out."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            out[f.name] = {
                sf.metadata.get("key", sf.name): copy.deepcopy(getattr(section, sf.name))
                for sf in dataclasses.fields(section)
                if not (sf.metadata.get("optional") and getattr(section, sf.name) is None)
            }
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Config:
        """Build a config from nested mappings, rejecting unknown sections and keys."""
        if not isinstance(d, Mapping):
            raise TypeError(f"config must be a mapping, got {type(d).__name__}")
        sections = {f.name: f for f in dataclasses.fields(cls)}
        for key in d:
            one_of("config section", key, sections)
        kwargs = {}
        for name, f in sections.items():
            section_cls = f.default_factory  # type: ignore[misc]
            given = d.get(name, {})
            if not isinstance(given, Mapping):
                raise TypeError(f"config section [{name}] must be a table, got {given!r}")
            keys = _keys(section_cls)
            for key in given:
                one_of(f"key in [{name}]", key, keys)
            base = dataclasses.asdict(section_cls())
            for key, value in given.items():
                key = keys[key]
                default = base.get(key)
                # A component table keeps the default keyword arguments only while it keeps the
                # default component.
                if (
                    isinstance(default, dict)
                    and isinstance(value, Mapping)
                    and value.get("name", default["name"]) == default["name"]
                ):
                    value = {**default, **value}
                base[key] = copy.deepcopy(value)
            kwargs[name] = section_cls(**base)
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    @property
    def options(self) -> FitOptions:
        """The ``[train]``, ``[eval]`` and ``[log]`` sections as :func:`pvae.fit`'s options."""
        return FitOptions(self.train, self.eval, self.log)

    def validate(self) -> None:
        """Check values and registry names (not the components' keyword arguments)."""
        _validate_data(self.data)
        _validate_model(self.model, self.train)
        _validate_components(self.model)
        _validate_pairing(self)
        semisupervised.validate(self)
        self.options.check(toml=True)


_COMPONENTS = tuple(_REGISTRIES)


def _validate_data(d: DataConfig) -> None:
    if d.name not in datasets.DATASETS:
        lookup("dataset", datasets.DATASETS, d.name)
    one_of("data.binarize", d.binarize, datasets.BINARIZE)
    datasets.check_fractions(d.val_fraction, d.test_fraction, prefix="data.")


def _validate_components(m: ModelConfig) -> None:
    """Each component table names a component of its registry."""
    for kind, registry in _REGISTRIES.items():
        table = getattr(m, kind)
        if not isinstance(table, Mapping) or "name" not in table:
            raise ValueError(f"model.{kind} must be a table with a 'name', got {table!r}")
        lookup(f"model.{kind}.name", registry, table["name"])


def _validate_pairing(cfg: Config) -> None:
    """Settings that are each valid but mean nothing together."""
    lik, binarize = cfg.model.likelihood.get("name"), cfg.data.binarize
    if cfg.model.class_ is None and lik == "continuous_bernoulli" and binarize != "none":
        raise ValueError(
            f"model.likelihood.name = 'continuous_bernoulli' does not fit data.binarize = "
            f"{binarize!r}: the continuous Bernoulli is a density on [0, 1], and its value at "
            "binarized points {0, 1} is not a probability of binary data (its ELBO can exceed "
            "0 nats); use model.likelihood.name = 'bernoulli' for binarized data, or keep the "
            "data continuous in [0, 1] with data.binarize = 'none'"
        )


def _validate_model(m: ModelConfig, t: TrainOptions) -> None:
    """Check ``[model]`` for the kind of model it describes (see the module docstring)."""
    if m.class_ is not None:
        _validate_class(m, t)
        return
    if m.kwargs is not None:
        raise ValueError(
            "model.kwargs is the keyword arguments of model.class, which is not set; valid keys "
            "of [model] for the built-in models: "
            + ", ".join(k for k in _keys(ModelConfig) if k not in ("class", "kwargs"))
        )
    if isinstance(m.latent_dim, list | tuple):
        if not m.latent_dim:
            raise ValueError("model.latent_dim must be a positive integer or a non-empty list")
        for d in m.latent_dim:
            positive_int("model.latent_dim entries", d)
    else:
        positive_int("model.latent_dim", m.latent_dim)
    ladder.validate(m, t.objective, m.hierarchical)
    if not m.hierarchical:
        for key in ("hidden", "activation"):
            if getattr(m, key) is not None:
                raise ValueError(
                    f"model.{key} applies to a hierarchical model (model.latent_dim a list of two "
                    "or more layer widths); the one-layer VAE takes it in model.encoder and "
                    "model.decoder"
                )
        return
    _validate_hierarchical(m, t)


def _validate_class(m: ModelConfig, t: TrainOptions) -> None:
    """``[model]`` of a user's module: ``class`` and ``kwargs`` and nothing else."""
    default = ModelConfig()
    class_path(m.class_)
    set_keys = [
        key
        for key, name in _keys(ModelConfig).items()
        if key not in ("class", "kwargs") and getattr(m, name) != getattr(default, name)
    ]
    if set_keys:
        raise ValueError(
            f"model.class builds {m.class_!r} from [model.kwargs] alone; remove "
            f"{', '.join(f'model.{k}' for k in set_keys)}"
        )
    if m.kwargs is not None and not isinstance(m.kwargs, Mapping):
        raise ValueError(f"model.kwargs must be a table of keyword arguments, got {m.kwargs!r}")
    _no_kl_options(t, f"a user's module (model.class = {m.class_!r})")


def _validate_hierarchical(m: ModelConfig, t: TrainOptions) -> None:
    """``[model]`` of a hierarchical VAE: ``hidden`` and ``activation`` for its networks."""
    default = ModelConfig()
    L = len(m.layers)
    for kind in ("encoder", "decoder", "guide"):
        if getattr(m, kind) != getattr(default, kind):
            raise ValueError(
                f"model.{kind} describes the one-layer VAE's networks; a hierarchical model "
                f"(model.latent_dim = {m.latent_dim}) takes model.hidden and model.activation"
            )
    if m.hidden is not None:
        if not isinstance(m.hidden, list) or len(m.hidden) != L:
            raise ValueError(
                f"model.hidden must be a list of {L} lists of hidden widths, one per layer of "
                f"model.latent_dim = {m.latent_dim} (e.g. [[200, 200], [100, 100]]), "
                f"got {m.hidden!r}"
            )
        for i, widths in enumerate(m.hidden):
            if not isinstance(widths, list):
                raise ValueError(f"model.hidden[{i}] must be a list of widths, got {widths!r}")
            for w in widths:
                positive_int(f"model.hidden[{i}] entries", w)
    if m.activation is not None:
        lookup("model.activation", nets.ACTIVATIONS, m.activation)
    if t.objective == "meanfield_elbo" and not ladder.top_down(m):
        raise ValueError(
            "train.objective='meanfield_elbo' is biased for a hierarchical model: its "
            "closed-form KL of q(z_l | z_{l-1}) against p(z_l | z_{l+1}) uses a z_{l+1} the guide "
            "drew given z_l; use train.objective = 'elbo' or 'iwae'"
        )


def _no_kl_options(t: TrainOptions, what: str) -> None:
    if t.beta != 1 or t.warmup_steps or t.free_bits:
        raise ValueError(
            f"train.beta, train.warmup_steps and train.free_bits are options of the one-layer "
            f"VAE; {what} trains on the plain objective"
        )


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), *, name: str | None = None
) -> Config:
    """Read a TOML config (or the defaults when ``path`` is None) and apply ``--set`` overrides.

    The overrides apply to the file's contents, and the merged whole is validated once: a file
    that is only valid with its overrides loads, and the error of an invalid merge names the key.
    A component's table switches wholesale when an override changes its ``name``, so stale
    keyword arguments of the old component do not leak into the new one.

    Every error names where it came from: the file (``name``, e.g. ``"config.toml of run
    'runs/a'"``, by default ``config file 'PATH'``) and the overrides; a TOML syntax error gives
    the line and column.
    """
    d: dict[str, Any] = {}
    where = ""
    if path is not None:
        where = name or f"config file {str(path)!r}"
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{where} does not exist")
        try:
            d = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{where} is not valid TOML: {err}") from err
        except UnicodeDecodeError as err:
            raise ValueError(f"{where} is not UTF-8 text ({err})") from err
        if overrides:
            where += " with " + " ".join(f"--set {item}" for item in overrides)
    try:
        return Config.from_dict(apply_overrides(_switch_components(d, overrides), overrides))
    except (ValueError, TypeError) as err:
        if not where:
            raise
        raise (TypeError if isinstance(err, TypeError) else ValueError)(f"{where}: {err}") from err


def _switch_components(d: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Empty a component's table of the file where an override changes its ``name``."""
    for item in overrides:
        key = item.split("=", 1)[0].strip().split(".")
        if len(key) == 3 and key[0] == "model" and key[1] in _COMPONENTS and key[2] == "name":
            model = d.get("model")
            if isinstance(model, dict) and key[1] in model:
                model[key[1]] = {}
    return d


# -- meaning: one spelling per configuration ------------------------------------------------------
def canonical(config: Config | Mapping[str, Any], *, defaults: bool = True) -> dict[str, Any]:
    """A configuration's meaning as nested dicts: configurations that train the same model in the
    same way give equal dicts, however they are spelled (``pvae compare`` groups runs by it).

    Defaults are filled in (a component's keyword arguments from its signature, a hierarchical
    model's ``hidden`` and ``activation``), a one-entry ``latent_dim`` list becomes its integer,
    an integer becomes a float where the value is a float, tuples become lists, keys are sorted,
    and ``[model]`` keeps only the keys of its kind of model (a one-layer VAE: ``latent_dim`` and
    the five component tables; a hierarchical one: ``latent_dim``, ``prior``, ``likelihood``,
    ``hidden``, ``activation``, ``inference`` and a top-down one's keys; a user's module:
    ``class`` and ``kwargs``, as written: its module is not imported). Unset optional keys are
    ``None``.

    Args:
        config: A :class:`Config`, or nested mappings as :meth:`Config.from_dict` reads them.
        defaults: ``False``: only the values that differ from their defaults.

    >>> canonical({"model": {"latent_dim": [8], "encoder": {"activation": "relu"}}}) == (
    ...     canonical(Config()))
    True
    >>> canonical({"train": {"lr": 1, "epochs": 20}}, defaults=False)
    {'train': {'epochs': 20, 'lr': 1.0}}
    """
    cfg = config if isinstance(config, Config) else Config.from_dict(config)
    full: dict[str, Any] = {}
    default: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if f.name == "model":
            full[f.name], default[f.name] = _canonical_model(section)
        else:
            full[f.name] = _canonical_section(section)
            default[f.name] = _canonical_section(type(section)())
    return _sorted(full if defaults else _beyond(full, default))


def _plain(v: Any, as_float: bool = False) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x, as_float) for x in v]
    if as_float and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    return v


def _is_float(annotation: Any, default: Any) -> bool:
    return isinstance(default, float) or "float" in str(annotation).replace(" ", "").split("|")


def _canonical_section(section: Any) -> dict[str, Any]:
    return {
        f.metadata.get("key", f.name): _plain(getattr(section, f.name), _is_float(f.type, None))
        for f in dataclasses.fields(section)
    }


def _canonical_model(m: ModelConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """``[model]`` filled in, and the defaults it is filled from."""
    if m.class_ is not None:
        return {"class": m.class_, "kwargs": _plain(m.kwargs or {})}, {"kwargs": {}}
    layers = m.layers
    full: dict[str, Any] = {"latent_dim": layers[0] if len(layers) == 1 else layers}
    default: dict[str, Any] = {"latent_dim": ModelConfig().latent_dim}
    for kind in ("prior", "likelihood") if m.hierarchical else _COMPONENTS:
        full[kind], default[kind] = _canonical_component(kind, getattr(m, kind))
    if m.hierarchical:
        default.update(hidden=[[2 * d, 2 * d] for d in layers], activation=_ACTIVATION)
        full["hidden"] = default["hidden"] if m.hidden is None else _plain(m.hidden)
        full["activation"] = m.activation or _ACTIVATION
        for d, part in zip((full, default), ladder.canonical(m), strict=True):
            d.update(part)
    if m.semisupervised is not None:
        full["semisupervised"] = semisupervised.canonical(m.semisupervised)
    return full, default


def _canonical_component(kind: str, table: Mapping[str, Any]) -> tuple[dict, dict]:
    """A component's table with its keyword arguments' defaults, and those defaults."""
    name, kw = _split(table)
    default_name, default_kw = _split(getattr(ModelConfig(), kind))
    params = inspect.signature(_REGISTRIES[kind][name]).parameters
    defaults = {
        p: _plain(v.default)
        for p, v in params.items()
        if v.default is not v.empty and p not in _NET_POSITIONAL
    }
    if name == default_name:  # the table's own defaults (the MLPs' widths)
        defaults.update(_plain(default_kw))
    floats = {p for p, v in params.items() if _is_float(v.annotation, v.default)}
    full = {**defaults, **{k: _plain(v, k in floats) for k, v in kw.items()}}
    return {"name": name, **full}, {"name": default_name, **defaults}


def _beyond(d: Mapping[str, Any], default: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``d`` that differ from ``default``'s, table by table."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        base = default.get(k, _beyond)  # a sentinel no value equals
        if isinstance(v, Mapping) and isinstance(base, Mapping):
            v = _beyond(v, base)
            if v:
                out[k] = v
        elif v != base:
            out[k] = v
    return out


def _sorted(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _sorted(v) if isinstance(v, Mapping) else v for k, v in sorted(d.items())}


# -- building -------------------------------------------------------------------------------------
def _check_kwargs(
    where: str, cls: Callable[..., Any], kwargs: Mapping[str, Any], fixed: Collection[str] = ()
) -> None:
    """Reject keyword arguments ``cls`` does not accept (shapes and fixed ones aside)."""
    params = inspect.signature(cls).parameters
    valid = sorted(
        p
        for p in params
        if p not in fixed
        and p not in _NET_POSITIONAL
        and params[p].kind not in (params[p].VAR_KEYWORD, params[p].VAR_POSITIONAL)
    )
    for key in kwargs:
        if key not in valid:
            raise ValueError(
                f"unknown keyword argument {key!r} for {where}; valid: "
                f"{', '.join(valid) if valid else '(none)'}"
            )


def _instantiate(kind: str, cls: Callable[..., Any], kwargs: Mapping[str, Any], **fixed: Any):
    """Call ``cls(**fixed, **kwargs)``, rejecting keyword arguments it does not accept."""
    _check_kwargs(f"model.{kind}", cls, kwargs, fixed)
    return cls(**fixed, **kwargs)


def _split(table: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    kw = dict(table)
    return kw.pop("name"), kw


def build_vae(model: ModelConfig, data_shape: Sequence[int]) -> nn.Module:
    """Build the model a ``[model]`` section describes, for datapoints of shape ``data_shape``:
    a :class:`~pvae.VAE`, a :class:`~pvae.HierarchicalVAE`, or a user's module (see the module
    docstring)."""
    data_shape = tuple(data_shape)
    if model.class_ is not None:
        return build_class(model.class_, model.kwargs, data_shape)
    layers = [positive_int("model.latent_dim entries", d) for d in model.layers]
    name, kw = _split(model.likelihood)
    lik = _instantiate("likelihood", lookup("model.likelihood.name", LIKELIHOODS, name), kw)
    paths = ladder.build_paths(model, lik, data_shape) if ladder.top_down(model) else None
    # the prior is over the top layer (all its units, for a conv path's spatial latents)
    latent = layers[-1] if paths is None else math.prod(paths.latent_shapes[-1])
    name, kw = _split(model.prior)
    prior = _instantiate("prior", lookup("model.prior.name", PRIORS, name), kw, latent_dim=latent)
    if model.semisupervised is not None:
        return semisupervised.build(model, prior, lik, data_shape)
    if len(layers) > 1 and ladder.top_down(model):
        act = model.activation or _ACTIVATION
        return ladder.build(model, prior, lik, act, data_shape, paths)
    if len(layers) > 1:
        return HierarchicalVAE(
            layers,
            prior=prior,
            likelihood=lik,
            hidden=model.hidden,
            activation=model.activation or _ACTIVATION,
            skip=bool(model.skip),
            data_shape=data_shape,
        )
    gname, gkw = _split(model.guide)
    guide_cls = lookup("model.guide.name", GUIDES, gname)
    name, kw = _split(model.encoder)
    make = lookup("model.encoder.name", ENCODERS, name)
    _check_kwargs(f"model.encoder {name!r}", make, kw)
    width_kw = {
        k: v for k, v in gkw.items() if k in inspect.signature(guide_cls.num_params).parameters
    }
    enc_net = make(data_shape, guide_cls.num_params(latent, **width_kw), **kw)
    encoder = _instantiate("guide", guide_cls, gkw, net=enc_net, latent_dim=latent)
    name, kw = _split(model.decoder)
    make = lookup("model.decoder.name", DECODERS, name)
    _check_kwargs(f"model.decoder {name!r}", make, kw)
    decoder = make(latent, lik.param_shape(data_shape), **kw)
    return VAE(prior, lik, encoder, decoder, data_shape=data_shape)


def load_data(data: DataConfig) -> datasets.DataSplits:
    """Load the dataset a ``[data]`` section describes."""
    kwargs: dict[str, Any] = {}
    if data.name in datasets.TORCHVISION:
        kwargs = {"root": data.root, "download": data.download}
    elif data.name == "file":
        kwargs = {"path": data.path}
    return datasets.load(
        data.name,
        data.binarize,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        seed=data.seed,
        **kwargs,
    )
