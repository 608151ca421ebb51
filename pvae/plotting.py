"""Figures for a trained VAE (matplotlib, imported lazily). Every function returns the
``matplotlib.figure.Figure`` and, given ``path``, saves it (PNG or PDF by the suffix)."""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pvae.checkpoint import atomic_write_bytes
from pvae.evaluation.log_px import LogPxEstimate
from pvae.model import VAE, point_estimate

__all__ = [
    "interpolation",
    "is_image_shape",
    "khat_plot",
    "kl_bars",
    "latent_manifold",
    "latent_scatter",
    "reconstructions",
    "samples",
    "training_curves",
]


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


def _finish(fig: Any, path: str | Path | None) -> Any:
    fig.tight_layout()
    if path is not None:  # rendered in memory, written through pvae's one write path
        path = Path(path)
        buf = io.BytesIO()
        fig.savefig(buf, format=path.suffix[1:].lower() or "png")
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


def _grid(images: Tensor, nrow: int, title: str, path: str | Path | None) -> Any:
    import torchvision.utils as vutils

    plt = _plt()
    _images(images)  # shape check
    grid = vutils.make_grid(
        images.detach().float().clamp(0, 1).cpu(), nrow=nrow, padding=1, pad_value=1.0
    )
    rows = math.ceil(len(images) / nrow)
    fig, ax = plt.subplots(figsize=(min(12, 0.7 * nrow + 1), min(12, 0.7 * rows + 0.8)))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.axis("off")
    ax.set_title(title)
    return _finish(fig, path)


@torch.no_grad()
def reconstructions(vae: Any, x: Tensor, n: int = 8, path: str | Path | None = None) -> Any:
    """Data (top row) against reconstructions (bottom): ``vae.reconstruct(x)``, E[x | z] at the
    point estimate of the guide (a :class:`~pvae.VAE` or :class:`~pvae.HierarchicalVAE`)."""
    x = x[:n]
    recon = vae.reconstruct(x)
    return _grid(torch.cat([x, recon]), len(x), "data (top) / reconstruction (bottom)", path)


@torch.no_grad()
def samples(vae: Any, n: int = 64, path: str | Path | None = None) -> Any:
    """Decoder means E[x | z] for latents drawn from the prior (``vae.sample(n, mean=True)``)."""
    return _grid(vae.sample(n, mean=True), 8, "samples from the prior", path)


def _normal_icdf(u: Tensor) -> Tensor:
    return torch.distributions.Normal(0.0, 1.0).icdf(u)


@torch.no_grad()
def latent_manifold(
    vae: VAE,
    n: int = 15,
    dims: Sequence[int] = (0, 1),
    x: Tensor | None = None,
    path: str | Path | None = None,
) -> Any:
    """Decode a grid of z (Kingma & Welling 2013, fig. 4).

    The grid is the inverse normal CDF of evenly spaced quantiles, so equal areas carry equal
    prior mass under a standard normal. With latent_dim > 2 the two ``dims`` vary and the others
    stay at 0; given data ``x``, the grid instead spans the two (unit) principal directions of
    the posterior means around their centre.
    """
    u = torch.linspace(0.5 / n, 1 - 0.5 / n, n)
    g = _normal_icdf(u)
    d = vae.latent_dim
    dev = vae.device
    if x is not None and d > 2:
        mu = point_estimate(vae.encode(x)).double()
        centre = mu.mean(0)
        _, _, v = torch.linalg.svd(mu - centre, full_matrices=False)
        basis = v[:2].to(dev, torch.float32)  # unit directions: the grid is in prior units
        centre = centre.to(dev, torch.float32)
    else:
        basis = torch.zeros(2, d, device=dev)
        basis[0, dims[0]] = 1.0
        basis[1, dims[1] if d > 1 else dims[0]] = 1.0
        centre = torch.zeros(d, device=dev)
    a, b = torch.meshgrid(g, g.flip(0), indexing="xy")
    z = centre + a.reshape(-1, 1).to(dev) * basis[0] + b.reshape(-1, 1).to(dev) * basis[1]
    return _grid(vae.decode_mean(z), n, "latent manifold", path)


@torch.no_grad()
def latent_scatter(
    vae: VAE, x: Tensor, labels: Tensor | None = None, path: str | Path | None = None
) -> Any:
    """Posterior means (first two principal directions if latent_dim > 2), coloured by label."""
    plt = _plt()
    mu = point_estimate(vae.encode(x)).double().cpu()
    if mu.shape[1] > 2:
        mu = mu - mu.mean(0)
        _, _, v = torch.linalg.svd(mu, full_matrices=False)
        mu = mu @ v[:2].T
    elif mu.shape[1] == 1:
        mu = torch.cat([mu, torch.zeros_like(mu)], 1)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    c = None if labels is None else labels.cpu().numpy()
    sc = ax.scatter(mu[:, 0], mu[:, 1], c=c, s=6, cmap="tab10")
    if labels is not None:
        fig.colorbar(sc, ax=ax, label="label")
    ax.set_xlabel("z[0]" if vae.latent_dim <= 2 else "PC 1")
    ax.set_ylabel("z[1]" if vae.latent_dim <= 2 else "PC 2")
    ax.set_title("posterior means")
    return _finish(fig, path)


@torch.no_grad()
def interpolation(
    vae: VAE, x_a: Tensor, x_b: Tensor, steps: int = 10, path: str | Path | None = None
) -> Any:
    """Decode the straight line between the posterior point estimates of two datapoints."""
    za = point_estimate(vae.encode(x_a[None]))[0]
    zb = point_estimate(vae.encode(x_b[None]))[0]
    t = torch.linspace(0, 1, steps, device=za.device)[:, None]
    return _grid(vae.decode_mean((1 - t) * za + t * zb), steps, "interpolation", path)


def training_curves(history: Sequence[Mapping[str, float]], path: str | Path | None = None) -> Any:
    """Train and validation ELBO per epoch, with validation IWAE_k and log p(x) where
    recorded."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    keys = [
        "train_elbo",
        "val_elbo",
        *sorted(
            {k for h in history for k in h if k.startswith("val_iwae_")},
            key=lambda k: int(k.rsplit("_", 1)[1]),
        ),
    ]
    for key in keys:
        pts = [(h["epoch"], h[key]) for h in history if key in h]
        if pts:
            e, v = zip(*pts, strict=True)
            ax.plot(
                e,
                v,
                marker="o" if len(pts) < len(epochs) else None,
                ms=3,
                label=key.replace("val_iwae_", "val IWAE k=").replace("_", " "),
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per datapoint")
    ax.set_title("training curves (largest k ≈ log p(x))")
    ax.legend()
    return _finish(fig, path)


def kl_bars(kl: Tensor, threshold: float = 1e-2, path: str | Path | None = None) -> Any:
    """KL(q(z_d | x) ‖ p(z_d)) per latent dimension (from ``diagnostics.kl_per_dimension``)."""
    plt = _plt()
    kl = kl.detach().cpu()
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(kl)), 3.5))
    ax.bar(range(len(kl)), kl.numpy(), color=["C0" if v > threshold else "C3" for v in kl])
    ax.set_xlabel("latent dimension")
    ax.set_ylabel("KL (nats)")
    ax.set_title("KL per latent dimension (red: collapsed)")
    return _finish(fig, path)


def khat_plot(est: LogPxEstimate, path: str | Path | None = None) -> Any:
    """PSIS Pareto k̂ per datapoint with the 0.5 and 0.7 thresholds (arviz's ``plot_khat``
    where available)."""
    plt = _plt()
    kh = est.khat.detach().cpu().numpy()
    kh = np.where(np.isfinite(kh), kh, np.nan)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import arviz

            arviz.plot_khat(np.nan_to_num(kh, nan=-1.0), ax=ax, show_bins=False)
    except (ImportError, AttributeError, TypeError):  # arviz 1.x moved plotting elsewhere
        ax.scatter(np.arange(len(kh)), kh, s=8, marker="+")
        for t in (0.5, 0.7):
            ax.axhline(t, ls="--", color="C3" if t == 0.7 else "C1")
    ax.set_xlabel("datapoint")
    ax.set_ylabel("Pareto k̂")
    ax.set_title(f"importance-weight quality (k = {est.k})")
    return _finish(fig, path)
