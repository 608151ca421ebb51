"""Figures of the latent space: the decoded manifold, the posterior means in a plane, the line
between two datapoints, and traversals of one latent dimension at a time."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pvae.model import point_estimate
from pvae.plotting.images import image_grid, is_image_shape, require, tile_centres
from pvae.plotting.style import figure, finish, styled

__all__ = ["interpolation", "latent_manifold", "latent_scatter", "traversals"]


def _one_datapoint(vae: Any, name: str, x: Tensor) -> Tensor:
    """``x`` of shape ``data_shape`` or ``(1, *data_shape)`` as a batch of one."""
    shape = tuple(vae.data_shape or ())
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape) == shape:
        return x[None]
    if tuple(x.shape) == (1, *shape):
        return x
    raise ValueError(
        f"{name} must be one datapoint of shape {shape} (or (1, *{shape})), got {tuple(x.shape)}"
    )


def _check_vae(vae: Any, what: str, *methods: str) -> Any:
    """``vae`` if it can draw ``what``: it encodes and decodes (and has ``methods``), is built,
    and its datapoints are images."""
    require(vae, what, "encode", "decode_mean", *methods)
    if not getattr(vae, "is_built", True):
        raise ValueError("the VAE is not built: call vae.build(data_shape) or pvae.fit first")
    shape = getattr(vae, "data_shape", None)
    if not is_image_shape(shape):
        raise ValueError(
            f"{what} shows decoded images, got datapoints of shape {shape} "
            "(images are (1 or 3, H, W))"
        )
    return vae


def _z(d: int) -> str:
    return f"$z_{{{d}}}$"


def _pca(mu: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Centre, the two leading unit principal directions ``(2, D)`` and their shares of the
    total variance, of the rows of ``mu`` (float64)."""
    centre = mu.mean(0)
    _, s, v = torch.linalg.svd(mu - centre, full_matrices=False)
    share = s**2 / (s**2).sum().clamp_min(1e-300)
    return centre, v[:2], share[:2]


def _pc_label(i: int, share: float) -> str:
    return f"PC{i + 1} of posterior means ({100 * share:.0f}% of var.)"


def _two_dims(name: str, dims: Sequence[int], d: int) -> tuple[int, int]:
    if (
        not isinstance(dims, Sequence)
        or len(dims) != 2
        or not all(isinstance(i, numbers.Integral) and 0 <= i < d for i in dims)
        or dims[0] == dims[1]
    ):
        raise ValueError(
            f"{name} must be two different latent dimensions in [0, {d - 1}], got {dims!r}"
        )
    return int(dims[0]), int(dims[1])


@styled
@torch.no_grad()
def latent_manifold(
    vae: Any,
    n: int = 15,
    dims: Sequence[int] | None = None,
    x: Tensor | None = None,
    *,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    path: str | Path | None = None,
) -> Any:
    r"""Decode a grid of z (Kingma & Welling 2013, fig. 4), with latent coordinates on the axes.

    The grid's coordinates are :math:`\Phi^{-1}` of evenly spaced quantiles
    :math:`(i + \tfrac12)/n`, so equal areas carry equal mass under a standard normal. Which
    plane is shown:

    * ``dims=(i, j)``: :math:`z_i` and :math:`z_j` vary, the other dimensions stay at 0;
    * ``dims=None`` with ``latent_dim > 2`` and data ``x``: the plane of the two leading
      principal components of the posterior means of ``x``, through their centre (coordinates
      in prior units along the unit PC directions; the axis labels give each PC's share of the
      variance);
    * otherwise :math:`z_0` and :math:`z_1` (a 1-D latent is a single row).

    Args:
        vae: A built :class:`~pvae.VAE` over images.
        n: Grid points per axis.
        dims: Two latent dimensions to vary (0-based), or ``None`` (see above).
        x: Data ``(N, *data_shape)`` for the principal plane.
        figsize: ``(width, height)`` in inches; ``None`` sizes the grid.
        dpi: Resolution; ``None`` is :data:`~pvae.plotting.style.DPI`.
        path: Where to save the figure (format by suffix).
    """
    vae = _check_vae(vae, "latent_manifold")
    n = int(n)
    if n < 2:
        raise ValueError(f"n must be an integer >= 2 grid points per axis, got {n}")
    g = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.5 / n, 1 - 0.5 / n, n))
    d = vae.latent_dim
    dev = vae.device
    centre = torch.zeros(d, device=dev)
    basis = torch.zeros(2, d, device=dev)
    if dims is None and x is not None and d > 2:
        c, v, share = _pca(point_estimate(vae.encode(x.to(dev))).double())
        basis, centre = v.to(dev, torch.float32), c.to(dev, torch.float32)
        labels = (_pc_label(0, float(share[0])), _pc_label(1, float(share[1])))
        kind = "principal plane of the posterior means"
    elif d == 1:
        basis[0, 0] = 1.0
        labels = (_z(0), "")
        kind = "the 1-D latent"
    else:
        i, j = _two_dims("dims", (0, 1) if dims is None else dims, d)
        basis[0, i], basis[1, j] = 1.0, 1.0
        labels = (_z(i), _z(j))
        kind = f"{_z(i)}, {_z(j)} (others 0)"
    rows = g.flip(0) if d > 1 else torch.zeros(1)  # top row: largest second coordinate
    a, b = torch.meshgrid(g, rows, indexing="xy")
    z = centre + a.reshape(-1, 1).to(dev) * basis[0] + b.reshape(-1, 1).to(dev) * basis[1]
    half = {math.floor(t) for t in np.linspace(0, (n - 1) / 2, 3)}
    picks = sorted(half | {n - 1 - i for i in half})  # symmetric about the centre
    fig, ax = image_grid(
        vae.decode_mean(z), n, f"latent manifold: E[x | z] over {kind}", figsize, dpi
    )
    h, w = vae.data_shape[-2:]
    ax.set_xticks([tile_centres(n, w)[p] for p in picks], [f"{float(g[p]):.2g}" for p in picks])
    ax.set_xlabel(labels[0])
    if d > 1:
        ax.set_yticks(
            [tile_centres(n, h)[p] for p in picks], [f"{float(rows[p]):.2g}" for p in picks]
        )
        ax.set_ylabel(labels[1])
    return finish(fig, path)


def _class_colours(labels: np.ndarray) -> tuple[np.ndarray, Any, Any, np.ndarray] | None:
    """Discrete classes as indices 0..K-1, a K-colour map and a norm whose bands are centred on
    the indices; ``None`` for a continuous label (more than 20 distinct values)."""
    import matplotlib.colors as mcolors
    from matplotlib import colormaps

    classes = np.unique(labels)
    if len(classes) > 20:
        return None
    base = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    cmap = mcolors.ListedColormap([base(i) for i in range(len(classes))])
    norm = mcolors.BoundaryNorm(np.arange(len(classes) + 1) - 0.5, len(classes))
    return np.searchsorted(classes, labels), cmap, norm, classes


@styled
@torch.no_grad()
def latent_scatter(
    vae: Any,
    x: Tensor,
    labels: Tensor | None = None,
    dims: Sequence[int] | None = None,
    *,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    path: str | Path | None = None,
) -> Any:
    """Posterior means E_q[z | x] of the data in a plane, coloured by label.

    The plane is :math:`(z_0, z_1)` for ``latent_dim <= 2`` (a 1-D latent against 0), the two
    leading principal components of the posterior means for ``latent_dim > 2`` (axis labels
    give each one's share of the variance), or the two given ``dims``. Class labels (at most 20
    distinct values) get one colour each and a colour bar with a tick at the centre of every
    band; other labels a continuous colour bar.

    Args:
        vae: A :class:`~pvae.VAE` (any data shape).
        x: Data ``(N, *data_shape)``.
        labels: ``(N,)`` labels to colour by, or ``None``.
        dims: Two latent dimensions (0-based) instead of the principal plane.
        figsize: ``(width, height)`` in inches; ``None``: (4.8, 3.8).
        dpi: Resolution; ``None`` is :data:`~pvae.plotting.style.DPI`.
        path: Where to save the figure (format by suffix).
    """
    require(vae, "latent_scatter", "encode")
    mu = point_estimate(vae.encode(x.to(vae.device))).double().cpu()
    d = mu.shape[1]
    if labels is not None and len(labels) != len(mu):
        raise ValueError(f"labels must have one entry per datapoint ({len(mu)}), got {len(labels)}")
    if dims is not None:
        i, j = _two_dims("dims", dims, d)
        pts, names = mu[:, [i, j]], (_z(i), _z(j))
    elif d > 2:
        centre, v, share = _pca(mu)
        pts = (mu - centre) @ v.T
        names = (_pc_label(0, float(share[0])), _pc_label(1, float(share[1])))
    elif d == 2:
        pts, names = mu, (_z(0), _z(1))
    else:
        pts, names = torch.cat([mu, torch.zeros_like(mu)], 1), (_z(0), "0 (1-D latent)")
    fig, ax = figure(figsize, dpi, (4.8, 3.8))
    pts = pts.numpy()
    if labels is None:
        ax.scatter(pts[:, 0], pts[:, 1], s=5, alpha=0.7, lw=0)
    else:
        lab = labels.detach().cpu().numpy()
        disc = _class_colours(lab)
        if disc is None:
            sc = ax.scatter(pts[:, 0], pts[:, 1], c=lab, s=5, alpha=0.8, lw=0)
            fig.colorbar(sc, ax=ax, label="label")
        else:
            idx, cmap, norm, classes = disc
            sc = ax.scatter(pts[:, 0], pts[:, 1], c=idx, cmap=cmap, norm=norm, s=5, lw=0)
            cb = fig.colorbar(sc, ax=ax, label="class")
            cb.set_ticks(np.arange(len(classes)), labels=[str(c) for c in classes])
            cb.ax.tick_params(length=0)
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title(f"posterior means E[z | x] of {len(mu)} datapoints")
    return finish(fig, path)


@styled
@torch.no_grad()
def interpolation(
    vae: Any,
    x_a: Tensor,
    x_b: Tensor,
    steps: int = 10,
    *,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    path: str | Path | None = None,
) -> Any:
    r"""Decode the straight line :math:`z_t = (1 - t)\,z_a + t\,z_b` between the posterior
    point estimates of two datapoints, with the data themselves at either end.

    Args:
        vae: A built :class:`~pvae.VAE` over images.
        x_a: The first datapoint, shape ``data_shape`` or ``(1, *data_shape)``.
        x_b: The second datapoint, likewise.
        steps: Points on the line, t = 0 … 1 (at least 2).
        figsize: ``(width, height)`` in inches; ``None`` sizes the grid.
        dpi: Resolution; ``None`` is :data:`~pvae.plotting.style.DPI`.
        path: Where to save the figure (format by suffix).
    """
    vae = _check_vae(vae, "interpolation")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    xa = _one_datapoint(vae, "x_a", x_a).to(vae.device)
    xb = _one_datapoint(vae, "x_b", x_b).to(vae.device)
    za = point_estimate(vae.encode(xa))[0]
    zb = point_estimate(vae.encode(xb))[0]
    t = torch.linspace(0, 1, steps, device=za.device)[:, None]
    images = torch.cat([xa, vae.decode_mean((1 - t) * za + t * zb), xb])
    cols = ["$x_a$", *[f"{float(v):.2g}" for v in t[:, 0]], "$x_b$"]
    fig, _ = image_grid(
        images,
        steps + 2,
        "interpolation between the posterior means of two datapoints",
        figsize,
        dpi,
        col_labels=cols,
        xlabel=r"t in E[x | $z_t$], $z_t = (1-t)\,z_a + t\,z_b$",
        label_space=(0.0, 0.4),
    )
    return finish(fig, path)


def _latent_centre_and_sd(
    vae: Any, x: Tensor | None, data: Tensor | None, sd: str
) -> tuple[Tensor, Tensor, str]:
    """Centre of the traversal (posterior mean at ``x``, else the prior's or the aggregate
    posterior's mean) and the per-dimension standard deviation of the chosen kind."""

    q_x = vae.encode(x) if x is not None else None
    if sd == "posterior":
        if q_x is None:
            raise ValueError("sd='posterior' needs a datapoint x")
        try:
            scale = q_x.stddev
        except NotImplementedError:  # a flow guide: no closed-form moments
            scale = q_x.sample((1024,)).std(0)
        centre, scale, what = point_estimate(q_x)[0], scale[0], "posterior sds at x"
    elif sd == "prior":
        p = vae.prior()
        try:
            centre, scale = p.mean, p.stddev
        except NotImplementedError:
            z = p.sample((4096,))
            centre, scale = z.mean(0), z.std(0)
        if not bool(torch.isfinite(scale).all()):
            raise ValueError(
                f"sd='prior' needs a prior with a finite standard deviation per dimension; "
                f"{type(vae.prior).__name__} has none: use sd='aggregate' or sd='posterior'"
            )
        what = "prior sds"
        if q_x is not None:
            centre = point_estimate(q_x)[0]
    else:  # the aggregate posterior q(z) = mean_n q(z | x_n): Var = Var_n E[z|x_n] + E_n Var
        if data is None:
            raise ValueError("sd='aggregate' needs data: pass kl_x (or x)")
        qd = vae.encode(data)
        try:
            mu, var = point_estimate(qd), qd.variance
        except NotImplementedError:
            z = qd.sample((64,))
            mu, var = z.mean(0), z.var(0)
        centre = mu.mean(0) if q_x is None else point_estimate(q_x)[0]
        scale = (mu.var(0, correction=0) + var.mean(0)).sqrt()
        what = "aggregate-posterior sds"
    return centre.reshape(-1), scale.reshape(-1), what


@styled
@torch.no_grad()
def traversals(
    vae: Any,
    x: Tensor | None = None,
    *,
    dims: int | Sequence[int] | None = None,
    steps: int = 9,
    span: float = 3.0,
    sd: str | None = None,
    kl_x: Tensor | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    path: str | Path | None = None,
) -> Any:
    r"""Latent traversals: one latent dimension at a time varied around a centre, decoded.

    Row :math:`d` shows :math:`\mathbb E[x \mid z = c + \delta\, s_d\, e_d]` for ``steps``
    offsets :math:`\delta` evenly spaced in :math:`[-\mathrm{span}, \mathrm{span}]`, where

    * with a datapoint ``x``, :math:`c` is the guide's mean at x and :math:`s_d` its standard
      deviation :math:`\sigma_d(x)` (``sd="posterior"``, the default);
    * without, :math:`c` is the prior's mean and :math:`s_d` its marginal standard deviation
      (``sd="prior"``, the default; a closed form, else 4096 prior draws);
    * ``sd="prior"`` with ``x``: around the datapoint in prior units, which shows at a glance
      which dimensions the decoder reads (a collapsed dimension leaves its row constant);
    * ``sd="aggregate"``: the aggregate posterior's sd over ``kl_x``,
      :math:`\sqrt{\mathrm{Var}_n\,\mathbb E[z_d\mid x_n] + \mathbb E_n \sigma_d^2(x_n)}`, for
      priors without a finite one (a Student-t with ν ≤ 2).

    Rows are ordered by :math:`\mathrm{KL}(q(z_d\mid x)\,\|\,p(z_d))` averaged over ``kl_x``
    (:func:`pvae.diagnostics.kl_per_dimension`), largest first, and labelled with it
    (:math:`z_3` KL 2.41 nats): the rows at the bottom are the collapsed dimensions (Burda et
    al. 2015). Priors that do not factorize over dimensions have no per-dimension KL; their
    rows are ordered by the active-unit statistic :math:`\mathrm{Var}_n\,\mathbb E[z_d\mid x_n]`
    instead. Columns are labelled with :math:`\delta` (in the chosen sd's units).

    Args:
        vae: A built :class:`~pvae.VAE` over images.
        x: One datapoint (``data_shape`` or ``(1, *data_shape)``) to traverse around, or
            ``None`` for the prior's mean.
        dims: Latent dimensions to show (0-based; drawn in KL order), an integer n for the n
            largest-KL dimensions, or ``None`` for all.
        steps: Offsets per row (≥ 2).
        span: Largest offset, in standard deviations (> 0).
        sd: ``"posterior"``, ``"prior"`` or ``"aggregate"``; ``None`` is ``"posterior"`` with
            ``x`` and ``"prior"`` without.
        kl_x: Data ``(N, *data_shape)`` the KL per dimension is averaged over; ``None`` is
            ``x`` (rows in index order, unlabelled by KL, when both are ``None``).
        figsize: ``(width, height)`` in inches; ``None`` sizes the grid.
        dpi: Resolution; ``None`` is :data:`~pvae.plotting.style.DPI`.
        path: Where to save the figure (format by suffix).

    Example:
        >>> import torch, pvae
        >>> vae = pvae.VAE(pvae.priors.StandardNormal(3), data_shape=(1, 8, 8))
        >>> fig = pvae.plotting.traversals(vae, kl_x=torch.rand(20, 1, 8, 8).round(), steps=5)
        >>> fig.axes[0].get_yticklabels()[0].get_text().startswith("$z_")
        True
    """
    vae = _check_vae(vae, "traversals", "prior")
    sd = _traversal_sd(steps, span, sd, x is not None)
    dev = vae.device
    xb = None if x is None else _one_datapoint(vae, "x", x).to(dev)
    data = xb if kl_x is None else kl_x.to(dev)
    if data is not None and tuple(data.shape[1:]) != tuple(vae.data_shape):
        raise ValueError(
            f"kl_x must have shape (N, *{tuple(vae.data_shape)}), got {tuple(data.shape)}"
        )
    d = vae.latent_dim
    score, score_name = _dimension_scores(vae, data)
    order = list(range(d)) if score is None else torch.argsort(score, descending=True).tolist()
    shown = _shown_dimensions(dims, order, d)
    centre, scale, what = _latent_centre_and_sd(vae, xb, data, sd)
    offsets = torch.linspace(-float(span), float(span), int(steps), device=dev)
    z = centre.expand(len(shown), int(steps), d).clone()
    for r, i in enumerate(shown):
        z[r, :, i] = centre[i] + offsets * scale[i]
    rows = [
        _z(i) if score is None else f"{_z(i)}  {score_name} {float(score[i]):.2f}" for i in shown
    ]
    if xb is not None:
        around = "posterior mean at x"
    else:
        around = "aggregate-posterior mean" if sd == "aggregate" else "prior mean"
    by = {
        "KL": "ordered by KL(q(z_d | x) || p(z_d)), nats",
        "Var": "ordered by Var E[z_d | x]",
        "": "",
    }[score_name]
    fig, _ = image_grid(
        vae.decode_mean(z.reshape(-1, d)),
        int(steps),
        f"latent traversals around the {around}",
        figsize,
        dpi,
        col_labels=[f"{float(v):+.2g}" for v in offsets],
        row_labels=rows,
        xlabel=f"offset from the centre ({what})",
        ylabel=f"latent dimension ({by})" if by else "latent dimension",
        label_space=(1.6, 0.4),
    )
    return finish(fig, path)


def _traversal_sd(steps: Any, span: Any, sd: str | None, has_x: bool) -> str:
    """Check the traversal's ``steps`` and ``span``; the kind of sd (``None``: the default)."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    if not isinstance(span, numbers.Real) or not math.isfinite(span) or span <= 0:
        raise ValueError(f"span must be a number > 0 (standard deviations), got {span!r}")
    valid = ("posterior", "prior", "aggregate")
    if sd is None:
        return "posterior" if has_x else "prior"
    if sd not in valid:
        raise ValueError(f"sd must be one of {', '.join(valid)}; got {sd!r}")
    return sd


def _dimension_scores(vae: Any, data: Tensor | None) -> tuple[Tensor | None, str]:
    """Per-dimension score and its name: the KL where the prior factorizes (``"KL"``), else the
    active-unit variance (``"Var"``); ``(None, "")`` without data."""
    from pvae.diagnostics import active_units, kl_per_dimension

    if data is None:
        return None, ""
    try:
        return kl_per_dimension(vae, data).cpu(), "KL"
    except ValueError:
        if len(data) >= 2:
            return active_units(vae, data, warn=False).variance.cpu(), "Var"
    return None, ""


def _shown_dimensions(dims: int | Sequence[int] | None, order: list[int], d: int) -> list[int]:
    """The latent dimensions ``dims`` names (all, a count of the first in ``order``, or a
    list), in ``order``."""
    if dims is None:
        return order
    if isinstance(dims, numbers.Integral) and not isinstance(dims, bool):
        if not 1 <= dims <= d:
            raise ValueError(f"dims as a count must be in [1, {d}], got {dims}")
        return order[: int(dims)]
    bad = [i for i in dims if not isinstance(i, numbers.Integral) or not 0 <= i < d]
    if bad or not len(dims) or len(set(dims)) != len(dims):
        raise ValueError(
            f"dims must be distinct latent dimensions in [0, {d - 1}], a count or None; "
            f"got {dims!r}"
        )
    return [i for i in order if i in set(int(i) for i in dims)]
