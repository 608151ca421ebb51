import matplotlib

matplotlib.use("Agg")

import pytest
import torch

import pvae
from pvae import diagnostics, plotting


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    vae = pvae.VAE(pvae.priors.StandardNormal(3), hidden=(64,))
    res = pvae.fit(
        vae, digits, epochs=3, curve_ks=(5, 50), curve_every=1, progress=False, device="cpu"
    )
    return res, digits.test.observed()[:64], digits.test.y[:64]


def image_size(fig):
    ax = fig.axes[0]
    return ax.images[0].get_array().shape


def test_image_grids_have_the_expected_panels(trained, tmp_path):
    res, x, _ = trained
    fig = plotting.reconstructions(res.vae, x, n=8, path=tmp_path / "r.png")
    # 2 rows (data, reconstruction) × 8 columns of 8×8 images with 1-pixel padding.
    assert image_size(fig)[:2] == (2 * 9 + 1, 8 * 9 + 1)
    assert plotting.samples(res.vae, n=16).axes[0].get_title() == "samples from the prior"
    fig = plotting.latent_manifold(res.vae, n=5, x=x, path=tmp_path / "m.pdf")
    assert image_size(fig)[:2] == (5 * 9 + 1, 5 * 9 + 1)
    assert image_size(plotting.interpolation(res.vae, x[0], x[1], steps=6))[:2] == (10, 6 * 9 + 1)
    assert (tmp_path / "r.png").stat().st_size > 0 and (tmp_path / "m.pdf").stat().st_size > 0


def test_two_dimensional_latent_manifold_uses_the_inverse_normal_cdf(tmp_path):
    vae = pvae.VAE(pvae.priors.StandardNormal(2), data_shape=(1, 4, 4), hidden=(8,))
    fig = plotting.latent_manifold(vae, n=4)
    assert image_size(fig)[:2] == (4 * 5 + 1, 4 * 5 + 1)


def test_curves_scatter_kl_and_khat(trained, tmp_path):
    res, x, y = trained
    fig = plotting.training_curves(res.history)
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert labels == ["train elbo", "val elbo", "val IWAE k=5", "val IWAE k=50"]
    assert len(fig.axes[0].lines[0].get_xdata()) == 3
    fig = plotting.latent_scatter(res.vae, x, y)
    assert len(fig.axes) == 2 and fig.axes[0].get_xlabel() == "PC 1"  # scatter + colorbar
    kl = diagnostics.kl_per_dimension(res.vae, x)
    assert len(plotting.kl_bars(kl).axes[0].patches) == 3
    fig = plotting.khat_plot(pvae.log_px(res.vae, x, k=100), path=tmp_path / "k.png")
    assert fig.axes[0].get_ylabel() == "Pareto k̂"


def test_bad_images_are_rejected():
    with pytest.raises(ValueError, match=r"images must have shape \(N, 1 or 3, H, W\)"):
        plotting._images(torch.zeros(3, 5))
