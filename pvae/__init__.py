"""pvae: variational autoencoders as Pyro programs.

>>> import pvae
>>> data = pvae.datasets.load("digits", binarize="dynamic")
>>> vae = pvae.VAE(prior=pvae.priors.StandardNormal(latent_dim=4))
>>> result = pvae.fit(vae, data, epochs=1, progress=False, device="cpu")
>>> sorted(result.final)[:3]
['epoch', 'step', 'train_elbo']
"""

from pvae import datasets, guides, likelihoods, nets, priors
from pvae.checkpoint import CheckpointError
from pvae.config import Config, build_vae, load_config
from pvae.evaluation import ElboEstimate, evaluate_elbo
from pvae.model import VAE
from pvae.runs import Run, load_run, train_from_config
from pvae.train import FitResult, TrainingDivergedError, fit

__version__ = "0.1.0"

__all__ = [
    "VAE",
    "CheckpointError",
    "Config",
    "ElboEstimate",
    "FitResult",
    "Run",
    "TrainingDivergedError",
    "__version__",
    "build_vae",
    "datasets",
    "evaluate_elbo",
    "fit",
    "guides",
    "likelihoods",
    "load_config",
    "load_run",
    "nets",
    "priors",
    "train_from_config",
]
