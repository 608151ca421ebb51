"""The compiled fast path: one graph, the eager path's losses and gradients, no recompilation for
a ragged last batch, dynamic binarization or β warm-up, a notice and eager training where
compilation fails; compiled log p(x); ``make bench-gpu`` failing fast without a GPU.

Budget: one Inductor compilation (≈ 10 s with a warm Inductor cache, ≈ 60-80 s cold on two
loaded cores); every other compiled function uses the ``aot_eager`` backend, which runs the same
Dynamo graph capture and AOTAutograd joint graph without code generation, and draws the same
random numbers as eager, so losses compare draw for draw.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch._dynamo
import torch._inductor.config

import pvae
from pvae.datasets import Split
from pvae.evaluation import _weights
from pvae.objectives.fused import CompiledObjective, FusedObjective
from pvae.training.step import CompiledLoss, StepOptions, TrainStep, make_loss, run_epoch

ROOT = Path(__file__).resolve().parents[1]
X = torch.bernoulli(torch.full((6, 1, 3, 3), 0.4), generator=torch.Generator().manual_seed(0))


def small(prior: str = "standard_normal") -> pvae.VAE:
    torch.manual_seed(0)
    p = {
        "standard_normal": pvae.priors.StandardNormal(2),
        "mog": pvae.priors.MixtureOfGaussians(2, 3),
    }[prior]
    return pvae.VAE(p, data_shape=(1, 3, 3), hidden=(8,)).double()


def loss_and_grads(fn, vae, x, seed=0):
    torch.manual_seed(seed)
    loss = fn(x)
    grads = torch.autograd.grad(loss, list(vae.parameters()), allow_unused=True)
    return loss.detach(), [
        torch.zeros_like(p) if g is None else g
        for p, g in zip(vae.parameters(), grads, strict=True)
    ]


def assert_same(a, b, rtol=1e-10, atol=1e-12):
    torch.testing.assert_close(a[0], b[0], rtol=rtol, atol=atol)
    for u, v in zip(a[1], b[1], strict=True):
        torch.testing.assert_close(u, v, rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def inductor():
    """One Inductor-compiled objective shared by the tests below (compilation is the cost)."""
    torch._dynamo.reset()
    vae = small()
    fo = FusedObjective("meanfield_elbo")
    with torch._inductor.config.patch(fallback_random=True):  # eager's random numbers
        compiled = CompiledObjective(fo, vae, quiet=True)
        compiled(X.double(), 60)  # compile once
        yield vae, fo, compiled
    torch._dynamo.reset()


def test_one_graph_without_breaks():
    vae = small()
    compiled = CompiledObjective(FusedObjective("meanfield_elbo"), vae)
    x = X.double()
    compiled.objective.prime(vae, x)
    torch._dynamo.maybe_mark_dynamic(x, 0)
    with pvae.model.pyro.validation_enabled(False):
        ex = torch._dynamo.explain(compiled._body)(x, 60, torch.tensor(1.0, dtype=x.dtype))
    assert (ex.graph_count, ex.graph_break_count) == (1, 0), ex.break_reasons
    torch._dynamo.reset()


def test_inductor_equals_eager(inductor):
    vae, fo, compiled = inductor
    eager = lambda x: fo.loss(vae, x, 60) / 60  # noqa: E731
    with torch._inductor.config.patch(fallback_random=True):
        for rows, beta in ((6, 1.0), (5, 1.0), (3, 0.25), (6, 0.25)):  # ragged batches, warm-up
            vae.beta = beta
            x = X.double()[:rows]
            assert_same(
                loss_and_grads(lambda x: compiled(x, 60), vae, x), loss_and_grads(eager, vae, x)
            )
    vae.beta = 1.0
    assert compiled.graphs == 1  # one graph for every batch size and β
    assert compiled.compile_seconds is not None and compiled.fallback is None


def test_cpu_options_reach_inductor_and_an_explicit_mode_is_kept(monkeypatch):
    """On the CPU, Inductor's default mode gets ``fused.CPU_OPTIONS`` (the latent kernel split
    over threads); a mode given by the caller goes to torch.compile unchanged (it takes one or
    the other)."""
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
    for mode in ("auto", "max-autotune-no-cudagraphs"):
        CompiledObjective(FusedObjective("meanfield_elbo"), small(), mode=mode)(X.double(), 60)
    assert seen == [
        {"backend": "inductor", "options": {"cpp.min_chunk_size": 64}},
        {"backend": "inductor", "mode": "max-autotune-no-cudagraphs"},
    ]


@pytest.mark.parametrize(
    ("prior", "kind", "estimator", "free_bits"),
    [
        ("standard_normal", "elbo", "reparam", 1e6),  # free bits hold: KL weight 0
        ("mog", "meanfield_elbo", "reparam", 0.0),  # no closed-form KL: Monte Carlo term
        ("standard_normal", "iwae", "dreg", 0.0),
    ],
)
def test_traced_graph_equals_eager(prior, kind, estimator, free_bits):
    torch._dynamo.reset()
    vae = small(prior)
    vae.free_bits = free_bits
    fo = FusedObjective(kind, 4 if kind == "iwae" else 1, estimator=estimator)
    compiled = CompiledObjective(fo, vae, backend="aot_eager", quiet=True)
    eager = lambda x: fo.loss(vae, x, 60) / 60  # noqa: E731
    for rows in (6, 4):
        x = X.double()[:rows]
        assert_same(
            loss_and_grads(lambda x: compiled(x, 60), vae, x), loss_and_grads(eager, vae, x)
        )
    assert compiled.graphs == 1


def test_three_epochs_one_graph_same_history(capsys, float64):
    """Ragged last batch (50 = 3 × 16 + 2), dynamic binarization, β warm-up: one graph for the
    loss and one for Adam's update, and the same losses as eager training (aot_eager draws
    eager's numbers; float64 by default so that Adam's step counter, from which the compiled
    update computes its bias correction, is float64 too)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(1)
    train = Split(torch.rand(50, 1, 3, 3, generator=gen, dtype=torch.float64), None, "dynamic")
    history = {}
    for compile in (False, True):
        vae = small()
        opts = StepOptions(compile=compile, warmup_steps=5)
        step = TrainStep(vae, opts, torch.device("cpu"), None, seed=0)
        if compile:
            step.compiled.backend = "aot_eager"
        before = counters["stats"]["unique_graphs"]
        torch.manual_seed(0)
        history[compile] = [run_epoch(step, train, 16, 0, e, None) for e in (1, 2, 3)]
    assert counters["stats"]["unique_graphs"] - before == 2  # the loss, Adam's update
    assert step.compiled.graphs == 1 and step._opt_state == "compiled"
    assert step.compile_seconds is not None
    err = capsys.readouterr().err
    assert err.count("compiled the training step (loss, gradient and Adam update) in") == 1
    torch.testing.assert_close(
        torch.tensor(history[True], dtype=torch.float64),
        torch.tensor(history[False], dtype=torch.float64),
        rtol=1e-10,
        atol=0,
    )


def test_fit_and_the_config_compile_the_step(monkeypatch, float64, tmp_path):
    """``fit(compile=True)`` and ``train.compile = true`` reach the step: the same history as
    eager training, one loss graph, and the compilation time recorded once."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    real = torch.compile

    def aot_eager(fn, **kw):  # Inductor's code generation is the other tests' cost
        return real(fn, **{**kw, "backend": "aot_eager", "mode": None})

    monkeypatch.setattr(torch, "compile", aot_eager)
    x = torch.bernoulli(torch.full((40, 1, 3, 3), 0.4), generator=torch.Generator().manual_seed(3))
    runs = {}
    for compile in (False, True):
        before = counters["stats"]["unique_graphs"]
        runs[compile] = pvae.fit(
            small(), x, epochs=2, batch_size=16, compile=compile, quiet=True, device="cpu"
        ).history
    assert counters["stats"]["unique_graphs"] - before == 2  # the loss, Adam's update
    assert "compile_seconds" in runs[True][0] and "compile_seconds" not in runs[True][1]
    assert "compile_seconds" not in runs[False][0]
    eager, compiled = (pvae.drop_timings(runs[c]) for c in (False, True))
    for a, b in zip(eager, compiled, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-9), key

    seen = {}
    monkeypatch.setattr("pvae.runs.fit", lambda vae, data, opts, **kw: seen.update(kw, o=opts))
    cfg = pvae.load_config(None, ["train.compile=true", "data.name=digits"])
    pvae.train_from_config(cfg, tmp_path / "run")
    assert seen["o"].train.compile is True


def test_compile_failure_falls_back_with_one_notice(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nmore detail")

    monkeypatch.setattr(torch, "compile", broken)
    vae = small()
    fo = FusedObjective("meanfield_elbo")
    compiled = CompiledObjective(fo, vae)
    x = X.double()
    a = loss_and_grads(lambda x: compiled(x, 60), vae, x)
    b = loss_and_grads(lambda x: fo.loss(vae, x, 60) / 60, vae, x)
    assert_same(a, b, rtol=0)
    compiled(x, 60)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RuntimeError: no C++ compiler found" in err
    assert "training eagerly" in err
    assert compiled.fallback == "RuntimeError: no C++ compiler found"


def test_user_errors_are_not_taken_for_compiler_failures():
    with pytest.raises(ValueError, match="2 \\* latent_dim"):
        # An encoder built for other data fails eagerly too: its error, not a notice.
        vae = small()
        vae.encoder.latent_dim = 3
        CompiledObjective(FusedObjective("meanfield_elbo"), vae, backend="aot_eager")(X.double(), 6)


def test_compile_off_the_fused_path_says_so(capsys):
    class Subclass(pvae.VAE):
        def guide(self, x=None, size=None, subsample=None, **kw):
            return super().guide(x, size, subsample, **kw)

    vae = Subclass(pvae.priors.StandardNormal(2), data_shape=(1, 3, 3), hidden=(8,))
    loss = make_loss(vae, StepOptions(compile=True))
    assert not isinstance(loss, CompiledLoss)
    assert "compile applies to the fast path only" in capsys.readouterr().err
    make_loss(small(), StepOptions(compile=True, fast=False))
    assert "fast=False" in capsys.readouterr().err
    assert isinstance(make_loss(small(), StepOptions(compile=True)), CompiledLoss)
    with pytest.raises(TypeError, match="compile must be True or False, got 'yes'"):
        StepOptions(compile="yes")


def test_compiled_log_px_one_graph_equals_eager(monkeypatch):
    """Blocks of 7, 7, 6 datapoints and chunks of 30, 30, 15 draws: one graph, eager's numbers."""
    torch._dynamo.reset()
    monkeypatch.setattr(_weights, "plan", lambda *a, **k: (7, 30))
    vae = small()
    x = torch.bernoulli(torch.full((20, 1, 3, 3), 0.4), generator=torch.Generator().manual_seed(2))
    x = x.double()
    eager = pvae.log_px(vae, x, k=75, seed=3, khat=False)
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend="aot_eager", **kw))
    fast = pvae.log_px(vae, x, k=75, seed=3, khat=False, compile=True)
    assert counters["stats"]["unique_graphs"] - before == 1
    torch.testing.assert_close(fast.log_px, eager.log_px, rtol=1e-12, atol=1e-12)


def test_bench_gpu_fails_fast_without_a_gpu():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 2
    assert "needs a CUDA GPU" in proc.stderr
    assert elapsed < 5, f"took {elapsed:.1f} s to fail"


def test_bench_gpu_script_runs_end_to_end_in_its_cpu_dry_run():
    """No GPU has been lent to this project yet: the dry run (toy sizes, on the CPU) runs every
    part of ``make bench-gpu`` so that the script itself is known to work when one is."""
    env = {**os.environ, "PVAE_BENCH_GPU_DRYRUN": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "compiled/hand" in out and "peak GPU memory" in out
    if "Fashion-MNIST not found" not in out:  # Debian's dataset-fashion-mnist is installed
        assert "compiled: epoch" in out and "pvae compiled:" in out and "compiled bf16:" in out
        assert "DDP smoke run" in out
