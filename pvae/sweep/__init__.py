"""Hyperparameter sweeps on Optuna (``pvae sweep``): a search space over any config key, each
trial an ordinary run folder, bad trials pruned from their per-epoch validation, one study
shared by any number of worker processes through Optuna's storage.

The search space is a TOML file whose keys are config keys, dotted as ``--set`` takes them,
each mapped to a distribution::

    ["train.lr"]
    type = "float"        # uniform on [low, high]; log = true: log-uniform
    low = 1e-4
    high = 3e-2
    log = true

    ["model.latent_dim"]
    type = "int"          # integers in [low, high] (step, log optional)
    low = 2
    high = 16

    ["model.prior.name"]
    type = "categorical"
    choices = ["standard_normal", "mog", "vamp"]

A trial draws a value for every key (Optuna's TPE sampler), trains the base config with those
values set (:func:`pvae.runs.train_from_config`) into ``DIR/trial-NNNN``, and reports the
validation objective after every epoch (``val_elbo``, or ``val_iwae_<k>`` on the epochs where
``eval.curve_every`` records it) to Optuna, which stops a trial below the median of earlier
trials at the same epoch (``pruner = "median"``): the trial's folder keeps the checkpoint of
the epoch it reached, and the summary says why it stopped. The trial's value is the objective
at its last epoch; the study maximizes it.

The study lives in Optuna's storage: by default ``sqlite:///DIR/study.db``, or any RDB URL
(PostgreSQL, MySQL) that several machines reach. Worker processes, started together
(``--workers N``) or one by one, each run trials until the study holds ``N`` trials that
finished (complete or pruned) or are running. Each running trial beats a heartbeat in the
storage; a trial whose worker died (killed, its machine lost) stops beating and is marked
``FAIL`` by the next worker that looks, after ``grace`` seconds, and a new trial takes its place.

At the end, ``DIR/summary.csv`` and ``DIR/summary.md`` (trial, state, params, objective,
epochs, seconds, note) and ``DIR/best.toml``: the base config with the best trial's values, a
full config for ``pvae train --config DIR/best.toml``.

Optuna is an optional dependency: ``pip install pyro-vae-toolkit[sweep]``.

References:
    Akiba et al. (2019), *Optuna: a next-generation hyperparameter optimization framework*, KDD.
    Bergstra et al. (2011), *Algorithms for hyper-parameter optimization* (TPE), NeurIPS.
"""

from pvae.sweep.space import (
    OBJECTIVE_HELP,
    Dimension,
    check_objective,
    check_space,
    import_optuna,
    load_space,
    trial_config,
)
from pvae.sweep.study import SweepSettings, TrialFailed, open_study, prepare, run_worker
from pvae.sweep.summary import BEST, SUMMARY_CSV, SUMMARY_MD, log_summary, summarize, trial_line

__all__ = [
    "BEST",
    "OBJECTIVE_HELP",
    "SUMMARY_CSV",
    "SUMMARY_MD",
    "Dimension",
    "SweepSettings",
    "TrialFailed",
    "check_objective",
    "check_space",
    "import_optuna",
    "load_space",
    "log_summary",
    "open_study",
    "prepare",
    "run_worker",
    "summarize",
    "trial_config",
    "trial_line",
]
