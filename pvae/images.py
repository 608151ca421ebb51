"""PNG grids of reconstructions and samples (torchvision's grid maker; no matplotlib needed)."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import Tensor

from pvae.checkpoint import atomic_write_bytes
from pvae.model import VAE, point_estimate

__all__ = ["reconstruction_grid", "sample_grid", "save_grid"]


def _is_image(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3 and shape[0] in (1, 3)


def save_grid(images: Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Save ``(N, C, H, W)`` images in [0, 1] as one PNG grid, atomically."""
    import torchvision.utils as vutils
    from PIL import Image

    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
    images = images.detach().float().clamp(0, 1).cpu()
    if images.shape[-1] < 32:  # small images (8×8 digits) are upscaled to be visible
        factor = -(-32 // images.shape[-1])
        images = images.repeat_interleave(factor, -1).repeat_interleave(factor, -2)
    grid = vutils.make_grid(images, nrow=nrow, padding=2, pad_value=0.5)
    arr = (grid.mul(255).round().byte().permute(1, 2, 0).numpy()).copy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


@torch.no_grad()
def reconstruction_grid(vae: VAE, x: Tensor, path: str | Path, n: int = 32) -> Path | None:
    """Rows of data, each followed by its reconstruction E[x | z = mean of q(z | x)]."""
    if not _is_image(tuple(x.shape[1:])):
        return None
    x = x[:n]
    recon = vae.decode_mean(point_estimate(vae.encode(x)))
    rows = []
    for a, b in zip(x.split(8), recon.split(8), strict=True):
        rows += [a, b]
    return save_grid(torch.cat(rows), path, nrow=8)


@torch.no_grad()
def sample_grid(vae: VAE, path: str | Path, n: int = 64) -> Path | None:
    """Decoder means E[x | z] for z drawn from the prior."""
    if vae.data_shape is None or not _is_image(vae.data_shape):
        return None
    z = vae.prior().sample((n,))
    return save_grid(vae.decode_mean(z), path, nrow=8)
