"""Evaluation: ``@torch.no_grad`` estimators returning one value per datapoint."""

from pvae.evaluation.elbo import ElboEstimate, evaluate_elbo

__all__ = ["ElboEstimate", "evaluate_elbo"]
