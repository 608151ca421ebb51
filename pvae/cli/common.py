"""What the ``pvae`` commands share: progress lines by phase on stderr, the one-line error
report, and whether this process prints (and shards its work) under ``torchrun``."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from pvae import distributed
from pvae.training.progress import task_progress

__all__ = ["Phases", "fail", "is_main", "num", "sharded"]


def is_main() -> bool:
    """Whether this process prints and writes: always, but under ``torchrun`` only rank 0."""
    d = distributed.info()
    return d is None or d.is_main


def sharded() -> bool:
    """Whether this process is one of several (``torchrun``): each computes its share."""
    return distributed.info() is not None


def num(v: float | None) -> str:
    """A number to 4 decimals, or ``n/a``."""
    return "n/a" if v is None else f"{v:.4f}"


class Phases:
    """Progress lines on stderr for a computation that reports ``progress(done, total)`` phase
    after phase, each counting from 0 (bounds: importance draws, then AIS, then BDMC): a new
    :func:`~pvae.training.progress.task_progress` per phase, named from ``phases`` (its last
    entry for any further phase). A context manager yielding the callback."""

    def __init__(self, phases: Sequence[tuple[str, str]], show: bool) -> None:
        self.phases, self.show = list(phases), show
        self.stack = contextlib.ExitStack()
        self.index, self.seen, self.total = -1, 0, -1
        self.advance: Callable[[int], None] = lambda n: None

    def __enter__(self) -> Callable[[int, int], None]:
        return self.tick

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def tick(self, done: int, total: int) -> None:
        if total != self.total or done < self.seen or self.seen == self.total:  # a new phase
            self.stack.close()
            self.index += 1
            name, unit = self.phases[min(self.index, len(self.phases) - 1)]
            self.advance = self.stack.enter_context(
                task_progress(name, total, show=self.show, unit=unit)
            )
            self.seen, self.total = 0, total
        self.advance(done - self.seen)
        self.seen = done


def fail(command: str, what: str, err: BaseException, status: int) -> int:
    """One line on stderr (with ``PVAE_DEBUG=1``, the traceback first); the exit status."""
    if os.environ.get("PVAE_DEBUG", "") not in ("", "0"):
        traceback.print_exception(err)
    print(f"pvae {command}: {what}: {err}", file=sys.stderr)
    return status
