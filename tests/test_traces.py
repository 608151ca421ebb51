"""Estimators defined on Pyro traces, on pairs written in plain Pyro (no pvae classes) with known
answers: two dependent latent sites and a conditioning input, a discrete latent, and the errors
for what the weights cannot handle."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pvae
from pvae.objectives import IWAE

D = 5


class TwoLatents:
    """x | z, u, y ~ N(W z + v u + c y + b, σ² I), z ~ N(0, I₂), u ~ N(0, 1), per datapoint.

    With ζ = (z, u) and A = [W v], p(x | y) = N(b + c y, A Aᵀ + σ² I) and the posterior of ζ is
    Gaussian, so a guide q(z | x, y) q(u | z, x, y) — two sites, the second depending on the
    first — can be exact, and then every log weight equals log p(x | y).
    """

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.A = torch.randn(D, 3, generator=g, dtype=torch.float64)
        self.b = torch.randn(D, generator=g, dtype=torch.float64)
        self.c = torch.randn(D, generator=g, dtype=torch.float64)
        self.sigma = 0.7
        self.post_cov = torch.linalg.inv(
            torch.eye(3, dtype=torch.float64) + self.A.T @ self.A / self.sigma**2
        )

    def exact_log_px(self, x, y):
        cov = self.A @ self.A.T + self.sigma**2 * torch.eye(D, dtype=torch.float64)
        return dist.MultivariateNormal(self.b + y[:, None] * self.c, cov).log_prob(x)

    def sample(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        zeta = torch.randn(n, 3, generator=g, dtype=torch.float64)
        y = torch.randn(n, generator=g, dtype=torch.float64)
        eps = torch.randn(n, D, generator=g, dtype=torch.float64)
        return zeta @ self.A.T + self.b + y[:, None] * self.c + self.sigma * eps, y

    def model(self, x, y):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))
            u = pyro.sample("u", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
            loc = z @ self.A[:, :2].T + u[..., None] * self.A[:, 2] + self.b + y[:, None] * self.c
            pyro.sample("x", dist.Normal(loc, self.sigma).to_event(1), obs=x)

    def guide(self, x, y, wrong_u=False):
        m = (x - self.b - y[:, None] * self.c) @ self.A / self.sigma**2 @ self.post_cov.T
        S = self.post_cov
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.MultivariateNormal(m[:, :2], S[:2, :2]))
            if wrong_u:  # the prior: ignores x and z
                pyro.sample("u", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
                return
            gain = S[2, :2] @ torch.linalg.inv(S[:2, :2])
            mean = m[:, 2] + ((z - m[:, :2]) * gain).sum(-1)
            var = S[2, 2] - gain @ S[:2, 2]
            pyro.sample("u", dist.Normal(mean, var.sqrt()))

    def wrong_guide(self, x, y):
        self.guide(x, y, wrong_u=True)


REF = TwoLatents()
X, Y = REF.sample(20)


def test_exact_guide_makes_every_log_weight_log_px():
    exact = REF.exact_log_px(X, Y)
    est = pvae.log_px(REF.model, REF.guide, X, k=50, kwargs={"y": Y})
    torch.testing.assert_close(est.log_px, exact, rtol=0, atol=1e-8)
    assert float(est.se.max()) < 1e-6
    elbo = pvae.evaluate_elbo(
        REF.model, REF.guide, X, num_samples=10, kwargs={"y": Y}, analytic_kl=False
    )
    torch.testing.assert_close(elbo.elbo, exact, rtol=0, atol=1e-8)
    # Closed-form KL where a site has one (u's Normal pair; z's MultivariateNormal against an
    # Independent Normal has none in torch): unbiased, but no longer exact draw by draw.
    elbo = pvae.evaluate_elbo(REF.model, REF.guide, X, num_samples=400, kwargs={"y": Y})
    assert float(((elbo.elbo - exact) / elbo.se).abs().max()) < 4.5
    ladder = pvae.bounds(REF.model, REF.guide, X, ks=(1, 5, 50), kwargs={"y": Y})
    for rung in ladder.iwae.values():
        assert rung["mean"] == pytest.approx(float(exact.mean()), abs=1e-8)


def test_blocks_split_the_per_datapoint_arguments_with_x():
    # A budget that forces one-datapoint blocks: y must travel with its x.
    exact = REF.exact_log_px(X, Y)
    est = pvae.log_px(REF.model, REF.guide, X, k=20, kwargs={"y": Y}, memory_budget=6_000)
    torch.testing.assert_close(est.log_px, exact, rtol=0, atol=1e-8)


def test_wrong_guide_for_the_second_latent_converges_within_its_se():
    exact = REF.exact_log_px(X, Y)
    elbo = pvae.evaluate_elbo(REF.model, REF.wrong_guide, X, num_samples=200, kwargs={"y": Y})
    est = pvae.log_px(REF.model, REF.wrong_guide, X, k=4000, kwargs={"y": Y}, seed=0)
    gap = exact - elbo.elbo
    assert float(gap.min()) > 0.05  # the wrong u-guide costs KL(q(u) ‖ p(u | z, x))
    z = (est.log_px - exact) / est.se
    assert float(z.abs().max()) < 4.5, z


def test_a_discrete_latent_drawn_from_the_guide_gives_log_px():
    mu = torch.tensor([[-1.0, 0.5, 2.0], [1.5, -0.5, 0.0]], dtype=torch.float64)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(torch.tensor(0.3, dtype=x.dtype)))
            pyro.sample("x", dist.Normal(mu[c.long()], 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(torch.full((x.shape[0],), 0.5, dtype=x.dtype)))

    x = torch.tensor([[0.0, 0.0, 1.0], [1.0, -1.0, 0.5], [-1.0, 1.0, 2.0]], dtype=torch.float64)
    comp = dist.Normal(mu, 1.0).to_event(1).log_prob(x[:, None])  # (N, 2)
    exact = torch.logsumexp(comp + torch.tensor([0.7, 0.3], dtype=torch.float64).log(), -1)
    est = pvae.log_px(model, guide, x, k=4000, seed=0)
    assert float(((est.log_px - exact) / est.se).abs().max()) < 4.5
    # ELBO in closed form: Σ_c q(c) [log p(x, c) − log q(c)], q = 1/2.
    elbo_exact = 0.5 * (comp + torch.tensor([0.7, 0.3], dtype=torch.float64).log()).sum(
        -1
    ) - math.log(0.5)
    elbo = pvae.evaluate_elbo(model, guide, x, num_samples=4000)
    assert elbo.analytic_kl  # KL(Bernoulli ‖ Bernoulli) is known in closed form
    assert float(((elbo.elbo - elbo_exact) / elbo.se).abs().max()) < 4.5
    # Training by IWAE needs reparameterized draws, and says which site has none.
    with pytest.raises(
        ValueError, match="reparameterized draw at every guide site; 'c' is Bernoulli"
    ):
        IWAE(num_particles=3).differentiable_loss(model, guide, x)


def _global_latent_model(x):
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(w, 1.0).expand([2]).to_event(1), obs=x)


def _global_latent_guide(x):
    pyro.sample("w", dist.Normal(0.0, 1.0))


def _local_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        t = pyro.sample("t", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z + t, 1.0), obs=x[:, 0])


def _guide_without_t(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(0.0, 1.0))


def _guide_with_extra(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("t", dist.Normal(0.0, 1.0))
        pyro.sample("aux", dist.Normal(0.0, 1.0))


@pytest.mark.parametrize(
    ("model", "guide", "match"),
    [
        (_global_latent_model, _global_latent_guide, "latent site 'w' is outside the 'data' plate"),
        (_local_model, _guide_without_t, "model latent site 't' is not sampled by the guide"),
        (_local_model, _guide_with_extra, "guide site 'aux' has no counterpart in the model"),
    ],
)
def test_what_the_weights_cannot_handle_is_named(model, guide, match):
    x = torch.zeros(3, 2)
    for call in (
        lambda: pvae.log_px(model, guide, x, k=10),
        lambda: pvae.bounds(model, guide, x, ks=(1, 10)),
        lambda: pvae.evaluate_elbo(model, guide, x),
        lambda: IWAE(num_particles=2).differentiable_loss(model, guide, x),
    ):
        with pytest.raises(ValueError, match=match):
            call()


def test_a_pair_needs_model_and_guide():
    with pytest.raises(TypeError, match="expected an object with .model and .guide"):
        pvae.log_px(object(), torch.zeros(2, 2), k=5)
    with pytest.raises(TypeError, match="model and guide must be callables"):
        pvae.log_px(REF.model, 3, torch.zeros(2, 2), k=5)


class _Pair:
    """An object with .model/.guide over the plain-Pyro functions above."""

    def model(self, x):
        return REF.model(x, torch.zeros(x.shape[0], dtype=x.dtype))

    def guide(self, x):
        return REF.guide(x, torch.zeros(x.shape[0], dtype=x.dtype))


def test_active_units_per_latent_site_of_any_pair():
    x, _ = REF.sample(200)
    au = pvae.diagnostics.active_units_by_site(_Pair(), x, num_samples=256)
    assert sorted(au) == ["u", "z"]
    assert au["z"].variance.shape == (2,) and au["u"].variance.shape == (1,)
    # E[ζ | x] = Σ Aᵀ (x − b) / σ²: its covariance over x ~ p(x) is Σ Aᵀ C A Σ / σ⁴, C = Cov x.
    cov_x = REF.A @ REF.A.T + REF.sigma**2 * torch.eye(D, dtype=torch.float64)
    gain = REF.post_cov @ REF.A.T / REF.sigma**2
    want = torch.diagonal(gain @ cov_x @ gain.T)
    got = torch.cat([au["z"].variance, au["u"].variance])
    # Sample variance over 200 points: relative s.e. about sqrt(2/199) = 0.1.
    assert bool(((got - want).abs() / want < 0.4).all()), (got, want)
    with pytest.raises(ValueError, match="the pair has 2 latent sites \\(z, u\\)"):
        pvae.diagnostics.active_units(_Pair(), x)
