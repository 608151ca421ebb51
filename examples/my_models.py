"""Models written in plain Pyro, as a user of pvae would write them: the objects the README's and
docs' "your own Pyro model" snippets import.

* :class:`TwoLatentVAE` — a ``PyroModule`` VAE with two latent sites per datapoint;
* :class:`ConditionalVAE` — a conditional VAE whose model and guide take the labels ``y``;
* :func:`model_fn` and :func:`guide_fn` — a model/guide pair written as two functions whose
  parameters live in Pyro's parameter store.

None of them uses a pvae class: pvae trains and evaluates them through their Pyro traces. Every
sample site sits inside ``pyro.plate("data", x.shape[0])``, and every computation broadcasts over
an extra leading batch dimension (pvae's estimators draw all their importance samples in one
vectorized pass, as Pyro's ``vectorize_particles`` does).

From the repository's root, ``from examples.my_models import TwoLatentVAE`` imports them, and a
config names one with ``[model] class = "examples.my_models:TwoLatentVAE"``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import Tensor, nn

__all__ = ["ConditionalVAE", "TwoLatentVAE", "guide_fn", "model_fn"]


def _mlp(sizes: Sequence[int]) -> PyroModule:
    """A tanh MLP whose parameters are Pyro param sites whenever it runs under a Pyro handler."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(PyroModule[nn.Linear](a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return PyroModule[nn.Sequential](*layers)


def _pixels(data_shape: Sequence[int]) -> int:
    pixels = 1
    for d in data_shape:
        pixels *= int(d)
    return pixels


class TwoLatentVAE(PyroModule):
    """A VAE with two latent sites per datapoint: a code z and a sharpness s.

    .. math::
        z \\sim \\mathcal N(0, I),\\quad s \\sim \\mathcal N(0, 0.5^2),\\quad
        x \\mid z, s \\sim \\mathrm{Bernoulli}\\big(\\sigma(e^{s} f_\\theta(z))\\big),

    with the guide :math:`q(z \\mid x)\\, q(s \\mid x, z)`: the second site depends on the first.
    Data are in [0, 1] (binarized images). The networks are created by :meth:`build` once the
    data's shape is known (``pvae.fit`` and ``pvae train`` call it).

    Args:
        latent_dim: Dimension of z.
        hidden: Width of the encoder's and decoder's hidden layer.

    Example:
        >>> import torch
        >>> m = TwoLatentVAE(latent_dim=2).build((8, 8))
        >>> x = torch.bernoulli(torch.full((5, 8, 8), 0.5))
        >>> import pvae
        >>> pvae.log_px(m, x, k=10).log_px.shape
        torch.Size([5])
    """

    def __init__(self, latent_dim: int = 4, hidden: int = 64) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.hidden = int(hidden)
        self.data_shape: tuple[int, ...] | None = None

    def build(self, data_shape: Sequence[int]) -> TwoLatentVAE:
        """Create the networks for datapoints of shape ``data_shape`` (idempotent)."""
        shape = tuple(int(d) for d in data_shape)
        if self.data_shape is not None:
            if shape != self.data_shape:
                raise ValueError(
                    f"data_shape: this TwoLatentVAE was built for {self.data_shape}, got {shape}"
                )
            return self
        pixels, z, h = _pixels(shape), self.latent_dim, self.hidden
        self.encoder = _mlp([pixels, h, 2 * z])  # q(z | x): loc and raw scale
        self.encoder_s = _mlp([pixels + z, 32, 2])  # q(s | x, z): loc and raw scale
        self.decoder = _mlp([z, h, pixels])  # logits before the sharpness
        self.data_shape = shape
        return self

    def model(self, x: Tensor) -> None:
        """p(z) p(s) p(x | z, s), one draw of each latent per datapoint."""
        flat = x.reshape(x.shape[0], -1)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(flat.new_zeros(self.latent_dim), 1.0).to_event(1))
            s = pyro.sample("s", dist.Normal(flat.new_zeros(()), 0.5))
            logits = self.decoder(z) * s.exp().unsqueeze(-1)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=flat)

    def guide(self, x: Tensor) -> None:
        """q(z | x) q(s | x, z)."""
        flat = x.reshape(x.shape[0], -1)
        loc, raw = self.encoder(flat).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1))
            # x broadcast to z's batch shape: the estimators add a leading particle dimension
            context = torch.cat([flat.expand(*z.shape[:-1], -1), z], -1)
            s_loc, s_raw = self.encoder_s(context).unbind(-1)
            pyro.sample("s", dist.Normal(s_loc, F.softplus(s_raw) + 1e-4))


class ConditionalVAE(nn.Module):
    """A conditional VAE (Sohn et al. 2015) on labelled images: the class y is given.

    .. math::
        z \\sim \\mathcal N(0, I),\\quad x \\mid z, y \\sim
        \\mathrm{Bernoulli}\\big(f_\\theta(z, y)\\big),\\qquad q(z \\mid x, y).

    ``model(x, y)`` and ``guide(x, y)`` take the labels as a per-datapoint argument: pass
    ``kwargs={"y": labels}`` to pvae's estimators, and ``labels=True`` to ``pvae.fit`` (each
    minibatch's labels then arrive as ``y``).

    Args:
        latent_dim: Dimension of z.
        classes: Number of classes.
        hidden: Width of the hidden layers.

    Example:
        >>> import torch
        >>> m = ConditionalVAE(latent_dim=2).build((8, 8))
        >>> x = torch.bernoulli(torch.full((5, 8, 8), 0.5))
        >>> import pvae
        >>> pvae.log_px(m, x, k=10, kwargs={"y": torch.arange(5)}).log_px.shape
        torch.Size([5])
    """

    def __init__(self, latent_dim: int = 4, classes: int = 10, hidden: int = 64) -> None:
        super().__init__()
        self.latent_dim, self.classes, self.hidden = int(latent_dim), int(classes), int(hidden)
        self.data_shape: tuple[int, ...] | None = None

    def build(self, data_shape: Sequence[int]) -> ConditionalVAE:
        """Create the networks for datapoints of shape ``data_shape`` (idempotent)."""
        shape = tuple(int(d) for d in data_shape)
        if self.data_shape is not None:
            if shape != self.data_shape:
                raise ValueError(
                    f"data_shape: this ConditionalVAE was built for {self.data_shape}, got {shape}"
                )
            return self
        pixels, z, c, h = _pixels(shape), self.latent_dim, self.classes, self.hidden
        self.encoder = nn.Sequential(nn.Linear(pixels + c, h), nn.Tanh(), nn.Linear(h, 2 * z))
        self.decoder = nn.Sequential(nn.Linear(z + c, h), nn.Tanh(), nn.Linear(h, pixels))
        self.data_shape = shape
        return self

    def _onehot(self, y: Tensor, like: Tensor) -> Tensor:
        return F.one_hot(y.long(), self.classes).to(like.dtype)

    def model(self, x: Tensor, y: Tensor) -> None:
        """p(z) p(x | z, y)."""
        pyro.module("conditional_vae", self)
        flat, onehot = x.reshape(x.shape[0], -1), self._onehot(y, x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(flat.new_zeros(self.latent_dim), 1.0).to_event(1))
            h = torch.cat([z, onehot.expand(*z.shape[:-1], -1)], -1)
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(h)).to_event(1), obs=flat)

    def guide(self, x: Tensor, y: Tensor) -> None:
        """q(z | x, y)."""
        pyro.module("conditional_vae", self)
        flat, onehot = x.reshape(x.shape[0], -1), self._onehot(y, x)
        loc, raw = self.encoder(torch.cat([flat, onehot], -1)).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1))


LATENT = 2
"""Dimension of z in :func:`model_fn` and :func:`guide_fn`."""


def model_fn(x: Tensor) -> None:
    """A linear-logit model written as a function: z ~ N(0, I), x | z ~ Bernoulli(σ(zW + b)).

    Its parameters ``W`` and ``b`` are ``pyro.param`` sites, created on the first call for the
    data's width (``pyro.clear_param_store()`` forgets them).
    """
    flat = x.reshape(x.shape[0], -1)
    pixels = flat.shape[-1]
    w = pyro.param("W", lambda: 0.1 * torch.randn(LATENT, pixels, dtype=flat.dtype))
    b = pyro.param("b", lambda: flat.new_zeros(pixels))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(flat.new_zeros(LATENT), 1.0).to_event(1))
        pyro.sample("x", dist.Bernoulli(logits=z @ w + b).to_event(1), obs=flat)


def guide_fn(x: Tensor) -> None:
    """The guide of :func:`model_fn`: q(z | x) = N(m, diag softplus(r)²) with (m, r) = xA + c."""
    flat = x.reshape(x.shape[0], -1)
    pixels = flat.shape[-1]
    a = pyro.param("A", lambda: 0.01 * torch.randn(pixels, 2 * LATENT, dtype=flat.dtype))
    c = pyro.param("c", lambda: flat.new_zeros(2 * LATENT))
    loc, raw = (flat @ a + c).chunk(2, -1)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1))
