"""Training objectives: Pyro ELBO instances selected by name at the API/config edge."""

from __future__ import annotations

from pyro.infer import ELBO

from pvae.objectives.elbo import OBJECTIVES, make_objective
from pvae.objectives.iwae import ESTIMATORS, IWAE
from pvae.objectives.rws import RWS
from pvae.objectives.vimco import VIMCO

__all__ = ["ELBO", "ESTIMATORS", "IWAE", "OBJECTIVES", "RWS", "VIMCO", "make_objective"]
