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
    "PATHS",
    "ConvDecoder",
    "ConvEncoder",
    "ConvLadderPaths",
    "LadderPaths",
    "ResBlock",
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
        skip: Residual connections :math:`h + f(h)` around each hidden layer (He et al. 2016),
            through a bias-free linear projection where the width changes: the gradient reaches
            the first layers undamped, which makes deep tanh stacks (a hierarchy's paths) train
            fast.

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
        skip: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(skip, bool):
            raise TypeError(f"skip must be True or False, got {skip!r}")
        self.in_shape = _shape("in_shape", in_shape)
        self.out_shape = _shape("out_shape", out_shape)
        act = _activation(activation)
        norm_layer = None if norm is None else lookup("norm", NORMS, norm)
        widths = [math.prod(self.in_shape), *(positive_int("hidden", h) for h in hidden)]
        blocks: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            blocks.append(
                nn.Sequential(nn.Linear(a, b), *([norm_layer(b)] if norm_layer else []), act())
            )
        out = nn.Linear(widths[-1], math.prod(self.out_shape))
        self.skips = nn.ModuleList(
            (nn.Identity() if a == b else nn.Linear(a, b, bias=False))
            for a, b in itertools.pairwise(widths)
            if skip
        )
        # one Sequential (its parameter names as before skip existed) where there are no skips
        self.net = nn.Sequential(*(m for blk in blocks for m in blk), out) if not skip else None
        self.blocks = nn.ModuleList(blocks) if skip else None
        self.out = out if skip else None

    def forward(self, x: Tensor) -> Tensor:
        batch = x.shape[: x.dim() - len(self.in_shape)]
        h = x.reshape(-1, math.prod(self.in_shape))  # 2-D, as batch norm needs
        if self.net is not None:
            y = self.net(h)
        else:
            for block, skip in zip(self.blocks, self.skips, strict=True):
                h = block(h) + skip(h)
            y = self.out(h)
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


# -- conv paths of a top-down hierarchy -----------------------------------------------------------
def _conv(c_in: int, c_out: int, stride: int = 1, weight_norm: bool = False) -> nn.Module:
    """A 3×3 convolution (padding 1), optionally weight-normalized (Salimans & Kingma 2016)."""
    conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
    return nn.utils.parametrizations.weight_norm(conv) if weight_norm else conv


class ResBlock(nn.Module):
    r"""Pre-activation residual block on ``(N, C, H, W)``: :math:`x + f(x)` with
    :math:`f = \mathrm{conv}\circ\mathrm{act}\circ\mathrm{norm}\circ\mathrm{conv}\circ
    \mathrm{act}\circ\mathrm{norm}` (He et al. 2016), both convolutions 3×3 and width-preserving.

    Args:
        channels: Channels in and out.
        activation: Name in :data:`ACTIVATIONS` or a module class.
        norm: ``None`` or ``"batch"`` (batch norm before each activation).
        weight_norm: Weight-normalize both convolutions.
    """

    def __init__(
        self,
        channels: int,
        activation: str | Callable[[], nn.Module] = "elu",
        norm: str | None = None,
        weight_norm: bool = False,
    ) -> None:
        super().__init__()
        act = _activation(activation)
        bn = None if norm is None else lookup("norm", CONV_NORMS, norm)
        layers: list[nn.Module] = []
        for _ in range(2):
            layers += [*([bn(channels)] if bn else []), act()]
            layers.append(_conv(channels, channels, weight_norm=weight_norm))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


CONV_NORMS: dict[str, Callable[[int], nn.Module]] = {"batch": nn.BatchNorm2d}


class _Batched(nn.Module):
    """``net`` applied over any leading batch dimensions: inputs ``(*batch, *in_shape)`` are
    flattened to ``(-1, *in_shape)`` (what conv and batch-norm layers take) and the output is
    reshaped to ``(*batch, *out_shape)``."""

    def __init__(self, net: nn.Module, in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
        super().__init__()
        self.net, self.in_shape, self.out_shape = net, tuple(in_shape), tuple(out_shape)

    def forward(self, x: Tensor) -> Tensor:
        batch = x.shape[: x.dim() - len(self.in_shape)]
        y = self.net(x.reshape(-1, *self.in_shape))
        return y.reshape(*batch, *self.out_shape)


def _per_level(name: str, value: int | Sequence[int] | bool | Sequence[bool], n: int) -> list:
    values = [value] * n if isinstance(value, int | bool) else list(value)
    if len(values) != n:
        raise ValueError(f"{name} must give one value per latent layer ({n}), got {value!r}")
    return values


class ConvLadderPaths(nn.Module):
    r"""Conv paths of a top-down hierarchy over images ``(C, H, W)`` (a :class:`LadderPaths`).

    The bottom-up tower ``h_0 = x``, ``h_{l+1} = up[l](h_l)``: a 3×3 convolution of stride 2
    (stride 1 where ``downsample`` is false) to ``channels[l]`` then ``blocks`` residual blocks,
    so ``h_l`` has shape ``(channels[l-1], H_l, W_l)`` with ``H_l = ⌈H_{l-1}/2⌉``. Latent
    ``z_l`` is *spatial*, ``(latents[l-1], H_l, W_l)`` (as in NVAE, Vahdat & Kautz 2020), or
    *flat*, ``(latents[l-1],)`` (``spatial=False``, as in the Ladder VAE, Sønderby et al. 2016).
    ``q_heads[l]`` reads (loc, raw scale) of z_{l+1} off h_{l+1} with one convolution (or a
    linear layer); ``p_heads[l]`` maps z_{l+2} to the prior (loc, raw scale) of z_{l+1}: a
    convolution, residual blocks at z_{l+2}'s resolution, a nearest-neighbour upsampling to
    z_{l+1}'s and a convolution; ``decoder`` maps z_1 to the likelihood's parameters at full
    resolution the same way (with ``out_blocks`` residual blocks after the upsampling). Every
    network takes any number of leading batch dimensions (datapoints, particles).

    Args:
        data_shape: ``(C, H, W)`` of one image.
        out_shape: What the decoder outputs for one image, the likelihood's ``param_shape``; its
            last two entries must be ``(H, W)`` (e.g. ``(2, C, H, W)`` for a discretized
            logistic, ``(P, H, W)`` for a mixture).
        latents: Channels (spatial) or dimension (flat) of z_1 .. z_L; L is its length.
        channels: Width of h_1 .. h_L (one value, or one per layer).
        blocks: Residual blocks after each convolution that changes shape.
        spatial: Spatial latents (``True``) or flat ones.
        downsample: Whether each up step halves the resolution (one value, or one per layer).
        activation: Name in :data:`ACTIVATIONS` or a module class.
        norm: ``None`` or ``"batch"`` in the residual blocks.
        weight_norm: Weight-normalize every convolution.
        flat_hidden: Hidden width of the p-heads' MLPs when ``spatial=False``.
        out_blocks: Residual blocks of the decoder at the image's full resolution (costly: 4×
            the pixels of h_1), after its upsampling.

    Example:
        >>> import torch
        >>> paths = ConvLadderPaths((3, 8, 8), (2, 3, 8, 8), latents=(4, 2), channels=8)
        >>> paths.latent_shapes
        ((4, 4, 4), (2, 2, 2))
        >>> paths.decoder(torch.zeros(5, 7, 4, 4, 4)).shape
        torch.Size([5, 7, 2, 3, 8, 8])
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        out_shape: Sequence[int],
        latents: Sequence[int] = (16, 8),
        channels: int | Sequence[int] = 32,
        blocks: int = 1,
        spatial: bool = True,
        downsample: bool | Sequence[bool] = True,
        activation: str | Callable[[], nn.Module] = "elu",
        norm: str | None = None,
        weight_norm: bool = False,
        flat_hidden: int = 256,
        out_blocks: int = 0,
    ) -> None:
        super().__init__()
        self.data_shape, self.out_shape = _shape("data_shape", data_shape), _shape("out", out_shape)
        if len(self.data_shape) != 3:
            raise ValueError(f"data_shape must be (C, H, W) for conv paths, got {data_shape}")
        if len(self.out_shape) < 3 or self.out_shape[-2:] != self.data_shape[1:]:
            raise ValueError(
                f"out_shape must end with the image's (H, W) = {self.data_shape[1:]}, "
                f"got {self.out_shape}"
            )
        lat = [positive_int("latents", d) for d in _shape("latents", latents)]
        n = len(lat)
        chs = [positive_int("channels", c) for c in _per_level("channels", channels, n)]
        down = [bool(d) for d in _per_level("downsample", downsample, n)]
        for name, value in (("blocks", blocks), ("out_blocks", out_blocks)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        self.spatial = bool(spatial)
        res = dict(activation=activation, norm=norm, weight_norm=weight_norm)
        self._res, self._blocks, self._act = res, blocks, _activation(activation)
        sizes = [tuple(self.data_shape[1:])]
        for d in down:
            h, w = sizes[-1]
            sizes.append(((h + 1) // 2, (w + 1) // 2) if d else (h, w))
        hs = [self.data_shape, *((c, *s) for c, s in zip(chs, sizes[1:], strict=True))]
        self.latent_shapes: tuple[tuple[int, ...], ...] = tuple(
            (d, *s) if self.spatial else (d,) for d, s in zip(lat, sizes[1:], strict=True)
        )
        self.up = nn.ModuleList(self._up(hs[i], hs[i + 1], down[i], i > 0) for i in range(n))
        self.q_heads = nn.ModuleList(
            self._q_head(hs[i + 1], self.latent_shapes[i]) for i in range(n)
        )
        self.p_heads = nn.ModuleList(
            self._expand(self.latent_shapes[i + 1], hs[i + 2], (2, *self.latent_shapes[i]))
            if self.spatial
            else MLP(
                lat[i + 1], (2, lat[i]), (positive_int("flat_hidden", flat_hidden),), activation
            )
            for i in range(n - 1)
        )
        self.decoder = self._expand(
            self.latent_shapes[0], hs[1], self.out_shape, sizes[0], out_blocks
        )

    def _resblocks(self, c: int) -> list[nn.Module]:
        return [ResBlock(c, **self._res) for _ in range(self._blocks)]

    def _up(self, h_in: tuple, h_out: tuple, down: bool, act_first: bool) -> nn.Module:
        conv = _conv(h_in[0], h_out[0], 2 if down else 1, self._res["weight_norm"])
        net = nn.Sequential(*([self._act()] if act_first else []), conv, *self._resblocks(h_out[0]))
        return _Batched(net, h_in, h_out)

    def _q_head(self, h: tuple, latent: tuple) -> nn.Module:
        if self.spatial:
            net = nn.Sequential(self._act(), _conv(h[0], 2 * latent[0]))
        else:
            net = nn.Sequential(self._act(), nn.Flatten(), nn.Linear(math.prod(h), 2 * latent[0]))
        return _Batched(net, h, (2, *latent))

    def _expand(
        self, z: tuple, h: tuple, out: tuple, size: tuple | None = None, after: int = 0
    ) -> nn.Module:
        """z (at h's resolution, or flat) → h's width, residual blocks, upsampling to ``size``
        (``out``'s resolution unless given), ``after`` residual blocks there, a convolution to
        ``out``."""
        size = tuple(size or out[-2:])
        width, wn = h[0], self._res["weight_norm"]
        if self.spatial:
            first: list[nn.Module] = [_conv(z[0], width, weight_norm=wn)]
        else:
            first = [nn.Linear(z[0], math.prod(h)), nn.Unflatten(1, h)]
        up = [nn.Upsample(size=size, mode="nearest")] if size != tuple(h[1:]) else []
        after_blocks = [ResBlock(width, **self._res) for _ in range(after)]
        last = _conv(width, math.prod(out) // math.prod(size), weight_norm=wn)
        layers = [*first, *self._resblocks(width), *up, *after_blocks, self._act(), last]
        return _Batched(nn.Sequential(*layers), z, out)


PATHS: Mapping[str, type[nn.Module]] = {"conv": ConvLadderPaths}
"""The paths a top-down config's ``[model.paths]`` table names (``name = "conv"``; its other keys
are the class's keyword arguments), each built as
``cls(data_shape, likelihood.param_shape(data_shape), latent_dim, **kw)`` with ``[model]
latent_dim`` (for conv paths: the channels of spatial latents, or the widths of flat ones)."""


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
