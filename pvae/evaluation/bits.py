r"""Bits per dimension, the unit in which the literature reports likelihoods of images.

For a datapoint of D dimensions (``D = C·H·W``),

.. math::

    \mathrm{bits/dim} = \frac{-\log p(x)}{D \ln 2}.

**8-bit convention.** pvae keeps images as levels :math:`k/255` in [0, 1]. A discrete
likelihood over the 256 levels (:class:`~pvae.likelihoods.DiscretizedLogistic`,
:class:`~pvae.likelihoods.DiscretizedLogisticMixture`,
:class:`~pvae.likelihoods.Categorical256`) gives a probability *mass* :math:`P(x)`, so
:math:`-\log_2 P(x)/D` is the number the literature reports (PixelCNN++ 2.92, NVAE 2.91 bits/dim
on CIFAR-10 test): no dequantization and no correction. A *continuous* density q fitted to
uniformly dequantized data :math:`z = (x_{\mathrm{int}} + u)/a`, :math:`u \sim U[0,1)^D`
(:math:`a = 256` maps onto [0, 1)), is a density over :math:`y = x_{\mathrm{int}} + u` of
:math:`q(y/a)\,a^{-D}`, whose bits/dim are :math:`-\log_2 q(z)/D + \log_2 a` — 8 bits more per
dimension for :math:`a = 256` — and which bounds the discrete model's bits/dim from above
(Theis et al. 2016); pass ``dequantization_scale=a`` for that case. A density over data in [0, 1]
that were *not* dequantized (a Gaussian on the levels themselves) has no such bound: its bits/dim
are not comparable with the literature's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

from torch import Tensor

__all__ = ["bits_per_dim", "eight_bit"]

T = TypeVar("T", Tensor, float)


def bits_per_dim(
    log_px_nats: T, data_shape: Sequence[int], *, dequantization_scale: float | None = None
) -> T:
    r"""``-log p(x) / (D ln 2)``, plus :math:`\log_2 a` for a density on dequantized data.

    Args:
        log_px_nats: log p(x) in nats, per datapoint (a tensor) or one number.
        data_shape: Shape of one datapoint; D is its product.
        dequantization_scale: ``None`` for a mass over the 256 levels (the 8-bit convention, see
            the module docstring); ``a`` for a density q over :math:`z = (x_{int} + u)/a`.

    Example:
        >>> import math
        >>> bits_per_dim(-3 * 32 * 32 * math.log(256), (3, 32, 32))  # uniform over 256 levels
        8.0
    """
    d = math.prod(data_shape)
    shift = 0.0
    if dequantization_scale is not None:
        if isinstance(dequantization_scale, bool) or not (
            isinstance(dequantization_scale, int | float) and dequantization_scale > 0
        ):
            raise ValueError(
                f"dequantization_scale must be a number > 0 (256 for (x + u)/256), "
                f"got {dequantization_scale!r}"
            )
        shift = math.log2(dequantization_scale)
    return -log_px_nats / (d * math.log(2)) + shift


def eight_bit(likelihood: Any) -> bool:
    """Whether ``likelihood`` is a probability mass over the 256 levels k/255 (its ``levels``
    is 256), so that :func:`bits_per_dim` of its log p(x) is the literature's 8-bit number."""
    return getattr(likelihood, "levels", None) == 256
