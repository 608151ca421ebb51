r"""The semi-supervised VAE of Kingma, Rezende, Mohamed & Welling (2014), "M2", as a Pyro program.

A class latent y over K classes and a continuous latent z generate x:

.. math::

    p_\theta(x, y, z) = p(y)\, p(z)\, p_\theta(x \mid y, z), \qquad
    q_\phi(y, z \mid x) = q_\phi(y \mid x)\, q_\phi(z \mid x, y),

with p(y) a fixed categorical (uniform by default), p(z) any prior of :mod:`pvae.priors`,
p(x | y, z) any likelihood of :mod:`pvae.likelihoods` over a decoder of the *code*
:math:`[\mathrm{onehot}(y), z]`, q(y | x) a classifier and q(z | x, y) a guide of
:mod:`pvae.guides` over a network of :math:`[\mathrm{vec}(x), \mathrm{onehot}(y)]`.

**Labelled and unlabelled datapoints** (Kingma et al. 2014, §3.1.2). For a labelled pair (x, y)
the bound is over z alone,

.. math::

    \mathcal L(x, y) = \mathbb E_{q(z\mid x,y)}\big[\log p(x\mid y,z) + \log p(y) + \log p(z)
        - \log q(z\mid x,y)\big] \le \log p(x, y),

and for an unlabelled x, y is a latent summed out exactly under q(y | x):

.. math::

    \mathcal U(x) = \sum_y q(y\mid x)\,\big[\mathcal L(x, y) - \log q(y\mid x)\big]
        \le \log p(x).

The guide's ``"y"`` site carries ``infer={"enumerate": "parallel"}``, so Pyro's
``TraceEnum_ELBO(max_plate_nesting=1)`` computes that sum over the K classes in one batched pass
(``enumerate_y=False`` samples y instead: score-function gradients, and importance sampling
over y in :func:`pvae.log_px`). The objective over N datapoints, :math:`N_l` of them labelled,
adds the classifier's log-likelihood on the labelled ones with weight α (eq. 9),

.. math::

    \mathcal J^\alpha = \sum_{(x,y)\ \mathrm{labelled}} \mathcal L(x, y)
        + \sum_{x\ \mathrm{unlabelled}} \mathcal U(x)
        + \alpha\, \frac{1}{N_l} \sum_{(x,y)\ \mathrm{labelled}} \log q_\phi(y \mid x),

α = 0.1·N by default, as in the paper (a maximization; pvae minimizes −J^α / N).

**Where the classification term lives.** In the *model*, as the observed site ``"y_aux"``
with distribution q(y | x) and the label as its value, scaled by α / N_l (Pyro's ``ss_vae``
example does the same in a separate model/guide pair, ``model_classify``): a model site's log
density enters every ELBO with a + sign, so the loss gets −α log q(y | x), the cross-entropy.
A guide site or factor would enter with a − sign and would be a sample of the variational
distribution, which the classifier's fit to the labels is not.

**Labels come through the data plate.** :meth:`SemiSupervisedVAE.set_labels` stores one label
per training datapoint (−1: unlabelled). ``model(x, size=N, subsample=idx)`` and ``guide``
(how :func:`pvae.fit` calls a VAE-like module) look the minibatch's labels up at ``idx``: the
unlabelled datapoints lie in the ``"data"`` plate (sites ``y``, ``z``, ``x``), the labelled
ones in a ``"labelled"`` plate (sites ``y_labelled``, ``z_labelled``, ``x_labelled``,
``y_aux``), each scaled by N / B so the minibatch loss is an unbiased estimate of the full one.
Called without ``subsample`` (validation, test, :func:`pvae.log_px`), or before any labels are
set, every datapoint is unlabelled, and log p(x) is the marginal over y.

**Labelled minibatches.** With ``labelled_per_batch`` = :math:`B_l > 0`, :meth:`batch_order`
gives :func:`pvae.fit` an epoch of minibatches that each hold :math:`B_l` labelled datapoints
(:func:`pvae.labels.labelled_batches`), and the two groups are scaled as the stratified sample
they are: the labelled ones by :math:`N_l / B_l`, the unlabelled ones by
:math:`N_u / (B - B_l)`, so the minibatch loss is again an unbiased estimate of
:math:`-\mathcal J^\alpha`. With a uniform shuffle (``labelled_per_batch = 0``) a step sees
:math:`B N_l / N` labels on average, 2.4 for 1,000 labels among 54,000 at B = 128.

**The relaxed one-hot** (``relaxed_temperature`` = λ; Jang, Gu & Poole 2017, "Gumbel-Softmax";
Maddison, Mnih & Teh 2017, "The Concrete Distribution"). The unlabelled datapoints' y is not
summed out but drawn by reparameterization from the Concrete relaxation of q(y | x): the
softmax :math:`\tilde y = \mathrm{softmax}\big((\log \pi + g)/\lambda\big)`, g K standard
Gumbel draws, a point inside the simplex, and the model's p(y) is relaxed the same way at the
same λ, so :math:`\log p(\tilde y) - \log q(\tilde y \mid x)` is a ratio of two Concrete
densities (Maddison et al. 2017, §5: relax the prior too, not only the guide). The site's value
is :math:`\log \tilde y` (an ``ExpRelaxedCategorical``, the numerically stable parameterization
of Maddison et al., appendix C.3), and the decoder and q(z | x, y) read
:math:`\tilde y = \exp(\text{value})` where they read onehot(y) before. Labelled datapoints keep
y observed as a one-hot (a vertex of the simplex) under the discrete p(y). Training uses
``"elbo"`` (``Trace_ELBO``) with pathwise gradients through :math:`\tilde y` into q(y | x).
The bound so optimized is the ELBO **of the relaxed model**, a model with a continuous class
latent :math:`\tilde y` that approximates M2: it is neither :math:`\mathcal U(x)` nor a bound
on the discrete M2's :math:`\log p(x)`, so its gradients are biased with respect to the
discrete objective, with lower variance than the score-function estimator of
``enumerate_y=False`` (and no K-fold cost of the enumeration). As λ → 0 the draws approach
one-hot vectors and the bias falls, while the gradients' variance grows (Maddison et al. use
λ = 2/3 or 1/2). **Evaluation** follows :class:`pvae.sbn.SigmoidBeliefNet`'s: the module stays the
relaxed model, so :func:`pvae.log_px` (and ``pvae evaluate``, which rebuilds the module from the
run's config) estimates the relaxed model's :math:`\log p(x)`, importance-sampling
:math:`\tilde y` and z from the guide; those numbers are not comparable with a discrete M2's.
To evaluate the discrete M2 with the trained parameters, set ``relaxed_temperature = None`` and
``enumerate_y = True`` on the module: y is then summed out exactly, with the stated mismatch that
the decoder was trained on relaxed vectors. Classification (argmax q(y | x)) is the same in both.

.. warning::
    The paper's α = 0.1·N makes the classification term a tenth of the unlabelled bound's pull
    on q(y | x), and that pull is towards *uniform* (the entropy :math:`H[q(y\mid x)]` in
    :math:`\mathcal U`) until the decoder reads y. On Fashion-MNIST with 100 labels per class
    and the shipped networks, that M2 (uniformly shuffled minibatches, 15 epochs, its best
    epoch on validation accuracy) classifies 73.5% of the test images, below the 76.3% of the
    same classifier trained on the labels alone (``benchmarks/semisupervised.py``); with
    α = 10·N and 32 labels in every minibatch of 128
    (``examples/configs/m2-fashion-mnist.toml``) it classifies 79.4%, at no cost in log p(x)
    (−237.6 against −239.5, ± 2.4 nats).

References:
    Kingma, Rezende, Mohamed & Welling (2014), *Semi-Supervised Learning with Deep Generative
    Models*, NeurIPS (model M2, eq. 6–9).
    Jang, Gu & Poole (2017), *Categorical Reparameterization with Gumbel-Softmax*, ICLR.
    Maddison, Mnih & Teh (2017), *The Concrete Distribution: A Continuous Relaxation of Discrete
    Random Variables*, ICLR.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch import Tensor, nn
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical as _TorchExpRelaxed
from torch.nn import functional as F

from pvae import nets
from pvae._checks import positive_float, positive_int
from pvae.family import BaseVAE, observation, point_estimate, site_weight
from pvae.guides import DiagonalNormal
from pvae.labels import labelled_batches
from pvae.likelihoods import Likelihood

__all__ = ["ExpRelaxedCategorical", "SemiSupervisedVAE"]

UNLABELLED = -1
"""The label of a datapoint whose class is not known."""


class ExpRelaxedCategorical(_TorchExpRelaxed, TorchDistributionMixin):
    r"""The Concrete (Gumbel-softmax) distribution over the *log* of a relaxed one-hot vector
    (Maddison et al. 2017, appendix C.3; Jang et al. 2017), as a Pyro distribution: ``exp`` of a
    draw is a ``RelaxedOneHotCategorical`` draw on the simplex, and its log density stays finite
    where the simplex coordinates underflow to 0 at low temperature.

    Example:
        >>> import torch
        >>> d = ExpRelaxedCategorical(torch.tensor(0.5), logits=torch.zeros(3))
        >>> round(float(d.rsample().exp().sum()), 5)  # a point on the simplex
        1.0
    """


def one_hot(y: Tensor, k: int, like: Tensor) -> Tensor:
    """``onehot(y)`` over ``k`` classes, in ``like``'s dtype and device; a floating ``y`` is the
    log of a relaxed one-hot vector (an :class:`ExpRelaxedCategorical` value), given as
    ``exp(y)``."""
    if y.is_floating_point():
        if y.shape[-1:] != (k,):
            raise ValueError(
                f"a relaxed y must hold {k} log-probabilities per datapoint, got shape "
                f"{tuple(y.shape)}"
            )
        return y.exp().to(dtype=like.dtype, device=like.device)
    return F.one_hot(y.long(), k).to(dtype=like.dtype, device=like.device)


def check_labels(y: Any, num_classes: int) -> Tensor:
    """``y`` as a 1-D int64 CPU tensor of labels in {−1, 0, …, K − 1}; else an error naming it."""
    if not isinstance(y, Tensor):
        y = torch.as_tensor(y)
    if y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(
            f"labels must be a 1-D integer tensor (one label per training datapoint, -1 for "
            f"unlabelled), got dtype {y.dtype} and shape {tuple(y.shape)}"
        )
    y = y.detach().cpu().long()
    bad = (y < UNLABELLED) | (y >= num_classes)
    if bool(bad.any()):
        raise ValueError(
            f"labels must lie in {{-1, 0, ..., {num_classes - 1}}} (num_classes = {num_classes}),"
            f" got {int(y[bad][0])} at index {int(bad.nonzero()[0])}"
        )
    return y


def check_class_probs(probs: Any, num_classes: int) -> Tensor:
    """p(y) as a float tensor of K positive entries summing to 1; else ``ValueError``."""
    p = torch.as_tensor(probs, dtype=torch.get_default_dtype())
    if p.shape != (num_classes,) or not bool((p > 0).all()) or abs(float(p.sum()) - 1) > 1e-6:
        raise ValueError(
            f"class_probs must be {num_classes} positive probabilities summing to 1, got "
            f"{p.tolist()}"
        )
    return p


def _relaxed_temperature(value: Any, enumerate_y: bool) -> float | None:
    """``relaxed_temperature`` checked: ``None`` or a positive float, never with enumeration."""
    if value is None:
        return None
    value = positive_float("relaxed_temperature", value)
    if enumerate_y:
        raise ValueError(
            f"relaxed_temperature={value} draws y from a Concrete relaxation instead of summing "
            "it out: pass enumerate_y=False (and train with 'elbo', not 'enum_elbo')"
        )
    return value


class SemiSupervisedVAE(BaseVAE):
    r"""Kingma et al. (2014)'s M2: a class latent y and a continuous latent z (module docstring).

    Args:
        prior: p(z), a :class:`pvae.priors.Prior`.
        num_classes: K, the number of classes (≥ 2).
        likelihood: p(x | y, z) given the decoder's output; Bernoulli by default.
        classifier: q(y | x): x of shape ``(..., *data_shape)`` to K logits. Default: an MLP
            with the ``hidden`` widths.
        encoder: q(z | x, y): a guide (e.g. :class:`~pvae.guides.DiagonalNormal`) over a
            network of the features :math:`[\mathrm{vec}(x), \mathrm{onehot}(y)]` of width
            ``prod(data_shape) + K``. Default: a diagonal Gaussian over an MLP.
        decoder: The code :math:`[\mathrm{onehot}(y), z]` of width K + D to the likelihood's
            parameters. Default: an MLP with the reversed ``hidden`` widths.
        class_probs: p(y), K probabilities; uniform by default.
        alpha: α of eq. 9, the classification term's weight; ``None``: 0.1·N with N the number
            of datapoints given to :meth:`set_labels`.
        enumerate_y: Sum y out exactly (``TraceEnum_ELBO``) when ``True``; sample it when
            ``False``.
        relaxed_temperature: λ > 0: draw the unlabelled y from the Concrete relaxation of
            q(y | x) at temperature λ, under the relaxed p(y) at the same λ, and train with
            ``"elbo"`` (the relaxed model's ELBO; module docstring). Needs
            ``enumerate_y=False``. ``None``: the discrete y.
        labelled_per_batch: :math:`B_l`: each training minibatch of :func:`pvae.fit` holds
            this many labelled datapoints, scaled as a stratified sample (module docstring);
            0: a uniform shuffle of all datapoints.
        data_shape: Shape of one datapoint; if omitted, :func:`pvae.fit` infers it.
        hidden: Hidden widths of the default networks.
        name: Prefix of the parameters' Pyro ``param`` site names.

    Example:
        >>> import torch, pyro, pvae
        >>> m2 = pvae.SemiSupervisedVAE(pvae.priors.StandardNormal(2), 3, data_shape=(4,))
        >>> elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
        >>> elbo.differentiable_loss(m2.model, m2.guide, torch.ones(5, 4)).shape
        torch.Size([])
    """

    networks = ("classifier", "encoder", "decoder")

    def __init__(
        self,
        prior: Any,
        num_classes: int,
        likelihood: Likelihood | None = None,
        classifier: nn.Module | None = None,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        class_probs: Sequence[float] | Tensor | None = None,
        alpha: float | None = None,
        enumerate_y: bool = True,
        relaxed_temperature: float | None = None,
        labelled_per_batch: int = 0,
        data_shape: Sequence[int] | None = None,
        hidden: Sequence[int] = (256, 128),
        name: str | None = None,
    ) -> None:
        super().__init__(prior, likelihood, name)
        self.num_classes = positive_int("num_classes", num_classes)
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        probs = torch.full((self.num_classes,), 1 / self.num_classes)
        if class_probs is not None:
            probs = check_class_probs(class_probs, self.num_classes)
        self.register_buffer("class_probs", probs)
        self.alpha = None if alpha is None else positive_float("alpha", alpha, allow_zero=True)
        self.enumerate_y = bool(enumerate_y)
        self.relaxed_temperature = _relaxed_temperature(relaxed_temperature, self.enumerate_y)
        self.labelled_per_batch = (
            positive_int("labelled_per_batch", labelled_per_batch) if labelled_per_batch else 0
        )
        self.classifier = classifier
        self.encoder = encoder
        self.decoder = decoder
        self.hidden = tuple(hidden)
        self.labels: Tensor | None = None
        if data_shape is not None:
            self.build(data_shape)

    @property
    def latent_dim(self) -> int:
        """D, the width of z."""
        return int(self.prior.latent_dim)

    # -- building --------------------------------------------------------------------------------
    def _build_networks(self, shape: tuple[int, ...]) -> None:
        k, d = self.num_classes, self.latent_dim
        if self.classifier is None:
            self.classifier = nets.MLP(shape, k, self.hidden)
        if self.encoder is None:
            width = DiagonalNormal.num_params(d)
            self.encoder = DiagonalNormal(nets.MLP(math.prod(shape) + k, width, self.hidden), d)
        if self.decoder is None:
            out = self.likelihood.param_shape(shape)
            self.decoder = nets.MLP(k + d, out, tuple(reversed(self.hidden)))

    def _prior_encoder(self) -> Any:
        return self.encode  # a VampPrior's components: q(z | u, ŷ(u)) at its pseudo-inputs u

    def _checked_code(self, x: Tensor) -> Tensor:
        logits = self.classifier(x)
        if tuple(logits.shape[1:]) != (self.num_classes,):
            raise ValueError(
                f"classifier must return {self.num_classes} logits per datapoint, got shape "
                f"{tuple(logits.shape)}"
            )
        q = self.encode(x, logits.argmax(-1))
        if q.event_shape != (self.latent_dim,):
            raise ValueError(
                f"encoder must return a distribution with event shape ({self.latent_dim},), got "
                f"{tuple(q.event_shape)}"
            )
        return self.code(logits.argmax(-1), point_estimate(q))

    # -- labels ----------------------------------------------------------------------------------
    def set_labels(self, y: Tensor | None) -> None:
        """Store the training set's labels (one per datapoint, −1 for unlabelled; ``None``
        forgets them). ``model``/``guide`` called with ``subsample`` read them at its indices."""
        self.labels = None if y is None else check_labels(y, self.num_classes)

    @property
    def num_labelled(self) -> int:
        """N_l, the number of labelled training datapoints (0 with no labels set)."""
        return 0 if self.labels is None else int((self.labels >= 0).sum())

    @property
    def alpha_value(self) -> float:
        """α in use: the one given, or 0.1·N for the N datapoints of :meth:`set_labels`."""
        if self.alpha is not None:
            return self.alpha
        return 0.1 * (0 if self.labels is None else len(self.labels))

    def batch_order(self, batch_size: int, generator: torch.Generator) -> list[Tensor] | None:
        """One epoch of training minibatch indices with ``labelled_per_batch`` labelled
        datapoints each (:func:`pvae.labels.labelled_batches`), as :func:`pvae.fit` asks of a
        module; ``None`` (a uniform shuffle) when ``labelled_per_batch`` is 0 or no labels are
        set."""
        if not self.labelled_per_batch or self.labels is None:
            return None
        return labelled_batches(self.labels, batch_size, self.labelled_per_batch, generator)

    def batch_labels(self, x: Tensor, size: int | None, subsample: Tensor | None) -> Tensor | None:
        """The minibatch's labels (−1: unlabelled), or ``None`` when none are known: no labels
        set, or no ``subsample`` (evaluation calls see every datapoint as unlabelled)."""
        if self.labels is None or subsample is None or size is None:
            return None
        if size != len(self.labels):
            raise ValueError(
                f"set_labels was given {len(self.labels)} labels, but the data plate has size "
                f"{size}: set the training split's labels (one per training datapoint)"
            )
        if self.labels.device != subsample.device:
            self.labels = self.labels.to(subsample.device)
        return self.labels[subsample]

    # -- the distributions, usable without Pyro --------------------------------------------------
    def classify_dist(self, x: Tensor) -> dist.Categorical:
        """q(y | x) for a batch of x."""
        return dist.Categorical(logits=self.classifier(x))

    def features(self, x: Tensor, y: Tensor) -> Tensor:
        r""":math:`[\mathrm{vec}(x), \mathrm{onehot}(y)]` for x of shape ``(B, *data_shape)``
        and labels y broadcastable to ``(..., B)`` (an enumerated y has shape ``(K, 1)``), or
        relaxed log one-hot vectors of shape ``(..., B, K)`` (``relaxed_temperature``)."""
        xf = x.reshape(x.shape[0], -1)
        oh = one_hot(y, self.num_classes, xf)
        batch = torch.broadcast_shapes(oh.shape[:-1], xf.shape[:1])
        oh = oh.expand(*batch, self.num_classes)
        return torch.cat([xf.expand(*batch, xf.shape[-1]), oh], dim=-1)

    def encode(self, x: Tensor, y: Tensor | None = None) -> dist.TorchDistribution:
        """q(z | x, y); with ``y=None`` at the classifier's guess ŷ = argmax q(y | x) (a point
        summary of the mixture q(z | x) = Σ_y q(y | x) q(z | x, y), for diagnostics)."""
        if y is None:
            y = self.classifier(x).argmax(-1)
        return self.encoder(self.features(x, y))

    def code(self, y: Tensor, z: Tensor) -> Tensor:
        """The decoder's input :math:`[\\mathrm{onehot}(y), z]`, y broadcast against z's batch."""
        oh = one_hot(y, self.num_classes, z)
        batch = torch.broadcast_shapes(oh.shape[:-1], z.shape[:-1])
        return torch.cat([oh.expand(*batch, -1), z.expand(*batch, -1)], dim=-1)

    def _point_code(self, x: Tensor) -> Tensor:
        y = self.classifier(x).argmax(-1)
        return self.code(y, point_estimate(self.encode(x, y)))

    def _prior_code(self, n: int) -> Tensor:
        y = self._y_prior().sample((n,))
        return self.code(y, self.prior().sample((n,)))

    @torch.no_grad()
    def classify(self, x: Tensor, batch_size: int = 1024) -> Tensor:
        """argmax q(y | x) per datapoint, in batches of ``batch_size``."""
        self._require_built()
        positive_int("batch_size", batch_size)
        return torch.cat([self.classifier(xb).argmax(-1) for xb in x.split(batch_size)])

    def accuracy(self, x: Tensor, y: Tensor, batch_size: int = 1024) -> float:
        """The share of datapoints whose label ``y`` is the classifier's argmax q(y | x)."""
        y = torch.as_tensor(y)
        if y.shape != x.shape[:1]:
            raise ValueError(
                f"y must hold one label per datapoint of x ({x.shape[0]}), got shape "
                f"{tuple(y.shape)}"
            )
        return float((self.classify(x, batch_size).cpu() == y.cpu().long()).double().mean())

    def metrics(self, x: Tensor, y: Tensor | None) -> dict[str, float]:
        """What ``pvae evaluate`` reports beside log p(x): ``{"accuracy": ...}`` on labels ``y``
        (nothing without labels)."""
        return {} if y is None else {"accuracy": self.accuracy(x, y)}

    # -- Pyro program ----------------------------------------------------------------------------
    def _weight(self) -> float:
        if self.free_bits > 0:
            raise ValueError(
                f"free_bits={self.free_bits} is not defined for a SemiSupervisedVAE (its latent "
                "groups y and z are summed over classes); leave free_bits at 0"
            )
        return self.beta

    def _y_infer(self) -> dict[str, str]:
        return {"enumerate": "parallel"} if self.enumerate_y else {}

    def _y_prior(self) -> dist.TorchDistribution:
        """p(y) of an unlabelled datapoint: the categorical, or its Concrete relaxation."""
        if self.relaxed_temperature is None:
            return dist.Categorical(probs=self.class_probs)
        temp = self.class_probs.new_tensor(self.relaxed_temperature)
        return ExpRelaxedCategorical(temp, probs=self.class_probs)

    def _y_guide(self, x: Tensor) -> dist.TorchDistribution:
        """q(y | x) of an unlabelled datapoint: the classifier's categorical, or its Concrete
        relaxation (reparameterized)."""
        if self.relaxed_temperature is None:
            return self.classify_dist(x)
        logits = self.classifier(x)
        return ExpRelaxedCategorical(logits.new_tensor(self.relaxed_temperature), logits=logits)

    def _groups(
        self, x: Tensor, size: int | None, subsample: Tensor | None
    ) -> list[tuple[float, pyro.plate, Tensor | None, Tensor | None]]:
        """``[(scale, plate, positions, labels), ...]``: with labels in the minibatch, the
        unlabelled datapoints in the ``"data"`` plate and the labelled ones in the
        ``"labelled"`` plate, their terms weighted by N / B each (plate scale N / B_g times
        B_g / B), or with ``labelled_per_batch`` by N_g / B_g (plate scale times N_g / N: the
        stratified sample); else one ``"data"`` plate over the whole minibatch (positions
        ``None``)."""
        y = self.batch_labels(x, size, subsample)
        if y is None or not bool((y >= 0).any()):
            return [(1.0, self.data_plate(x, size, subsample), None, None)]
        lab = y >= 0
        n_lab = self.num_labelled
        out = []
        for name, keep in (("data", ~lab), ("labelled", lab)):
            pos = keep.nonzero().squeeze(-1)
            if pos.numel():
                plate = pyro.plate(name, size, subsample=subsample[pos], dim=-1)
                scale = pos.numel() / x.shape[0]
                if self.labelled_per_batch:
                    scale = (n_lab if name == "labelled" else size - n_lab) / size
                out.append((scale, plate, pos, y[pos] if name != "data" else None))
        return out

    def model(
        self,
        x: Tensor | None = None,
        size: int | None = None,
        subsample: Tensor | None = None,
        batch_size: int | None = None,
        **_: Any,
    ) -> Tensor | None:
        """p(y) p(z) p(x | y, z) for a minibatch ``x`` out of ``size`` datapoints (``subsample``:
        its indices, where the labels are looked up); with ``x=None``, draws ``batch_size``
        datapoints. The labelled datapoints also observe ``y_aux`` ~ q(y | x) scaled by α / N_l
        (the module docstring)."""
        self._require_built()
        w = self._weight()
        if x is None or observation(x) is None:
            with self.data_plate(x, size, subsample, batch_size):
                return self._generate("", w, x)
        for scale, plate, pos, yl in self._groups(x, size, subsample):
            xg = x if pos is None else x[pos]
            with site_weight(scale), plate:
                self._generate("" if yl is None else "_labelled", w, xg, yl)
                c = self.alpha_value / max(self.num_labelled, 1)
                if yl is not None and c > 0:
                    with poutine.scale(scale=c):
                        pyro.sample("y_aux", self.classify_dist(xg), obs=yl)
        return x

    def _generate(self, tag: str, w: float, x: Tensor | None, y_obs: Tensor | None = None):
        pd = dist.Categorical(probs=self.class_probs) if y_obs is not None else self._y_prior()
        with site_weight(w):
            infer = self._y_infer() if y_obs is None else {}
            y = pyro.sample("y" + tag, pd, obs=y_obs, infer=infer)
            z = pyro.sample("z" + tag, self.prior())
        return pyro.sample("x" + tag, self.decode(self.code(y, z)), obs=observation(x))

    def guide(
        self,
        x: Tensor | None = None,
        size: int | None = None,
        subsample: Tensor | None = None,
        **_: Any,
    ) -> None:
        """q(y | x) q(z | x, y) for the unlabelled datapoints (y enumerated, or sampled with
        ``enumerate_y=False``, or relaxed with ``relaxed_temperature``), q(z | x, y) at the
        label for the labelled ones."""
        x = self._guide_data(x)
        w = self._weight()
        for scale, plate, pos, yl in self._groups(x, size, subsample):
            with site_weight(scale), plate:
                self._infer("" if yl is None else "_labelled", w, x if pos is None else x[pos], yl)

    def _infer(self, tag: str, w: float, x: Tensor, y_obs: Tensor | None = None) -> None:
        with site_weight(w):
            y = y_obs
            if y is None:
                y = pyro.sample("y", self._y_guide(x), infer=self._y_infer())
            pyro.sample("z" + tag, self.encode(x, y))
