"""The timing every benchmark shares: a synchronized wall clock, interleaved rounds, medians and
ratios over rounds, and GPU peak memory.

Imported by the benchmark scripts as ``from _timing import ...`` (a script's folder is first
on ``sys.path``).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

MB = 2**20

CLOCK: Callable[[], float] = time.perf_counter
"""The clock :func:`timed` reads: the wall clock, or ``time.thread_time`` (this thread's CPU
time; a benchmark's ``--clock cpu``), which another process's load on a shared machine barely
moves where torch runs on the calling thread (``torch.set_num_threads(1)``)."""


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``fn()`` and its wall time in seconds, the device synchronized before and after."""
    sync(device)
    t0 = CLOCK()
    out = fn()
    sync(device)
    return out, CLOCK() - t0


def peak_reset(device: torch.device) -> None:
    """Start counting the device's peak memory afresh (CUDA only)."""
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float:
    """Peak allocated device memory since :func:`peak_reset`, MB (NaN on the CPU)."""
    sync(device)
    return torch.cuda.max_memory_allocated(device) / MB if device.type == "cuda" else math.nan


class Timing(NamedTuple):
    """Seconds of each implementation, one entry per round (per step, from
    :func:`time_interleaved`; per run where a benchmark times whole runs)."""

    rounds: dict[str, list[float]]

    def seconds(self, name: str) -> float:
        """Median seconds per step."""
        return statistics.median(self.rounds[name])

    def ratio(self, name: str, ref: str = "hand") -> tuple[float, float, float]:
        """Median and quartiles over rounds of ``name``'s time / ``ref``'s time in the same round
        (the two ran back to back, so a slow spell of a shared machine cancels)."""
        r = sorted(a / b for a, b in zip(self.rounds[name], self.rounds[ref], strict=True))
        q1, med, q3 = statistics.quantiles(r, n=4) if len(r) > 1 else (r[0],) * 3
        return med, q1, q3


def time_interleaved(
    impls: dict, x: torch.Tensor, idx: torch.Tensor, steps: int, rounds: int
) -> Timing:
    """Time each implementation in ``rounds`` rounds of ``steps`` steps, after 5 warm-up steps
    each. Within a round every implementation runs once, in alternating order (forwards, then
    backwards next round), so each block sits next to the others in time; ratios are then taken
    round by round (:meth:`Timing.ratio`)."""
    times: dict[str, list[float]] = {k: [] for k in impls}
    for step in impls.values():  # warm-up
        for _ in range(5):
            step(x, idx)
    names = list(impls)

    def block(step: Callable) -> None:
        for _ in range(steps):
            step(x, idx)

    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            _, sec = timed(lambda name=name: block(impls[name]), x.device)
            times[name].append(sec / steps)
    return Timing(times)


def ratio_text(t: Timing, name: str, ref: str = "hand") -> str:
    """``median [q1, q3]`` of the per-round ratio of ``name``'s time to ``ref``'s."""
    med, q1, q3 = t.ratio(name, ref)
    return f"{med:.3f} [{q1:.2f}, {q3:.2f}]"
