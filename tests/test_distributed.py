"""Data-parallel training and evaluation with torch.distributed: 2 gloo processes on the CPU,
launched by torchrun exactly as users launch them (and 2 nccl processes where two GPUs are)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pvae.training import drop_timings

HERE = Path(__file__).resolve().parent
WORKER = HERE / "ddp_worker.py"


def torchrun(*args: str, timeout: float = 240, env: dict | None = None):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        *args,
    ]
    full_env = {**os.environ, "PVAE_DIST_TIMEOUT": "30", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=HERE.parent
    )


def single(*args: str, env: dict | None = None):
    return subprocess.run(
        [sys.executable, str(WORKER), *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=HERE.parent,
        env={**os.environ, **(env or {})},
    )


def distributed_and_single(mode: str, tmp_path: Path, env: dict | None = None) -> tuple[dict, dict]:
    """Run the worker in ``mode`` on 2 ranks and in one process; return both results."""
    for name, proc in (
        ("ddp", lambda out: torchrun(str(WORKER), mode, out, env=env)),
        ("one", lambda out: single(mode, out, env=env)),
    ):
        res = proc(str(tmp_path / f"{name}.pt"))
        assert res.returncode == 0, res.stderr[-3000:]
    return tuple(torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("ddp", "one"))


SHARED_MODES = ("train", "train_generic", "evaluate")


@pytest.fixture(scope="module")
def shared_runs(tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    """The train, train_generic and evaluate modes, run one after another in one torchrun launch
    and in one single process (each launch costs seconds of imports): mode -> (ddp, one)."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    for name, proc in (
        ("ddp", lambda out: torchrun(str(WORKER), ",".join(SHARED_MODES), out)),
        ("one", lambda out: single(",".join(SHARED_MODES), out)),
    ):
        res = proc(str(tmp_path / f"{name}.pt"))
        assert res.returncode == 0, res.stderr[-3000:]
    return {
        m: tuple(torch.load(tmp_path / f"{n}-{m}.pt", weights_only=True) for n in ("ddp", "one"))
        for m in SHARED_MODES
    }


@pytest.mark.parametrize("mode", ["train", "train_generic"])  # a pvae.VAE; a plain-Pyro module
def test_two_ranks_with_batch_b_match_one_process_with_batch_2b(mode, shared_runs):
    a, b = shared_runs[mode]
    assert a.keys() == b.keys()
    for k in a:
        # Same minibatches, same (noiseless) draws, gradients averaged over ranks: the runs
        # differ only by float32 summation order, so 1e-5 relative after 12 Adam steps.
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_over_nccl_match_one_gpu_with_batch_2b(tmp_path):
    a, b = distributed_and_single("train", tmp_path, env={"PVAE_TEST_DDP_DEVICE": "cuda"})
    assert a.keys() == b.keys()
    for k in a:
        # As on the CPU, but nccl's all-reduce and cuBLAS choose their own summation orders
        # for batches of 8 and 16: float32 rounding, compounded over 12 Adam steps.
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_distributed_evaluation_equals_one_process_exactly(shared_runs):
    """log p(x), the bound ladder with AIS and BDMC, and AIS itself: each rank computes its
    share of the blocks (rank 0's AIS progress counts 3 of 6 blocks) and the gathered numbers
    are one process's, bit for bit."""
    a, b = shared_runs["evaluate"]
    for key in ("log_px", "se", "khat", "ais", "ais_se", "ais_accept", "ais_step_size"):
        assert torch.equal(a[key], b[key]), key
    untimed = [  # AIS and BDMC summaries carry their wall time
        {k: {**v, "seconds": None} if k in ("ais", "bdmc") else v for k, v in r["ladder"].items()}
        for r in (a, b)
    ]
    assert untimed[0] == untimed[1]
    assert a["ladder"]["ais"] is not None and a["ladder"]["bdmc"] is not None
    assert (a["ais_share"], b["ais_share"]) == (21 * 4, 37 * 4)  # T = 4 steps; blocks 0, 2, 4


def test_a_failing_rank_ends_the_job_with_an_error_not_a_hang(tmp_path):
    t0 = time.monotonic()
    proc = torchrun(str(WORKER), "fail", str(tmp_path / "x.pt"), timeout=200)
    assert proc.returncode != 0
    assert "rank 1 failed on purpose" in proc.stderr
    assert time.monotonic() - t0 < 150


def test_cli_under_torchrun_writes_once_and_resumes_exactly(tmp_path, capsys):
    sets = [
        "--set",
        "train.device=cpu",
        "--set",
        "model.latent_dim=3",
        "--no-progress",
        "--set",
        "eval.curve_every=1",
        "--set",
        "eval.curve_ks=[2, 10]",
        "--set",
        "eval.curve_subset=32",
    ]
    full = torchrun(
        "-m", "pvae", "train", "--out", str(tmp_path / "full"), "--set", "train.epochs=3", *sets
    )
    assert full.returncode == 0, full.stderr[-3000:]
    assert full.stdout.count("run folder ") == 1  # rank 0 reports, rank 1 is quiet
    part = torchrun(
        "-m", "pvae", "train", "--out", str(tmp_path / "part"), "--set", "train.epochs=2", *sets
    )
    assert part.returncode == 0, part.stderr[-3000:]
    ckpt = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert len(ckpt["rng"]["ranks"]) == 2
    res = torchrun(
        "-m",
        "pvae",
        "train",
        "--resume",
        str(tmp_path / "part"),
        "--set",
        "train.epochs=3",
        "--no-progress",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    hist = [
        drop_timings(json.loads((tmp_path / r / "metrics.json").read_text()))
        for r in ("full", "part")
    ]
    assert hist[0] == hist[1]
    # A distributed checkpoint resumed in a world of another size is refused clearly.
    from pvae.cli import main

    assert (
        main(
            [
                "train",
                "--resume",
                str(tmp_path / "part"),
                "--set",
                "train.epochs=4",
                "--no-progress",
            ]
        )
        == 2
    )
    # pvae ais under torchrun: each rank anneals its share; rank 0 prints one process's numbers.
    argv = ["-m", "pvae", "ais", str(tmp_path / "full"), "--subset", "40", "--steps", "3"]
    argv += ["--chains", "2", "--leapfrog", "2", "--bdmc", "3", "--json", "--device", "cpu"]
    ranks = torchrun(*argv)
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    # One process: this one (an interpreter start spared), with one thread, as torchrun's ranks
    # have: the same summation orders.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        capsys.readouterr()
        assert main(argv[2:]) == 0, capsys.readouterr().err[-3000:]
    finally:
        torch.set_num_threads(threads)
    # One JSON object each: rank 1 prints nothing.
    got = [json.loads(ranks.stdout), json.loads(capsys.readouterr().out)]
    for g in got:
        for key in ("ais", "bdmc"):
            g[key].pop("seconds")
    assert got[0] == got[1] and got[0]["ais"]["n"] == 40


def test_backend_is_gloo_on_cpu_and_shards_follow_distributed_sampler():
    from pvae.distributed import DistInfo, shard

    order = torch.arange(10)
    parts = [shard(order, DistInfo(r, 3, r)) for r in range(3)]
    assert [p.tolist() for p in parts] == [[0, 3, 6, 9], [1, 4, 7, 0], [2, 5, 8, 1]]
    if not torch.cuda.is_available():
        pytest.importorskip("torch.distributed")
        assert torch.distributed.is_gloo_available()
