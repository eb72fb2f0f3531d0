"""Sweeps of CLAP4CLIP runs: ``python -m clapray.sweep sweeps/X.yaml`` (the only package that drives Ray).

Layers, from the YAML to Ray:

* :mod:`~clapray.sweep.model` — the typed sweep (cells, search space, seeds, scheduler, resources, trial
  budget), with :mod:`~clapray.sweep.fields` (run-config fields as a sweep sees them); no Ray, no Optuna;
* :mod:`~clapray.sweep.loader` (+ :mod:`~clapray.sweep.space`) — YAML -> validated sweep, ``--set``
  overrides, shipped sweeps by name; :mod:`~clapray.sweep.describe` — what ``--dry-run`` prints;
* :mod:`~clapray.sweep.cli` — the command line;
* :mod:`~clapray.sweep.driver` — the Ray Tune run; :mod:`~clapray.sweep.search` — one Optuna search and one
  ASHA per cell; :mod:`~clapray.sweep.trial` — a trial as a Ray Train run of the learner;
  :mod:`~clapray.sweep.timeline` — where a trial's time goes (``bench ray``); :mod:`~clapray.sweep.cost` —
  measured seconds per trial and the dry run's cost estimate;
  :mod:`~clapray.sweep.callbacks` — progress lines and trial outcomes in the store;
  :mod:`~clapray.sweep.progress` — k/N trials, elapsed, ETA, short parameters, heartbeats read from the
  store; :mod:`~clapray.sweep.console` — Ray's and Optuna's start-up noise filtered (unless ``--verbose``);
  :mod:`~clapray.sweep.spec` — the frozen dataclasses that cross the Ray boundary;
  :mod:`~clapray.sweep.resolved` — the resolved sweep saved in the store, a changed sweep refused;
  :mod:`~clapray.sweep.recovery` — the store reconciled with Ray Tune's state (restore, quarantine).

Importing this package (or the model, loader and describe modules) imports neither Ray nor Optuna.
"""

from clapray.sweep.describe import describe
from clapray.sweep.loader import load_sweep_config, resolve_sweep_argument, shipped_sweep_paths, sweep_from_mapping
from clapray.sweep.model import SweepConfig

__all__ = ["SweepConfig", "describe", "load_sweep_config", "resolve_sweep_argument", "shipped_sweep_paths",
           "sweep_from_mapping"]
