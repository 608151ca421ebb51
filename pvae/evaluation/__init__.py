"""Evaluation: ``@torch.no_grad`` estimators returning one value per datapoint."""

from pvae.evaluation.bounds import BoundLadder, bounds
from pvae.evaluation.elbo import ElboEstimate, evaluate_elbo
from pvae.evaluation.log_px import LogPxEstimate, log_px

__all__ = ["BoundLadder", "ElboEstimate", "LogPxEstimate", "bounds", "evaluate_elbo", "log_px"]
