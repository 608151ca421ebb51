"""AISSettings, the one settings object of AIS, reverse AIS and BDMC: the same numbers whether the
settings come as an object or as keywords, keywords override an object's fields, and every
wrong name or value is refused naming the field."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pvae
from pvae import AISSettings

ONE = pvae.LinearGaussian(data_dim=4, latent_dim=2, sigma=0.5, seed=0)


def test_an_object_and_keywords_give_the_same_numbers():
    vae, x = ONE.vae(loc_shift=0.5), ONE.sample(5)
    s = AISSettings(steps=6, chains=3, leapfrog=2, start="prior", schedule="linear")
    by_keywords = pvae.ais(vae, x, steps=6, chains=3, leapfrog=2, start="prior", schedule="linear")
    for est in (pvae.ais(vae, x, s), pvae.ais(vae, x, settings=s)):
        assert torch.equal(est.log_w, by_keywords.log_w) and est.start == "prior"
    # A keyword overrides the object's field.
    assert pvae.ais(vae, x, s, steps=4).steps == 4 and s.steps == 6
    _, latents = pvae.simulate(vae, 5, seed=1)
    a = pvae.reverse_ais(vae, x, s, latents=latents)
    b = pvae.reverse_ais(vae, x, latents=latents, **{f: getattr(s, f) for f in ("steps", "chains")})
    assert a.direction == "reverse" and a.steps == b.steps == 6
    res = pvae.bdmc(vae, s, n=3)
    assert torch.equal(res.forward.log_w, pvae.bdmc(vae, n=3, **vars(s)).forward.log_w)


@pytest.mark.parametrize(
    ("call", "err", "match"),
    [
        (lambda v, x: pvae.ais(v, x, stpes=3), TypeError, r"ais\(\) got an unexpected keyword "),
        (lambda v, x: pvae.ais(v, x, stpes=3), TypeError, "valid: steps, chains, leapfrog"),
        (lambda v, x: pvae.bdmc(v, k=3), TypeError, r"bdmc\(\) .* 'k'; valid: .*, n, settings"),
        (lambda v, x: pvae.ais(v, x, settings={"steps": 3}), TypeError, "settings must be a"),
        (lambda v, x: AISSettings(fast="yes"), TypeError, "fast must be None, True or False"),
        (lambda v, x: AISSettings(chains=0), ValueError, "chains must be a positive integer"),
        (lambda v, x: AISSettings().replace(steps=-1), ValueError, "steps must be a positive"),
    ],
)
def test_wrong_names_and_values_are_named(call, err, match):
    with pytest.raises(err, match=match):
        call(ONE.vae(), ONE.sample(2))


def test_simulate_gives_batch_size_to_a_model_that_takes_it():
    def model(x=None, batch_size=1):
        with pyro.plate("data", batch_size):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            return pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x=None, batch_size=1):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    x, latents = pvae.simulate(model, 7, guide=guide)
    assert x.shape == (7, 2) and latents["z"].shape == (7, 2)
    assert pvae.simulate(pvae.HierarchicalVAE((3, 2), data_shape=(4,)), 3)[0].shape == (3, 4)
