"""Everything measured on a CUDA GPU, in one command: ``make bench-gpu`` (no arguments).

1. The training-step table of ``benchmarks/train_step.py`` on the GPU (784-200-200-50 tanh MLP
   VAE, Bernoulli decoder, batch 20/128/1000): hand-written eager PyTorch, pvae eager (fused
   path), pvae compiled (``compile=True``: CUDA graphs through ``mode="reduce-overhead"``) and
   plain Pyro SVI, timed interleaved in one process.
2. One Fashion-MNIST epoch: all 60,000 training images (pvae's train and validation splits
   together), batch 128, dynamically binarized, the data on the GPU; eager and compiled, each
   after a warm-up epoch (the compiled one's warm-up includes compilation, printed).
3. k = 5000 log p(x) over the 10,000 Fashion-MNIST test images (statically binarized): the
   hand-written importance sampler of ``benchmarks/log_px.py``, ``pvae.log_px`` eager, compiled,
   and compiled with the decoder in bfloat16 and in TF32, with the change in mean log p(x)
   against its Monte Carlo s.e.
4. Peak GPU memory of each part (``torch.cuda.max_memory_allocated``).
5. With two or more GPUs: a 2-process DDP (nccl) smoke run of ``pvae.fit`` for one epoch.

Fashion-MNIST comes from Debian's files (``/usr/share/datasets/fashion-mnist``) or torchvision's
root (``$PVAE_DATA`` or ``~/.cache/pvae``), as :func:`pvae.datasets.load` finds it; nothing is
downloaded. On a machine without a usable CUDA GPU the command stops at once with exit code 2.
Targets on one H100: epoch < 1 s, the k = 5000 evaluation < 30 s.

``PVAE_BENCH_GPU_DRYRUN=1`` runs every part on the CPU at toy sizes, to check the script itself
on a machine without a GPU (its figures mean nothing).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

NO_GPU = 2  # exit code: no CUDA GPU here


def no_gpu(why: str) -> None:
    print(
        f"bench-gpu: needs a CUDA GPU, and {why}. Run `make bench-gpu` on a machine with an "
        "NVIDIA GPU and a CUDA build of torch; on this machine `make bench` measures the CPU.",
        file=sys.stderr,
    )
    sys.exit(NO_GPU)


DRYRUN = os.environ.get("PVAE_BENCH_GPU_DRYRUN") == "1"


def check_gpu_cheaply() -> None:
    """Fail before importing torch (seconds) where no GPU can be visible."""
    if DRYRUN:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        no_gpu(f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU")
    if sys.platform.startswith("linux") and not (
        Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()
    ):
        no_gpu("this machine has no NVIDIA driver loaded (no /proc/driver/nvidia/version)")


check_gpu_cheaply()

# The heavy imports come after the check: a CPU-only machine never pays for them.
import socket  # noqa: E402

import torch  # noqa: E402

if not DRYRUN and not torch.cuda.is_available():
    no_gpu(f"torch {torch.__version__} sees none (torch.cuda.is_available() is False)")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import log_px as log_px_bench  # noqa: E402
import train_step  # noqa: E402
from _timing import peak_mb, peak_reset, timed  # noqa: E402

import pvae  # noqa: E402
from pvae.datasets import Split  # noqa: E402
from pvae.evaluation._weights import DEFAULT_BUDGET, plan, resolve  # noqa: E402
from pvae.training.step import StepOptions, TrainStep, run_epoch  # noqa: E402

# Sizes: (step batches, training images, test images, k); toy ones in the dry run.
BATCHES, N_TRAIN, N_TEST, K = ((20, 128, 1000), None, None, 5000)
if DRYRUN:
    BATCHES, N_TRAIN, N_TEST, K = ((20,), 600, 64, 50)


def step_table(device: torch.device) -> None:
    print("\n== training step (784-200-200-50, ms per step, median of interleaved rounds) ==")
    peak_reset(device)
    impls = train_step.make_impls(device, compile=True)
    sec = train_step.first_step_seconds(impls["compiled"], 20, device)
    print(f"compiled pvae step: first two steps (compilation, CUDA graph capture) {sec:.1f} s")
    train_step.print_table(
        impls, device, BATCHES, lambda b: 50 if b <= 128 else 20, 20 if not DRYRUN else 2
    )
    print(f"peak GPU memory (step table): {peak_mb(device):.0f} MB")


def fashion(device: torch.device) -> tuple[Split, torch.Tensor]:
    """The 60,000 training images (dynamic binarization) and the 10,000 test images (static),
    on ``device``."""
    dyn = pvae.datasets.load("fashion-mnist", binarize="dynamic", download=False)
    train = Split(torch.cat([dyn.train.x, dyn.val.x])[:N_TRAIN], None, "dynamic").to(device)
    test = pvae.datasets.load("fashion-mnist", binarize="static", download=False).test.x
    return train, test[:N_TEST].to(device)


def epochs(device: torch.device, train: Split) -> pvae.VAE:
    print(f"\n== one Fashion-MNIST epoch ({len(train):,} images, batch 128, data on {device}) ==")
    trained = None
    for compile in (False, True):
        peak_reset(device)
        vae = train_step.make_vae(device)
        step = TrainStep(vae, StepOptions(compile=compile), device, None, seed=0, quiet=True)
        times = []
        for epoch in (1, 2):  # the first is the warm-up (compilation, CUDA graph capture)
            elbo, sec = timed(lambda s=step, e=epoch: run_epoch(s, train, 128, 0, e, None), device)
            times.append(sec)
        name = "compiled" if compile else "eager"
        extra = f", compile {step.compile_seconds:.1f} s" if compile else ""
        print(
            f"{name:>8}: epoch {times[1]:.2f} s ({len(train) / times[1]:,.0f} img/s; warm-up "
            f"epoch {times[0]:.2f} s{extra}), train ELBO {elbo:.2f}, "
            f"peak {peak_mb(device):.0f} MB"
        )
        trained = vae
    assert trained is not None
    return trained.eval()


def evaluation(device: torch.device, vae: pvae.VAE, x: torch.Tensor, k: int = K) -> None:
    print(f"\n== log p(x), k = {k}, {x.shape[0]:,} test images (the model trained 2 epochs) ==")
    block, chunk = plan(resolve(vae, x, None, None), k, DEFAULT_BUDGET, torch.float64, False)
    runs = {
        "hand-written": lambda: log_px_bench.handwritten(vae, x, k, block, chunk),
        "pvae eager": lambda: pvae.log_px(vae, x, k=k, khat=False, seed=0),
        "pvae compiled": lambda: pvae.log_px(vae, x, k=k, khat=False, seed=0, compile=True),
        "compiled bf16": lambda: pvae.log_px(
            vae, x, k=k, khat=False, seed=0, compile=True, precision="bf16"
        ),
        "compiled tf32": lambda: pvae.log_px(
            vae, x, k=k, khat=False, seed=0, compile=True, precision="tf32"
        ),
    }
    if device.type != "cuda":
        del runs["compiled tf32"]  # a CUDA mode
    # Δ against the same estimator in float32: the compiled one draws from Inductor's generator
    # (other numbers than eager), so reduced precision is judged against the compiled float32.
    refs = {"pvae compiled": "pvae eager", "compiled bf16": "pvae compiled"}
    refs["compiled tf32"] = "pvae compiled"
    means: dict[str, float] = {}
    for name, run in runs.items():
        if "compiled" in name:  # compile on a slice first: the timing is the estimate's own
            warm = {"pvae compiled": None, "compiled bf16": "bf16", "compiled tf32": "tf32"}[name]
            pvae.log_px(vae, x[:256], k=k, khat=False, compile=True, precision=warm)
        peak_reset(device)
        out, sec = timed(run, device)
        if isinstance(out, torch.Tensor):
            line = f"mean log p(x) {float(out.mean()):.3f}"
        else:
            s = out.summary()
            means[name] = s["log_px"]
            line = f"mean log p(x) {s['log_px']:.3f} ± {s['log_px_se']:.4f}"
            if name in refs:
                diff = s["log_px"] - means[refs[name]]
                line += f" (Δ vs {refs[name]} {diff:+.4f} = {diff / s['log_px_se']:+.2f} s.e.)"
        print(
            f"{name:>14}: {sec:6.2f} s ({x.shape[0] * k / sec:.3g} pairs/s), {line}, "
            f"peak {peak_mb(device):.0f} MB",
            flush=True,
        )


def _ddp_worker(rank: int, port: int, images: torch.Tensor) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    os.environ["WORLD_SIZE"] = "2"
    d = pvae.distributed.init("nccl")
    try:
        vae = train_step.make_vae(torch.device("cpu"))
        res, sec = timed(
            lambda: pvae.fit(vae, images, epochs=1, batch_size=128, progress=False, device="cuda"),
            torch.device("cuda", rank),
        )
        elbo = res.final["train_elbo"]
        if d is not None and d.is_main:
            print(
                f"DDP smoke run: 2 ranks (nccl), 1 epoch of {images.shape[0]:,} images in "
                f"{sec:.1f} s, train ELBO {elbo:.2f}",
                flush=True,
            )
    finally:
        pvae.distributed.shutdown()


def ddp_smoke(train: Split) -> None:
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    print(f"\n== DDP smoke run ({n} GPU{'s' if n != 1 else ''} visible) ==")
    if n < 2:
        print("skipped: needs two GPUs")
        return
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    images = torch.bernoulli(train.x[:16384].cpu())
    torch.multiprocessing.spawn(_ddp_worker, args=(port, images), nprocs=2, join=True)


def main() -> None:
    if DRYRUN:
        device = torch.device("cpu")
        print(f"bench-gpu DRY RUN on the CPU at toy sizes, torch {torch.__version__}")
    else:
        device = torch.device("cuda", torch.cuda.current_device())
        props = torch.cuda.get_device_properties(device)
        print(
            f"bench-gpu on {props.name} ({props.total_memory / 2**30:.0f} GiB), torch "
            f"{torch.__version__}, CUDA {torch.version.cuda}, pvae {pvae.__version__}"
        )
    train_step.pyro.set_rng_seed(0)
    step_table(device)
    try:
        train, test = fashion(device)
    except Exception as err:  # no Fashion-MNIST files: the step table is still worth having
        print(f"\nFashion-MNIST not found ({type(err).__name__}: {err}); skipping parts 2-5")
        return
    vae = epochs(device, train)
    evaluation(device, vae, test)
    ddp_smoke(train)


if __name__ == "__main__":
    main()
