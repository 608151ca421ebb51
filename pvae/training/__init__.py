"""Training: :func:`fit` and the parts it is built from, each in its own place.

* :mod:`~pvae.training.fitting`: :func:`fit` itself (setup, the loop, the end), its
  :class:`FitResult`. Its options are :class:`pvae.options.FitOptions`, the ``[train]``,
  ``[eval]`` and ``[log]`` tables of a config.
* :mod:`~pvae.training.setup`: before the first step: the splits, the device, the module built
  for and checked against the data.
* :mod:`~pvae.training.step`: the minibatch loss (fused fast path or Pyro's ELBO on the traces),
  the optimizer, one update, one epoch.
* :mod:`~pvae.training.divergence`: NaN/inf losses and parameters, reported where they began.
* :mod:`~pvae.training.validation`: validation ELBO each epoch, IWAE_k curve points on a
  schedule, the pictures at the end.
* :mod:`~pvae.training.checkpointing`: the run folder: checkpoints with every RNG state (exact
  resume), metrics, the stored configuration.
* :mod:`~pvae.training.progress`: the progress bar and the lines a person reads.
* :mod:`~pvae.training.callbacks`: what :func:`~pvae.fit` tells the outside world each epoch:
  :class:`Callback` and the built-in :class:`CSVLogger` and :class:`TensorBoardLogger`.

Every part works for any ``nn.Module`` with ``model(x)`` and ``guide(x)`` methods whose
datapoint-local latent sites sit inside ``pyro.plate("data", x.shape[0])``; what only a
:class:`~pvae.VAE` has (β, free bits, the fused path, a likelihood to check the data against,
picture grids) is used where the module has it.
"""

from pvae.checkpoint import CheckpointError
from pvae.options import FitOptions
from pvae.training.callbacks import Callback, CSVLogger, TensorBoardLogger
from pvae.training.checkpointing import CHECKPOINT, CONFIG, load_run_state
from pvae.training.divergence import TrainingDivergedError
from pvae.training.fitting import TIMING_KEYS, FitResult, drop_timings, fit
from pvae.training.setup import resolve_device
from pvae.training.step import kl_weight

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "TIMING_KEYS",
    "CSVLogger",
    "Callback",
    "CheckpointError",
    "FitOptions",
    "FitResult",
    "TensorBoardLogger",
    "TrainingDivergedError",
    "drop_timings",
    "fit",
    "kl_weight",
    "load_run_state",
    "resolve_device",
]
