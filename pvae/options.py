"""The options of a training run: one dataclass per TOML table (``[train]``, ``[eval]``,
``[log]``) and :class:`FitOptions`, the three together, which :func:`pvae.fit` reads.

These dataclasses are the one source of the defaults: ``pvae train`` loads the TOML tables into
them (:mod:`pvae.config`), and :func:`pvae.fit` takes a :class:`FitOptions` or builds one from
its keyword arguments (``fit(vae, data, epochs=5)`` sets ``FitOptions().train.epochs``; see
:data:`FitOptions.KEYWORDS`). Each dataclass checks itself (:meth:`TrainOptions.check`), naming
a bad value as the TOML key (``train.epochs``) or as :func:`pvae.fit`'s keyword (``epochs``).

>>> opts = FitOptions().replace(epochs=5, curve_ks=(5, 50), quiet=True)
>>> opts.train.epochs, opts.eval.curve_ks, opts.log.quiet
(5, (5, 50), True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pvae._checks import lookup, one_of, positive_float, positive_int
from pvae.objectives import ESTIMATORS, OBJECTIVES
from pvae.optimizers import OPTIMIZERS

__all__ = ["EvalOptions", "FitOptions", "LogOptions", "TrainOptions"]

# Keys left out of ``Config.to_dict`` while unset, so configs and checkpoints written before they
# existed compare equal to their reading now.
OPTIONAL = {"optional": True}


@dataclass
class TrainOptions:
    """``[train]``: the objective, the optimizer and the loop.

    Attributes:
        objective: ``"elbo"`` (``Trace_ELBO``), ``"meanfield_elbo"`` (``TraceMeanField_ELBO``,
            analytic KL), ``"iwae"`` (importance-weighted bound, K = ``num_particles``),
            ``"enum_elbo"`` (``TraceEnum_ELBO``: discrete sites marked for enumeration, e.g. by
            ``config_enumerate``, summed out exactly; ``max_plate_nesting`` is read from the
            traces), ``"vimco"`` (the K-sample bound, VIMCO's leave-one-out baselines for
            sites without ``rsample``), ``"rws"`` (reweighted wake-sleep), or, in Python, any
            Pyro ELBO instance.
        num_particles: Samples of the latents per datapoint in each ELBO estimate.
        vectorize_particles: Draw those samples in one batched pass.
        estimator: Encoder gradient estimator for ``"iwae"``: ``"reparam"``, ``"stl"``,
            ``"dreg"``.
        fast: Compute a standard VAE's objective on the fused fast path
            (:mod:`pvae.objectives.fused`): the same loss and gradients as Pyro's objective for
            the same draws, without per-step tracing. Falls back to Pyro, with a one-line notice,
            for a VAE that overrides ``model`` or ``guide``; an ELBO instance as ``objective``
            and any other module always run through Pyro.
        epochs: Total number of epochs (including those already done when resuming). 200, as
            ``pvae train`` has always run, also for :func:`pvae.fit`.
        batch_size: Minibatch size; the last batch of an epoch may be smaller.
        lr: Learning rate.
        optimizer: ``"adam"`` or ``"clipped_adam"`` (Pyro's ClippedAdam;
            :data:`pvae.optimizers.OPTIMIZERS`).
        clip_norm: With Adam, clip the global gradient norm to this; with ClippedAdam, its
            elementwise clip value.
        beta: Weight of the KL term (β-VAE, Higgins et al. 2017), applied as a Pyro scale on the
            latent sites. A :class:`~pvae.VAE` option (it sets ``vae.beta``); another module
            weights its own sites.
        warmup_steps: Anneal β linearly from 0 over this many steps (Bowman et al. 2016;
            Sønderby et al. 2016); 0 disables warm-up. A :class:`~pvae.VAE` option.
        free_bits: Free bits (Kingma et al. 2016), nats per latent dimension: no KL gradient
            while the minibatch KL is below ``free_bits × latent_dim``. Validation always
            reports the true ELBO; ``train_elbo`` is the regularized objective. A
            :class:`~pvae.VAE` option.
        seed: Seeds parameter initialization (for default networks), shuffling and sampling.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``... (in
            Python also a :class:`torch.device`).
        progress: Show progress over the steps on stderr: tqdm's bar on a terminal, else a
            plain line at most every ``log.every`` seconds (no ``\\r`` frames in log files).
        compile: Run the fused objective and Adam's update through :func:`torch.compile`
            (:class:`~pvae.objectives.fused.CompiledObjective`; CUDA graphs on CUDA): the same
            losses and gradients as eager to float precision, one graph without breaks, a
            ragged last batch and dynamic binarization without recompiling. Compilation takes
            seconds to tens of seconds, said once on stderr and recorded as
            ``compile_seconds``; it pays off on long runs (measured on a 2-core CPU: 0.78× the
            eager epoch time after 25 s of compilation), so it is off by default. Needs
            ``fast``; a notice and eager steps where :func:`torch.compile` is unavailable.
        labels: Pass each minibatch's labels to ``model`` and ``guide`` as the keyword
            argument ``y`` (a conditional model, e.g. a conditional VAE on digit classes);
            validation passes the validation labels. Needs data with labels and a model and
            guide that take ``y``. Unset (``None``) is ``False``.
    """

    objective: Any = "meanfield_elbo"
    num_particles: int = 1
    vectorize_particles: bool = False
    estimator: str = "reparam"
    fast: bool = True
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    clip_norm: float | None = None
    beta: float = 1.0
    warmup_steps: int = 0
    free_bits: float = 0.0
    seed: int = 0
    device: Any = "auto"
    progress: bool = True
    compile: bool = False
    labels: bool | None = field(default=None, metadata=OPTIONAL)

    def check(self, toml: bool = False) -> None:
        """Raise ``ValueError``/``TypeError`` naming the first bad value: as its TOML key
        (``train.lr``) with ``toml``, else as :func:`pvae.fit`'s keyword (``lr``)."""
        name = _namer("train", toml)
        if isinstance(self.objective, str):
            lookup(name("objective"), OBJECTIVES, self.objective)
            one_of(name("estimator"), self.estimator, ESTIMATORS)
            if self.estimator != "reparam" and self.objective != "iwae":
                raise ValueError(
                    f"{name('estimator')}={self.estimator!r} applies to "
                    f"{name('objective')}='iwae' only, got objective {self.objective!r}"
                )
        lookup(name("optimizer"), OPTIMIZERS, self.optimizer)
        for key in ("epochs", "batch_size", "num_particles"):
            positive_int(name(key), getattr(self, key))
        positive_float(name("lr"), self.lr)
        if self.clip_norm is not None:
            positive_float(name("clip_norm"), self.clip_norm)
        positive_float(name("beta"), self.beta, allow_zero=True)
        positive_float(name("free_bits"), self.free_bits, allow_zero=True)
        w = self.warmup_steps
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise ValueError(f"{name('warmup_steps')} must be an integer >= 0, got {w!r}")
        for key in ("compile", "progress", "vectorize_particles", "fast"):
            _boolean(name(key), getattr(self, key), toml)
        if self.labels is not None:
            _boolean(name("labels"), self.labels, toml)
        if self.objective == "iwae" and (self.beta != 1 or self.warmup_steps or self.free_bits):
            raise ValueError(
                f"{name('beta')}, {name('warmup_steps')} and {name('free_bits')} reweight the "
                "KL term of the ELBO; the IWAE bound has no separate KL term: use objective "
                "'elbo' or 'meanfield_elbo' with them"
            )


@dataclass
class EvalOptions:
    """``[eval]``: evaluation during training (the last four) and by ``pvae evaluate``.

    Attributes:
        k: Importance samples per datapoint of ``pvae evaluate``'s log p(x) estimate.
        num_samples: Samples per datapoint of ``pvae evaluate``'s ELBO estimate.
        batch_size: Datapoints per chunk of the validation ELBO (:func:`pvae.fit`'s
            ``eval_batch_size``).
        curve_ks: Every ``curve_every`` epochs, record IWAE_k on the first ``curve_subset``
            validation datapoints for each k, as ``val_iwae_<k>``, and the largest-k estimate
            as ``val_log_px``; empty: off. ``[5, 500]``, as ``pvae train`` has always recorded,
            also for :func:`pvae.fit` (whose runs rarely reach epoch 10 in a notebook).
        curve_every: Epochs between those evaluations.
        curve_subset: Validation datapoints used for them.
    """

    k: int = 5000
    num_samples: int = 100
    batch_size: int = 1024
    curve_ks: list[int] = field(default_factory=lambda: [5, 500])
    curve_every: int = 10
    curve_subset: int = 256

    def check(self, toml: bool = False) -> None:
        """As :meth:`TrainOptions.check`, for ``[eval]``."""
        name = _namer("eval", toml)
        for key in ("k", "num_samples", "batch_size", "curve_every", "curve_subset"):
            positive_int(name(key), getattr(self, key))
        if not isinstance(self.curve_ks, list | tuple):
            raise ValueError(
                f"{name('curve_ks')} must be a list of positive integers, got {self.curve_ks!r}"
            )
        for k in self.curve_ks:
            positive_int(f"{name('curve_ks')} entries", k)


@dataclass
class LogOptions:
    """``[log]``: what a run reports while it trains (on the main process of a distributed job).

    Attributes:
        csv: ``pvae train`` writes ``RUN/metrics.csv``, one row per epoch
            (:class:`~pvae.training.CSVLogger`; :func:`pvae.fit` writes none unless given one).
        tensorboard: ``pvae train`` writes TensorBoard scalars to ``RUN/tensorboard/``
            (:class:`~pvae.training.TensorBoardLogger`; needs ``pip install tensorboard``).
        every: Seconds between the plain progress lines when stderr is not a terminal (a
            SLURM or nohup log); on a terminal the bar is redrawn in place instead
            (:func:`pvae.fit`'s ``log_every``).
        quiet: Nothing but errors and, after Ctrl-C, where the checkpoint is: no progress, no
            per-epoch lines (written on stderr otherwise, even without ``train.progress``), no
            closing summary.
        mlflow: ``pvae train`` logs the run to MLflow (:class:`~pvae.training.MLflowLogger`:
            the flattened config as params, every epoch's metrics, the final ones, the figures
            and the config as artifacts, the run folder as the tag ``pvae.run_dir``; needs
            ``pip install pyro-vae-toolkit[mlflow]``).
        mlflow_tracking_uri: Where MLflow stores runs; unset: ``$MLFLOW_TRACKING_URI``, else
            ``sqlite:///mlflow.db`` in the current folder (artifacts under ``./mlruns``).
        mlflow_experiment: The MLflow experiment the run goes into (created if missing).
    """

    csv: bool = True
    tensorboard: bool = False
    every: float = 30.0
    quiet: bool = False
    mlflow: bool = False
    mlflow_tracking_uri: str | None = field(default=None, metadata=OPTIONAL)
    mlflow_experiment: str = "pvae"

    def check(self, toml: bool = False) -> None:
        """As :meth:`TrainOptions.check`, for ``[log]``."""
        name = _namer("log", toml)
        for key in ("csv", "tensorboard", "quiet", "mlflow"):
            _boolean(name(key), getattr(self, key), toml)
        positive_float(name("every"), self.every, allow_zero=True)
        uri = self.mlflow_tracking_uri
        if uri is not None and (not isinstance(uri, str) or not uri.strip()):
            raise TypeError(
                f"{name('mlflow_tracking_uri')} must be a non-empty string such as "
                f"'sqlite:///mlflow.db' (or left out), got {uri!r}"
            )
        if not isinstance(self.mlflow_experiment, str) or not self.mlflow_experiment.strip():
            raise TypeError(
                f"{name('mlflow_experiment')} must be a non-empty string, got "
                f"{self.mlflow_experiment!r}"
            )


@dataclass
class FitOptions:
    """What :func:`pvae.fit` reads: the ``[train]``, ``[eval]`` and ``[log]`` tables of a
    :class:`~pvae.config.Config` (``cfg.options``), or their defaults.

    :data:`KEYWORDS` maps each of :func:`pvae.fit`'s option keywords to its field: every
    ``[train]`` key by its own name, and ``eval_batch_size``, ``curve_ks``, ``curve_every``,
    ``curve_subset``, ``quiet`` and ``log_every``. The rest (``eval.k``, ``eval.num_samples``,
    ``log.csv``, ``log.tensorboard``) are read by ``pvae train`` and ``pvae evaluate``.
    """

    train: TrainOptions = field(default_factory=TrainOptions)
    eval: EvalOptions = field(default_factory=EvalOptions)
    log: LogOptions = field(default_factory=LogOptions)

    KEYWORDS: ClassVar[Mapping[str, tuple[str, str]]]

    def replace(self, **overrides: Any) -> FitOptions:
        """A copy with :data:`KEYWORDS` overrides applied, checked.

        Raises:
            TypeError: an unknown keyword (the valid ones are listed), or a value of a wrong type.
            ValueError: a value out of range.
        """
        for key in overrides:
            if key not in self.KEYWORDS:
                raise TypeError(
                    f"unknown option {key!r} (a keyword argument of pvae.fit); valid: "
                    f"{', '.join(sorted(self.KEYWORDS))}"
                )
        sections = {s: dataclasses.replace(getattr(self, s)) for s in ("train", "eval", "log")}
        for key, value in overrides.items():
            section, name = self.KEYWORDS[key]
            setattr(sections[section], name, value)
        out = FitOptions(**sections)
        out.check()
        return out

    def check(self, toml: bool = False) -> None:
        """Check the three tables (:meth:`TrainOptions.check`)."""
        self.train.check(toml)
        self.eval.check(toml)
        self.log.check(toml)


FitOptions.KEYWORDS = {
    **{f.name: ("train", f.name) for f in dataclasses.fields(TrainOptions)},
    "eval_batch_size": ("eval", "batch_size"),
    "curve_ks": ("eval", "curve_ks"),
    "curve_every": ("eval", "curve_every"),
    "curve_subset": ("eval", "curve_subset"),
    "quiet": ("log", "quiet"),
    "log_every": ("log", "every"),
}
_KEYWORD_OF = {where: key for key, where in FitOptions.KEYWORDS.items()}


def _namer(section: str, toml: bool) -> Callable[[str], str]:
    """How a field of ``section`` is named in messages: its TOML key, or fit's keyword."""
    if toml:
        return lambda key: f"{section}.{key}"
    return lambda key: _KEYWORD_OF.get((section, key), f"{section}.{key}")


def _boolean(name: str, value: Any, toml: bool) -> None:
    if not isinstance(value, bool):
        words = "true or false" if toml else "True or False"
        raise TypeError(f"{name} must be {words}, got {value!r}")
