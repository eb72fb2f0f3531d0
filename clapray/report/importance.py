"""Hyperparameter importance per cell with fANOVA (Optuna's evaluator), from the ``runs`` table alone.

The sweep's Optuna studies live in the driver's memory; the store has every trial's config and final
metric, which is all fANOVA needs. Per cell, each configuration becomes one completed trial of a fresh
in-memory study (its value the mean of the metric over its complete seeds), with distributions spanning
the values seen: ints and floats as ranges, everything else as categories. So the importance is computed
on any finished or partial sweep, and on stores of single runs, with no trace of the original study.

fANOVA fits a random forest to (parameters -> metric) and splits the variance of its prediction among the
parameters; with few configurations the forest, and so the ranking, is rough, which the table says.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pandas as pd

from clapray.report.knobs import Knob, swept_knobs
from clapray.report.tables import higher_is_better

# Below this many configurations fANOVA is not computed: its random forest has too few points to split
# the variance among several knobs, and two or three configurations give arbitrary (often identical) bars.
MIN_CONFIGURATIONS = 8
# Below this many, a computed ranking is still flagged as rough.
RELIABLE_CONFIGURATIONS = 16


def _python(value):
    if isinstance(value, np.generic):
        return value.item()
    return value


def _distribution(values: pd.Series):
    import optuna

    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values) or values.isna().any():
        # Missing values (a field null in some configurations) only fit a categorical space.
        choices = sorted({str(v) for v in values}, key=str)
        return optuna.distributions.CategoricalDistribution(choices), lambda v: str(v)
    if pd.api.types.is_integer_dtype(values) or all(float(v).is_integer() for v in values):
        return (optuna.distributions.IntDistribution(int(values.min()), int(values.max())),
                lambda v: int(v))
    return optuna.distributions.FloatDistribution(float(values.min()), float(values.max())), lambda v: float(v)


def cell_importance(trials: pd.DataFrame, knobs: list[Knob], metric: str, *, seed: int = 0) -> pd.DataFrame:
    """fANOVA importance of ``knobs`` for ``metric`` over one cell's complete trials.

    Returns: parameter, importance (normalised to sum to 1; all 0 when the metric does not vary),
    rank (1 = most important).
    """
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    columns = [k.column for k in knobs]
    per_conf = trials.groupby("config_key", sort=True).agg(
        {**{c: "first" for c in columns}, metric: "mean"}).dropna(subset=[metric])
    names = {k.column: k.label for k in knobs}
    if len(per_conf) < 2:
        return pd.DataFrame(columns=["parameter", "importance", "rank"])
    distributions, casts = {}, {}
    for c in columns:
        distributions[c], casts[c] = _distribution(per_conf[c])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if higher_is_better(metric) else "minimize")
    for _, row in per_conf.iterrows():
        params = {c: casts[c](_python(row[c])) for c in columns}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions,
                                                  value=float(row[metric])))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-API and forest warnings say nothing about the data
        logging.getLogger("optuna").setLevel(logging.WARNING)
        if per_conf[metric].nunique() < 2:
            raw = {c: 0.0 for c in columns}
        else:
            raw = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed), normalize=False)
    total = sum(v for v in raw.values() if not math.isnan(v))
    rows = [(names[c], (raw.get(c, 0.0) / total) if total > 0 else 0.0) for c in columns]
    out = pd.DataFrame(rows, columns=["parameter", "importance"])
    out = out.sort_values(["importance", "parameter"], ascending=[False, True], kind="mergesort").reset_index(drop=True)
    out["rank"] = np.arange(1, len(out) + 1)
    return out


def importance_table(complete: pd.DataFrame, metric: str, *, seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """Importance of the swept knobs per cell: (table, notes on cells left out or rough).

    Table columns: cell, rank, parameter, importance, configurations, trials.
    """
    frames, notes = [], []
    for cell, knobs in swept_knobs(complete).items():
        trials = complete[complete["cell"] == cell]
        n_conf = int(trials.dropna(subset=[metric])["config_key"].nunique())
        if n_conf < MIN_CONFIGURATIONS:
            notes.append(f"{cell}: not computed, {n_conf} complete configuration(s) with a value of {metric} "
                         f"(fANOVA needs at least {MIN_CONFIGURATIONS} to say anything)")
            continue
        part = cell_importance(trials, knobs, metric, seed=seed)
        part.insert(0, "cell", cell)
        part["configurations"] = n_conf
        part["trials"] = len(trials)
        frames.append(part)
        if n_conf < RELIABLE_CONFIGURATIONS:
            notes.append(f"{cell}: only {n_conf} configurations, the ranking is rough")
    columns = ["cell", "rank", "parameter", "importance", "configurations", "trials"]
    if not frames:
        return pd.DataFrame(columns=columns), notes
    return pd.concat(frames, ignore_index=True)[columns], notes


def study_figures(roots: list[str], out) -> list[tuple[str, list[str], str]]:
    """Optuna's optimisation history and parallel-coordinate plots of every cell's persisted study (the
    sweep's ``optuna.journal``): ``(title, files, what)`` per figure written. Studies with fewer than two
    finished trials are skipped."""
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    from clapray.report.tables import safe_name
    from clapray.sweep.studies import load_studies

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    written = []
    for root in roots:
        for name, study in sorted(load_studies(root).items()):
            done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            if len(done) < 2:
                continue
            base = safe_name(name)
            files = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the matplotlib backend is marked experimental
                for kind, plot in (("history", optuna_plots.plot_optimization_history),
                                   ("parallel", optuna_plots.plot_parallel_coordinate)):
                    if kind == "parallel" and not done[0].params:
                        continue
                    axes = plot(study)
                    figure = axes.figure if hasattr(axes, "figure") else axes[0].figure
                    figure.set_size_inches(6.0, 3.2)
                    file = f"study__{base}__{kind}.png"
                    figure.savefig(out / file, dpi=150, bbox_inches="tight")
                    plt.close(figure)
                    files.append(file)
            written.append((f"Optuna study: {name}", files,
                            f"the study's objective per trial in order with the best so far, and each trial's "
                            f"parameters against its objective ({len(done)} finished trials)"))
    return written
