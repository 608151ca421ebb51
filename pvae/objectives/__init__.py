"""Training objectives: Pyro ELBO instances selected by name at the API/config edge."""

from __future__ import annotations

from pyro.infer import ELBO

from pvae.objectives.elbo import OBJECTIVES, make_objective

__all__ = ["ELBO", "OBJECTIVES", "make_objective"]
