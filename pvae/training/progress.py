"""What a person watching a run reads, all of it on stderr (stdout stays for results such as
``--json``): progress over the steps, one line per epoch, where an interrupted run left its
checkpoint, and the closing summary table. Only rank 0 of a distributed job writes.

Progress adapts to where stderr goes:

* **A terminal** (or a Jupyter kernel): tqdm's bar, redrawn in place.
* **Anything else** (a SLURM or nohup log, a pipe, pytest's capture): never a ``\\r``-redrawn
  bar, which fills log files with thousands of frames; instead one plain line at most every
  ``every`` seconds, e.g. ``step 1200/5000 (24%)  410 img/s  ETA 0:00:09``.

Per-epoch lines read, e.g.::

    epoch   12/200  train ELBO -95.817  val ELBO -95.123 ± 0.210 (s.e. over data)  5120 img/s  2.31s

where ``± 0.210 (s.e. over data)`` is the standard error of the validation mean over its datapoints
(the spread of the estimate, not of the data), and img/s the training images per second.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from pvae._checks import positive_float
from pvae.evaluation._psis import KHAT_LIMIT
from pvae.evaluation.log_px import KHAT_WARN_FRACTION

__all__ = ["Progress", "summary_table", "task_progress"]


def _interactive(stream: TextIO) -> bool:
    """Whether ``stream`` is redrawn in place: a terminal, or a Jupyter kernel's output (where
    tqdm draws a widget)."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    shell = sys.modules.get("IPython")
    get = getattr(shell, "get_ipython", None)
    return get is not None and type(get()).__name__ == "ZMQInteractiveShell"


def _clock(seconds: float) -> str:
    """``h:mm:ss`` (the ETA of the plain lines)."""
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class _Lines:
    """Plain progress lines, at most one every ``every`` seconds: the non-terminal bar."""

    def __init__(
        self, desc: str, total: int, every: float, stream: TextIO, rate: tuple[str, float]
    ) -> None:
        self.desc, self.total, self.every, self.stream = desc, total, every, stream
        self.rate_unit, self.rate_scale = rate
        self.n = 0
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        per_s = self.n / elapsed
        line = f"{self.desc} {self.n}/{self.total}"
        if self.total:
            line += f" ({100 * self.n / self.total:.0f}%)"
        line += f"  {per_s * self.rate_scale:.0f} {self.rate_unit}"
        if self.total and per_s > 0:
            line += f"  ETA {_clock(max(self.total - self.n, 0) / per_s)}"
        self.write(line)

    def write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        pass


class _Bar:
    """tqdm's bar (a terminal or a notebook)."""

    def __init__(self, desc: str, total: int, stream: TextIO, unit: str) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total, desc=desc or None, unit=unit, dynamic_ncols=True, leave=False, file=stream
        )

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def write(self, line: str) -> None:
        self.bar.write(line, file=self.bar.fp)

    def close(self) -> None:
        self.bar.close()


def _ticker(
    desc: str,
    total: int,
    every: float,
    stream: TextIO,
    unit: str,
    rate: tuple[str, float],
) -> _Bar | _Lines:
    if _interactive(stream):
        return _Bar(desc, total, stream, unit)
    return _Lines(desc, total, every, stream, rate)


class Progress:
    """Progress over the steps, the per-epoch lines and the interruption message of
    :func:`pvae.fit`; a context manager that closes the bar.

    Args:
        show: Show progress over the steps (the bar, or the periodic lines).
        main: This process writes (rank 0, or no distributed job).
        total: Steps this run will take.
        epochs: The run's last epoch, for the per-epoch lines.
        quiet: Write nothing but the interruption message: no progress, no per-epoch lines.
        every: Seconds between the periodic lines when stderr is not a terminal.
        batch_size: Images per step, for the periodic lines' images per second.
        stream: Where to write; ``None``: ``sys.stderr`` at the time of writing.
    """

    def __init__(
        self,
        show: bool,
        main: bool,
        total: int,
        epochs: int,
        *,
        quiet: bool = False,
        every: float = 30.0,
        batch_size: int = 1,
        stream: TextIO | None = None,
    ) -> None:
        self.main = main
        self.lines = main and not quiet
        self.epochs = epochs
        self.stream = stream if stream is not None else sys.stderr
        every = positive_float("log_every", every, allow_zero=True)
        self._bar: _Bar | _Lines | None = None
        if show and self.lines:
            if _interactive(self.stream):
                self._bar = _Bar("", total, self.stream, "step")
            else:
                self._bar = _Lines("step", total, every, self.stream, ("img/s", float(batch_size)))

    def step(self) -> None:
        """One step done."""
        if self._bar is not None:
            self._bar.update(1)

    def epoch_done(self, record: Mapping[str, float]) -> None:
        """The epoch's line: train ELBO, validation ELBO ± its standard error, images per
        second, wall time (from the record's ``epoch_seconds`` and ``images_per_second``)."""
        if self.lines:
            self._write(epoch_line(record, self.epochs))

    def interrupted(self, epoch: int, run_path: Path | None) -> None:
        """Say which checkpoint an interruption in ``epoch`` left, and how to continue (even
        when quiet: it is the one line a stopped run must leave)."""
        if run_path is not None and self.main:
            self._write(
                f"interrupted in epoch {epoch}; checkpoint of epoch {epoch - 1} kept in "
                f"{run_path} (continue with resume)"
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, file=self.stream, flush=True)


def epoch_line(record: Mapping[str, float], epochs: int) -> str:
    """One epoch's line (see the module docstring)."""
    line = f"epoch {int(record['epoch']):>4}/{epochs}  train ELBO {record['train_elbo']:10.3f}"
    if "val_elbo" in record:
        line += f"  val ELBO {record['val_elbo']:10.3f}"
        if "val_elbo_se" in record:
            line += f" ± {record['val_elbo_se']:.3f} (s.e. over data)"
    if "val_log_px" in record:
        line += f"  log p(x) ≥ {record['val_log_px']:.3f}"
    if "images_per_second" in record:
        line += f"  {record['images_per_second']:.0f} img/s"
    if "epoch_seconds" in record:
        line += f"  {record['epoch_seconds']:.2f}s"
    return line


@contextmanager
def task_progress(
    desc: str,
    total: int,
    show: bool = True,
    *,
    every: float = 30.0,
    unit: str = "it",
    stream: TextIO | None = None,
) -> Iterator[Callable[[int], None]]:
    """Progress of a long task (an evaluation over chunks of data), as :class:`Progress` shows
    training's: a bar on a terminal, else a plain line at most every ``every`` seconds, e.g.
    ``log p(x) 1200/5000 (24%)  410 it/s  ETA 0:00:09``.

    Args:
        desc: What is being done (the lines' first words).
        total: Units of work in all.
        show: ``False``: show nothing (``advance`` does nothing).
        every: Seconds between the plain lines.
        unit: The unit of work, for the rate.
        stream: Where to write; ``None``: ``sys.stderr``.

    Yields:
        ``advance(n)``: call it with the units just done.

    Example:
        >>> with task_progress("log p(x)", total=3, show=False) as advance:
        ...     for chunk in range(3):
        ...         advance(1)
    """
    if not show:
        yield lambda n: None
        return
    every = positive_float("every", every, allow_zero=True)
    out = stream if stream is not None else sys.stderr
    ticker = _ticker(desc, total, every, out, unit, (f"{unit}/s", 1.0))
    try:
        yield ticker.update
    finally:
        ticker.close()


# -- the closing summary --------------------------------------------------------------------------
_NAMES = {
    "run": "run folder",
    "epoch": "epochs",
    "step": "steps",
    "train_elbo": "train ELBO (objective)",
    "val_elbo": "val ELBO",
    "val_recon": "val reconstruction E_q[log p(x|z)]",
    "val_kl": "val KL(q(z|x) || p(z))",
    "val_log_px": "val log p(x) (IWAE, largest k)",
    "val_log_px_khat_frac": f"share of PSIS k̂ ≥ {KHAT_LIMIT}",
    "images_per_second": "training speed (images/s)",
    "epoch_seconds": "last epoch (seconds)",
    "val_seconds": "of which validation (seconds)",
}


def _name(key: str) -> str:
    if key.startswith("val_iwae_") and key[9:].isdigit():
        return f"val IWAE k={key[9:]}"
    if _layer_kl(key):
        return f"val KL of layer {key[7:]}"
    if key.startswith("val_active_"):
        return f"active units of layer {key[11:]}"
    return _NAMES.get(key, key)


def _layer_kl(key: str) -> bool:
    """``val_kl_<site>``: a layer's KL term (:func:`pvae.diagnostics.layer_columns`)."""
    return key.startswith("val_kl_") and key != "val_kl_se"


def _shown(key: str) -> bool:
    """Whether the summary lists ``key``: not the per-unit KL columns (``pvae plot --what kl``
    draws them)."""
    return not key.startswith("val_unit_kl_")


def _number(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    if isinstance(v, int) or (math.isfinite(v) and v.is_integer() and abs(v) >= 100):
        return f"{int(v)}"
    if not math.isfinite(v):
        return str(v)
    if abs(v) >= 1000:
        return f"{v:.1f}"
    return f"{v:.3f}"


def summary_table(record: Mapping[str, Any]) -> str:
    """The closing summary of a run as a small two-column table.

    Metrics are named in words; bounds are in nats per datapoint; an entry ``K_se`` is shown as
    ``± s.e.`` next to ``K``; ``run`` (the run folder, if given) comes first. A hierarchical
    VAE's KL term and active units per layer are listed (``val_kl_<site>``,
    ``val_active_<site>``), its KL per unit is not. Unknown keys are shown under their own names.

    Args:
        record: The last epoch's record (:attr:`pvae.training.FitResult.final`), optionally with
            ``run``.

    Example:
        >>> print(summary_table({"run": "runs/a", "epoch": 3, "train_elbo": -27.4766,
        ...                      "val_elbo": -27.2447, "val_elbo_se": 0.2996}))
        run folder               runs/a
        epochs                   3
        train ELBO (objective)   -27.477 nats
        val ELBO                 -27.245 ± 0.300 nats (s.e. over data)
    """
    rows: list[tuple[str, str]] = []
    keys = sorted((k for k in record if _shown(k)), key=lambda k: k != "run")
    nats = {"train_elbo", "val_elbo", "val_recon", "val_kl", "val_log_px"}
    for key in keys:
        if key.endswith("_se") and key[:-3] in record:
            continue
        value = _number(record[key]) if key != "images_per_second" else f"{record[key]:.0f}"
        unit = " nats" if key in nats or key.startswith("val_iwae_") or _layer_kl(key) else ""
        se = record.get(f"{key}_se")
        if se is not None:
            value += f" ± {_number(se)}{unit} (s.e. over data)"
        else:
            value += unit
        rows.append((_name(key), value))
    width = max((len(n) for n, _ in rows), default=0) + 3
    lines = [f"{n:<{width}}{v}".rstrip() for n, v in rows]
    frac = record.get("val_log_px_khat_frac")
    if isinstance(frac, float) and frac > KHAT_WARN_FRACTION:  # where the number is read
        lines.append(
            f"WARNING: PSIS k̂ ≥ {KHAT_LIMIT} for {100 * frac:.0f}% of the validation points: the "
            "val log p(x) may be biased low; check it with pvae evaluate (more draws) or pvae ais"
        )
    return "\n".join(lines)
