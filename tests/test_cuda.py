"""CUDA-only checks, skipped on a machine without a GPU: on one, ``make test-gpu`` runs them (with
the other CUDA tests of the suite) and ``make bench-gpu`` measures.

* the compiled training step on CUDA graphs (``mode="reduce-overhead"``): one Dynamo graph for
  full and ragged batches, each step's returned loss kept (not overwritten by the next replay),
  fresh random draws at every replay, and the eager loss's distribution (means within 4 combined
  Monte Carlo s.e.);
* the compiled loss without CUDA graphs, with Inductor's ``fallback_random``: eager's numbers,
  loss and gradients, to float32 tolerance;
* ``log_px`` on the GPU: the exact log p(x) of a linear-Gaussian VAE within 4 s.e. (float64),
  compiled against eager within 4 combined s.e., TF32 and bf16 decoders moving the estimate by
  less than its s.e.;
* ``fit`` on the GPU with a run folder, resumed on the CPU from its checkpoint.

Two-rank DDP over nccl is in ``tests/test_distributed.py`` (it needs two GPUs).

``PVAE_TEST_CUDA_DEVICE=cpu`` runs this file on the CPU, to check the tests' own logic on a
machine without a GPU (the CUDA-graph assertions then check the CPU's Inductor mode instead).
"""

import math
import os

import pytest
import torch
import torch._inductor.config
from test_compile import assert_same, loss_and_grads  # the CPU tests' comparison

import pvae
from pvae.objectives.fused import CompiledObjective, FusedObjective
from pvae.training import drop_timings
from pvae.training.step import StepOptions, TrainStep

DEVICE = torch.device(os.environ.get("PVAE_TEST_CUDA_DEVICE", "cuda"))
CUDA = DEVICE.type == "cuda"
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(CUDA and not torch.cuda.is_available(), reason="needs CUDA"),
]
N = 1000  # dataset size the losses are scaled to


def small() -> pvae.VAE:
    torch.manual_seed(0)
    return pvae.VAE(pvae.priors.StandardNormal(4), data_shape=(1, 8, 8), hidden=(32,)).to(DEVICE)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return pvae.datasets.load("digits", binarize="static").train.x[:64].to(DEVICE)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_step_on_cuda_graphs_one_graph_and_each_loss_kept(images):
    vae = small()
    step = TrainStep(vae, StepOptions(compile=True), DEVICE, None, 0, quiet=True)
    seen, kept = [], []
    for rows in (32, 32, 32, 20, 32, 20):  # a ragged batch between full ones
        out = step(images[:rows], torch.arange(rows, device=DEVICE), N)
        seen.append(float(out))
        kept.append(out)
    # A CUDA graph reuses its output memory at the next replay: the step copies its loss out.
    assert [float(o) for o in kept] == seen
    assert all(math.isfinite(v) for v in seen)
    c = step.compiled
    assert c is not None and c.fallback is None
    assert c.mode_used == ("reduce-overhead" if CUDA else None)
    assert c.graphs == 1  # the batch dimension is symbolic: no recompilation for 20 rows
    assert step.compile_seconds is not None and step.compile_seconds > 0


def test_cuda_graph_replays_draw_afresh_with_the_eager_loss_distribution(images):
    """400 replays against 400 eager evaluations at the same parameters: fresh noise at every
    replay (the spread is not zero), and the same mean within 4 combined Monte Carlo s.e."""
    vae = small()
    fo = FusedObjective("meanfield_elbo")
    compiled = CompiledObjective(fo, vae, quiet=True)  # mode "auto": CUDA graphs on CUDA
    x = images[:32]
    a = []
    for _ in range(400):
        loss = compiled(x, N)
        a.append(float(loss.detach()))
        loss.backward()  # as training does: each replay's backward before the next step
        vae.zero_grad(set_to_none=True)
    b = [float(fo.loss(vae, x, N).detach()) / N for _ in range(400)]
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    assert float(ta.std()) > 0 and float(tb.std()) > 0
    se = math.sqrt(float(ta.var()) / len(a) + float(tb.var()) / len(b))
    assert abs(float(ta.mean() - tb.mean())) < 4 * se, (float(ta.mean()), float(tb.mean()), se)
    assert compiled.graphs == 1


def test_compiled_loss_and_gradients_equal_eager_with_fallback_random(images):
    """Without CUDA graphs and with Inductor drawing through eager's random ops, the compiled
    loss is eager's: the same draws, so loss and gradients agree to float32 tolerance."""
    vae = small()
    fo = FusedObjective("meanfield_elbo")
    with torch._inductor.config.patch(fallback_random=True):
        compiled = CompiledObjective(fo, vae, mode=None, quiet=True)
        for rows in (32, 20):
            a = loss_and_grads(lambda x: compiled(x, N), vae, images[:rows], seed=3)
            b = loss_and_grads(lambda x: fo.loss(vae, x, N) / N, vae, images[:rows], seed=3)
            assert_same(a, b, rtol=1e-4, atol=1e-5)
    assert compiled.graphs == 1


def test_log_px_on_the_gpu_matches_the_exact_value_of_a_linear_gaussian_vae():
    m = pvae.LinearGaussian(data_dim=6, latent_dim=2, sigma=0.5, seed=0)
    vae = m.vae(loc_shift=0.3, scale_factor=1.3).to(DEVICE)
    x = m.sample(200)
    est = pvae.log_px(vae, x.to(DEVICE), k=500, seed=0)
    s = est.summary()
    assert abs(s["log_px"] - m.exact_log_px_mean(x)) < 4 * s["log_px_se"] + 1e-9


def test_compiled_and_reduced_precision_log_px_on_the_gpu(images):
    vae = small().eval()
    x = images
    f32 = pvae.log_px(vae, x, k=200, seed=0).summary()
    comp = pvae.log_px(vae, x, k=200, seed=0, compile=True).summary()
    se = math.hypot(f32["log_px_se"], comp["log_px_se"])  # other draws: Inductor's generator
    assert abs(comp["log_px"] - f32["log_px"]) < 4 * se
    # The same draws (same seed, eager) through a reduced-precision decoder: a systematic
    # change, smaller than the float32 estimate's own Monte Carlo s.e.
    for precision in ("bf16", "tf32") if CUDA else ("bf16",):
        low = pvae.log_px(vae, x, k=200, seed=0, precision=precision).summary()
        diff = abs(low["log_px"] - f32["log_px"])
        assert diff < f32["log_px_se"], (precision, diff, f32["log_px_se"])
        if precision == "bf16" or torch.cuda.get_device_capability(DEVICE) >= (8, 0):
            assert diff > 0, precision  # it was applied (TF32 needs Ampere or newer)


def test_fit_on_the_gpu_resumes_on_the_cpu_from_its_checkpoint(tmp_path):
    data = pvae.datasets.load("digits", binarize="dynamic")
    kw = {"batch_size": 64, "progress": False, "quiet": True, "run_dir": tmp_path / "run"}
    first = pvae.fit(small(), data, epochs=2, device=DEVICE, **kw)
    assert next(first.vae.parameters()).device.type == DEVICE.type
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    resumed = pvae.fit(small(), data, epochs=3, device="cpu", resume=True, **kw)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert next(resumed.vae.parameters()).device.type == "cpu"
    assert drop_timings(resumed.history[:2]) == drop_timings(first.history)
    assert math.isfinite(resumed.final["val_elbo"])
