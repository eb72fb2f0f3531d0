"""What crosses the Ray boundary in a sweep: typed, frozen, built once.

* :class:`TrialSpec`: what every trial of a sweep shares (where it writes, what it optimises, what one trial
  occupies); the driver builds it once and Ray Tune hands it to every trial.
* :class:`TrialIdentity`: who a trial is in the results store (its run id and the id columns of every row it
  writes), built by :meth:`TrialIdentity.of` from the trial id and the searcher's suggestion, the one rule
  the trial's workers and the driver's callbacks share, so both write to the same rows.
* :class:`WorkerPlan`: what one trial's Ray Train workers receive: the spec, the identity, the run config
  (parsed once, on the trial driver) and the reference to the shared frozen features.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clapray.config import RunConfig
from clapray.fileio import child
from clapray.results import RunWriter
from clapray.task_result import RunProvenance, SweepCoordinates
from clapray.typed_config import from_mapping

PROVENANCE_FILE = "provenance.json"  # beside learner.pt in every task checkpoint


@dataclass(frozen=True)
class TrialSpec:
    """The settings every trial of one sweep shares."""

    sweep: str  # the sweep's name
    store: str  # <storage>/<sweep>: the results store, checkpoints and the feature cache live under it
    metric: str  # reported metric the searcher and the scheduler optimise
    workers_per_trial: int
    gpus_per_worker: float
    cpus_per_worker: int
    retries: int  # times a failed trial (or worker group) is resumed from the last task's checkpoint
    in_trial: bool = False  # the one worker runs inside the trial's process (Ray Train's local mode)

    @property
    def train_storage(self) -> str:
        """Where each trial's per-task checkpoints (and a worker group's Ray Train run state) are kept."""
        return child(self.store, "train_runs")

    @staticmethod
    def run_name(trial_id: str) -> str:
        """Trial ``trial_id``'s Ray Train run name, derived from the trial id so that a restarted trial finds
        its run (and its checkpoints) again."""
        return f"train-{trial_id}"

    def run_folder(self, trial_id: str) -> str:
        """Trial ``trial_id``'s folder under :attr:`train_storage`: its Ray Train run's."""
        return child(self.train_storage, self.run_name(trial_id))

    @property
    def feature_store(self) -> str:
        """Where the frozen-feature cache entries of the sweep are kept."""
        return child(self.store, "feature_cache")

    def worker_resources(self) -> dict[str, float]:
        """Ray resources of one Train worker."""
        resources: dict[str, float] = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker > 0:
            resources["GPU"] = self.gpus_per_worker
        return resources


@dataclass(frozen=True)
class TrialIdentity:
    """A trial's place in the results store: ``run_id`` names its files, the rest are id columns, and
    ``coordinates`` its cell's grid values and sampled values (runs columns ``setting``, ``grid``,
    ``sampled``; None for a trial suggested before the searcher recorded them, which keeps the stored ones)."""

    sweep: str
    cell: str
    trial_id: str
    seed: int
    configuration: str
    coordinates: SweepCoordinates | None = field(default=None, compare=False)

    @classmethod
    def of(cls, sweep: str, trial_id: str, config: Mapping[str, Any]) -> TrialIdentity:
        """The identity of Ray Tune trial ``trial_id`` whose searcher suggestion is ``config``."""
        grid = config.get("grid")
        coordinates = (SweepCoordinates.of(dict(grid), dict(config.get("params") or {}))
                       if grid is not None else None)
        return cls(sweep=sweep, cell=str(config["cell"]), trial_id=str(trial_id), seed=int(config["seed"]),
                   configuration=str(config["configuration"]), coordinates=coordinates)

    @property
    def run_id(self) -> str:
        return run_id_for(self.trial_id)

    def ids(self) -> dict[str, Any]:
        """The id columns of every row the trial writes, in store order."""
        return {"sweep": self.sweep, "cell": self.cell, "trial_id": self.trial_id, "seed": self.seed,
                "configuration": self.configuration}

    def open_writer(self, store: str, cfg: RunConfig, provenance: RunProvenance | None = None) -> RunWriter:
        """The trial's run writer: the one way a sweep writes a trial's rows. Without ``provenance`` (the
        driver recording a stopped or failed trial) the store's values are kept."""
        return RunWriter(store, self.run_id, cfg, ids=self.ids(), provenance=provenance,
                         coordinates=self.coordinates)


def run_id_for(trial_id: str) -> str:
    """The run id (store file name, heartbeat file name) of Ray Tune trial ``trial_id``."""
    return f"trial-{trial_id}"


def trial_run_config(config: Mapping[str, Any], trial_id: str) -> RunConfig:
    """The run config of a trial from its searcher suggestion (a plain mapping, as Ray Tune records it)."""
    return from_mapping(RunConfig, config["run"], f"trial {trial_id}")


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a trial's Train workers need; pickled once into ``train_loop_config``."""

    spec: TrialSpec
    identity: TrialIdentity
    run: RunConfig
    # A one-element list holding the ObjectRef of the shared features (or None): the reference itself
    # travels, not the array.
    features: list[Any] | None = None
