"""Evaluation: ``@torch.no_grad`` estimators returning one value per datapoint."""

from pvae.evaluation.ais import AISEstimate, BDMCResult, ais, bdmc, reverse_ais, simulate
from pvae.evaluation.annealing import AISSettings
from pvae.evaluation.bounds import BoundLadder, bounds
from pvae.evaluation.elbo import ElboEstimate, evaluate_elbo
from pvae.evaluation.log_px import LogPxEstimate, log_px

__all__ = [
    "AISEstimate",
    "AISSettings",
    "BDMCResult",
    "BoundLadder",
    "ElboEstimate",
    "LogPxEstimate",
    "ais",
    "bdmc",
    "bounds",
    "evaluate_elbo",
    "log_px",
    "reverse_ais",
    "simulate",
]
