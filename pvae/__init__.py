"""pvae: variational autoencoders as Pyro programs.

>>> import pvae
>>> data = pvae.datasets.load("digits", binarize="dynamic")
>>> vae = pvae.VAE(prior=pvae.priors.StandardNormal(latent_dim=4))
>>> result = pvae.fit(vae, data, epochs=1, progress=False, device="cpu")
>>> sorted(result.final)[:3]
['epoch', 'step', 'train_elbo']
"""

from pvae import datasets, diagnostics, guides, likelihoods, nets, priors
from pvae.checkpoint import CheckpointError
from pvae.config import Config, build_vae, load_config
from pvae.evaluation import (
    AISEstimate,
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
from pvae.hierarchical import HierarchicalVAE
from pvae.linear_gaussian import LinearGaussian, LinearGaussianChain
from pvae.model import VAE
from pvae.runs import Run, load_run, train_from_config
from pvae.train import FitResult, TrainingDivergedError, fit

__version__ = "0.1.0"

__all__ = [
    "VAE",
    "AISEstimate",
    "BDMCResult",
    "BoundLadder",
    "CheckpointError",
    "Config",
    "ElboEstimate",
    "FitResult",
    "HierarchicalVAE",
    "LinearGaussian",
    "LinearGaussianChain",
    "LogPxEstimate",
    "Run",
    "TrainingDivergedError",
    "__version__",
    "ais",
    "bdmc",
    "bounds",
    "build_vae",
    "datasets",
    "diagnostics",
    "evaluate_elbo",
    "fit",
    "guides",
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
]


def __getattr__(name: str) -> object:
    # matplotlib is imported only when figures are asked for.
    if name == "plotting":
        import importlib

        return importlib.import_module("pvae.plotting")
    raise AttributeError(f"module 'pvae' has no attribute {name!r}")
