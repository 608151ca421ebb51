r"""Figures for a trained VAE (matplotlib, imported lazily).

Every function returns the ``matplotlib.figure.Figure`` and, given ``path``, saves it in the
format its suffix names (``.png``, ``.pdf``, ``.svg``, …; none: PNG) through pvae's one atomic
write path. All share one style, sized for a paper:

* ``figsize=None`` picks a size for the content at :data:`WIDTH` inches wide or less (a full
  text width; LaTeX scales it to a column with fonts still legible), ``dpi=None`` means
  :data:`DPI` (150: 900 px across for PNG; PDF and SVG stay vector, only image grids are
  rasterized at this resolution). Fonts are 8–9 pt (:data:`STYLE`).
* Data axes are labelled with their quantity and unit (nats per datapoint, latent
  coordinates, principal components with their share of the variance); titles say what is
  shown; image grids label their rows and columns.
* Latent dimensions are 0-based, as in the tensors: :math:`z_3` is ``z[..., 3]``.
"""

from __future__ import annotations

import functools
import io
import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch
from torch import Tensor

from pvae.evaluation._psis import KHAT_LIMIT
from pvae.evaluation.log_px import LogPxEstimate
from pvae.files import atomic_write_bytes
from pvae.model import VAE, point_estimate

P = ParamSpec("P")
R = TypeVar("R")

__all__ = [
    "DPI",
    "STYLE",
    "WIDTH",
    "interpolation",
    "is_image_shape",
    "khat_plot",
    "kl_bars",
    "latent_manifold",
    "latent_scatter",
    "reconstructions",
    "samples",
    "training_curves",
    "traversals",
]

DPI = 150
"""Default resolution (dots per inch) of figures and of saved raster files."""

WIDTH = 6.0
"""Default width of a figure in inches (a text width; image grids may be narrower)."""

STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.4,
    "lines.markersize": 4,
}
"""Matplotlib rc settings every figure of this module is drawn under."""

# Grid cells are this many inches; a grid figure is capped at this size.
_CELL = 0.6
_MAX_GRID = (WIDTH + 1.0, 9.0)


def _plt() -> Any:
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg") and not _interactive():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _interactive() -> bool:
    try:  # inside IPython/Jupyter keep the inline backend
        from IPython import get_ipython

        return get_ipython() is not None
    except ImportError:
        return False


def _styled(fn: Callable[P, R]) -> Callable[P, R]:
    """Draw everything ``fn`` creates under :data:`STYLE` (fonts are fixed at creation)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with _plt().rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def _figure(
    plt: Any,
    figsize: tuple[float, float] | None,
    dpi: int | None,
    default: tuple[float, float],
    **kwargs: Any,
) -> tuple[Any, Any]:
    """``plt.subplots`` with the checked ``figsize`` (or ``default``) and ``dpi`` (or
    :data:`DPI`)."""
    if figsize is None:
        figsize = default
    elif (
        not isinstance(figsize, Sequence)
        or len(figsize) != 2
        or not all(isinstance(v, numbers.Real) and math.isfinite(v) and v > 0 for v in figsize)
    ):
        raise ValueError(f"figsize must be (width, height) in inches, both > 0, got {figsize!r}")
    if dpi is None:
        dpi = DPI
    elif isinstance(dpi, bool) or not isinstance(dpi, numbers.Integral) or dpi <= 0:
        raise ValueError(f"dpi must be a positive integer, got {dpi!r}")
    return plt.subplots(figsize=(float(figsize[0]), float(figsize[1])), dpi=int(dpi), **kwargs)


def _finish(fig: Any, path: str | Path | None) -> Any:
    """Lay out ``fig`` and, given ``path``, save it (format from the suffix, PNG without one)."""
    with warnings.catch_warnings():  # a layout that cannot be tightened is still a figure
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    if path is not None:  # rendered in memory, written through pvae's one write path
        path = Path(path)
        fmt = path.suffix[1:].lower() or "png"
        valid = fig.canvas.get_supported_filetypes()
        if fmt not in valid:
            raise ValueError(
                f"path {str(path)!r}: unknown figure format {fmt!r}; valid suffixes: "
                + ", ".join(f".{k}" for k in sorted(valid))
            )
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=fig.dpi)
        atomic_write_bytes(path, buf.getvalue())
        if not _interactive():  # saved to disk: release pyplot's reference (no figure pile-up)
            _plt().close(fig)
    return fig


def is_image_shape(shape: Sequence[int] | None) -> bool:
    """Whether datapoints of this shape are images (1 or 3 channels) that grids can show."""
    return shape is not None and len(shape) == 3 and shape[0] in (1, 3)


def _images(x: Tensor) -> np.ndarray:
    """``(N, C, H, W)`` in [0, 1] to ``(N, H, W[, 3])`` arrays for imshow."""
    x = x.detach().float().clamp(0, 1).cpu()
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, 1 or 3, H, W), got {tuple(x.shape)}")
    return x[:, 0].numpy() if x.shape[1] == 1 else x.permute(0, 2, 3, 1).numpy()


def _centres(n: int, size: int) -> list[float]:
    """Pixel coordinates of the centres of ``n`` tiles of ``size`` pixels in a padded grid."""
    return [1 + i * (size + 1) + (size - 1) / 2 for i in range(n)]


def _grid(
    images: Tensor,
    nrow: int,
    title: str,
    figsize: tuple[float, float] | None,
    dpi: int | None,
    *,
    col_labels: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    xlabel: str = "",
    ylabel: str = "",
    label_space: tuple[float, float] = (0.0, 0.0),
) -> tuple[Any, Any]:
    """Images in rows of ``nrow`` (1-pixel white padding), with optional tick labels at the
    centres of the columns and rows; returns ``(fig, ax)`` for the caller to finish."""
    import torchvision.utils as vutils

    _images(images)  # shape check
    plt = _plt()
    grid = vutils.make_grid(
        images.detach().float().clamp(0, 1).cpu(), nrow=nrow, padding=1, pad_value=1.0
    )
    rows = math.ceil(len(images) / nrow)
    cols = min(nrow, len(images))
    default = (
        min(_MAX_GRID[0], _CELL * cols + 0.4 + label_space[0]),
        min(_MAX_GRID[1], _CELL * rows + 0.6 + label_space[1]),
    )
    fig, ax = _figure(plt, figsize, dpi, default)
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    h, w = images.shape[-2:]
    ax.set_xticks(_centres(cols, w) if col_labels else [])
    ax.set_yticks(_centres(rows, h) if row_labels else [])
    if col_labels:
        ax.set_xticklabels(col_labels)
    if row_labels:
        ax.set_yticklabels(row_labels)
    ax.tick_params(length=0)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig, ax


def _one_datapoint(vae: VAE, name: str, x: Tensor) -> Tensor:
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


def _check_vae(vae: Any, what: str) -> VAE:
    if not isinstance(vae, VAE):
        raise TypeError(f"{what} draws a pvae.VAE's latent space, got {type(vae).__name__}")
    if not vae.is_built:
        raise ValueError("the VAE is not built: call vae.build(data_shape) or pvae.fit first")
    if not is_image_shape(vae.data_shape):
        raise ValueError(
            f"{what} shows decoded images, got datapoints of shape {vae.data_shape} "
            "(images are (1 or 3, H, W))"
        )
    return vae


def _z(d: int) -> str:
    return f"$z_{{{d}}}$"


@_styled
@torch.no_grad()
def reconstructions(
    vae: Any,
    x: Tensor,
    n: int = 8,
    *,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    path: str | Path | None = None,
) -> Any:
    """Data (top row) against reconstructions (bottom): ``vae.reconstruct(x)``, E[x | z] at the
    point estimate of the guide (a :class:`~pvae.VAE` or :class:`~pvae.HierarchicalVAE`).

    Args:
        vae: The trained model.
        x: Images ``(N, C, H, W)``; the first ``n`` are shown.
        n: Number of datapoints (columns).
        figsize: ``(width, height)`` in inches; ``None`` sizes the grid.
        dpi: Resolution; ``None`` is :data:`DPI`.
        path: Where to save the figure (format by suffix).
    """
    x = x[:n]
    recon = vae.reconstruct(x)
    fig, _ = _grid(
        torch.cat([x, recon]),
        len(x),
        "data and reconstructions E[x | z = mean of q(z | x)]",
        figsize,
        dpi,
        row_labels=["data", "recon."],
        label_space=(0.5, 0.0),
    )
    return _finish(fig, path)


@_styled
@torch.no_grad()
def samples(
    vae: Any,
    n: int = 64,
    *,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    path: str | Path | None = None,
) -> Any:
    """Decoder means E[x | z] for latents drawn from the prior (``vae.sample(n, mean=True)``),
    8 per row.

    Args:
        vae: The trained model.
        n: Number of samples.
        figsize: ``(width, height)`` in inches; ``None`` sizes the grid.
        dpi: Resolution; ``None`` is :data:`DPI`.
        path: Where to save the figure (format by suffix).
    """
    fig, _ = _grid(vae.sample(n, mean=True), 8, f"E[x | z] for {n} draws z ~ p(z)", figsize, dpi)
    return _finish(fig, path)


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


@_styled
@torch.no_grad()
def latent_manifold(
    vae: VAE,
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
        dpi: Resolution; ``None`` is :data:`DPI`.
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
    fig, ax = _grid(vae.decode_mean(z), n, f"latent manifold: E[x | z] over {kind}", figsize, dpi)
    h, w = vae.data_shape[-2:]
    ax.set_xticks([_centres(n, w)[p] for p in picks], [f"{float(g[p]):.2g}" for p in picks])
    ax.set_xlabel(labels[0])
    if d > 1:
        ax.set_yticks([_centres(n, h)[p] for p in picks], [f"{float(rows[p]):.2g}" for p in picks])
        ax.set_ylabel(labels[1])
    return _finish(fig, path)


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


@_styled
@torch.no_grad()
def latent_scatter(
    vae: VAE,
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
        dpi: Resolution; ``None`` is :data:`DPI`.
        path: Where to save the figure (format by suffix).
    """
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
    plt = _plt()
    fig, ax = _figure(plt, figsize, dpi, (4.8, 3.8))
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
    return _finish(fig, path)


@_styled
@torch.no_grad()
def interpolation(
    vae: VAE,
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
        dpi: Resolution; ``None`` is :data:`DPI`.
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
    fig, _ = _grid(
        images,
        steps + 2,
        "interpolation between the posterior means of two datapoints",
        figsize,
        dpi,
        col_labels=cols,
        xlabel=r"t in E[x | $z_t$], $z_t = (1-t)\,z_a + t\,z_b$",
        label_space=(0.0, 0.4),
    )
    return _finish(fig, path)


def _latent_centre_and_sd(
    vae: VAE, x: Tensor | None, data: Tensor | None, sd: str
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


@_styled
@torch.no_grad()
def traversals(
    vae: VAE,
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
        dpi: Resolution; ``None`` is :data:`DPI`.
        path: Where to save the figure (format by suffix).

    Example:
        >>> import torch, pvae
        >>> vae = pvae.VAE(pvae.priors.StandardNormal(3), data_shape=(1, 8, 8))
        >>> fig = pvae.plotting.traversals(vae, kl_x=torch.rand(20, 1, 8, 8).round(), steps=5)
        >>> fig.axes[0].get_yticklabels()[0].get_text().startswith("$z_")
        True
    """
    from pvae.diagnostics import active_units, kl_per_dimension

    vae = _check_vae(vae, "traversals")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    if not isinstance(span, numbers.Real) or not math.isfinite(span) or span <= 0:
        raise ValueError(f"span must be a number > 0 (standard deviations), got {span!r}")
    valid = ("posterior", "prior", "aggregate")
    if sd is None:
        sd = "posterior" if x is not None else "prior"
    elif sd not in valid:
        raise ValueError(f"sd must be one of {', '.join(valid)}; got {sd!r}")
    dev = vae.device
    xb = None if x is None else _one_datapoint(vae, "x", x).to(dev)
    data = xb if kl_x is None else kl_x.to(dev)
    if data is not None and tuple(data.shape[1:]) != tuple(vae.data_shape):
        raise ValueError(
            f"kl_x must have shape (N, *{tuple(vae.data_shape)}), got {tuple(data.shape)}"
        )
    d = vae.latent_dim
    # Per-dimension score: the KL where the prior factorizes, else the active-unit variance.
    score, score_name = None, ""
    if data is not None:
        try:
            score, score_name = kl_per_dimension(vae, data).cpu(), "KL"
        except ValueError:
            if len(data) >= 2:
                score = active_units(vae, data, warn=False).variance.cpu()
                score_name = "Var"
    order = list(range(d)) if score is None else torch.argsort(score, descending=True).tolist()
    if dims is None:
        shown = order
    elif isinstance(dims, numbers.Integral) and not isinstance(dims, bool):
        if not 1 <= dims <= d:
            raise ValueError(f"dims as a count must be in [1, {d}], got {dims}")
        shown = order[: int(dims)]
    else:
        bad = [i for i in dims if not isinstance(i, numbers.Integral) or not 0 <= i < d]
        if bad or not len(dims) or len(set(dims)) != len(dims):
            raise ValueError(
                f"dims must be distinct latent dimensions in [0, {d - 1}], a count or None; "
                f"got {dims!r}"
            )
        shown = [i for i in order if i in set(int(i) for i in dims)]
    centre, scale, what = _latent_centre_and_sd(vae, xb, data, sd)
    offsets = torch.linspace(-float(span), float(span), int(steps), device=dev)
    z = centre.expand(len(shown), int(steps), d).clone()
    for r, i in enumerate(shown):
        z[r, :, i] = centre[i] + offsets * scale[i]
    images = vae.decode_mean(z.reshape(-1, d))
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
    fig, _ = _grid(
        images,
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
    return _finish(fig, path)


def _robust_limits(values: Sequence[float], pad: float = 0.08) -> tuple[float, float] | None:
    """y-limits spanning the finite ``values`` with a margin (``None`` if there are none)."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if not v.size:
        return None
    lo, hi = float(v.min()), float(v.max())
    if hi - lo <= 1e-12:
        return lo - 1.0, hi + 1.0
    return lo - pad * (hi - lo), hi + pad * (hi - lo)


@_styled
def training_curves(
    history: Sequence[Mapping[str, float]],
    *,
    skip: int | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    path: str | Path | None = None,
) -> Any:
    r"""Per-epoch bounds of a training run (``FitResult.history``), in nats per datapoint.

    Top: the training objective and the validation ELBO each epoch, and validation
    :math:`\mathrm{IWAE}_k` where recorded (markers; :math:`\mathrm{IWAE}_k \uparrow \log p(x)`
    as k grows, Burda et al. 2015). Bottom, when IWAE points exist: the gaps
    :math:`\mathrm{IWAE}_k - \mathrm{ELBO}`, which separate the k that overlap on the top panel's
    scale. The reference ELBO is ``val_iwae_1`` when recorded (the same validation subset as the
    other k), else ``val_elbo`` (the whole validation split; the axis label says which).

    The y-limits ignore the first epochs, whose bounds are far below the rest: they span the
    values from the epoch after the first ``skip`` (default: 10% of the epochs, at least 1,
    when there are 3 or more) on; earlier points are clipped.

    Args:
        history: One mapping per epoch with ``epoch`` and any of ``train_elbo``, ``val_elbo``,
            ``val_iwae_<k>``.
        skip: Epochs left out of the y-limits (``None``: see above; 0 keeps all).
        figsize: ``(width, height)`` in inches; ``None``: (6.0, 4.6) with the gap panel,
            (6.0, 3.4) without.
        dpi: Resolution; ``None`` is :data:`DPI`.
        path: Where to save the figure (format by suffix).
    """
    if not history:
        raise ValueError("history is empty: no epochs to plot")
    epochs = [h["epoch"] for h in history]
    ks = sorted({int(k.rsplit("_", 1)[1]) for h in history for k in h if k.startswith("val_iwae_")})
    n = len(epochs)
    if skip is None:
        skip = max(1, math.ceil(0.1 * n)) if n >= 3 else 0
    elif isinstance(skip, bool) or not isinstance(skip, numbers.Integral) or skip < 0:
        raise ValueError(f"skip must be an integer >= 0, got {skip!r}")
    late = epochs[min(skip, n - 1)]  # first epoch that sets the limits

    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(h["epoch"], h[key]) for h in history if key in h]
        return [p[0] for p in pts], [p[1] for p in pts]

    gap_ref = "val_iwae_1" if 1 in ks else "val_elbo"
    gap_ks = [k for k in ks if k != 1]
    plt = _plt()
    two = bool(gap_ks) and any(gap_ref in h for h in history)
    fig, axes = _figure(
        plt,
        figsize,
        dpi,
        (WIDTH, 4.6 if two else 3.4),
        nrows=2 if two else 1,
        sharex=True,
        gridspec_kw={"height_ratios": [3, 2]} if two else None,
    )
    ax = axes[0] if two else axes
    top: list[float] = []
    styles = [("o", "--"), ("s", ":"), ("^", "-."), ("D", (0, (5, 1))), ("v", "--")]
    entries = [("train_elbo", "train objective (ELBO)", "C0", None, "-")]
    entries.append(("val_elbo", "val. ELBO", "C1", None, "-"))
    for j, k in enumerate(ks):
        m, ls = styles[j % len(styles)]
        entries.append((f"val_iwae_{k}", f"val. IWAE$_{{{k}}}$", f"C{2 + j}", m, ls))
    for key, label, colour, marker, ls in entries:
        e, v = series(key)
        if not e:
            continue
        if marker is None and len(e) < n:
            marker = "o"
        ax.plot(e, v, color=colour, marker=marker, ls=ls, label=label)
        top += [val for ep, val in zip(e, v, strict=True) if ep >= late]
    lim = _robust_limits(top)
    if lim is not None:
        ax.set_ylim(*lim)
    ax.set_ylabel("bound (nats per datapoint)")
    ax.set_title("training curves: ELBO and IWAE$_k$ (→ log p(x) as k grows)")
    ax.legend(ncol=2, loc="best")
    if two:
        gx = axes[1]
        gaps: list[float] = []
        for j, k in enumerate(ks):
            if k == 1:
                continue
            m, ls = styles[j % len(styles)]
            pts = [
                (h["epoch"], h[f"val_iwae_{k}"] - h[gap_ref])
                for h in history
                if f"val_iwae_{k}" in h and gap_ref in h
            ]
            if pts:
                e, v = zip(*pts, strict=True)
                gx.plot(e, v, color=f"C{2 + j}", marker=m, ls=ls, label=f"k = {k}")
                gaps += [val for ep, val in pts if ep >= late]
        glim = _robust_limits([*gaps, 0.0])
        if glim is not None:
            gx.set_ylim(*glim)
        ref = "val. IWAE$_1$" if gap_ref == "val_iwae_1" else "val. ELBO"
        gx.set_ylabel(f"IWAE$_k$ − {ref} (nats)")
        gx.legend(ncol=len(gap_ks), loc="best")
    (axes[-1] if two else ax).set_xlabel("epoch")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _finish(fig, path)


@_styled
def kl_bars(
    kl: Tensor,
    threshold: float | None = 0.1,
    *,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    path: str | Path | None = None,
) -> Any:
    r"""Mean KL per latent dimension, :math:`\mathbb E_x\,\mathrm{KL}(q(z_d\mid x)\,\|\,p(z_d))`
    in nats (from :func:`pvae.diagnostics.kl_per_dimension`), with an activity threshold.

    The bars sum to the KL term of the ELBO; a dimension below ``threshold`` transmits almost no
    information about x and is drawn as collapsed (red). 0.1 nats is a rough line between
    dimensions the decoder uses and leftovers of training. It is stricter than the active-unit
    count of :func:`pvae.diagnostics.active_units` (:math:`\mathrm{Var}_x\,\mathbb E_q[z_d] >
    0.01`, which a dimension passes with a KL near 0.005 nats when :math:`\sigma_d \approx 1`).

    Args:
        kl: ``(D,)`` mean KL per dimension, nats.
        threshold: Nats per dimension below which a dimension is drawn as collapsed, with a
            dashed line; ``None``: no line, one colour.
        figsize: ``(width, height)`` in inches; ``None``: (6.0, 3.0).
        dpi: Resolution; ``None`` is :data:`DPI`.
        path: Where to save the figure (format by suffix).
    """
    kl = kl.detach().double().cpu().reshape(-1)
    d = len(kl)
    plt = _plt()
    fig, ax = _figure(plt, figsize, dpi, (WIDTH, 3.0))
    if threshold is None:
        colours = ["C0"] * d
        title = f"KL per latent dimension (total {float(kl.sum()):.2f} nats)"
    else:
        threshold = float(threshold)
        colours = ["C0" if v > threshold else "C3" for v in kl.tolist()]
        above = int((kl > threshold).sum())
        title = (
            f"KL per latent dimension: {above} of {d} above {threshold:g} nats "
            f"(total {float(kl.sum()):.2f} nats)"
        )
    ax.bar(range(d), kl.numpy(), color=colours, width=0.8)
    if threshold is not None:
        ax.axhline(threshold, color="0.3", ls="--", lw=1, label=f"{threshold:g} nats")
        ax.legend(loc="best")
    ax.set_xlim(-0.7, d - 0.3)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(d, 16)))
    ax.set_xlabel("latent dimension d")
    ax.set_ylabel(r"$\mathbb{E}_x$ KL(q($z_d$|x) ‖ p($z_d$)) (nats)")
    ax.set_title(title)
    return _finish(fig, path)


@_styled
def khat_plot(
    est: LogPxEstimate,
    *,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    path: str | Path | None = None,
) -> Any:
    r"""PSIS Pareto :math:`\hat k` of the importance weights per datapoint (Vehtari et al.
    2024), with lines at 0.5 and 0.7.

    Below 0.5 the weights' variance is finite and the estimate of :math:`\log p(x)` converges
    quickly; between 0.5 and 0.7 slowly; above 0.7 the Monte Carlo standard error cannot be
    trusted. Points are coloured by band. Drawn with matplotlib alone (no arviz plotting).

    Args:
        est: A :class:`~pvae.LogPxEstimate` with ``khat`` (k ≥ 10).
        figsize: ``(width, height)`` in inches; ``None``: (6.0, 3.0).
        dpi: Resolution; ``None`` is :data:`DPI`.
        path: Where to save the figure (format by suffix).
    """
    kh = est.khat.detach().double().cpu().numpy()
    # -inf: equal weights, the best case (drawn at the bottom); NaN: not computed; +inf: too
    # few draws in the tail to fit (drawn at the top, counted unreliable).
    idx = np.flatnonzero(~np.isnan(kh))
    plt = _plt()
    fig, ax = _figure(plt, figsize, dpi, (WIDTH, 3.0))
    finite = kh[idx][np.isfinite(kh[idx])]
    lo = min(0.0, float(finite.min())) if finite.size else 0.0
    hi = max(1.0, float(finite.max())) if finite.size else 1.0
    v = np.clip(kh[idx], lo, hi)
    raw = kh[idx]
    bands = [  # the project's threshold: k̂ ≥ KHAT_LIMIT is unreliable (log_px's warning)
        (raw <= 0.5, "C0", "k̂ ≤ 0.5"),
        ((raw > 0.5) & (raw < KHAT_LIMIT), "C1", f"0.5 < k̂ < {KHAT_LIMIT}"),
        (raw >= KHAT_LIMIT, "C3", f"k̂ ≥ {KHAT_LIMIT}"),
    ]
    for mask, colour, label in bands:
        if mask.any():
            n = int(mask.sum())
            ax.scatter(idx[mask], v[mask], s=8, marker="+", color=colour, label=f"{label} ({n})")
    ax.axhline(0.5, ls="--", lw=1, color="C1", label="0.5: weight variance infinite above")
    ax.axhline(
        KHAT_LIMIT, ls="-.", lw=1, color="C3", label=f"{KHAT_LIMIT}: s.e. unreliable from here up"
    )
    if not idx.size:
        ax.text(0.5, 0.5, "k̂ not computed (needs k ≥ 10)", transform=ax.transAxes, ha="center")
    ax.set_ylim(lo - 0.05, hi + 0.05)
    ax.set_xlim(-0.5, max(len(kh), 1) - 0.5)
    ax.set_xlabel("datapoint index")
    ax.set_ylabel("Pareto k̂")
    ax.set_title(f"importance-weight quality per datapoint (k = {est.k} samples)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _finish(fig, path)
