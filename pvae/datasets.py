"""Datasets as in-memory tensors: the embedded default (scikit-learn's 8×8 digits), MNIST,
Fashion-MNIST and CIFAR-10 through torchvision, and user arrays.

Every dataset is split once into fixed train/validation/test sets (seeded) and stored as float
tensors in [0, 1] of shape ``(N, C, H, W)`` (or ``(N, D)`` for vector data). A whole split moves
to the training device once; batches are then index gathers on that device, with no DataLoader
and no per-step host copies.

Binarization (for Bernoulli likelihoods):

* ``"none"``: use the values as they are.
* ``"static"``: binarize every split once, x ~ Bernoulli(intensity), with a fixed seed.
* ``"dynamic"``: resample the training images every time they are used
  (Salakhutdinov & Murray 2008); validation and test splits are binarized once with a fixed seed,
  so evaluation numbers are comparable across epochs and runs.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pvae._checks import lookup, one_of, positive_int
from pvae.files import load_npy, load_npz

__all__ = ["DataSplits", "Split", "load", "names"]

BINARIZE = ("none", "static", "dynamic")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DataUnavailableError(RuntimeError):
    """The dataset is neither on disk nor downloadable; the message says how to get it."""


@dataclass
class Split:
    """One split: data ``x`` in [0, 1] (intensities), optional labels ``y``, binarization mode.

    ``x`` holds the intensities; :meth:`batches` applies dynamic binarization per batch.
    """

    x: Tensor
    y: Tensor | None
    binarize: str = "none"

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Split:
        """This split with its tensors on ``device`` (and data in ``dtype``, if given)."""
        y = None if self.y is None else self.y.to(device)
        return replace(self, x=self.x.to(device, dtype), y=y)

    def observed(self, idx: Tensor | None = None) -> Tensor:
        """The datapoints as the model sees them (dynamically binarized if so configured)."""
        x = self.x if idx is None else self.x.index_select(0, idx)
        return torch.bernoulli(x) if self.binarize == "dynamic" else x

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        shard: Callable[[Tensor], Tensor] | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(indices, x)`` minibatches; the last one may be smaller (ragged).

        The permutation is drawn on the CPU from ``generator`` (so it does not depend on the
        device, and is the same on every rank of a distributed job) and moved to the data's
        device once per epoch. ``shard`` keeps this rank's part of it
        (:func:`pvae.distributed.shard`).
        """
        batch_size = positive_int("batch_size", batch_size)
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        if shard is not None:
            order = shard(order)
            n = order.numel()
        order = order.to(self.x.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield idx, self.observed(idx)


@dataclass
class DataSplits:
    """Train, validation and test splits of one dataset. ``val`` is empty (no datapoints, the
    data's shape) when the data were loaded with ``val_fraction=0``; :func:`pvae.fit` then
    trains on every training datapoint and validates nothing."""

    name: str
    train: Split
    val: Split
    test: Split

    @property
    def data_shape(self) -> tuple[int, ...]:
        return self.train.data_shape

    @property
    def binarize(self) -> str:
        return self.train.binarize

    def split(self, name: str) -> Split:
        """The split called ``name`` (``train``, ``val`` or ``test``)."""
        return getattr(self, one_of("split", name, ("train", "val", "test")))

    def __repr__(self) -> str:
        return (
            f"DataSplits({self.name!r}, shape={self.data_shape}, binarize={self.binarize!r}, "
            f"train={len(self.train)}, val={len(self.val)}, test={len(self.test)})"
        )


# -- raw loaders: return (x_train, y_train, x_test, y_test) as arrays; test may be None ----------
def _digits(**_: Any) -> tuple[np.ndarray, np.ndarray, None, None]:
    # scikit-learn's own file, read as load_digits reads it but without importing scikit-learn
    # (1.6 s of every `pvae` command's start on digits); load_digits where the file is elsewhere.
    spec = importlib.util.find_spec("sklearn")
    where = (
        [
            Path(p) / "datasets" / "data" / "digits.csv.gz"
            for p in spec.submodule_search_locations or ()
        ]
        if spec
        else []
    )
    csv = next((p for p in where if p.is_file()), None)
    if csv is not None:
        table = np.loadtxt(csv, delimiter=",")
        images, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    else:
        from sklearn.datasets import load_digits

        d = load_digits()
        images, target = d.images, d.target
    x = (images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    return x, target.astype(np.int64), None, None


def default_root() -> Path:
    """Where torchvision datasets live: ``$PVAE_DATA`` or ``~/.cache/pvae/data``."""
    return Path(os.environ.get("PVAE_DATA", Path.home() / ".cache" / "pvae" / "data"))


def _stage_idx(src: Path, raw: Path) -> bool:
    """Copy (gunzipping) the four IDX files from ``src`` into torchvision's ``raw`` folder."""
    found = {}
    for stem in _IDX_FILES:
        for cand in (src / stem, src / f"{stem}.gz"):
            if cand.is_file():
                found[stem] = cand
                break
    if len(found) < len(_IDX_FILES):
        return False
    raw.mkdir(parents=True, exist_ok=True)
    for stem, path in found.items():
        dest = raw / stem
        if dest.is_file():
            continue
        tmp = dest.with_suffix(".tmp")
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        os.replace(tmp, dest)
    return True


def _torchvision(
    cls_name: str, *, root: str | Path | None, download: bool, system_dir: Path | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    root = Path(root) if root is not None else default_root()
    raw = root / cls_name / "raw"
    if system_dir is not None and system_dir.is_dir() and not (raw / _IDX_FILES[0]).is_file():
        _stage_idx(system_dir, raw)
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except (
        Exception
    ) as err:  # torchvision raises RuntimeError offline, URLError/OSError when blocked
        hint = (
            "install Debian's package (apt-get install dataset-fashion-mnist) or "
            if cls_name == "FashionMNIST"
            else ""
        )
        raise DataUnavailableError(
            f"{cls_name} is not in {raw} and could not be downloaded "
            f"(download={download}: {type(err).__name__}: {err}). To get it: {hint}run once with "
            f"network access and download=True, or place the four IDX files "
            f"({', '.join(_IDX_FILES)}) in {raw}"
        ) from err

    def arr(ds: Any) -> tuple[np.ndarray, np.ndarray]:
        return (ds.data.numpy().astype(np.float32) / 255.0)[:, None], ds.targets.numpy()

    return (*arr(train), *arr(test))


def _mnist(root: str | Path | None = None, download: bool = True, **_: Any) -> Any:
    return _torchvision("MNIST", root=root, download=download, system_dir=None)


def _fashion_mnist(
    root: str | Path | None = None,
    download: bool = True,
    system_dir: str | Path | None = DEBIAN_FASHION_MNIST,
    **_: Any,
) -> Any:
    sysdir = Path(system_dir) if system_dir is not None else None
    return _torchvision("FashionMNIST", root=root, download=download, system_dir=sysdir)


CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
"""The files of CIFAR-10's python version that torchvision reads from ``cifar-10-batches-py``."""


def _cifar10(root: str | Path | None = None, download: bool = True, **_: Any) -> Any:
    """CIFAR-10 (Krizhevsky 2009) through ``torchvision.datasets.CIFAR10``: 50,000 training and
    10,000 test colour images ``(3, 32, 32)``, returned as uint8 so that :func:`as_float` maps
    them onto the 8-bit levels k/255 exactly. torchvision checks each file's MD5 before reading
    it; with ``download`` it fetches the archive only when a check fails."""
    import torchvision

    root = Path(root) if root is not None else default_root()
    folder = root / torchvision.datasets.CIFAR10.base_folder
    try:
        train = torchvision.datasets.CIFAR10(str(root), train=True, download=download)
        test = torchvision.datasets.CIFAR10(str(root), train=False, download=download)
    except Exception as err:  # RuntimeError when missing or corrupted, URLError/OSError offline
        raise DataUnavailableError(
            f"CIFAR-10 is not in {folder} (or a file there failed torchvision's MD5 check) and "
            f"could not be downloaded (download={download}: {type(err).__name__}: {err}). To get "
            "it: run once with network access and download=True, or unpack the python version "
            "(cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html) so that "
            f"{folder} holds {', '.join(CIFAR10_FILES)}"
        ) from err

    def arr(ds: Any) -> tuple[np.ndarray, np.ndarray]:  # torchvision keeps HWC; pvae wants CHW
        return np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)), np.asarray(ds.targets)

    return (*arr(train), *arr(test))


def read_array_file(path: str | Path | None = None, **_: Any) -> Any:
    if path is None:
        raise ValueError("data path is required for the 'file' dataset (a .npy or .npz file)")
    path = Path(path)
    if not path.is_file() or path.suffix not in (".npy", ".npz"):
        raise ValueError(f"data path must be an existing .npy or .npz file, got {str(path)!r}")
    if path.suffix == ".npy":  # object arrays (pickles) refused, naming the file
        return load_npy(path), None, None, None
    z = load_npz(path)
    if "x" in z:
        return z["x"], z.get("y"), None, None
    if "train" in z:
        return z["train"], z.get("train_y"), z.get("test"), z.get("test_y")
    raise ValueError(
        f"an .npz data file must hold an array 'x' (and optionally 'y') or 'train' and "
        f"'test'; {str(path)!r} holds {sorted(z)}"
    )


DATASETS: Mapping[str, Any] = {
    "cifar10": _cifar10,
    "digits": _digits,
    "mnist": _mnist,
    "fashion-mnist": _fashion_mnist,
    "file": read_array_file,
}


TORCHVISION = ("mnist", "fashion-mnist", "cifar10")
"""The datasets read through torchvision, which take ``root`` and ``download``."""


def names() -> list[str]:
    """Names accepted by :func:`load`."""
    return sorted(DATASETS)


def as_float(name: str, a: Any) -> Tensor:
    if not isinstance(a, Tensor):
        a = np.asarray(a)
        if a.dtype.kind not in "biuf":  # strings, objects: torch's own message names no file
            raise TypeError(f"{name} must be a numeric array, got dtype {a.dtype}")
    t = torch.as_tensor(a) if not isinstance(a, Tensor) else a.detach().cpu()
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.bool)):
        raise TypeError(f"{name} must be a numeric array, got dtype {t.dtype}")
    t = t.float()
    if t.dim() == 0 or t.shape[0] == 0:
        raise ValueError(
            f"{name} is empty: expected at least one datapoint, got shape {tuple(t.shape)}"
        )
    if t.dim() == 1:
        raise ValueError(
            f"{name} must have shape (N, ...) with one datapoint per row, got "
            f"shape {tuple(t.shape)}"
        )
    if t.dim() == 3:  # (N, H, W) grayscale images
        t = t[:, None]
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite values; expected finite numbers")
    return t


def check_fractions(val_fraction: Any, test_fraction: Any, prefix: str = "") -> None:
    """Raise unless ``val_fraction`` is in [0, 1) and ``test_fraction`` in (0, 1) (``prefix``
    names where they came from, e.g. ``"data."``)."""
    for name, frac, zero_ok in (
        ("val_fraction", val_fraction, True),
        ("test_fraction", test_fraction, False),
    ):
        if isinstance(frac, bool) or not isinstance(frac, int | float):
            raise TypeError(f"{prefix}{name} must be a number, got {frac!r}")
        if not (frac >= 0 if zero_ok else frac > 0) or frac >= 1:
            interval = "[0, 1)" if zero_ok else "(0, 1)"
            raise ValueError(f"{prefix}{name} must be in {interval}, got {frac}")


def load(
    name: str | Any = "digits",
    binarize: str = "none",
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    **kwargs: Any,
) -> DataSplits:
    """Load a dataset into fixed, seeded train/validation/test splits.

    Args:
        name: A registered name (see :func:`names`), a path to a ``.npy``/``.npz`` file, or an
            array/tensor of shape ``(N, ...)`` (uint8 is scaled by 1/255).
        binarize: ``"none"``, ``"static"`` or ``"dynamic"`` (see the module docstring).
        val_fraction: Fraction of the training data held out for validation, in [0, 1); 0
            keeps it all for training (``DataSplits.val`` is then empty).
        test_fraction: Fraction held out for testing when the dataset has no official test set.
        seed: Seed of the split permutation and of static binarization.
        **kwargs: Loader options: ``root`` and ``download`` (the :data:`TORCHVISION` sets;
            CIFAR-10's files go in ``root/cifar-10-batches-py``), ``system_dir``
            (Fashion-MNIST IDX files, default Debian's), ``path`` (``"file"``).

    Example:
        >>> import pvae
        >>> data = pvae.datasets.load("digits", binarize="dynamic")
        >>> data.data_shape, len(data.train), len(data.val), len(data.test)
        ((1, 8, 8), 1294, 144, 359)
    """
    one_of("binarize", binarize, BINARIZE)
    check_fractions(val_fraction, test_fraction)
    if isinstance(name, str) and name not in DATASETS and name.endswith((".npy", ".npz")):
        kwargs["path"], name = name, "file"
    if isinstance(name, str):
        x_tr, y_tr, x_te, y_te = lookup("dataset", DATASETS, name)(**kwargs)
        label = name if name != "file" else str(kwargs["path"])
    else:
        x_tr, y_tr, x_te, y_te = name, None, None, None
        label = "array"
    x_tr = as_float(f"data ({label})" if label != "array" else "data", x_tr)
    y_tr = None if y_tr is None else torch.as_tensor(np.asarray(y_tr))
    gen = torch.Generator().manual_seed(seed)
    if x_te is None:  # carve a fixed test set out of the data
        perm = torch.randperm(len(x_tr), generator=gen)
        n_test = max(1, round(test_fraction * len(x_tr)))
        te, perm = perm[:n_test], perm[n_test:]
        x_te, y_te = x_tr[te], None if y_tr is None else y_tr[te]
        x_tr, y_tr = x_tr[perm], None if y_tr is None else y_tr[perm]
    else:
        x_te = as_float(f"test data ({label})", x_te)
        y_te = None if y_te is None else torch.as_tensor(np.asarray(y_te))
    perm = torch.randperm(len(x_tr), generator=gen)
    n_val = max(1, round(val_fraction * len(x_tr))) if val_fraction > 0 else 0
    if len(x_tr) - n_val < 1:
        raise ValueError(f"data has {len(x_tr)} datapoints: too few to split off validation")
    va, tr = perm[:n_val], perm[n_val:]
    splits = {
        "train": (x_tr[tr], None if y_tr is None else y_tr[tr]),
        "val": (x_tr[va], None if y_tr is None else y_tr[va]),
        "test": (x_te, y_te),
    }
    if binarize != "none":
        lo, hi = float(x_tr.min()), float(x_tr.max())
        if lo < 0 or hi > 1:
            raise ValueError(
                f"binarize={binarize!r} needs intensities in [0, 1], got data in "
                f"[{lo:.4g}, {hi:.4g}]; rescale the data or use binarize='none'"
            )
    out = {}
    for split, (x, y) in splits.items():
        mode = binarize
        if binarize == "static" or (binarize == "dynamic" and split != "train"):
            x, mode = torch.bernoulli(x, generator=gen), "static"
        out[split] = Split(x, y, binarize=mode if split != "train" else binarize)
    return DataSplits(label, out["train"], out["val"], out["test"])
