"""Configuration: dataclasses loadable from TOML and ``--set key=value`` overrides; names become
components here, looked up in the registries beside them (:data:`pvae.priors.PRIORS`,
:data:`pvae.likelihoods.LIKELIHOODS`, :data:`pvae.guides.GUIDES`, :data:`pvae.nets.ENCODERS`,
:data:`pvae.nets.DECODERS`).

Sections: ``data``, ``model`` (with component tables ``prior``, ``likelihood``, ``encoder``,
``decoder``, ``guide``: each ``{name = "...", <keyword arguments>}``), and ``train``, ``eval`` and
``log``, which are :func:`pvae.fit`'s options (:mod:`pvae.options`, where their defaults are
documented). Unknown keys, names and keyword arguments raise ``ValueError`` listing the valid ones.

``[log]`` says what a run reports while it trains (see :class:`~pvae.options.LogOptions`)::

    [log]
    csv = true           # RUN/metrics.csv, one row per epoch
    tensorboard = false  # RUN/tensorboard/ (needs: pip install tensorboard)
    every = 30.0         # seconds between progress lines when stderr is not a terminal
    quiet = false        # no progress, no per-epoch lines, no summary

``[model]`` describes one of three kinds of model:

* **A one-layer** :class:`~pvae.VAE`: ``latent_dim`` an integer (or a one-entry list), with the
  five component tables.
* **A hierarchical VAE** (:class:`~pvae.HierarchicalVAE`): ``latent_dim`` a list of two or more
  layer widths, bottom (z_1) to top (z_L). ``prior`` is p(z_L), ``likelihood`` is p(x | z_1).
  The networks are MLPs set by two keys of their own: ``hidden``, one list of hidden widths per
  layer l (between z_{l-1} and z_l, z_0 = x; default ``[2·dim_l, 2·dim_l]`` each), and
  ``activation`` (default ``"tanh"``). ``encoder``, ``decoder`` and ``guide`` describe the
  one-layer VAE's networks and must stay at their defaults; so must ``train.beta``,
  ``warmup_steps`` and ``free_bits``, and ``train.objective`` must not be ``"meanfield_elbo"``
  (its closed-form KL is biased for a bottom-up guide; see :class:`~pvae.HierarchicalVAE`)::

      [model]
      latent_dim = [100, 50]
      hidden = [[200, 200], [100, 100]]
      activation = "tanh"

* **A user's module**: ``class = "package.module:ClassName"`` names an ``nn.Module`` class with
  ``model`` and ``guide`` methods (e.g. a :class:`~pvae.program.PyroProgram` subclass);
  it is instantiated with the ``[model.kwargs]`` table as keyword arguments, and built for the
  data's shape if it has ``build(data_shape)``. No other ``[model]`` key applies. The ``pvae``
  command puts the current directory on the import path, as ``python -m`` does::

      [model]
      class = "my_models:TwoLatentVAE"
      [model.kwargs]
      latent_dim = 16
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
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
    "build_vae",
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
    _class_path(m.class_)
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
    if t.objective == "meanfield_elbo":
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


def _class_path(path: Any) -> tuple[str, str]:
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise ValueError(f"model.class must be 'package.module:ClassName', got {path!r}")
    module, name = path.split(":")
    return module, name


# -- TOML in and out ------------------------------------------------------------------------------
def _parse_value(text: str) -> Any:
    """A ``--set`` value as TOML (numbers, booleans, lists, quoted strings), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(d: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides to a nested dict (a copy is returned)."""
    d = copy.deepcopy(d)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value (e.g. train.epochs=5), got {item!r}")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) < 2 or not all(parts):
            raise ValueError(f"--set key must be section.key (e.g. train.lr), got {key!r}")
        node = d
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {p!r} is not a table")
        node[parts[-1]] = _parse_value(text.strip())
    return d


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a TOML config (or the defaults when ``path`` is None) and apply ``--set`` overrides.

    The overrides apply to the file's contents, and the merged whole is validated once: a file
    that is only valid with its overrides loads, and the error of an invalid merge names the key.
    A component's table switches wholesale when an override changes its ``name``, so stale
    keyword arguments of the old component do not leak into the new one.
    """
    d: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r} does not exist")
        try:
            d = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"config file {str(path)!r} is not valid TOML: {err}") from err
    for item in overrides:
        key = item.split("=", 1)[0].strip().split(".")
        if len(key) == 3 and key[0] == "model" and key[1] in _COMPONENTS and key[2] == "name":
            model = d.get("model")
            if isinstance(model, dict) and key[1] in model:
                model[key[1]] = {}
    return Config.from_dict(apply_overrides(d, overrides))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        if isinstance(v, float) and not math.isfinite(v):
            return {math.inf: "inf", -math.inf: "-inf"}.get(v, "nan")
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps_toml(d: Mapping[str, Any], prefix: str = "") -> str:
    """Write nested dicts of scalars and lists as TOML (``None`` values are omitted)."""
    lines = [
        f"{k} = {_toml_value(v)}"
        for k, v in d.items()
        if not isinstance(v, Mapping) and v is not None
    ]
    out = []
    if lines:
        out.append((f"[{prefix}]\n" if prefix else "") + "\n".join(lines) + "\n")
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.append(dumps_toml(v, f"{prefix}.{k}" if prefix else k))
    return "\n".join(out)


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
        return _build_class(model, data_shape)
    layers = [positive_int("model.latent_dim entries", d) for d in model.layers]
    latent = layers[-1]  # the prior is over the top layer
    name, kw = _split(model.prior)
    prior = _instantiate("prior", lookup("model.prior.name", PRIORS, name), kw, latent_dim=latent)
    name, kw = _split(model.likelihood)
    lik = _instantiate("likelihood", lookup("model.likelihood.name", LIKELIHOODS, name), kw)
    if len(layers) > 1:
        return HierarchicalVAE(
            layers,
            prior=prior,
            likelihood=lik,
            hidden=model.hidden,
            activation=model.activation or "tanh",
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


def _build_class(model: ModelConfig, data_shape: tuple[int, ...]) -> nn.Module:
    """Import ``model.class``, instantiate it with ``model.kwargs`` and build it for the data."""
    path = model.class_
    module_name, class_name = _class_path(path)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"model.class {path!r}: cannot import module {module_name!r} ({err}); is it on the "
            "Python path (the current directory, PYTHONPATH, an installed package)?"
        ) from err
    cls = getattr(module, class_name, None)
    if cls is None:
        public = sorted(
            n
            for n, v in vars(module).items()
            if isinstance(v, type) and v.__module__ == module_name and not n.startswith("_")
        )
        raise ValueError(
            f"model.class {path!r}: module {module_name!r} has no attribute {class_name!r}; "
            f"its classes: {', '.join(public) if public else '(none)'}"
        )
    if not (
        isinstance(cls, type)
        and issubclass(cls, nn.Module)
        and callable(getattr(cls, "model", None))
        and callable(getattr(cls, "guide", None))
    ):
        raise TypeError(
            f"model.class {path!r} must be an nn.Module class with model and guide methods "
            f"(e.g. a pvae.program.PyroProgram subclass), got {cls!r}"
        )
    kwargs = dict(model.kwargs or {})
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        valid = sorted(
            n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY)
        )
        for key in kwargs:
            if key not in valid:
                raise ValueError(
                    f"unknown keyword argument {key!r} in model.kwargs for {path!r}; valid: "
                    f"{', '.join(valid) if valid else '(none)'}"
                )
    module_obj = cls(**kwargs)
    if callable(getattr(module_obj, "build", None)):
        module_obj.build(data_shape)
    return module_obj


def load_data(data: DataConfig) -> datasets.DataSplits:
    """Load the dataset a ``[data]`` section describes."""
    kwargs: dict[str, Any] = {}
    if data.name in ("mnist", "fashion-mnist"):
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
