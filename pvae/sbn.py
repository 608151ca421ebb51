r"""The sigmoid belief net: layers of binary latent units, a Pyro model/guide pair.

.. math::

    h_L \sim \mathrm{Bernoulli}\big(\sigma(b_L)\big),\quad
    h_{l} \mid h_{l+1} \sim \mathrm{Bernoulli}\big(\sigma(W_{l} h_{l+1} + b_{l})\big),\quad
    x \mid h_1 \sim \mathrm{Bernoulli}\big(\sigma(W_0 h_1 + b_0)\big),

with the guide :math:`q(h_1 \mid x) \prod_{l>1} q(h_l \mid h_{l-1})`, each factor a layer of
independent Bernoulli units whose logits come from an MLP of the layer below (a linear map by
default, as in Mnih & Gregor 2014 and the VIMCO paper's SBNs, Mnih & Rezende 2016, section 6:
layers of 200 units). Every site lies inside ``pyro.plate("data", B)`` and every computation
broadcasts over leading particle dimensions, so pvae's estimators apply unchanged:
``pvae.log_px`` importance-samples the binary units from the guide (:math:`2^{200}`
configurations cannot be enumerated), and the guide's sites have no ``rsample``, so training
needs a score-function estimator: the objectives ``"vimco"`` (:mod:`pvae.objectives.vimco`),
``"rws"`` (:mod:`pvae.objectives.rws`) or ``"elbo"`` (Pyro's plain score function).

**The relaxed model** (``relaxed=True``; Maddison et al. 2017, "The Concrete Distribution";
Jang et al. 2017, "Categorical Reparameterization with Gumbel-Softmax"). Every Bernoulli latent,
in the model and in the guide, is replaced by its Binary Concrete relaxation: the site's value
is the logit :math:`y = (\ell + \log u - \log(1-u))/\lambda`, :math:`u \sim U(0, 1)` (a
``LogitRelaxedBernoulli``, the numerically stable parameterization Maddison et al. recommend,
appendix C), and the layer above sees :math:`\sigma(y) \in (0, 1)`. The guide's temperature is
``temperature``, the prior's ``prior_temperature`` (Maddison et al. use 2/3 and 1/2). The sites
are then reparameterized, so ``"elbo"`` and ``"iwae"`` train with pathwise gradients. The bound
so optimized is the ELBO (or IWAE bound) **of the relaxed model**, a continuous-latent model
that approximates the discrete one: it is not a bound on the discrete model's
:math:`\log p(x)`, and it does not converge to one as the temperature falls (its gradient
variance grows instead). To evaluate the discrete model with the trained parameters, set
``relaxed = False`` on the module and use the discrete guide: ``pvae.log_px`` then
importance-samples Bernoulli units and estimates the discrete model's :math:`\log p(x)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch import Tensor, nn
from torch.distributions.relaxed_bernoulli import LogitRelaxedBernoulli as _TorchLogitRelaxed

from pvae._checks import positive_int
from pvae.nets import MLP
from pvae.program import PyroProgram

__all__ = ["LogitRelaxedBernoulli", "SigmoidBeliefNet"]


class LogitRelaxedBernoulli(_TorchLogitRelaxed, TorchDistributionMixin):
    """The Binary Concrete distribution over logits (Maddison et al. 2017, appendix B), as a
    Pyro distribution: ``sigmoid`` of a draw is a ``RelaxedBernoulli`` draw. Torch implements
    its ``rsample`` but leaves ``has_rsample`` False (it serves inside ``RelaxedBernoulli``); set
    here, so Pyro draws it by reparameterization."""

    has_rsample = True


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return value


class SigmoidBeliefNet(PyroProgram):
    """A sigmoid belief net with layers of binary latent units (see the module docstring).

    Args:
        latent_sizes: Units per latent layer, the one next to the data first (``(200,)``: one
            layer of 200; ``(200, 200)``: the VIMCO paper's two-layer SBN).
        guide_hidden: Hidden widths of each guide layer's MLP (``()``: linear logits).
        model_hidden: Hidden widths of each model layer's MLP (``()``: a sigmoid belief net).
        activation: Activation of the hidden layers.
        relaxed: Use the Binary Concrete relaxation of every latent (see the module docstring).
        temperature: The guide's relaxation temperature λ.
        prior_temperature: The model's relaxation temperature (``None``: ``temperature``).
        name: Prefix of the parameter sites' names.

    Example:
        >>> import torch, pvae
        >>> sbn = SigmoidBeliefNet(latent_sizes=(20, 10)).build((1, 8, 8))
        >>> x = torch.bernoulli(torch.full((5, 1, 8, 8), 0.3))
        >>> pvae.log_px(sbn, x, k=50).log_px.shape
        torch.Size([5])
    """

    def __init__(
        self,
        latent_sizes: Sequence[int] = (200,),
        guide_hidden: Sequence[int] = (),
        model_hidden: Sequence[int] = (),
        activation: str = "tanh",
        relaxed: bool = False,
        temperature: float = 0.5,
        prior_temperature: float | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if isinstance(latent_sizes, int) or not len(latent_sizes):
            raise ValueError(
                f"latent_sizes must be a non-empty sequence of layer widths, got {latent_sizes!r}"
            )
        self.latent_sizes = tuple(positive_int("latent_sizes entries", s) for s in latent_sizes)
        self.guide_hidden = tuple(positive_int("guide_hidden entries", h) for h in guide_hidden)
        self.model_hidden = tuple(positive_int("model_hidden entries", h) for h in model_hidden)
        self.activation = activation
        self.relaxed = bool(relaxed)
        self.temperature = _positive("temperature", temperature)
        self.prior_temperature = _positive(
            "prior_temperature", temperature if prior_temperature is None else prior_temperature
        )
        self.data_shape: tuple[int, ...] | None = None

    def build(self, data_shape: Sequence[int]) -> SigmoidBeliefNet:
        """Create the layers for datapoints of shape ``data_shape`` (idempotent)."""
        shape = self._fix_data_shape(data_shape)
        if shape is None:
            return self
        pixels = 1
        for d in shape:
            pixels *= d
        below = (pixels, *self.latent_sizes[:-1])  # what each latent layer generates
        self.top_logits = nn.Parameter(torch.zeros(self.latent_sizes[-1]))
        self.decoders = nn.ModuleList(
            MLP(h, out, self.model_hidden, self.activation)
            for h, out in zip(self.latent_sizes, below, strict=True)
        )
        self.encoders = nn.ModuleList(
            MLP(inp, h, self.guide_hidden, self.activation)
            for inp, h in zip(below, self.latent_sizes, strict=True)
        )
        self.data_shape = shape
        return self

    def _unit(self, logits: Tensor, prior: bool) -> dist.TorchDistribution:
        """A layer of units with these logits: Bernoulli, or its relaxation over logits."""
        if not self.relaxed:
            return dist.Bernoulli(logits=logits).to_event(1)
        temp = self.prior_temperature if prior else self.temperature
        return LogitRelaxedBernoulli(logits.new_tensor(temp), logits=logits).to_event(1)

    def _value(self, h: Tensor) -> Tensor:
        """What a layer passes on: the binary units, or σ of the relaxed logits."""
        return torch.sigmoid(h) if self.relaxed else h

    def _check_built(self, x: Tensor) -> Tensor:
        if self.data_shape is None:
            raise ValueError("SigmoidBeliefNet: call build(data_shape) before running it")
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(
                f"x: expected datapoints of shape {self.data_shape}, got {tuple(x.shape[1:])}"
            )
        return x.reshape(x.shape[0], -1)

    def model(self, x: Tensor) -> None:
        """p(h_L) ∏ p(h_l | h_{l+1}) p(x | h_1), one draw per layer per datapoint."""
        flat = self._check_built(x)
        n = len(self.latent_sizes)
        with pyro.plate("data", x.shape[0]):
            logits = self.top_logits.to(flat.dtype)
            for layer in range(n, 0, -1):
                h = pyro.sample(f"h{layer}", self._unit(logits, prior=True))
                logits = self.decoders[layer - 1](self._value(h))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=flat)

    def guide(self, x: Tensor) -> None:
        """q(h_1 | x) ∏ q(h_l | h_{l-1})."""
        below = self._check_built(x)
        with pyro.plate("data", x.shape[0]):
            for layer, encoder in enumerate(self.encoders, start=1):
                h = pyro.sample(f"h{layer}", self._unit(encoder(below), prior=False))
                below = self._value(h)
