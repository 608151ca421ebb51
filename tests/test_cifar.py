"""CIFAR-10 through torchvision's own reader, on small files in CIFAR-10's format that the tests
write (the python version: pickled ``data_batch_1..5``, ``test_batch`` and ``batches.meta`` under
``cifar-10-batches-py/``), and the shipped conv-ladder configs trained on them.

torchvision checks each file's MD5 against the class attributes ``CIFAR10.train_list``,
``test_list`` and ``meta`` (the real data set's sums) before reading it. The fixture computes the
MD5 of the files it writes and sets those three attributes to them (``monkeypatch`` restores
them); nothing else is patched, so the integrity check, the unpickling and the reshape are
torchvision's own code, as they are for a user's download.
"""

import hashlib
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import pvae
from pvae.datasets import CIFAR10_FILES, DataUnavailableError
from pvae.evaluation.bits import bits_per_dim
from pvae.runs import train_from_config

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"
N = 4  # images per batch file


def write_cifar(root: Path, n: int = N, seed: int = 0) -> dict[str, dict]:
    """Write CIFAR-10's six batches and its meta file, ``n`` random images per batch; return
    what each batch holds."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    batches = {}
    for name in CIFAR10_FILES[:-1]:
        batch = {
            "batch_label": name,
            "labels": rng.integers(0, 10, n).tolist(),
            "data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),  # R, G, B planes
            "filenames": [f"{name}_{i}.png" for i in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        batches[name] = batch
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": n}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return batches


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    """A data root holding small CIFAR-10 files, with torchvision's sums set to theirs."""
    root = tmp_path / "data"
    batches = write_cifar(root)
    folder = root / "cifar-10-batches-py"
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[f, md5(folder / f)] for f in CIFAR10_FILES[:5]])
    monkeypatch.setattr(cls, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / "batches.meta")})
    return root, batches


def images(batch: dict) -> np.ndarray:
    return batch["data"].reshape(-1, 3, 32, 32)


def test_cifar10_loads_through_torchvision_as_8bit_levels(cifar_root):
    root, batches = cifar_root
    data = pvae.datasets.load("cifar10", root=root, download=False, val_fraction=0.25)
    assert data.data_shape == (3, 32, 32) and data.binarize == "none"
    assert (len(data.train), len(data.val), len(data.test)) == (15, 5, N)
    # The official test batch is the test split, in order, each pixel exactly its level k/255.
    want = torch.from_numpy(images(batches["test_batch"]).astype(np.float32)) / 255
    assert torch.equal(data.test.x, want) and data.test.x.dtype == torch.float32
    assert data.test.y.tolist() == batches["test_batch"]["labels"]
    levels = data.test.x * 255
    assert torch.equal(levels, levels.round())
    # Train and validation split the five training batches between them, no image lost.
    seen = torch.cat([data.train.x, data.val.x]) * 255
    got = sorted(bytes(im.round().to(torch.uint8).numpy()) for im in seen)
    written = sorted(bytes(im) for f in CIFAR10_FILES[:5] for im in images(batches[f]))
    assert got == written


def test_download_is_not_attempted_when_the_files_pass_their_check(cifar_root, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download CIFAR-10 although its files are present")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", no_network)
    data = pvae.datasets.load("cifar10", root=cifar_root[0], download=True)
    assert len(data.test) == N


def test_missing_files_say_where_they_go_and_how_to_get_them(tmp_path):
    with pytest.raises(DataUnavailableError) as err:
        pvae.datasets.load("cifar10", root=tmp_path, download=False)
    msg = str(err.value)
    assert f"CIFAR-10 is not in {tmp_path / 'cifar-10-batches-py'}" in msg
    assert "download=False" in msg and "data_batch_1, data_batch_2" in msg
    assert "test_batch, batches.meta" in msg and "cifar-10-python.tar.gz" in msg


def test_a_corrupted_file_is_refused(cifar_root):
    root, _ = cifar_root
    path = root / "cifar-10-batches-py" / "test_batch"
    raw = bytearray(path.read_bytes())
    raw[-20] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataUnavailableError, match="failed torchvision's MD5 check"):
        pvae.datasets.load("cifar10", root=root, download=False)


# -- the shipped configs (these need the ladder: [model] inference = "top_down", paths) ------------
@pytest.mark.parametrize("name", ["ladder-conv-cifar-small.toml", "ladder-conv-cifar-gpu.toml"])
def test_conv_ladder_configs_load_and_build(name):
    cfg = pvae.load_config(CONFIGS / name)
    assert cfg.data.name == "cifar10" and cfg.model.likelihood["name"] == (
        "discretized_logistic_mixture"
    )
    vae = pvae.config.build_vae(cfg.model, (3, 32, 32))
    x = torch.randint(0, 256, (2, 3, 32, 32)) / 255
    assert math.isfinite(float(pvae.log_px(vae, x, k=2).log_px.sum()))


def test_small_cifar_config_trains_on_the_tiny_files(cifar_root, tmp_path, monkeypatch):
    """The CPU config, as shipped but for epochs, batch size and evaluation sizes, trains on the
    tiny CIFAR-10 files (found through $PVAE_DATA, the default root) and reports bits/dim."""
    torch.set_num_threads(1)
    monkeypatch.setenv("PVAE_DATA", str(cifar_root[0]))
    overrides = [
        "train.epochs=1",
        "train.batch_size=6",
        "train.device=cpu",
        "train.progress=false",
        "eval.k=4",
        "eval.curve_ks=[2]",
        "eval.curve_subset=2",
    ]
    cfg = pvae.load_config(CONFIGS / "ladder-conv-cifar-small.toml", overrides)
    res = train_from_config(cfg, tmp_path / "run")
    assert math.isfinite(res.final["train_elbo"])
    ev = pvae.runs.evaluate_run(tmp_path / "run", k=4, num_samples=2, store=False, quiet=True)
    bits = bits_per_dim(ev.log_px_estimate.log_px, (3, 32, 32))
    assert bool((bits > 0).all()) and bool(torch.isfinite(bits).all())
    torch.testing.assert_close(bits, ev.log_px_estimate.bits_per_dim)
