"""Data-parallel training and evaluation on ``torch.distributed``.

Launch with torchrun (``torchrun --nproc_per_node=N -m pvae train ...``, or with its rendezvous
arguments across machines). :func:`init` reads torchrun's environment, picks ``nccl`` on CUDA and
``gloo`` on CPU, and sets a collective timeout so that a failed rank makes the others fail
with an error instead of hanging. Training wraps the objective in
:class:`~torch.nn.parallel.DistributedDataParallel`; evaluation shards blocks of datapoints and
gathers exact per-datapoint results.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["DistInfo", "gather_blocks", "info", "init", "shard", "shutdown"]

DEFAULT_TIMEOUT_S = 300


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def info() -> DistInfo | None:
    """The current job's ranks, or ``None`` outside a multi-process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return DistInfo(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    )


def init(backend: str | None = None, timeout_s: float | None = None) -> DistInfo | None:
    """Join the process group torchrun describes in the environment (no-op without one).

    Args:
        backend: ``"nccl"`` or ``"gloo"``; default nccl with CUDA, gloo without.
        timeout_s: Collective timeout; default ``$PVAE_DIST_TIMEOUT`` or 300 s.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return None
    if not dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        t = (
            timeout_s
            if timeout_s is not None
            else float(os.environ.get("PVAE_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
        )
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=t))
    return info()


def shutdown(clean: bool = True) -> None:
    """Leave the process group torchrun set up (no-op outside one).

    Args:
        clean: The job ended normally on this rank. Every rank then meets the others at a
            barrier before any of them tears its connections down, so no rank's transport
            threads see a peer vanish mid-exchange. After a failure the barrier is skipped (a
            peer may be gone or stuck), and the group is destroyed at once.

    Objects still holding the group (a ``DistributedDataParallel`` wrapper in a reference
    cycle, say) are collected first, while the interpreter is whole: a group torn down by
    interpreter finalization instead can abort the process on exit.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    if clean and dist.get_world_size() > 1:
        # A peer that failed has its own error to report; this rank's work is done either way.
        with contextlib.suppress(RuntimeError):  # DistBackendError is one
            dist.barrier()
    dist.destroy_process_group()


def shard(order: Tensor, d: DistInfo) -> Tensor:
    """``DistributedSampler`` semantics for an index permutation: pad to a multiple of the world
    size by repeating from the start, then take every ``world_size``-th index from ``rank``."""
    n = order.numel()
    total = -(-n // d.world_size) * d.world_size
    if total > n:
        order = torch.cat([order, order[: total - n]])
    return order[d.rank : total : d.world_size]


def gather_blocks(local: dict[int, Tensor], num_blocks: int) -> list[Tensor]:
    """All-gather per-block results computed on different ranks, in block order."""
    d = info()
    if d is None:
        return [local[i] for i in range(num_blocks)]
    items = {i: t.cpu() for i, t in local.items()}
    gathered: list[dict[int, Tensor] | None] = [None] * d.world_size
    dist.all_gather_object(gathered, items)
    merged: dict[int, Tensor] = {}
    for part in gathered:
        merged.update(part or {})
    return [merged[i] for i in range(num_blocks)]
