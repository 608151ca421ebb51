import gzip
import struct

import numpy as np
import pytest
import torch

import pvae
from pvae.datasets import DataUnavailableError


def write_idx(path, array, gz=False):
    """Write an IDX file (the MNIST format): magic, dims, then uint8 data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def fake_idx_folder(folder, n_train=30, n_test=10, gz=False):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    imgs = {
        "train": rng.integers(0, 256, (n_train, 28, 28)),
        "t10k": rng.integers(0, 256, (n_test, 28, 28)),
    }
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", imgs[prefix], gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, gz)
    return imgs


def test_digits_splits_are_fixed_and_seeded():
    a = pvae.datasets.load("digits")
    b = pvae.datasets.load("digits")
    c = pvae.datasets.load("digits", seed=1)
    assert (len(a.train), len(a.val), len(a.test)) == (1294, 144, 359)
    assert torch.equal(a.test.x, b.test.x) and not torch.equal(a.test.x, c.test.x)
    assert a.train.x.min() >= 0 and a.train.x.max() <= 1 and a.data_shape == (1, 8, 8)
    # The splits are disjoint: 1797 distinct images in all (digits has a few duplicates).
    assert len(a.train) + len(a.val) + len(a.test) == 1797


def test_binarization_modes():
    static = pvae.datasets.load("digits", binarize="static")
    assert set(static.train.x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(static.train.observed(), static.train.observed())
    dyn = pvae.datasets.load("digits", binarize="dynamic")
    first, second = dyn.train.observed(), dyn.train.observed()
    assert set(first.unique().tolist()) == {0.0, 1.0} and not torch.equal(first, second)
    # Each pixel's binarization rate matches its intensity.
    mean = torch.stack([dyn.train.observed() for _ in range(200)]).mean(0)
    assert (mean - dyn.train.x).abs().max() < 0.15
    assert dyn.val.binarize == "static" and torch.equal(dyn.val.observed(), dyn.val.observed())


def test_batches_cover_every_datapoint_once_with_a_ragged_last_batch():
    split = pvae.datasets.load("digits").train
    seen = []
    sizes = []
    for idx, x in split.batches(500, shuffle=True, generator=torch.Generator().manual_seed(0)):
        seen.append(idx)
        sizes.append(len(x))
        assert torch.equal(x, split.x[idx])
    assert sizes == [500, 500, 294]
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(len(split)))


def test_torchvision_mnist_path_reads_idx_files(tmp_path):
    imgs = fake_idx_folder(tmp_path / "MNIST" / "raw")
    data = pvae.datasets.load("mnist", root=tmp_path, download=False, val_fraction=0.2)
    assert (len(data.train), len(data.val), len(data.test)) == (24, 6, 10)
    assert data.data_shape == (1, 28, 28)
    torch.testing.assert_close(data.test.x[:, 0], torch.tensor(imgs["t10k"] / 255.0).float())


def test_fashion_mnist_is_staged_from_a_system_folder_of_gzipped_idx(tmp_path):
    imgs = fake_idx_folder(tmp_path / "debian", gz=True)
    data = pvae.datasets.load(
        "fashion-mnist", root=tmp_path / "cache", download=False, system_dir=tmp_path / "debian"
    )
    torch.testing.assert_close(data.test.x[:, 0], torch.tensor(imgs["t10k"] / 255.0).float())
    assert (tmp_path / "cache" / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()


def test_missing_torchvision_data_offline_says_how_to_get_it(tmp_path):
    with pytest.raises(DataUnavailableError, match=r"MNIST is not in .* place the four IDX"):
        pvae.datasets.load("mnist", root=tmp_path, download=False)
    with pytest.raises(DataUnavailableError, match="apt-get install dataset-fashion-mnist"):
        pvae.datasets.load("fashion-mnist", root=tmp_path, download=False, system_dir=None)


def test_user_arrays_and_files(tmp_path):
    x = np.random.default_rng(0).random((50, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", x=x, y=np.arange(50))
    for source in (x, torch.from_numpy(x), str(tmp_path / "x.npy"), str(tmp_path / "x.npz")):
        data = pvae.datasets.load(source)
        assert data.data_shape == (5,)
        assert len(data.train) + len(data.val) + len(data.test) == 50
    u8 = pvae.datasets.load(np.full((10, 4, 4), 255, dtype=np.uint8))
    assert u8.data_shape == (1, 4, 4) and float(u8.train.x.max()) == 1.0


@pytest.mark.parametrize(
    ("args", "kwargs", "err", "match"),
    [
        (
            ("cifar",),
            {},
            ValueError,
            "unknown dataset 'cifar'; valid: cifar10, digits, fashion-mnist, file",
        ),
        (("digits",), {"binarize": "yes"}, ValueError, "unknown binarize 'yes'; valid: dynamic"),
        ((np.zeros((0, 3)),), {}, ValueError, "data is empty"),
        ((np.array([[1.0, np.inf]]),), {}, ValueError, "1 NaN or infinite values"),
        (
            (np.array([[2.0, 0.0]] * 5),),
            {"binarize": "static"},
            ValueError,
            r"binarize='static' needs intensities in \[0, 1\], got data in \[0, 2\]",
        ),
        (("nope.npz",), {}, ValueError, "must be an existing .npy or .npz file"),
        (("digits",), {"val_fraction": 1.5}, ValueError, r"val_fraction must be in \[0, 1\)"),
        (("digits",), {"val_fraction": -0.1}, ValueError, r"val_fraction must be in \[0, 1\)"),
        (("digits",), {"test_fraction": 0}, ValueError, r"test_fraction must be in \(0, 1\)"),
        (("digits",), {"val_fraction": "0"}, TypeError, "val_fraction must be a number, got '0'"),
    ],
)
def test_bad_data_arguments(args, kwargs, err, match):
    with pytest.raises(err, match=match):
        pvae.datasets.load(*args, **kwargs)


def test_a_file_of_strings_is_refused_with_its_name(tmp_path):
    path = tmp_path / "words.npy"
    np.save(path, np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(
        TypeError, match=r"data \(.*words\.npy\) must be a numeric array, got dtype <U1"
    ):
        pvae.datasets.load(str(path))


def test_val_fraction_zero_keeps_every_datapoint_for_training():
    full = pvae.datasets.load("digits", "static", val_fraction=0)
    held = pvae.datasets.load("digits", "static")
    assert len(full.val) == 0 and full.val.data_shape == (1, 8, 8)
    assert len(full.train) == len(held.train) + len(held.val) == 1797 - len(full.test)
    torch.testing.assert_close(full.test.x, held.test.x)  # the same test set either way
    assert "val=0" in repr(full)
    with pytest.raises(ValueError, match=r"data.val_fraction must be in \[0, 1\), got 1"):
        pvae.config.Config.from_dict({"data": {"val_fraction": 1}})
    assert pvae.config.Config.from_dict({"data": {"val_fraction": 0}}).data.val_fraction == 0
