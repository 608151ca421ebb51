"""What a person watching a run reads: a progress bar over the steps, one line per epoch, and
where an interrupted run left its checkpoint. Only rank 0 of a distributed job writes."""

from __future__ import annotations

import sys
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["Progress"]


class Progress:
    """The progress bar (on stderr) and the per-epoch lines; a context manager that closes the
    bar.

    Args:
        show: Show the bar and the per-epoch lines.
        main: This process writes (rank 0, or no distributed job); the message after an
            interruption is written even without ``show``.
        total: Steps this run will take.
        epochs: The run's last epoch, for the per-epoch lines.
    """

    def __init__(self, show: bool, main: bool, total: int, epochs: int) -> None:
        self.show = show and main
        self.main = main
        self.epochs = epochs
        self._bar = _bar(total) if self.show else None

    def step(self) -> None:
        """One step done."""
        if self._bar is not None:
            self._bar.update(1)

    def epoch_done(self, record: dict[str, float], seconds: float) -> None:
        """The epoch's line: train ELBO, validation ELBO ± its standard error, time."""
        if not self.show:
            return
        line = f"epoch {record['epoch']:>4}/{self.epochs}  train ELBO {record['train_elbo']:10.3f}"
        if "val_elbo" in record:
            line += f"  val ELBO {record['val_elbo']:10.3f} ± {record['val_elbo_se']:.3f}"
        self._write(f"{line}  ({seconds:.2f}s)")

    def interrupted(self, epoch: int, run_path: Path | None) -> None:
        """Say which checkpoint an interruption in ``epoch`` left, and how to continue."""
        if run_path is not None and self.main:
            self._write(
                f"interrupted in epoch {epoch}; checkpoint of epoch {epoch - 1} kept in "
                f"{run_path} (continue with resume)"
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

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
            print(line)


def _bar(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True, leave=False, file=sys.stderr)
