"""Few labels out of many: a class-balanced labelled subset of a training split, for
semi-supervised learning (:class:`pvae.SemiSupervisedVAE`; ``[data] labels_per_class``).

The subset is drawn once from a seeded generator, so a run and its resume, and two runs with the
same seed, see the same labelled datapoints. Everything else is marked unlabelled with −1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pvae._checks import positive_int

__all__ = ["UNLABELLED", "labelled_indices", "partial_labels"]

UNLABELLED = -1
"""The label of a datapoint whose class is not known."""


def labelled_indices(
    y: Tensor | None, per_class: int, seed: int = 0, key: str = "labels_per_class"
) -> Tensor:
    """Indices of exactly ``per_class`` datapoints of every class of ``y``, sorted.

    Args:
        y: The training split's labels, one integer per datapoint (``None``: the data have none).
        per_class: n, the labelled datapoints per class.
        seed: Seed of the draw (the same seed, the same subset).
        key: The option's name in error messages (e.g. ``"data.labels_per_class"``).

    Raises:
        ValueError: ``y`` is ``None`` or not 1-D integers, or a class has fewer than n datapoints
            (the message names ``key`` and the class).

    Example:
        >>> import torch
        >>> labelled_indices(torch.tensor([0, 1, 0, 1, 1]), 1, seed=0).shape
        torch.Size([2])
    """
    n = positive_int(key, per_class)
    y = _checked(y, key)
    gen = torch.Generator().manual_seed(int(seed))
    picked = []
    for c in torch.unique(y).tolist():
        members = (y == c).nonzero().squeeze(-1)
        if members.numel() < n:
            raise ValueError(
                f"{key} = {n}, but class {c} has only {members.numel()} datapoints in the "
                f"training split; use {key} <= {members.numel()}"
            )
        picked.append(members[torch.randperm(members.numel(), generator=gen)[:n]])
    return torch.cat(picked).sort().values


def partial_labels(
    y: Tensor | None, per_class: int, seed: int = 0, key: str = "labels_per_class"
) -> Tensor:
    """``y`` with every label outside :func:`labelled_indices` set to −1 (unlabelled).

    Example:
        >>> import torch
        >>> (partial_labels(torch.tensor([0, 1, 0, 1, 1]), 1) >= 0).sum().item()
        2
    """
    keep = labelled_indices(y, per_class, seed, key)
    out = torch.full_like(_checked(y, key), UNLABELLED)
    out[keep] = y[keep].long()
    return out


def _checked(y: Any, key: str) -> Tensor:
    if y is None:
        raise ValueError(
            f"{key} needs data with labels, but these data have none (a dataset such as "
            "'digits' or 'fashion-mnist', or an .npz file with 'y')"
        )
    y = torch.as_tensor(y)
    if y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(
            f"{key} needs one integer label per datapoint, got labels of dtype {y.dtype} and "
            f"shape {tuple(y.shape)}"
        )
    return y.detach().cpu().long()
