"""pvae: variational autoencoders as Pyro programs.

>>> import pvae
>>> data = pvae.datasets.load("digits", binarize="dynamic")
>>> vae = pvae.VAE(prior=pvae.priors.StandardNormal(latent_dim=4))
>>> result = pvae.fit(vae, data, epochs=1, quiet=True, device="cpu")
>>> [k for k in result.final if "elbo" in k]
['train_elbo', 'val_elbo', 'val_elbo_se']
"""

from pvae import datasets, diagnostics, guides, labels, likelihoods, nets, priors, training
from pvae.checkpoint import CheckpointError
from pvae.compare import Comparison, compare
from pvae.config import Config, build_vae, load_config
from pvae.evaluation import (
    AISEstimate,
    AISSettings,
    BDMCResult,
    BoundLadder,
    ElboEstimate,
    LogPxEstimate,
    ais,
    bdmc,
    bounds,
    evaluate_elbo,
    log_px,
    reverse_ais,
    simulate,
)
from pvae.family import BaseVAE
from pvae.hierarchical import HierarchicalVAE
from pvae.ladder import LadderVAE
from pvae.linear_gaussian import LinearGaussian, LinearGaussianChain
from pvae.model import VAE
from pvae.runs import Run, load_run, train_from_config
from pvae.semisupervised import SemiSupervisedVAE
from pvae.training import (
    Callback,
    CSVLogger,
    FitResult,
    TensorBoardLogger,
    TrainingDivergedError,
    drop_timings,
    fit,
)

__version__ = "0.1.0"

__all__ = [
    "VAE",
    "AISEstimate",
    "AISSettings",
    "BDMCResult",
    "BaseVAE",
    "BoundLadder",
    "CSVLogger",
    "Callback",
    "CheckpointError",
    "Comparison",
    "Config",
    "ElboEstimate",
    "FitResult",
    "HierarchicalVAE",
    "LadderVAE",
    "LinearGaussian",
    "LinearGaussianChain",
    "LogPxEstimate",
    "Run",
    "SemiSupervisedVAE",
    "TensorBoardLogger",
    "TrainingDivergedError",
    "__version__",
    "ais",
    "bdmc",
    "bounds",
    "build_vae",
    "compare",
    "datasets",
    "diagnostics",
    "drop_timings",
    "evaluate_elbo",
    "fit",
    "guides",
    "labels",
    "likelihoods",
    "load_config",
    "load_run",
    "log_px",
    "nets",
    "plotting",
    "priors",
    "reverse_ais",
    "simulate",
    "train_from_config",
    "training",
]


def __getattr__(name: str) -> object:
    # matplotlib is imported only when figures are asked for.
    if name == "plotting":
        import importlib

        return importlib.import_module("pvae.plotting")
    raise AttributeError(f"module 'pvae' has no attribute {name!r}")
