"""Training objectives: Pyro ELBO instances selected by name at the API/config edge."""

from __future__ import annotations

from pyro.infer import ELBO

from pvae.objectives.elbo import OBJECTIVES, make_objective
from pvae.objectives.iwae import ESTIMATORS, IWAE

__all__ = ["ELBO", "ESTIMATORS", "IWAE", "OBJECTIVES", "make_objective"]
