"""What the importance-weighted estimators share: resolving the model/guide pair a user passed,
checking it once, choosing where the log weights come from (Pyro traces, or the fused fast path
for a standard :class:`~pvae.VAE`, proven equal by tests), and the chunked, seeded loop over
blocks of datapoints and chunks of draws under a memory budget."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyro
import torch
from torch import Tensor, nn
from torch.distributions import constraints

from pvae._checks import check_data_fits, positive_int
from pvae.distributed import info as dist_info
from pvae.enumeration import EnumWeights, check_enumerable
from pvae.enumeration import enumerated as enumerated_sites
from pvae.program import Program, as_program, param_sites
from pvae.traces import TraceWeights, check_sites, inspect_pair

if TYPE_CHECKING:
    from pvae.model import VAE

DEFAULT_BUDGET = 1 << 30  # bytes of working memory
# Largest activation working set per chunk that stays fast: caches on a CPU (measured on digits:
# 16-20 MB chunks ran 2x faster than 200 MB ones), throughput-bound kernels on an accelerator.
_FAST_WORKSET = {"cpu": 16 << 20}
_FAST_WORKSET_ACCEL = 1 << 30


def fast_workset(device: torch.device) -> int:
    """Bytes of activations per chunk that still run at full speed on ``device``'s type."""
    return _FAST_WORKSET.get(device.type, _FAST_WORKSET_ACCEL)


class WeightSource(Protocol):
    """Log weights of one block of datapoints, drawn chunk by chunk."""

    def prepare(self, xb: Tensor, kwargs: Mapping[str, Any]) -> Any: ...

    def draw(self, state: Any, c: int) -> Tensor: ...


PRECISIONS: Mapping[str | None, str] = {
    None: "the model's own dtype",
    "bf16": "the decoder under bfloat16 autocast (log densities in the model's dtype)",
    "tf32": "float32 matrix products on TF32 tensor cores (CUDA)",
}


class FusedWeights:
    """The fast path for a standard :class:`~pvae.VAE`: encode a block once, then draw chunks
    (:func:`pvae.objectives.fused.log_weights`, equal to the trace path draw for draw).

    Args:
        vae: The VAE.
        compile: Run each chunk's draw through :func:`torch.compile` (all sizes symbolic, so
            the last, smaller chunk and block reuse one graph). Falls back to eager with a
            one-line notice if compilation fails.
        precision: ``None``, ``"bf16"`` (the decoder, where almost all the work is, under
            bfloat16 autocast; its output is cast back before the log-likelihood, and the
            draws, prior and guide densities and accumulators keep the model's dtype) or
            ``"tf32"`` (CUDA only: float32 matrix products on TF32 tensor cores).
    """

    def __init__(self, vae: VAE, *, compile: bool = False, precision: str | None = None) -> None:
        self.vae = vae
        self.precision = precision
        self.compile = compile
        self.fallback: str | None = None
        self._compiled: Any = None

    def prepare(self, xb: Tensor, kwargs: Mapping[str, Any]) -> Any:
        return xb, self.vae.encode(xb), self.vae.prior()

    def _draw(self, xb: Tensor, q: Any, prior: Any, c: int) -> Tensor:
        from pvae.objectives.fused import log_weights

        vae = self.vae
        if self.precision != "bf16":
            return log_weights(vae, xb, q, prior, c)[0]
        z = q.rsample((c,))
        with torch.autocast(device_type=xb.device.type, dtype=torch.bfloat16):
            params = vae.decoder(z)
        log_lik = vae.likelihood.log_prob(params.to(xb.dtype), xb, len(vae.data_shape))
        return log_lik + prior.log_prob(z) - q.log_prob(z)

    def draw(self, state: Any, c: int) -> Tensor:
        from pvae.objectives.fused import failure

        xb, q, prior = state
        if not self.compile or self.fallback is not None:
            return self._draw(xb, q, prior, c)
        if self._compiled is None:
            self._compiled = torch.compile(self._draw, dynamic=True)
            try:
                return self._compiled(xb, q, prior, c)
            except Exception as err:
                out = self._draw(xb, q, prior, c)  # the user's own error raises here
                self.fallback = failure(err, "estimating eagerly")
                return out
        return self._compiled(xb, q, prior, c)


def check_precision(precision: Any, device: torch.device) -> str | None:
    """``precision`` if it is one of :data:`PRECISIONS` and applies to ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}"
        )
    if precision == "tf32" and device.type != "cuda":
        raise ValueError(
            f"precision='tf32' selects CUDA's TF32 matrix products; the data are on {device}: "
            "use precision='bf16' or None there"
        )
    return precision


def accelerate(target: Target, compile: bool, precision: str | None) -> Target:
    """``target`` with a compiled and/or reduced-precision fused source; a one-line notice, and
    the target unchanged, where the log weights come from Pyro traces."""
    if not compile and precision is None:
        return target
    if not isinstance(target.source, FusedWeights):
        print(
            "pvae: note: compile and precision apply to the fused path of a standard pvae.VAE; "
            "this model's log weights come from Pyro traces, computed eagerly in its own dtype",
            file=sys.stderr,
        )
        return target
    source = FusedWeights(target.source.vae, compile=compile, precision=precision)
    return dataclasses.replace(target, source=source)


@contextlib.contextmanager
def matmul_precision(precision: str | None) -> Iterator[None]:
    """TF32 matrix products inside the block for ``"tf32"``; the global setting restored."""
    if precision != "tf32":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@dataclass
class Target:
    """A checked estimation problem: the pair, the data, their keyword arguments, the source of
    log weights and the plates nested in the pair."""

    program: Program
    x: Tensor
    kwargs: dict[str, Any]
    source: WeightSource
    nesting: int

    @property
    def num_dims(self) -> int:
        return math.prod(self.x.shape[1:])

    def kwargs_for(self, start: int, stop: int) -> dict[str, Any]:
        """Keyword arguments for datapoints ``start:stop``: per-datapoint tensors (first
        dimension N) are sliced with x; everything else is passed unchanged."""
        n = self.x.shape[0]
        return {
            key: v[start:stop] if isinstance(v, Tensor) and v.dim() and v.shape[0] == n else v
            for key, v in self.kwargs.items()
        }

    def subset(self, idx: Tensor) -> Target:
        """The same problem on datapoints ``idx`` (per-datapoint keyword arguments follow)."""
        n = self.x.shape[0]
        kwargs = {
            key: v[idx.to(v.device)] if isinstance(v, Tensor) and v.dim() and v.shape[0] == n else v
            for key, v in self.kwargs.items()
        }
        return dataclasses.replace(self, x=self.x[idx], kwargs=kwargs)


def split_call(model: Any, x_or_guide: Any, x: Any) -> tuple[Program, Any]:
    """``f(pair, x)`` or ``f(model, guide, x)``: the pair and the data."""
    if x is None:
        return as_program(model), x_or_guide
    return as_program(model, x_or_guide), x


def delta_method(lse: Tensor, lse2: Tensor, k: Tensor | float) -> tuple[Tensor, Tensor]:
    """The effective sample size and standard error of :math:`\\log \\frac1k \\sum_i w_i` from
    :math:`\\log \\sum w` and :math:`\\log \\sum w^2` over k draws (k per datapoint or shared):
    ESS = (Σw)² / Σw² in [1, k] (Kong 1992), s.e. = √((k/ESS − 1)/(k − 1)), NaN for k = 1."""
    kk = torch.as_tensor(k, dtype=lse.dtype, device=lse.device).expand_as(lse)
    ess = torch.minimum(torch.exp(2 * lse - lse2).clamp_min(1.0), kk)
    se = ((kk / ess - 1).clamp_min(0) / (kk - 1)).sqrt()
    return ess, torch.where(kk > 1, se, torch.full_like(se, math.nan))


def check_k(k: Any, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise TypeError(f"{name} must be a positive integer, got {k!r} ({type(k).__name__})")
    return positive_int(name, int(k))


def _same_support(a: constraints.Constraint, b: constraints.Constraint) -> bool:
    """Whether two supports are the same set (wrappers such as independent or mixture aside)."""

    def base(c: constraints.Constraint) -> constraints.Constraint:
        while hasattr(c, "base_constraint"):
            c = c.base_constraint
        return c

    ba, bb = base(a), base(b)
    bounds = [(getattr(c, "lower_bound", None), getattr(c, "upper_bound", None)) for c in (ba, bb)]
    return a.event_dim == b.event_dim and type(ba) is type(bb) and bounds[0] == bounds[1]


def _fused_ok(program: Program, kwargs: Mapping[str, Any]) -> bool:
    from pvae.objectives.fused import supports

    vae = program.owner  # None for a pair of plain functions: supports() says no
    if kwargs or supports(vae) is not None:
        return False
    owners = [getattr(f, "owner", None) for f in (program.model, program.guide)]
    return owners == [vae, vae] and [program.model.role, program.guide.role] == ["model", "guide"]


def resolve(
    model: Any,
    x_or_guide: Any,
    x: Any,
    kwargs: Mapping[str, Any] | None,
    *,
    fast: bool = True,
) -> Target:
    """Resolve and check what a user passed to an estimator (see :func:`pvae.log_px`). A pair
    with enumerated sites gets :class:`~pvae.enumeration.EnumWeights`: those sites summed out
    exactly, the others importance-sampled.

    Raises:
        TypeError: not a pair, x not a tensor, kwargs not a mapping.
        ValueError: empty x, a shape the VAE was not built for, or a site the estimators cannot
            weight (named in the message, see :mod:`pvae.traces`; enumerated sites beyond
            :mod:`pvae.enumeration`'s scope).
    """
    program, x = split_call(model, x_or_guide, x)
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor of shape (N, *data_shape), got {type(x).__name__}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"x is empty: expected at least one datapoint, got shape {tuple(x.shape)}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise TypeError(
            f"kwargs must be a mapping of keyword arguments, got {type(kwargs).__name__}"
        )
    kwargs = dict(kwargs or {})
    owner = program.owner
    _check_built_for(owner, x)
    dtype = _floating_dtype(owner)
    if dtype is not None and x.dtype != dtype:  # as fit does: the data follow the model's dtype
        x = x.to(dtype)
    first = {
        key: v[:1] if isinstance(v, Tensor) and v.dim() and v.shape[0] == x.shape[0] else v
        for key, v in kwargs.items()
    }
    with pyro.validation_enabled(False), param_sites(False), torch.no_grad():
        nesting, model_trace, guide_trace = inspect_pair(program, (x[:1],), first)
    enumerated = enumerated_sites(model_trace, guide_trace)
    check_sites(model_trace, guide_trace, "data", enumerated=bool(enumerated))
    if enumerated:
        check_enumerable(model_trace, guide_trace, "data")
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample":
            continue
        q, p = site["fn"], model_trace.nodes[name]["fn"]
        if q.event_shape != p.event_shape or not _same_support(q.support, p.support):
            raise ValueError(
                f"the guide's distribution at site {name!r} (support {q.support}, event shape "
                f"{tuple(q.event_shape)}) does not match the prior's (support {p.support}, "
                f"event shape {tuple(p.event_shape)}): importance weights p/q are then undefined"
            )
    check_data_fits(owner, x, "x")  # the check fit applies: x in the likelihood's support
    source: WeightSource
    if enumerated:
        source = EnumWeights(program, nesting, enumerated)
    elif fast and _fused_ok(program, kwargs):
        source = FusedWeights(owner)
    else:
        source = TraceWeights(program, nesting)
    return Target(program, x, kwargs, source, nesting)


def _check_built_for(owner: Any, x: Tensor) -> None:
    """A model that says it is not built, or was built for other datapoints, is refused (asked
    by capability: ``is_built`` and ``data_shape``, as the VAE family has them)."""
    if not getattr(owner, "is_built", True):  # its networks would hold random weights
        raise ValueError(
            "the VAE is not built, so it has no trained weights to evaluate: build the VAE "
            "first or pass data_shape (pvae.VAE(..., data_shape=...)), train it with "
            "pvae.fit, or load a checkpoint with pvae.load_run_state"
        )
    shape = getattr(owner, "data_shape", None)
    if isinstance(shape, tuple | list) and tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(
            f"x has datapoints of shape {tuple(x.shape[1:])}, but the VAE was built for "
            f"{tuple(shape)}"
        )


def _floating_dtype(module: Any) -> torch.dtype | None:
    if not isinstance(module, nn.Module):
        return None
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


def bytes_per_draw(target: Target, dtype: torch.dtype) -> int:
    """Working memory of one (draw, datapoint) pair, measured on one draw for one datapoint:
    the outputs of the networks that run per draw, a few log-density temporaries, and the
    log weight itself."""
    x = target.x
    owner = target.program.owner
    wide = torch.finfo(dtype).bits // 8
    if isinstance(target.source, FusedWeights):
        vae = owner
        modules, probe = (
            vae.decoder,
            lambda: vae.decoder(torch.zeros(1, vae.latent_dim, dtype=x.dtype, device=x.device)),
        )
    else:
        modules = owner if owner is not None else nn.Module()
        probe = lambda: target.source.draw(target.source.prepare(x[:1], target.kwargs_for(0, 1)), 1)  # noqa: E731
    total = 0

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        nonlocal total
        if isinstance(out, Tensor):
            total += out.numel() * out.element_size()

    leaves = [m for m in modules.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad(), pyro.validation_enabled(False), param_sites(False):
            probe()
    finally:
        for h in handles:
            h.remove()
    per_datapoint = x[0].numel() * x.element_size()
    # Likelihood log-prob temporaries (a few copies of the datapoint), the draws, the weight.
    return int(total + 4 * per_datapoint + 4 * wide) + 1


def plan(
    target: Target, k: int, memory_budget: int, dtype: torch.dtype, keep: bool
) -> tuple[int, int]:
    """Datapoints per block and draws per chunk that keep the working set under the budget."""
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int):
        raise TypeError(f"memory_budget must be an integer number of bytes, got {memory_budget!r}")
    x = target.x
    n = x.shape[0]
    per_draw = bytes_per_draw(target, dtype)
    store = k * (torch.finfo(dtype).bits // 8) if keep else 0  # kept log weights per datapoint
    need = per_draw + store + x[0].numel() * x.element_size()
    if memory_budget < need:
        raise ValueError(
            f"memory_budget={memory_budget} bytes is too small for one datapoint with k={k}: "
            f"it needs at least {need} bytes"
            + (" (or pass khat=False to stream the weights)" if keep else "")
        )
    fast = fast_workset(x.device)
    block = max(1, min(n, (memory_budget // 2) // store if keep else n))

    def workset(b: int) -> int:
        return min(memory_budget - b * store, fast)

    while block > 1 and workset(block) < block * per_draw * min(k, 16):
        block //= 2
    return block, max(1, min(k, workset(block) // (block * per_draw)))


@contextlib.contextmanager
def seeded(seed: int | None, i: int, device: torch.device) -> Iterator[None]:
    """Block i draws from a generator seeded by (seed, i), leaving the global state as it was."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed * 1_000_003 + i)
        yield


def blocks(
    target: Target,
    k: int,
    block: int,
    chunk: int,
    dtype: torch.dtype,
    keep: bool,
    seed: int | None = None,
    distributed: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[int, Tensor, Tensor, Tensor | None]]:
    """Per block of datapoints: its index, the log-sum-exp of w and of w², and the ``(b, k)``
    log weights (when ``keep``).

    With ``seed``, block i draws from a generator seeded by (seed, i): the numbers of a datapoint
    then do not depend on which process computes its block. With ``distributed``, this rank
    computes only the blocks i ≡ rank (mod world size). ``progress(done, total)`` is called
    after each chunk with the (datapoint, draw) pairs done and to do in this process.
    """
    d = dist_info() if distributed else None
    x = target.x
    n = x.shape[0]
    mine = [
        (i, start)
        for i, start in enumerate(range(0, n, block))
        if d is None or i % d.world_size == d.rank
    ]
    tally = Tally(sum(min(block, n - start) for _, start in mine) * k, progress)
    # Inputs were checked once in resolve; per-chunk argument validation would only cost time.
    with pyro.validation_enabled(False), param_sites(False):
        for i, start in mine:
            xb = x[start : start + block]
            with seeded(seed, i, x.device):
                state = target.source.prepare(xb, target.kwargs_for(start, start + xb.shape[0]))
                yield (
                    i,
                    *_block(
                        target.source, state, xb.shape[0], k, chunk, dtype, keep, xb.device, tally
                    ),
                )


def _block(
    source: WeightSource,
    state: Any,
    b: int,
    k: int,
    chunk: int,
    dtype: torch.dtype,
    keep: bool,
    device: torch.device,
    tally: Tally | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One block of datapoints: k draws each, in chunks, into log-sum-exp accumulators."""
    lse = torch.full((b,), -math.inf, dtype=dtype, device=device)
    lse2 = lse.clone()
    kept = torch.empty((b, k), dtype=dtype, device=device) if keep else None
    for start in range(0, k, chunk):
        c = min(chunk, k - start)
        lw = source.draw(state, c).to(dtype)
        lse = torch.logaddexp(lse, lw.logsumexp(0))
        lse2 = torch.logaddexp(lse2, (2 * lw).logsumexp(0))
        if kept is not None:
            kept[:, start : start + c] = lw.T
        if tally is not None:
            tally.add(b * c)
    return lse, lse2, kept


class Tally:
    """Counts (datapoint, draw) pairs and tells ``progress(done, total)`` after each chunk."""

    def __init__(self, total: int, progress: Callable[[int, int], None] | None) -> None:
        self.total, self.done, self.progress = total, 0, progress

    def add(self, pairs: int) -> None:
        self.done += pairs
        if self.progress is not None:
            self.progress(self.done, self.total)
