r"""Compare trained runs across seeds: pooled final metrics, paired per-datapoint differences of
log p(x) on the same test points, and overlaid validation curves (``pvae compare``).

A ranking of models from one training run each confuses the Monte Carlo error of an estimate
with the variability of training itself. Here every configuration is trained with several seeds
(``pvae train --seeds 0 1 2``), every run is evaluated per datapoint (``pvae evaluate RUN``
stores ``RUN/evaluation/<split>.npz`` through :func:`~pvae.rundir.save_evaluation`), and
:func:`compare` reports, for runs grouped by configuration (the seed pooled):

* each group's final metrics as mean ± standard error over its :math:`n` seeds,
  :math:`\bar m \pm s_m/\sqrt n` with :math:`s_m` the sample standard deviation of the per-seed
  values :math:`m_1, \dots, m_n` (one seed: no s.e.);
* per datapoint :math:`i` of the same test set (checked by a fingerprint of the data), the
  difference of a group :math:`A` from the reference group :math:`B`

  .. math::

      d_i = \frac1{n_A}\sum_{s=1}^{n_A} \log\hat p_{A,s}(x_i)
          - \frac1{n_B}\sum_{s=1}^{n_B} \log\hat p_{B,s}(x_i),
      \qquad \bar d = \frac1N \sum_i d_i,

  with three standard errors of :math:`\bar d` that answer three questions:

  - **over datapoints**, :math:`\mathrm{sd}(d)/\sqrt N`: how much :math:`\bar d` would move on
    another test set of :math:`N` points drawn like this one, for these trained models. Pairing
    on the same points removes the spread of difficulty between datapoints, which dominates an
    unpaired comparison of two means.
  - **over seeds**, :math:`\sqrt{s_A^2/n_A + s_B^2/n_B}` with :math:`s_G` the standard deviation
    of the per-seed means :math:`\frac1N\sum_i \log\hat p_{G,s}(x_i)` (their difference of means
    is :math:`\bar d` exactly): how much :math:`\bar d` would move if the models were retrained
    with other seeds, on this test set. Needs two seeds in both groups.
  - **Monte Carlo**, :math:`\sqrt{\sum_i \big(\sum_s \mathrm{se}_{A,s,i}^2/n_A^2
    + \sum_s \mathrm{se}_{B,s,i}^2/n_B^2\big)}/N` from the per-datapoint importance-sampling
    errors: how much :math:`\bar d` would move with other importance samples. Usually the smallest.

  A difference is worth stating when it is well beyond (say, twice) the larger of the first two.

References:
    Burda, Grosse & Salakhutdinov (2015), *Importance weighted autoencoders* (log p(x)).
    Bouthillier et al. (2021), *Accounting for variance in machine learning benchmarks*, MLSys
    (seeds as a source of variance to report).

Example:
    From a shell, three priors with three seeds each::

        for p in standard_normal mog vamp; do
            pvae train --set model.prior.name=$p --seeds 0 1 2 --out runs/$p --quiet
        done
        pvae compare runs/standard_normal runs/mog runs/vamp --reference 0 --plot curves.png

    (``pvae compare`` first evaluates and stores each run that has no evaluation yet, as
    ``pvae evaluate RUN`` would, and says so on stderr; ``--no-evaluate`` refuses instead)

    or from Python, on runs trained and evaluated (:func:`~pvae.runs.evaluate_run`) the same way:

    >>> from pvae.compare import compare  # doctest: +SKIP
    >>> c = compare(["runs/standard_normal", "runs/vamp"], reference=0)  # doctest: +SKIP
    >>> print(c.table())  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pvae.compare_runs import (
    IGNORED_KEYS,
    IGNORED_SECTIONS,
    ComparedRun,
    evaluate_pending,
    group_key,
    read_run,
)
from pvae.files import finite
from pvae.rundir import (
    Evaluation,
    data_fingerprint,
    find_runs,
    load_evaluation,
    save_evaluation,
)
from pvae.runs import evaluate_run

# The per-datapoint store (Evaluation, save/load_evaluation, data_fingerprint) lives with the run
# folder (pvae.rundir), evaluate_run with the runs (pvae.runs); both stay importable from here.
__all__ = [
    "IGNORED_KEYS",
    "IGNORED_SECTIONS",
    "Comparison",
    "Difference",
    "Evaluation",
    "Group",
    "Pooled",
    "compare",
    "data_fingerprint",
    "evaluate_run",
    "load_evaluation",
    "save_evaluation",
]

# --------------------------------------------------------------------------- grouping


def _show(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Pooled:
    """A metric over a group's seeds: mean and s.e. :math:`s/\\sqrt n` (``None`` for one seed).

    Attributes:
        mean: Mean over seeds.
        se: Standard error over seeds, or ``None`` with one seed.
        values: The per-seed values, in the group's seed order.
    """

    mean: float
    se: float | None
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Pooled:
        a = np.asarray(values, dtype=np.float64)
        se = float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else None
        return cls(float(a.mean()), se, tuple(float(v) for v in a))

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {'—' if self.se is None else f'{self.se:.3f}'}"


@dataclass
class Group:
    """Runs with the same configuration but for the seed.

    Attributes:
        label: ``key=value`` of the settings that tell this group from the others (a component's
            keyword arguments where not at their defaults), or the runs' folder name.
        settings: Those settings, flattened (``{"model.prior.name": "vamp"}``).
        runs: The run folders, by seed.
        seeds: Their ``train.seed``.
        metrics: Final metrics pooled over seeds: ``train_elbo`` and ``val_elbo`` (last epoch),
            ``val_log_px`` (the last curve point, on ``eval.curve_subset`` validation points),
            ``<split>_elbo`` and ``<split>_log_px`` (stored evaluation, mean over datapoints).
    """

    label: str
    settings: dict[str, Any]
    runs: list[Path]
    seeds: list[int]
    metrics: dict[str, Pooled]
    _runs: list[ComparedRun] = field(repr=False)

    @property
    def histories(self) -> list[list[dict[str, float]]]:
        """Each seed's per-epoch records (``metrics.json``), in the order of :attr:`runs`."""
        return [r.history for r in self._runs]

    def per_datapoint(self, metric: str) -> np.ndarray:
        """``(n_seeds, N)`` stored per-datapoint values of ``"log_px"`` or ``"elbo"``."""
        rows = [getattr(r.evaluation, metric) for r in self._runs]
        if any(row is None for row in rows):
            raise ValueError(f"group {self.label!r}: not every run stored {metric}")
        return np.stack(rows)


@dataclass(frozen=True)
class Difference:
    """Paired difference of a group from the reference group on the same datapoints.

    ``mean`` is :math:`\\bar d`; the three errors are defined in :mod:`pvae.compare`.

    Attributes:
        group: The group's label.
        reference: The reference group's label.
        metric: ``"log_px"`` or ``"elbo"`` (per datapoint, nats).
        n_points: Number of datapoints N.
        mean: Mean over datapoints of the difference of seed-averaged values.
        se_datapoints: sd(d)/√N: test-set sampling error, for these trained models.
        se_seeds: Seed-to-seed (training) error, ``None`` unless both groups have ≥ 2 seeds.
        se_mc: Monte Carlo (importance-sampling) error, ``None`` if not available.
    """

    group: str
    reference: str
    metric: str
    n_points: int
    mean: float
    se_datapoints: float
    se_seeds: float | None
    se_mc: float | None


def _difference(a: Group, b: Group, metric: str) -> Difference:
    la, lb = a.per_datapoint(metric), b.per_datapoint(metric)
    d = la.mean(0) - lb.mean(0)
    n = d.size
    se_dp = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    ma, mb = la.mean(1), lb.mean(1)
    se_seeds = (
        math.sqrt(ma.var(ddof=1) / ma.size + mb.var(ddof=1) / mb.size)
        if ma.size > 1 and mb.size > 1
        else None
    )
    se_mc = None
    se_name = "log_px_se" if metric == "log_px" else "elbo_se"
    sa = [r.evaluation.arrays.get(se_name) for r in a._runs]
    sb = [r.evaluation.arrays.get(se_name) for r in b._runs]
    if all(s is not None for s in sa + sb):
        var = (np.stack(sa) ** 2).sum(0) / len(sa) ** 2 + (np.stack(sb) ** 2).sum(0) / len(sb) ** 2
        total = float(np.sqrt(var.sum()) / n)
        se_mc = total if math.isfinite(total) else None
    return Difference(a.label, b.label, metric, n, float(d.mean()), se_dp, se_seeds, se_mc)


# --------------------------------------------------------------------------- the comparison


_COLUMNS = {
    "train_elbo": "train ELBO",
    "val_elbo": "val ELBO",
    "val_log_px": "val log p(x)",
}


@dataclass
class Comparison:
    """What :func:`compare` returns: groups of runs, their pooled metrics and paired differences.

    Attributes:
        split: The evaluated split the per-datapoint metrics are of.
        groups: The groups, in the order their first run was given.
        reference: Label of the group the differences are taken from.
        metric: The per-datapoint metric of the differences (``"log_px"`` when every run stored
            it, else ``"elbo"``).
        differences: One :class:`Difference` per group other than the reference.
        n_points: Number of evaluated datapoints (the same for every run).
        k: Importance samples of the stored log p(x) of each run (``None`` where not stored).
        notes: Caveats to print with the numbers.
    """

    split: str
    groups: list[Group]
    reference: str
    metric: str
    differences: list[Difference]
    n_points: int
    k: dict[str, int | None]
    notes: list[str]

    def _column_names(self) -> list[str]:
        names = [*_COLUMNS, f"{self.split}_elbo", f"{self.split}_log_px"]
        return [m for m in names if any(m in g.metrics for g in self.groups)]

    def table(self) -> str:
        """Aligned text: one row per group (metrics as mean ± s.e. over seeds), then the paired
        differences from the reference group, then the notes."""
        cols = self._column_names()
        titles = {
            **_COLUMNS,
            f"{self.split}_elbo": f"{self.split} ELBO",
            f"{self.split}_log_px": f"{self.split} log p(x)",
        }
        rows = [["group", "seeds", *(titles[c] for c in cols)]]
        for g in self.groups:
            mark = " *" if g.label == self.reference else ""
            cells = [str(g.metrics[c]) if c in g.metrics else "n/a" for c in cols]
            rows.append([g.label + mark, str(len(g.seeds)), *cells])
        lines = [
            "final metrics, nats per datapoint: mean ± s.e. over seeds (— : 1 seed, no s.e.); "
            "* = reference",
            *_align(rows),
            "",
            f"paired differences of {self.split} "
            f"{'log p(x)' if self.metric == 'log_px' else 'ELBO'} from {self.reference} on the "
            f"same {self.n_points} datapoints (nats; + = better than the reference)",
        ]
        diff_rows = [["group", "difference", "s.e. datapoints", "s.e. seeds", "s.e. Monte Carlo"]]
        for d in self.differences:
            diff_rows.append(
                [
                    d.group,
                    f"{d.mean:+.3f}",
                    f"{d.se_datapoints:.3f}",
                    "—" if d.se_seeds is None else f"{d.se_seeds:.3f}",
                    "n/a" if d.se_mc is None else f"{d.se_mc:.3f}",
                ]
            )
        lines += _align(diff_rows) if self.differences else ["  (one group: nothing to compare)"]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict[str, Any]:
        """Plain, strictly JSON-able data (non-finite numbers as ``None``)."""
        return finite(
            {
                "split": self.split,
                "metric": self.metric,
                "reference": self.reference,
                "n_points": self.n_points,
                "k": self.k,
                "groups": [
                    {
                        "label": g.label,
                        "settings": g.settings,
                        "runs": [str(r) for r in g.runs],
                        "seeds": g.seeds,
                        "metrics": {
                            name: {"mean": p.mean, "se": p.se, "values": list(p.values)}
                            for name, p in g.metrics.items()
                        },
                    }
                    for g in self.groups
                ],
                "differences": [vars(d).copy() for d in self.differences],
                "notes": self.notes,
            }
        )

    def plot(
        self,
        path: str | Path | None = None,
        *,
        skip: int | None = None,
        figsize: tuple[float, float] | None = None,
        dpi: int | None = None,
    ) -> Any:
        """Validation curves overlaid: per group, the validation ELBO each epoch (solid) and the
        validation log p(x) curve points (dashed, markers) where recorded, each the mean over
        the group's seeds with a band of ± one s.e. over seeds.

        Args:
            path: Where to save the figure (format by suffix, as :mod:`pvae.plotting` does).
            skip: Epochs left out of the y-limits, whose bounds are far below the rest
                (``None``: 10% of the epochs, at least 1, when there are 3 or more; 0 keeps all).
            figsize: ``(width, height)`` in inches (``None``: a text width).
            dpi: Resolution (``None``: :data:`pvae.plotting.style.DPI`).

        Returns:
            The matplotlib figure.
        """
        from pvae import plotting

        return plotting.comparison(self, path, skip=skip, figsize=figsize, dpi=dpi)


def _align(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]


def _final(history: list[dict[str, float]], key: str) -> float | None:
    for h in reversed(history):
        if h.get(key) is not None:
            return float(h[key])
    return None


def _groups(runs: list[ComparedRun], split: str) -> list[Group]:
    keys: list[dict[str, Any]] = []
    members: list[list[ComparedRun]] = []
    for r in runs:
        key = group_key(r.config)
        for i, k in enumerate(keys):
            if k == key:
                members[i].append(r)
                break
        else:
            keys.append(key)
            members.append([r])
    differing = sorted(
        name
        for name in set().union(*keys)
        if len({json.dumps(k.get(name), sort_keys=True) for k in keys}) > 1
    )
    groups = []
    for key, rs in zip(keys, members, strict=True):
        rs.sort(key=lambda r: r.seed)
        for a, b in itertools.pairwise(rs):
            if a.seed == b.seed:
                raise ValueError(
                    f"runs {str(a.path)!r} and {str(b.path)!r} have the same configuration and "
                    f"the same train.seed ({a.seed}): they are repeats of one run, not "
                    "independent seeds; train the others with pvae train --seeds"
                )
        # A key only some groups have (a component's keyword argument) is shown where it is set
        # to other than its default; the component's name already tells the groups apart.
        said = rs[0].said
        settings = {
            k: key[k] for k in differing if k in key and (k in said or all(k in o for o in keys))
        }
        if settings:
            label = ", ".join(f"{k}={_show(v)}" for k, v in settings.items())
        else:
            paths = [r.path.resolve() for r in rs]
            common = Path(os.path.commonpath(paths)) if len(paths) > 1 else paths[0]
            label = common.name or str(common)
        metrics: dict[str, Pooled] = {}
        for name in _COLUMNS:
            values = [_final(r.history, name) for r in rs]
            if all(v is not None for v in values):
                metrics[name] = Pooled.of(values)  # type: ignore[arg-type]
        metrics[f"{split}_elbo"] = Pooled.of([float(r.evaluation.elbo.mean()) for r in rs])
        if all(r.evaluation.log_px is not None for r in rs):
            lp = [float(r.evaluation.log_px.mean()) for r in rs]  # type: ignore[union-attr]
            metrics[f"{split}_log_px"] = Pooled.of(lp)
        groups.append(
            Group(label, settings, [r.path for r in rs], [r.seed for r in rs], metrics, rs)
        )
    return groups


def _pick_reference(groups: list[Group], reference: str | int | None, metric: str) -> Group:
    if reference is None:  # the best group by its pooled mean
        return max(groups, key=lambda g: g.metrics[metric].mean)
    if isinstance(reference, int) and not isinstance(reference, bool):
        if not 0 <= reference < len(groups):
            raise ValueError(
                f"reference must be a group index in [0, {len(groups)}), got {reference}"
            )
        return groups[reference]
    if isinstance(reference, (str, Path)):
        for g in groups:
            if str(reference) == g.label or any(
                Path(reference).resolve() == r.resolve() for r in g.runs
            ):
                return g
        if isinstance(reference, str) and reference.isdigit():  # an index from the command line
            return _pick_reference(groups, int(reference), metric)
        raise ValueError(
            f"reference {str(reference)!r} is neither a group label, one of the runs nor a "
            f"group index; the groups are {[g.label for g in groups]}"
        )
    raise TypeError(
        f"reference must be a group label, run folder, index or None, got {reference!r}"
    )


def compare(
    runs: Sequence[str | Path],
    split: str = "test",
    *,
    reference: str | int | None = None,
    evaluate: bool = False,
    device: str = "cpu",
    on_evaluate: Callable[[Path, str], None] | None = None,
) -> Comparison:
    """Group runs by configuration (seeds pooled) and compare them on the same datapoints.

    Every run needs its stored per-datapoint evaluation of ``split`` (``pvae evaluate RUN``, or
    :func:`~pvae.runs.evaluate_run`), of its last epoch, and all of them must have scored the
    same points (the fingerprints in the evaluations must match). Runs are grouped by the meaning
    of their ``config.toml`` (:func:`pvae.config.canonical`: ``latent_dim = 8`` and ``[8]``, a
    default written out or not, are one configuration) with ``train.seed`` and output-only
    settings (``IGNORED_KEYS``, a ``[log]`` section) left out. The statistics are defined in
    :mod:`pvae.compare`.

    Args:
        runs: Run folders, or folders of runs (``OUT`` of ``pvae train --seeds``).
        split: The evaluated split to compare on.
        reference: The group the paired differences are taken from: its label, one of its run
            folders, or its index; ``None``: the best group by mean log p(x) (ELBO when not every
            run stored log p(x)).
        evaluate: First evaluate and store each run whose ``split`` evaluation is missing or of
            an earlier epoch than its last, with the run's own ``[eval]`` settings and seed 0,
            as ``pvae evaluate RUN --split SPLIT`` does
            (:func:`~pvae.compare_runs.evaluate_pending`); without it such a run is refused.
        device: Where those evaluations run.
        on_evaluate: Called as ``on_evaluate(run, reason)`` before each of them.

    Returns:
        A :class:`Comparison` (``.table()``, ``.to_dict()``, ``.plot(path)``).

    Raises:
        ValueError: a missing run folder or evaluation (the message names the run and the
            command that makes it), a stale evaluation, runs evaluated on different datapoints
            (naming two of them), an evaluation of 0 datapoints, or two runs of one configuration
            with the same seed (repeats of one run: pooled as two seeds they would shrink the s.e.
            over seeds).
    """
    paths = find_runs(runs)
    if evaluate:
        evaluate_pending(paths, split, device=device, announce=on_evaluate)
    read = [read_run(p, split) for p in paths]
    first = read[0]
    for r in read[1:]:
        if (r.evaluation.n, r.evaluation.fingerprint) != (
            first.evaluation.n,
            first.evaluation.fingerprint,
        ):
            raise ValueError(
                f"runs {str(first.path)!r} and {str(r.path)!r} were evaluated on different "
                f"{split} datapoints ({first.evaluation.n} vs {r.evaluation.n} points, data "
                f"fingerprints {first.evaluation.fingerprint[:12]}… vs "
                f"{r.evaluation.fingerprint[:12]}…): per-datapoint differences need the same "
                "data (same [data] settings); compare only runs trained on the same data"
            )
    groups = _groups(read, split)
    metric = "log_px" if all(r.evaluation.log_px is not None for r in read) else "elbo"
    ref = _pick_reference(groups, reference, f"{split}_{metric}")
    differences = [_difference(g, ref, metric) for g in groups if g is not ref]
    k = {str(r.path): r.evaluation.k for r in read}
    notes = []
    if metric == "elbo":
        missing = [str(r.path) for r in read if r.evaluation.log_px is None]
        notes.append(
            f"compared on the ELBO: no stored log p(x) for {missing[:3]}"
            f"{'…' if len(missing) > 3 else ''} (pvae evaluate RUN with --k > 0)"
        )
    elif len(set(k.values())) > 1:
        notes.append(
            f"log p(x) was estimated with different k ({sorted(set(k.values()))}): the estimate "
            "is biased low by an amount that shrinks with k, so differences mix in that bias"
        )
    if any(len(g.seeds) == 1 for g in groups):
        notes.append(
            "a group with 1 seed has no s.e. over seeds; train more: pvae train --seeds 0 1 2"
        )
    if any("val_log_px" in g.metrics for g in groups):
        notes.append("val log p(x) is the last IWAE curve point, on eval.curve_subset points")
    return Comparison(split, groups, ref.label, metric, differences, first.evaluation.n, k, notes)
