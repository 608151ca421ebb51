import math
import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from PIL import Image

import pvae
from pvae import diagnostics, plotting
from pvae.evaluation.log_px import LogPxEstimate


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    vae = pvae.VAE(pvae.priors.StandardNormal(4), hidden=(64,))
    res = pvae.fit(
        vae, digits, epochs=3, curve_ks=(5, 50), curve_every=1, progress=False, device="cpu"
    )
    return res, digits.test.observed()[:64], digits.test.y[:64]


def png_size(path):
    with Image.open(path) as im:
        return im.size


def image_size(fig):
    return fig.axes[0].images[0].get_array().shape


def tick_texts(labels):
    return [t.get_text() for t in labels]


def assert_labelled(ax, title=True):
    assert ax.get_xlabel() and ax.get_ylabel()
    if title:
        assert ax.get_title() or ax.figure._suptitle is not None


def test_reconstructions_and_samples_label_their_grids(trained, tmp_path):
    res, x, _ = trained
    fig = plotting.reconstructions(res.vae, x, n=8, path=tmp_path / "r.png")
    # 2 rows (data, reconstruction) × 8 columns of 8×8 images with 1-pixel padding.
    assert image_size(fig)[:2] == (2 * 9 + 1, 8 * 9 + 1)
    ax = fig.axes[0]
    assert tick_texts(ax.get_yticklabels()) == ["data", "recon."] and ax.get_title()
    fig = plotting.samples(res.vae, n=16)
    assert image_size(fig)[:2] == (2 * 9 + 1, 8 * 9 + 1)
    assert "16 draws z ~ p(z)" in fig.axes[0].get_title()


def test_figsize_dpi_and_format_follow_the_options(trained, tmp_path):
    res, x, _ = trained
    kl = diagnostics.kl_per_dimension(res.vae, x)
    fig = plotting.kl_bars(kl, figsize=(3.0, 2.0), dpi=100, path=tmp_path / "kl.png")
    assert tuple(fig.get_size_inches()) == (3.0, 2.0) and fig.dpi == 100
    assert png_size(tmp_path / "kl.png") == (300, 200)
    plotting.kl_bars(kl, path=tmp_path / "kl.png")  # defaults: WIDTH inches at DPI
    assert png_size(tmp_path / "kl.png")[0] == round(plotting.WIDTH * plotting.DPI)
    plotting.kl_bars(kl, path=tmp_path / "kl.svg")
    plotting.kl_bars(kl, path=tmp_path / "kl.pdf")
    assert (tmp_path / "kl.svg").read_text().lstrip().startswith("<?xml")
    assert (tmp_path / "kl.pdf").read_bytes()[:5] == b"%PDF-"
    with pytest.raises(ValueError, match=r"unknown figure format 'txt'; valid suffixes: .*\.png"):
        plotting.kl_bars(kl, path=tmp_path / "kl.txt")
    with pytest.raises(ValueError, match=r"figsize must be \(width, height\).*got \(3, 0\)"):
        plotting.kl_bars(kl, figsize=(3, 0))
    with pytest.raises(ValueError, match="dpi must be a positive integer, got 0"):
        plotting.samples(res.vae, dpi=0)


def test_manifold_axes_are_principal_components_or_latent_coordinates(trained, tmp_path):
    res, x, _ = trained
    fig = plotting.latent_manifold(res.vae, n=5, x=x, path=tmp_path / "m.pdf")
    assert image_size(fig)[:2] == (5 * 9 + 1, 5 * 9 + 1)
    ax = fig.axes[0]
    assert_labelled(ax)
    assert ax.get_xlabel().startswith("PC1") and "% of var." in ax.get_xlabel()
    assert ax.get_ylabel().startswith("PC2") and "% of var." in ax.get_ylabel()
    shares = [float(lab.split("(")[1].split("%")[0]) for lab in (ax.get_xlabel(), ax.get_ylabel())]
    assert shares[0] >= shares[1] and sum(shares) <= 100.5
    ax = plotting.latent_manifold(res.vae, n=5, dims=(1, 3), x=x).axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("$z_{1}$", "$z_{3}$")
    with pytest.raises(ValueError, match=r"dims must be two different latent dimensions in \[0, 3"):
        plotting.latent_manifold(res.vae, dims=(1, 4))


def test_two_dimensional_manifold_ticks_are_inverse_normal_cdf_values():
    vae = pvae.VAE(pvae.priors.StandardNormal(2), data_shape=(1, 4, 4), hidden=(8,))
    ax = plotting.latent_manifold(vae, n=4).axes[0]
    assert image_size(ax.figure)[:2] == (4 * 5 + 1, 4 * 5 + 1)
    g = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor([0.125, 0.375, 0.625, 0.875]))
    xt = [float(t.replace("−", "-")) for t in tick_texts(ax.get_xticklabels())]
    yt = [float(t.replace("−", "-")) for t in tick_texts(ax.get_yticklabels())]
    np.testing.assert_allclose(xt, g.numpy(), rtol=0.05)  # 2 significant digits
    np.testing.assert_allclose(yt, g.flip(0).numpy(), rtol=0.05)  # top row: largest z_1
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("$z_{0}$", "$z_{1}$")


def test_scatter_colorbar_ticks_sit_at_band_centres(trained):
    res, x, y = trained
    fig = plotting.latent_scatter(res.vae, x, y)
    ax, cax = fig.axes
    assert_labelled(ax)
    assert "PC1" in ax.get_xlabel() and "PC2" in ax.get_ylabel()
    classes = np.unique(y.numpy())
    cb = ax.collections[0].colorbar
    np.testing.assert_array_equal(cb.get_ticks(), np.arange(len(classes)))
    bounds = cb.boundaries if cb.boundaries is not None else cb._boundaries
    np.testing.assert_allclose((bounds[:-1] + bounds[1:]) / 2, np.arange(len(classes)))
    assert tick_texts(cax.get_yticklabels()) == [str(c) for c in classes]
    assert cb.ax.get_ylabel() == "class"
    vae2 = pvae.VAE(pvae.priors.StandardNormal(2), data_shape=(1, 8, 8), hidden=(8,))
    ax = plotting.latent_scatter(vae2, x).axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("$z_{0}$", "$z_{1}$")


def test_interpolation_labels_its_columns_and_checks_its_datapoints(trained):
    res, x, _ = trained
    fig = plotting.interpolation(res.vae, x[0], x[1:2], steps=6, figsize=(5, 1.5), dpi=80)
    # x_a, 6 points on the line, x_b.
    assert image_size(fig)[:2] == (10, 8 * 9 + 1)
    ax = fig.axes[0]
    cols = tick_texts(ax.get_xticklabels())
    assert (
        cols[0] == "$x_a$"
        and cols[-1] == "$x_b$"
        and cols[1:-1]
        == [
            "0",
            "0.2",
            "0.4",
            "0.6",
            "0.8",
            "1",
        ]
    )
    assert ax.get_xlabel() and ax.get_title()
    with pytest.raises(ValueError, match=r"x_b must be one datapoint of shape \(1, 8, 8\)"):
        plotting.interpolation(res.vae, x[0], x[:2])
    with pytest.raises(ValueError, match="steps must be an integer >= 2, got 1"):
        plotting.interpolation(res.vae, x[0], x[1], steps=1)


def test_traversal_rows_are_sorted_by_kl_and_show_it(trained):
    res, x, _ = trained
    vae = res.vae
    kl = diagnostics.kl_per_dimension(vae, x)
    fig = plotting.traversals(vae, x[0], kl_x=x, steps=5, span=2.0)
    ax = fig.axes[0]
    assert image_size(fig)[:2] == (4 * 9 + 1, 5 * 9 + 1)
    rows = tick_texts(ax.get_yticklabels())
    order = torch.argsort(kl, descending=True).tolist()
    assert rows == [f"$z_{{{i}}}$  KL {float(kl[i]):.2f}" for i in order]
    assert tick_texts(ax.get_xticklabels()) == ["-2", "-1", "+0", "+1", "+2"]
    assert "posterior sd" in ax.get_xlabel() and "KL" in ax.get_ylabel() and ax.get_title()
    # The cell of row r, column c decodes mean + offset·sd in that row's dimension alone.
    q = vae.encode(x[:1])
    i = order[0]
    z = q.mean.clone()
    z[0, i] += 2.0 * q.stddev[0, i]
    want = vae.decode_mean(z)[0, 0].detach().numpy()
    got = ax.images[0].get_array()[1 : 1 + 8, 1 + 4 * 9 : 1 + 4 * 9 + 8, 0]
    np.testing.assert_allclose(got, want, atol=1e-6)
    # A count picks the largest-KL dimensions; prior units around the prior mean by default.
    ax = plotting.traversals(vae, kl_x=x, dims=2, steps=3).axes[0]
    assert len(ax.get_yticklabels()) == 2 and "prior sd" in ax.get_xlabel()
    assert ax.get_title() == "latent traversals around the prior mean"


def test_traversals_for_priors_with_and_without_a_marginal_sd(digits):
    x = digits.test.observed()[:32]
    vamp = pvae.VAE(
        pvae.priors.VampPrior(3, num_pseudo_inputs=5), data_shape=(1, 8, 8), hidden=(8,)
    )
    ax = plotting.traversals(vamp, kl_x=x, steps=3).axes[0]  # sd from prior draws
    assert all("Var" in t for t in tick_texts(ax.get_yticklabels()))  # no per-dim KL: AU order
    heavy = pvae.VAE(pvae.priors.StudentT(3, df=1.5), data_shape=(1, 8, 8), hidden=(8,))
    with pytest.raises(ValueError, match="StudentT has none: use sd='aggregate'"):
        plotting.traversals(heavy, kl_x=x, steps=3)
    ax = plotting.traversals(heavy, kl_x=x, steps=3, sd="aggregate").axes[0]
    assert "aggregate-posterior sd" in ax.get_xlabel()
    with pytest.raises(ValueError, match="sd must be one of posterior, prior, aggregate; got 'x'"):
        plotting.traversals(heavy, kl_x=x, sd="x")
    # A flow guide has no per-dimension KL nor closed-form sd: AU order, sd from its draws.
    iaf = pvae.guides.IAF(pvae.nets.MLP((1, 8, 8), pvae.guides.IAF.num_params(3), (8,)), 3)
    flow = pvae.VAE(pvae.priors.StandardNormal(3), encoder=iaf, data_shape=(1, 8, 8), hidden=(8,))
    ax = plotting.traversals(flow, x[0], kl_x=x, steps=3).axes[0]
    assert "posterior sd" in ax.get_xlabel() and len(ax.get_yticklabels()) == 3


def synthetic_history(epochs=20):
    hist = []
    for e in range(1, epochs + 1):
        elbo = -30.0 + 5.0 * (1 - np.exp(-e / 5))
        h = {"epoch": e, "train_elbo": elbo - 0.5, "val_elbo": elbo}
        if e % 2 == 0:
            h.update({"val_iwae_5": elbo + 0.8, "val_iwae_500": elbo + 1.1})
        hist.append(h)
    hist[0]["train_elbo"] = -1e4  # a first-epoch outlier
    return hist


def test_curves_separate_iwae_k_and_ignore_the_first_epoch(trained):
    fig = plotting.training_curves(synthetic_history())
    top, gap = fig.axes  # shared epoch axis, labelled on the bottom panel
    assert top.get_ylabel() == "bound (nats per datapoint)" and top.get_title()
    assert gap.get_xlabel() == "epoch" and "IWAE$_k$" in gap.get_ylabel()
    lo, hi = top.get_ylim()
    later = [v for h in synthetic_history()[2:] for k, v in h.items() if k != "epoch"]
    assert (
        lo <= min(later) and max(later) <= hi and hi - lo < 1.2 * (max(later) - min(later))
    )  # no -1e4
    labels = [line.get_label() for line in top.lines]
    assert labels == ["train objective (ELBO)", "val. ELBO", "val. IWAE$_{5}$", "val. IWAE$_{500}$"]
    i5, i500 = top.lines[2], top.lines[3]
    assert (i5.get_marker(), i5.get_linestyle()) != (i500.get_marker(), i500.get_linestyle())
    np.testing.assert_allclose(gap.lines[0].get_ydata(), 0.8, atol=1e-12)
    np.testing.assert_allclose(gap.lines[1].get_ydata(), 1.1, atol=1e-12)
    assert gap.get_ylim()[0] <= 0 and gap.get_ylim()[1] < 1.3
    # A real run's history plots too (3 epochs: every point sets the limits).
    res, _, _ = trained
    fig = plotting.training_curves(res.history)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines[0].get_xdata()) == 3
    with pytest.raises(ValueError, match="history is empty"):
        plotting.training_curves([])


def test_kl_bars_label_nats_and_draw_the_threshold():
    kl = torch.tensor([1.2, 0.05, 0.3, 0.0])
    ax = plotting.kl_bars(kl, threshold=0.1).axes[0]
    assert_labelled(ax)
    assert "nats" in ax.get_ylabel() and "2 of 4 above 0.1 nats" in ax.get_title()
    assert len(ax.patches) == 4
    (line,) = ax.lines
    np.testing.assert_allclose(line.get_ydata(), 0.1)
    red = matplotlib.colors.to_rgba("C3")
    assert [p.get_facecolor() == red for p in ax.patches] == [False, True, False, True]
    assert not plotting.kl_bars(kl, threshold=None).axes[0].lines


@pytest.mark.parametrize("arviz_available", [True, False])
def test_khat_plot_draws_both_thresholds_itself(monkeypatch, arviz_available):
    if not arviz_available:
        monkeypatch.setitem(sys.modules, "arviz", None)  # import arviz raises ImportError
    kh = torch.tensor([0.1, 0.6, 0.9, float("nan"), 0.3], dtype=torch.float64)
    z = torch.zeros(5, dtype=torch.float64)
    est = LogPxEstimate(log_px=z, se=z, ess=z + 1, khat=kh, k=100, num_dims=64)
    ax = plotting.khat_plot(est).axes[0]
    assert_labelled(ax)
    levels = sorted(float(line.get_ydata()[0]) for line in ax.lines)
    assert levels == [0.5, 0.7]
    legend = tick_texts(ax.get_legend().get_texts())
    assert any(t.startswith("0.5") for t in legend) and any(t.startswith("0.7") for t in legend)
    assert sum(len(c.get_offsets()) for c in ax.collections) == 4  # the NaN is left out


def test_khat_plot_bands_follow_the_warning_threshold_and_keep_infinite_values():
    """-inf (equal weights, the best case) counts in the lowest band, +inf (too few tail draws
    to fit) and exactly 0.7 in the unreliable one, as LogPxEstimate's warning counts them."""
    kh = torch.tensor([-math.inf, 0.2, 0.7, math.inf, 0.6], dtype=torch.float64)
    z = torch.zeros(5, dtype=torch.float64)
    est = LogPxEstimate(log_px=z, se=z, ess=z + 1, khat=kh, k=100, num_dims=64)
    ax = plotting.khat_plot(est).axes[0]
    legend = tick_texts(ax.get_legend().get_texts())
    assert "k̂ ≤ 0.5 (2)" in legend and "0.5 < k̂ < 0.7 (1)" in legend and "k̂ ≥ 0.7 (2)" in legend
    assert est.unreliable_fraction == pytest.approx(2 / 5)
    ys = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections])
    lo, hi = ax.get_ylim()
    assert np.isfinite(ys).all() and (lo <= ys).all() and (ys <= hi).all()


def test_bad_images_are_rejected():
    with pytest.raises(ValueError, match=r"images must have shape \(N, 1 or 3, H, W\)"):
        plotting.images.image_arrays(torch.zeros(3, 5))


def test_bound_ladder_is_drawn_by_plotting_and_the_method_calls_it(tmp_path):
    se = {"mean": 0.0, "se": 0.0}
    ladder = pvae.BoundLadder(
        n=10,
        iwae={1: {"mean": -90.0, "se": 0.2}, 10: {"mean": -88.5, "se": 0.1}},
        elbo_analytic={"mean": -90.1, "se": 0.05},
        recon=se,
        kl=se,
        gap=se,
        ais={"log_px": -87.9, "log_px_se": 0.05, "steps": 20},
        bdmc={"gap": 0.3, "gap_se": 0.1},
    )
    fig = plotting.bound_ladder(ladder, tmp_path / "ladder.svg")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "k (importance samples)"
    assert ax.get_ylabel() == "bound (nats per datapoint)" and ax.get_title()
    legend = tick_texts(ax.get_legend().get_texts())
    assert legend == ["ELBO (analytic KL)", "AIS (T=20)", "IWAE$_k$"]
    assert any("BDMC gap" in t.get_text() for t in ax.texts)
    assert (tmp_path / "ladder.svg").read_text().lstrip().startswith("<?xml")
    same = ladder.plot().axes[0]  # the method is a thin call into plotting
    assert tick_texts(same.get_legend().get_texts()) == legend
    assert tuple(same.figure.get_size_inches()) == tuple(fig.get_size_inches()) == (5.0, 3.5)


class _NoEncoder:
    data_shape = (1, 8, 8)
    is_built = True

    def decode_mean(self, z):
        return torch.zeros(len(z), 1, 8, 8)


def test_figures_check_capabilities_not_types():
    """The latent-space figures need encode and decode_mean (and traversals the prior), the
    grids sample or reconstruct: a model without one gets a TypeError naming figure and method,
    whatever its class."""
    with pytest.raises(TypeError, match=r"latent_manifold needs .* callable encode\(\)"):
        plotting.latent_manifold(_NoEncoder())
    with pytest.raises(TypeError, match=r"interpolation needs .* encode\(\).*_NoEncoder"):
        plotting.interpolation(_NoEncoder(), torch.zeros(1, 8, 8), torch.zeros(1, 8, 8))
    with pytest.raises(TypeError, match=r"latent_scatter needs .* encode\(\)"):
        plotting.latent_scatter(_NoEncoder(), torch.zeros(4, 1, 8, 8))
    with pytest.raises(TypeError, match=r"samples needs a model with a callable sample\(\)"):
        plotting.samples(object())
    with pytest.raises(TypeError, match=r"reconstructions needs .* reconstruct\(\)"):
        plotting.reconstructions(object(), torch.zeros(2, 1, 8, 8))
    vae = pvae.VAE(pvae.priors.StandardNormal(2), hidden=(8,))  # not built
    with pytest.raises(ValueError, match="the VAE is not built"):
        plotting.traversals(vae)
    flat = pvae.VAE(pvae.priors.StandardNormal(2), data_shape=(5,), hidden=(8,))
    with pytest.raises(ValueError, match=r"latent_manifold shows decoded images.*\(5,\)"):
        plotting.latent_manifold(flat)
