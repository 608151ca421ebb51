r"""Figures for a trained VAE (matplotlib, imported lazily).

Every function returns the ``matplotlib.figure.Figure`` and, given ``path``, saves it in the
format its suffix names (``.png``, ``.pdf``, ``.svg``, …; none: PNG) through pvae's one atomic
write path. All share one style, sized for a paper:

* ``figsize=None`` picks a size for the content at :data:`~pvae.plotting.style.WIDTH`
  inches wide or less (a full text width; LaTeX scales it to a column with fonts still
  legible), ``dpi=None`` means :data:`~pvae.plotting.style.DPI` (150: 900 px across for PNG;
  PDF and SVG stay vector, only image grids are rasterized at this resolution). Fonts are
  8–9 pt (:data:`~pvae.plotting.style.STYLE`).
* Data axes are labelled with their quantity and unit (nats per datapoint, latent
  coordinates, principal components with their share of the variance); titles say what is
  shown; image grids label their rows and columns.
* Latent dimensions are 0-based, as in the tensors: :math:`z_3` is ``z[..., 3]``.

One module per kind of figure: :mod:`~pvae.plotting.style` (the shared style, figure creation
and saving), :mod:`~pvae.plotting.images` (reconstructions, samples, image grids),
:mod:`~pvae.plotting.latents` (manifold, scatter, interpolation, traversals),
:mod:`~pvae.plotting.curves` (training curves, KL bars, k̂),
:mod:`~pvae.plotting.kl` (KL per layer and per unit over training),
:mod:`~pvae.plotting.ladder` (the bound ladder) and :mod:`~pvae.plotting.comparisons` (runs
compared). Every figure function is importable from :mod:`pvae.plotting` itself.
"""

from pvae.plotting.comparisons import comparison
from pvae.plotting.curves import khat_plot, kl_bars, training_curves
from pvae.plotting.images import is_image_shape, reconstructions, samples
from pvae.plotting.kl import layer_kl_curves
from pvae.plotting.ladder import bound_ladder
from pvae.plotting.latents import interpolation, latent_manifold, latent_scatter, traversals
from pvae.plotting.style import DPI, STYLE, WIDTH

__all__ = [
    "DPI",
    "STYLE",
    "WIDTH",
    "bound_ladder",
    "comparison",
    "interpolation",
    "is_image_shape",
    "khat_plot",
    "kl_bars",
    "latent_manifold",
    "latent_scatter",
    "layer_kl_curves",
    "reconstructions",
    "samples",
    "training_curves",
    "traversals",
]
