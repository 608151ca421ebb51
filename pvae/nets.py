"""Plain PyTorch networks for encoders and decoders.

Every network maps inputs with any number of leading batch dimensions (datapoints, particles) to
outputs with the same leading dimensions, so one decoder serves a minibatch, ``k`` importance
samples per datapoint, or vectorized ELBO particles alike.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from pvae._checks import lookup, positive_int

__all__ = [
    "DECODERS",
    "ENCODERS",
    "MLP",
    "ConvDecoder",
    "ConvEncoder",
    "LadderPaths",
]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
}


NORMS: dict[str, Callable[[int], nn.Module]] = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}


def _shape(name: str, shape: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    shape = tuple(shape)
    if not shape:
        raise ValueError(f"{name} must be a non-empty shape, got {shape}")
    for s in shape:
        positive_int(f"{name} entries", s)
    return shape


def _activation(activation: str | Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    if isinstance(activation, str):
        return lookup("activation", ACTIVATIONS, activation)
    return activation


class MLP(nn.Module):
    """Multilayer perceptron from inputs of shape ``in_shape`` to outputs of shape ``out_shape``.

    Args:
        in_shape: Shape of one input (flattened internally).
        out_shape: Shape of one output.
        hidden: Widths of the hidden layers.
        activation: Name in :data:`ACTIVATIONS` or a module class.
        norm: ``None``, ``"batch"`` or ``"layer"`` normalization after each hidden linear layer.

    Example:
        >>> import torch
        >>> MLP((1, 8, 8), 4, hidden=(16,))(torch.zeros(5, 3, 1, 8, 8)).shape
        torch.Size([5, 3, 4])
    """

    def __init__(
        self,
        in_shape: int | Sequence[int],
        out_shape: int | Sequence[int],
        hidden: Sequence[int] = (256, 128),
        activation: str | Callable[[], nn.Module] = "relu",
        norm: str | None = None,
    ) -> None:
        super().__init__()
        self.in_shape = _shape("in_shape", in_shape)
        self.out_shape = _shape("out_shape", out_shape)
        act = _activation(activation)
        norm_layer = None if norm is None else lookup("norm", NORMS, norm)
        widths = [math.prod(self.in_shape), *(positive_int("hidden", h) for h in hidden)]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), *([norm_layer(b)] if norm_layer else []), act()]
        layers.append(nn.Linear(widths[-1], math.prod(self.out_shape)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        batch = x.shape[: x.dim() - len(self.in_shape)]
        y = self.net(x.reshape(-1, math.prod(self.in_shape)))  # 2-D, as batch norm needs
        return y.reshape(*batch, *self.out_shape)


def _downsampled(size: int, n: int) -> list[int]:
    """Spatial sizes after each of ``n`` stride-2, kernel-3, padding-1 convolutions."""
    sizes = [size]
    for _ in range(n):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


class ConvEncoder(nn.Module):
    """Strided convolutions then a linear layer: images ``(C, H, W)`` to ``out_features``.

    Each convolution halves H and W (rounding up), so any image size works.

    Args:
        in_shape: ``(C, H, W)`` of one image.
        out_features: Output width (e.g. the guide's parameter count).
        channels: Channels of the successive stride-2 convolutions.
        activation: Name in :data:`ACTIVATIONS` or a module class.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_features: int,
        channels: Sequence[int] = (32, 64),
        activation: str | Callable[[], nn.Module] = "relu",
    ) -> None:
        super().__init__()
        self.in_shape = _shape("in_shape", in_shape)
        if len(self.in_shape) != 3:
            raise ValueError(f"in_shape must be (C, H, W) for a conv encoder, got {self.in_shape}")
        act = _activation(activation)
        c, h, w = self.in_shape
        layers: list[nn.Module] = []
        for ch in channels:
            layers += [nn.Conv2d(c, positive_int("channels", ch), 3, stride=2, padding=1), act()]
            c = ch
        hs, ws = _downsampled(h, len(channels)), _downsampled(w, len(channels))
        layers += [nn.Flatten(), nn.Linear(c * hs[-1] * ws[-1], positive_int("out", out_features))]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        batch = x.shape[:-3]
        y = self.net(x.reshape(-1, *self.in_shape))
        return y.reshape(*batch, -1)


class ConvDecoder(nn.Module):
    """A linear layer then transposed convolutions: ``latent_dim`` to images ``out_shape``.

    Mirrors :class:`ConvEncoder`: output paddings are chosen so the output is exactly
    ``(C, H, W)`` for any H and W.

    Args:
        latent_dim: Dimension of z.
        out_shape: ``(C, H, W)`` of the decoder output (the likelihood's parameter shape).
        channels: Channels entering the successive stride-2 transposed convolutions.
        activation: Name in :data:`ACTIVATIONS` or a module class.
    """

    def __init__(
        self,
        latent_dim: int,
        out_shape: Sequence[int],
        channels: Sequence[int] = (64, 32),
        activation: str | Callable[[], nn.Module] = "relu",
    ) -> None:
        super().__init__()
        self.latent_dim = positive_int("latent_dim", latent_dim)
        self.out_shape = _shape("out_shape", out_shape)
        if len(self.out_shape) != 3:
            raise ValueError(f"out_shape must be (C, H, W) for a conv decoder, got {out_shape}")
        act = _activation(activation)
        c_out, h, w = self.out_shape
        channels = [positive_int("channels", c) for c in channels]
        hs, ws = _downsampled(h, len(channels)), _downsampled(w, len(channels))
        self.start = (channels[0], hs[-1], ws[-1])
        self.fc = nn.Sequential(nn.Linear(self.latent_dim, math.prod(self.start)), act())
        layers: list[nn.Module] = []
        outs = [*channels[1:], c_out]
        for i, (c_in, c_next) in enumerate(zip(channels, outs, strict=True)):
            level = len(channels) - i  # spatial index we upsample from
            op = (hs[level - 1] - 2 * hs[level] + 1, ws[level - 1] - 2 * ws[level] + 1)
            layers.append(nn.ConvTranspose2d(c_in, c_next, 3, 2, padding=1, output_padding=op))
            if i < len(channels) - 1:
                layers.append(act())
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        batch = z.shape[:-1]
        y = self.fc(z.reshape(-1, self.latent_dim)).reshape(-1, *self.start)
        return self.net(y).reshape(*batch, *self.out_shape)


ENCODERS: Mapping[str, type[nn.Module]] = {"mlp": MLP, "conv": ConvEncoder}
"""The encoders a config's ``[model.encoder]`` table names, each built as
``cls(data_shape, num_outputs, **kw)``."""
DECODERS: Mapping[str, type[nn.Module]] = {"mlp": MLP, "conv": ConvDecoder}
"""The decoders a config's ``[model.decoder]`` table names, each built as
``cls(latent_dim, out_shape, **kw)``."""


@runtime_checkable
class LadderPaths(Protocol):
    """The deterministic networks of a top-down (ladder) hierarchy over latents z_1 (bottom) .. z_L.

    Every network maps inputs with any number of leading batch dimensions to outputs with the same
    leading dimensions; ``h_0 = x``. Scales are raw: the ladder applies softplus.

    Attributes:
        latent_shapes: event shapes of z_1 .. z_L.
        up: ``up[l]`` maps h_l to h_{l+1}, l = 0..L-1 (the bottom-up deterministic pass).
        q_heads: ``q_heads[l]`` maps h_{l+1} to ``(*batch, 2, *latent_shapes[l])``: the bottom-up
            (loc, raw scale) estimate for z_{l+1}.
        p_heads: ``p_heads[l]`` maps z_{l+2} to ``(*batch, 2, *latent_shapes[l])``, l = 0..L-2: the
            top-down prior (loc, raw scale) of z_{l+1} given z_{l+2}.
        decoder: maps z_1 to what the likelihood module takes from a decoder (as for pvae.VAE).
    """

    latent_shapes: tuple[tuple[int, ...], ...]
    up: nn.ModuleList
    q_heads: nn.ModuleList
    p_heads: nn.ModuleList
    decoder: nn.Module
