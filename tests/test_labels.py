"""pvae.labels: a class-balanced, seeded labelled subset of a training split."""

import pytest
import torch

from pvae.labels import UNLABELLED, labelled_indices, partial_labels


def _y() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 4, (400,), generator=g)


def test_exactly_n_per_class_and_nothing_else():
    y = _y()
    idx = labelled_indices(y, 7, seed=1)
    assert idx.numel() == 4 * 7 and idx.unique().numel() == idx.numel()
    assert torch.bincount(y[idx], minlength=4).tolist() == [7, 7, 7, 7]
    part = partial_labels(y, 7, seed=1)
    kept = part != UNLABELLED
    assert kept.nonzero().squeeze(-1).tolist() == idx.tolist()
    assert torch.equal(part[kept], y[kept])
    assert bool((part[~kept] == UNLABELLED).all())


def test_deterministic_in_the_seed():
    y = _y()
    assert torch.equal(labelled_indices(y, 5, seed=2), labelled_indices(y, 5, seed=2))
    assert not torch.equal(labelled_indices(y, 5, seed=2), labelled_indices(y, 5, seed=3))


def test_a_class_with_too_few_datapoints_is_named():
    y = torch.tensor([0] * 10 + [1] * 3 + [2] * 10)
    with pytest.raises(ValueError, match=r"data.labels_per_class = 4, but class 1 has only 3"):
        partial_labels(y, 4, key="data.labels_per_class")


def test_data_without_labels_names_the_key():
    with pytest.raises(ValueError, match=r"^data.labels_per_class needs data with labels"):
        labelled_indices(None, 10, key="data.labels_per_class")
    with pytest.raises(ValueError, match="one integer label per datapoint"):
        labelled_indices(torch.rand(5), 1)
    with pytest.raises(TypeError, match="labels_per_class"):
        labelled_indices(_y(), 2.5)
