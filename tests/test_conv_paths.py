"""The conv paths of a top-down hierarchy (:class:`pvae.nets.ConvLadderPaths`): the ladder's path
contract (:class:`pvae.nets.LadderPaths`) for 2 and 3 layers, spatial and flat latents, any
number of leading batch dimensions, gradients reaching every parameter."""

import itertools

import pytest
import torch

from pvae.nets import PATHS, ConvLadderPaths, LadderPaths

DATA = (3, 12, 10)  # odd sizes: each halving rounds up (12→6→3→2, 10→5→3→2)
OUT = (4, 12, 10)
BATCH = (3, 2)  # (particles, datapoints)


def build(layers, spatial, **kw):
    torch.manual_seed(0)
    return ConvLadderPaths(DATA, OUT, latents=(5, 4, 3)[:layers], channels=6, spatial=spatial, **kw)


def bottom_up(paths, x):
    hs, h = [], x
    for up in paths.up:
        h = up(h)
        hs.append(h)
    return hs


@pytest.mark.parametrize(("layers", "spatial"), list(itertools.product((2, 3), (True, False))))
def test_networks_have_the_contract_shapes_for_any_leading_batch(layers, spatial):
    paths = build(layers, spatial)
    assert isinstance(paths, LadderPaths) and PATHS["conv"] is ConvLadderPaths
    sizes = [(6, 5), (3, 3), (2, 2)]
    want = [(c, *s) if spatial else (c,) for c, s in zip((5, 4, 3), sizes, strict=False)]
    assert paths.latent_shapes == tuple(want[:layers])
    assert len(paths.up) == len(paths.q_heads) == layers and len(paths.p_heads) == layers - 1
    for batch in [(), (4,), BATCH]:
        hs = bottom_up(paths, torch.rand(*batch, *DATA))
        for i, h in enumerate(hs):
            assert h.shape == (*batch, 6, *sizes[i])
            assert paths.q_heads[i](h).shape == (*batch, 2, *paths.latent_shapes[i])
        for i, p_head in enumerate(paths.p_heads):
            z = torch.randn(*batch, *paths.latent_shapes[i + 1])
            assert p_head(z).shape == (*batch, 2, *paths.latent_shapes[i])
        assert paths.decoder(torch.randn(*batch, *paths.latent_shapes[0])).shape == (*batch, *OUT)


def test_leading_dims_are_only_batch_dims():
    """Folding the particles into the batch gives the same numbers as keeping them apart."""
    paths = build(3, True).eval()
    x = torch.rand(*BATCH, *DATA)
    flat = [h.reshape(*BATCH, *h.shape[1:]) for h in bottom_up(paths, x.reshape(-1, *DATA))]
    for a, b in zip(bottom_up(paths, x), flat, strict=True):
        torch.testing.assert_close(a, b)
    z = torch.randn(*BATCH, *paths.latent_shapes[0])
    torch.testing.assert_close(paths.decoder(z)[1, 0], paths.decoder(z[1, 0]))


@pytest.mark.parametrize(
    "kw",
    [{}, {"norm": "batch", "weight_norm": True, "blocks": 2, "out_blocks": 1}, {"spatial": False}],
)
def test_gradients_reach_every_parameter(kw):
    paths = build(3, kw.pop("spatial", True), **kw)
    x = torch.rand(*BATCH, *DATA)
    hs = bottom_up(paths, x)
    loss = sum(q(h).square().mean() for q, h in zip(paths.q_heads, hs, strict=True))
    for i, p_head in enumerate(paths.p_heads):
        loss = loss + p_head(torch.randn(*BATCH, *paths.latent_shapes[i + 1])).square().mean()
    loss = loss + paths.decoder(torch.randn(*BATCH, *paths.latent_shapes[0])).square().mean()
    loss.backward()
    for name, p in paths.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        assert float(p.grad.abs().sum()) > 0, name


def test_no_downsampling_keeps_the_resolution():
    paths = ConvLadderPaths(DATA, OUT, latents=(2, 2), channels=(4, 5), downsample=(True, False))
    assert paths.latent_shapes == ((2, 6, 5), (2, 6, 5))
    h = bottom_up(paths, torch.rand(2, *DATA))
    assert [tuple(t.shape) for t in h] == [(2, 4, 6, 5), (2, 5, 6, 5)]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (
            {"data_shape": (12, 10)},
            r"data_shape must be \(C, H, W\) for conv paths, got \(12, 10\)",
        ),
        ({"out_shape": (4, 12, 9)}, r"out_shape must end with the image's \(H, W\) = \(12, 10\)"),
        ({"channels": (4, 4, 4)}, r"channels must give one value per latent layer \(2\)"),
        ({"blocks": -1}, "blocks must be an integer >= 0, got -1"),
        ({"norm": "group"}, "unknown norm 'group'; valid: batch"),
    ],
)
def test_bad_arguments_are_named(kw, match):
    args = {"data_shape": DATA, "out_shape": OUT, "latents": (2, 2), **kw}
    with pytest.raises(ValueError, match=match):
        ConvLadderPaths(**args)
