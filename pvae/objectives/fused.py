r"""The fast path: Pyro's objectives for a :class:`~pvae.VAE`, computed without tracing.

For the fixed structure of ``VAE.model``/``VAE.guide`` (one latent site ``z`` and one observed
site ``x`` inside the data plate), the losses of ``Trace_ELBO``, ``TraceMeanField_ELBO`` and
:class:`~pvae.objectives.iwae.IWAE` reduce to a few tensor expressions over the same three
distributions. This module evaluates exactly those expressions:

* the same reparameterized draws in the same order (``q.rsample``, as the guide's ``pyro.sample``
  does), so for a fixed seed the loss and every gradient equal Pyro's (tested);
* the plate's N / B scale and the latent sites' β or free-bits weight (``VAE.kl_scale``);
* the analytic KL where ``TraceMeanField_ELBO`` would use it, the Monte Carlo term otherwise;
* the STL and DReG estimators of the IWAE bound.

What it skips is the per-step work of tracing: poutine messengers, site bookkeeping, plate
broadcasting and repeated argument validation (the data and shapes are checked once before
training). A VAE whose ``model`` or ``guide`` is overridden is not this structure: :func:`fit`
then uses Pyro's objectives and says so once.

:class:`CompiledObjective` runs the same expressions through :func:`torch.compile` (TorchInductor;
on CUDA with CUDA graphs, ``mode="reduce-overhead"``): one graph per run for the loss and its
backward, the batch dimension symbolic so that a ragged last batch reuses it, the KL weight a
tensor input so that β warm-up and free bits neither recompile nor synchronize with the host.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import pyro
import torch
from torch import Tensor
from torch.distributions import kl_divergence

from pvae.model import VAE
from pvae.objectives.iwae import ESTIMATORS, iwae_loss

__all__ = [
    "KINDS",
    "CompiledObjective",
    "FusedObjective",
    "compile_mode",
    "log_weights",
    "supports",
]


KINDS = ("elbo", "meanfield_elbo", "iwae")
"""The objectives the fused path computes (Trace_ELBO, TraceMeanField_ELBO, the IWAE)."""

# The methods whose expressions this module writes out: overriding any of them changes what
# Pyro's objectives compute from the traces but not what the fused path computes.
_FIXED_METHODS = ("model", "guide", "encode", "decode", "log_likelihood", "kl_scale")


def supports(module: object, objective: str | None = None) -> str | None:
    """``None`` when the fused path computes ``module``'s objective exactly, else a one-line
    reason; the one place that decides what a "standard VAE" is.

    The fused path writes out the expressions of :class:`~pvae.VAE`'s model and guide (one
    latent site ``z``, one observed ``x``). It applies to an object whose class declares the
    capability (:attr:`pvae.family.BaseVAE.fused_path`) and keeps VAE's own ``model``,
    ``guide`` and the methods they evaluate (``encode``, ``decode``, ``log_likelihood``,
    ``kl_scale``), on the class and the instance; and, when ``objective`` is given, to a name
    in :data:`KINDS`.

    Args:
        module: Anything: a VAE, another module, a function, ``None``. Never raises.
        objective: An objective name (or a Pyro ELBO instance, which the fused path does not
            compute), or ``None`` to ask about the module alone.

    Example:
        >>> import pvae
        >>> vae = pvae.VAE(pvae.priors.StandardNormal(2))
        >>> supports(vae, "iwae") is None, supports(None)
        (True, 'a NoneType is not a standard pvae.VAE')
        >>> supports(vae, "renyi")
        "objective 'renyi' is not one of the fused path's (elbo, meanfield_elbo, iwae)"
    """
    try:
        reason = _structure(module)
    except Exception:  # an object whose attribute lookup itself fails
        return "the object cannot be inspected, so it is not a standard pvae.VAE"
    if (
        reason is None
        and objective is not None
        and not (isinstance(objective, str) and objective in KINDS)
    ):
        what = repr(objective) if isinstance(objective, str) else f"a {type(objective).__name__}"
        return f"objective {what} is not one of the fused path's ({', '.join(KINDS)})"
    return reason


def _structure(module: object) -> str | None:
    cls = type(module)
    if getattr(cls, "fused_path", False) is not True:
        return f"a {cls.__name__} is not a standard pvae.VAE"
    own = getattr(module, "__dict__", {})
    for name in _FIXED_METHODS:
        if name in own:
            return f"this {cls.__name__} replaces VAE.{name} on the instance"
        if getattr(cls, name, None) is not getattr(VAE, name):
            return f"{cls.__name__} overrides VAE.{name}"
    return None


def log_weights(
    vae: VAE, x: Tensor, q: Any, prior: Any, k: int, log_q: Any = None
) -> tuple[Tensor, Tensor]:
    """``(k, B)`` log weights log p(x | z) + log p(z) − log q(z | x) and the draws z ~ q:
    :func:`pvae.traces.log_weights` for a VAE's two sites, drawing the same numbers.

    Args:
        vae: The VAE.
        x: ``(B, *data_shape)``.
        q: q(z | x) for this x.
        prior: p(z).
        k: Draws per datapoint.
        log_q: q to score the draws with (STL/DReG: q with the encoder's parameters held fixed).
    """
    z = q.rsample((k,))
    scorer = q if log_q is None else log_q
    return vae.log_likelihood(z, x) + prior.log_prob(z) - scorer.log_prob(z), z


class FusedObjective:
    """Negative ELBO / IWAE of a minibatch, scaled to the dataset size, without tracing.

    Args:
        kind: ``"elbo"`` (Trace_ELBO), ``"meanfield_elbo"`` (TraceMeanField_ELBO) or ``"iwae"``.
        num_particles: Particles (K for ``"iwae"``); drawn in one batched pass when
            ``vectorize`` or for ``"iwae"``, else one after another as Pyro's loop does.
        vectorize: Vectorized particles.
        estimator: IWAE encoder gradient estimator.
    """

    def __init__(
        self, kind: str, num_particles: int = 1, vectorize: bool = False, estimator: str = "reparam"
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown fused objective {kind!r}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")
        self.kind = kind
        self.num_particles = num_particles
        self.vectorize = vectorize or kind == "iwae"
        self.estimator = estimator
        self._analytic: bool | None = None
        self._closed_kl: bool | None = None

    def _elbo_particle(
        self, vae: VAE, x: Tensor, q: Any, prior: Any, shape: tuple[int, ...], beta: Tensor | None
    ) -> Tensor:
        """Sum over the minibatch of one (or a batch of) ELBO particles.

        ``beta`` ``None``: the latent weight is :meth:`VAE.kl_scale` (a float, as Pyro's scale);
        a tensor: the compiled path's weight (:meth:`_tensor_weight`).
        """
        # As in VAE.guide: the latent weight is decided (free bits may draw from q) before z.
        if beta is None:
            w: float | Tensor = vae.kl_scale(q)
            vae._scale = w
        else:
            w = self._tensor_weight(vae, q, beta)
        z = q.rsample(shape)
        recon = vae.log_likelihood(z, x)
        if isinstance(w, float | int) and w == 0:  # masked latent sites, as poutine.mask does
            return recon.sum()
        if self.kind == "meanfield_elbo" and self._analytic is not False:
            try:
                kl = kl_divergence(q, prior)
                self._analytic = True
                return recon.sum() - w * kl.sum() * (recon.numel() // kl.numel())
            except NotImplementedError:
                self._analytic = False
        return recon.sum() + w * (prior.log_prob(z) - q.log_prob(z)).sum()

    def _tensor_weight(self, vae: VAE, q: Any, beta: Tensor) -> Tensor:
        r""":meth:`VAE.kl_scale` as a tensor: β, or 0 while free bits hold the minibatch-mean KL
        below ``free_bits × latent_dim``, selected on the device (no host synchronization).

        With weight 0 the KL term is multiplied by 0 rather than left out: the same loss and the
        same (zero) KL gradient as the masked site, for a finite KL.
        """
        if vae.free_bits <= 0:
            return beta
        with torch.no_grad():
            prior = vae.prior()
            if self._closed_kl:
                kl = kl_divergence(q, prior)
            else:
                z = q.sample()
                kl = q.log_prob(z) - prior.log_prob(z)
            hold = kl.mean() < vae.free_bits * vae.latent_dim
        return torch.where(hold, torch.zeros_like(beta), beta)

    def loss(self, vae: VAE, x: Tensor, size: int) -> Tensor:
        """The differentiable loss; equals Pyro's ``differentiable_loss`` for the same draws."""
        with pyro.validation_enabled(False):
            return self.raw_loss(vae, x, size)

    def raw_loss(self, vae: VAE, x: Tensor, size: int, beta: Tensor | None = None) -> Tensor:
        """:meth:`loss` without switching Pyro's validation off (the caller does, outside a
        compiled region: the switch sets a class attribute, which :func:`torch.compile` cannot
        trace), with the KL weight ``beta`` as a tensor when given (see :meth:`_tensor_weight`).
        """
        scale = size / x.shape[0]
        q = vae.encode(x)
        prior = vae.prior()
        if self.kind == "iwae":
            return self._iwae(vae, x, q, prior, scale)
        p = self.num_particles
        if self.vectorize:
            total = self._elbo_particle(vae, x, q, prior, (p,) if p > 1 else (), beta)
        else:
            total = self._elbo_particle(vae, x, q, prior, (), beta)
            for _ in range(p - 1):  # a loop, not sum(generator): dynamo traces it in one graph
                total = total + self._elbo_particle(vae, x, q, prior, (), beta)
        return -scale * total / p

    def prime(self, vae: VAE, x: Tensor) -> None:
        """Decide, eagerly and once, what a compiled region must not look up: whether
        KL(q ‖ p) has a closed form for this guide/prior pair (the KL registry's dispatch is
        memoized here, so the compiled code only reads the memo)."""
        with torch.no_grad(), pyro.validation_enabled(False):
            q, prior = vae.encode(x[:2]), vae.prior()
            try:
                kl_divergence(q, prior)
                closed = True
            except NotImplementedError:
                closed = False
        self._closed_kl = closed
        if self.kind == "meanfield_elbo":
            self._analytic = closed

    def _iwae(self, vae: VAE, x: Tensor, q, prior, scale: float) -> Tensor:
        fixed_q = None
        if self.estimator != "reparam":  # log q with the encoder's parameters held fixed
            fixed = {n: p.detach() for n, p in vae.encoder.named_parameters()}
            fixed_q = torch.func.functional_call(vae.encoder, fixed, (x,))
        lw, z = log_weights(vae, x, q, prior, self.num_particles, fixed_q)
        return iwae_loss(lw, scale, self.estimator, (z,))


def compile_mode(device: torch.device) -> str | None:
    """The :func:`torch.compile` mode for a step on ``device``: ``"reduce-overhead"`` (CUDA
    graphs: a step of a small VAE is launch-bound on a GPU) on CUDA, Inductor's default
    elsewhere."""
    return "reduce-overhead" if device.type == "cuda" else None


# Inductor's C++ code runs a loop nest on one thread unless each thread gets at least
# ``cpp.min_chunk_size`` (default 512) iterations of it, counted after vectorization: a cost model
# of iteration counts, not of what an iteration does. This graph's latent kernel draws z ~ q (one
# Philox normal per element, many times the cost of an add) and computes the KL over (B, 50):
# B × 4 vector iterations, so at batch 128 it ran on one thread and was the forward's largest
# kernel after the matrix products. With 64 it is split from batch 32 up: against the default,
# timed in one process on 2 threads, the compiled step is 3% faster at batch 128 and 6% at batch
# 1000, and no slower at batch 20 (where it stays on one thread).
CPU_OPTIONS = {"cpp.min_chunk_size": 64}


def failure(err: BaseException, instead: str, quiet: bool = False) -> str:
    """One line naming why compilation failed (the exception's type and first line), said on
    stderr with what runs ``instead`` unless ``quiet``; returned for the ``fallback``
    attribute."""
    text = str(err).strip()
    why = f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__
    if not quiet:
        print(f"pvae: note: torch.compile is unavailable here ({why}); {instead}", file=sys.stderr)
    return why


def _graphs() -> int:
    """Graphs Dynamo has compiled in this process (forward graphs; each carries its backward)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class CompiledObjective:
    r"""A :class:`FusedObjective` of one VAE compiled with :func:`torch.compile`: the loss *per
    datapoint* of a minibatch, ``objective.loss(vae, x, size) / size``, and its gradient.

    The same expressions as the eager fast path, in one graph (checked with
    ``torch._dynamo.explain``): Pyro's validation switch and the KL registry's dispatch are
    settled outside it (:meth:`FusedObjective.prime`), the KL weight β enters as a tensor so
    warm-up does not recompile, free bits become an on-device select, and the batch dimension is
    marked dynamic so a ragged last batch (of any size ≥ 2) reuses the graph. Random draws come
    from Inductor's generator: the same distribution as eager, not the same numbers (set
    ``torch._inductor.config.fallback_random = True`` for bit-comparable draws).

    Compilation happens on the first call. If it fails (no compiler, an unsupported platform or
    Python version), the objective says so once on stderr and runs eagerly from then on; the
    first call's wall time, compilation included, is kept in :attr:`compile_seconds`.

    Args:
        objective: The fused objective.
        vae: The VAE it trains.
        mode: :func:`torch.compile` mode; ``"auto"`` picks :func:`compile_mode` for the data's
            device at the first call.
        backend: :func:`torch.compile` backend (``"inductor"``; ``"aot_eager"`` for tests).
        quiet: Print no notices.

    Attributes:
        compile_seconds: Wall time of the first call (compilation plus one forward), or
            ``None`` before it.
        graphs: Graphs compiled by the calls so far (1 for a run, recompilations included).
        fallback: Why it runs eagerly, or ``None`` while it runs compiled.

    Example:
        >>> import torch, pvae
        >>> from pvae.objectives.fused import CompiledObjective, FusedObjective
        >>> vae = pvae.VAE(pvae.priors.StandardNormal(2), data_shape=(4,), hidden=(8,))
        >>> obj = CompiledObjective(FusedObjective("meanfield_elbo"), vae, backend="eager")
        >>> obj(torch.ones(5, 4), 50).shape
        torch.Size([])
    """

    def __init__(
        self,
        objective: FusedObjective,
        vae: VAE,
        *,
        mode: str | None = "auto",
        backend: str = "inductor",
        quiet: bool = False,
    ) -> None:
        if not isinstance(objective, FusedObjective):
            raise TypeError(f"objective must be a FusedObjective, got {type(objective).__name__}")
        self.objective = objective
        self.vae = vae
        self.mode = mode
        self.backend = backend
        self.quiet = quiet
        self.compile_seconds: float | None = None
        self.graphs = 0
        self.fallback: str | None = None
        self._fn: Any = None
        self._beta: Tensor | None = None
        self._cuda_graphs = False
        self.mode_used: str | None = None

    def _body(self, x: Tensor, size: int, beta: Tensor) -> Tensor:
        return self.objective.raw_loss(self.vae, x, size, beta) / size

    def _build(self, x: Tensor) -> None:
        mode = compile_mode(x.device) if self.mode == "auto" else self.mode
        self.mode_used = mode
        self._cuda_graphs = mode in ("reduce-overhead", "max-autotune")  # modes with CUDA graphs
        self.objective.prime(self.vae, x)
        kwargs: dict[str, Any] = {"backend": self.backend}
        if self.backend == "inductor" and mode is not None:
            kwargs["mode"] = mode
        elif self.backend == "inductor" and x.device.type == "cpu":
            kwargs["options"] = dict(CPU_OPTIONS)  # (torch.compile takes a mode or options)
        self._fn = torch.compile(self._body, **kwargs)

    def _weight(self, x: Tensor) -> Tensor:
        """β as a 0-d tensor on the data's device, refilled only when β changes."""
        beta = float(self.vae.beta)
        buf = self._beta
        if buf is None or buf.device != x.device or buf.dtype != x.dtype:
            buf = self._beta = torch.tensor(beta, dtype=x.dtype, device=x.device)
            self._beta_value = beta
        elif beta != self._beta_value:
            buf.fill_(beta)
            self._beta_value = beta
        return buf

    def _eager(self, x: Tensor, size: int) -> Tensor:
        return self.objective.loss(self.vae, x, size) / size

    def __call__(self, x: Tensor, size: int) -> Tensor:
        """The loss per datapoint of minibatch ``x`` out of ``size`` datapoints."""
        if self.fallback is not None:
            return self._eager(x, size)
        first = self._fn is None
        t0 = time.perf_counter()
        try:
            if first:
                self._build(x)
            torch._dynamo.maybe_mark_dynamic(x, 0)
            if self._cuda_graphs:  # a new step: earlier graph outputs may be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            before = _graphs()
            with pyro.validation_enabled(False):
                out = self._fn(x, size, self._weight(x))
            self.graphs += _graphs() - before
        except Exception as err:
            if not first:
                raise
            # A compiler failure, or the user's own error: eager raises the latter as usual.
            out = self._eager(x, size)
            self.fallback = failure(err, "training eagerly on the fused path", self.quiet)
            return out
        if first:
            self.compile_seconds = time.perf_counter() - t0
        return out
