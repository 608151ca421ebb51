"""pvae.labels: a class-balanced, seeded labelled subset of a training split, and minibatches
with a fixed number of its labelled datapoints."""

import pytest
import torch

from pvae.labels import UNLABELLED, labelled_batches, labelled_indices, partial_labels


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


def test_labelled_batches_visit_every_unlabelled_once_with_bl_labels_each():
    y = partial_labels(_y(), 5, seed=0)  # 20 labelled, 380 unlabelled
    g = torch.Generator().manual_seed(0)
    batches = labelled_batches(y, 32, 6, g)
    assert len(batches) == -(-380 // 26)  # ceil(N_u / (B - B_l))
    assert [int((y[b] >= 0).sum()) for b in batches] == [6] * len(batches)
    assert [len(b) for b in batches[:-1]] == [32] * (len(batches) - 1)
    assert len(batches[-1]) == 6 + 380 - 26 * (len(batches) - 1)
    unl = torch.cat([b[y[b] < 0] for b in batches])
    assert sorted(unl.tolist()) == (y < 0).nonzero().squeeze(-1).tolist()
    # the labelled ones come from successive shuffles: visit counts differ by at most one
    counts = torch.bincount(torch.cat([b[y[b] >= 0] for b in batches]), minlength=len(y))
    lab = counts[y >= 0]
    assert int(lab.sum()) == 6 * len(batches) and int(lab.max() - lab.min()) <= 1
    again = labelled_batches(y, 32, 6, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))


def test_labelled_batches_without_both_groups_shuffle_everything():
    g = torch.Generator().manual_seed(0)
    for y in (torch.full((10,), UNLABELLED), torch.arange(10) % 3):
        batches = labelled_batches(y, 4, 1, g)
        assert [len(b) for b in batches] == [4, 4, 2]
        assert sorted(torch.cat(batches).tolist()) == list(range(10))


@pytest.mark.parametrize(
    ("b", "bl", "err", "match"),
    [
        (
            8,
            8,
            ValueError,
            r"labelled_per_batch must be in \[1, batch_size - 1\] = \[1, 7\] .*, got 8",
        ),
        (8, 0, ValueError, "labelled_per_batch must be a positive integer, got 0"),
        (8, 1.5, TypeError, "labelled_per_batch"),
        (0, 1, ValueError, "batch_size"),
    ],
)
def test_labelled_batches_errors_name_the_argument(b, bl, err, match):
    with pytest.raises(err, match=match):
        labelled_batches(partial_labels(_y(), 5), b, bl, torch.Generator())
