"""Turn the timeline of a sweep (:mod:`clapray.sweep.timeline`) into where each trial's time went.

Phases of one trial, in the order they happen (seconds, from the events of its processes):

* ``driver start``: the Tune trial driver's process start-up and imports (process start -> trial function),
  or, for a driver process Tune reuses, its previous trial's end -> this trial's function;
* ``driver set-up``: building the trial's run config and trainer;
* ``controller + group``: ``fit()`` -> the first Train worker process exists (the Train controller's process
  and imports, the worker placement group, the worker actors' creation); for a worker inside the trial's
  process (``executor: in_trial``), ``fit()`` -> the training function;
* ``worker start``: worker process start-up, Ray's worker set-up and, for several workers, the torch
  process group, until the training function runs (nothing for a worker inside the trial's process);
* ``worker imports``: torch, open_clip and the learner, imported by the training function (already imported
  in a trial process Tune reuses);
* ``learner set-up``: shared features from the object store, the model, a checkpoint to resume from;
* ``learning``: the tasks themselves (what a plain Python run also spends);
* ``report + ckpt``: the rows written to the store, the checkpoint saved and persisted, ``ray.train.report``;
* ``teardown``: the training function returns -> ``fit()`` returns (the controller notices, stops the group).

Time outside every trial's span (Tune's scheduling between trials, the sweep's own start-up and the shared
feature cache) is reported per sweep.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

PHASES = ("driver start", "driver set-up", "controller + group", "worker start", "worker imports",
          "learner set-up", "learning", "report + ckpt", "teardown")


@dataclass(frozen=True)
class TrialBreakdown:
    trial: str
    phases: Mapping[str, float]
    span: float  # driver process start (or previous trial's end in a reused one) -> fit() returned
    start: float  # wall-clock time of that start
    end: float

    @property
    def orchestration(self) -> float:
        return self.span - self.phases["learning"]


def _first(events: list[dict], role: str, event: str, *, last: bool = False) -> dict | None:
    found = [e for e in events if e["role"] == role and e["event"] == event]
    if not found:
        return None
    return found[-1] if last else found[0]


def trial_breakdowns(events: Iterable[Mapping]) -> list[TrialBreakdown]:
    """One breakdown per trial with a complete timeline (driver entered and fit returned), by start time."""
    by_trial: dict[str, list[dict]] = defaultdict(list)
    for event in events:
        if event.get("trial"):
            by_trial[event["trial"]].append(dict(event))
    # A driver process Tune reuses (reuse_actors) starts its next trial where the previous one returned.
    previous_end: dict[int, list[float]] = defaultdict(list)
    for event in events:
        if event.get("role") == "driver" and event.get("event") == "fitted":
            previous_end[event["pid"]].append(event["t"])
    out = []
    for trial, trial_events in by_trial.items():
        trial_events.sort(key=lambda e: e["t"])
        enter, fit = _first(trial_events, "driver", "enter"), _first(trial_events, "driver", "fit")
        fitted = _first(trial_events, "driver", "fitted", last=True)
        worker_enter = _first(trial_events, "worker", "enter")
        imported = _first(trial_events, "worker", "imported")
        ready = _first(trial_events, "worker", "learner_ready")
        exited = _first(trial_events, "worker", "exit", last=True)
        if None in (enter, fit, fitted, worker_enter, imported, ready, exited):
            continue
        if worker_enter["pid"] == enter["pid"]:
            # The worker runs inside the trial's process (executor in_trial): no process of its own to start.
            worker_started = worker_enter["t"]
        else:
            worker_started = min(e["started"] for e in trial_events if e["role"] == "worker")
        learning = report = 0.0
        rank0 = [e for e in trial_events if e["role"] == "worker" and e["pid"] == worker_enter["pid"]]
        for before, after in zip(rank0, rank0[1:], strict=False):
            if before["event"] == "task_start" and after["event"] == "task_end":
                learning += after["t"] - before["t"]
            elif before["event"] == "task_end" and after["event"] == "reported":
                report += after["t"] - before["t"]
        started = max([enter["started"]] + [t for t in previous_end[enter["pid"]] if t < enter["t"]])
        phases = {
            "driver start": enter["t"] - started,
            "driver set-up": fit["t"] - enter["t"],
            "controller + group": worker_started - fit["t"],
            "worker start": worker_enter["t"] - worker_started,
            "worker imports": imported["t"] - worker_enter["t"],
            "learner set-up": ready["t"] - imported["t"],
            "learning": learning,
            "report + ckpt": report,
            "teardown": fitted["t"] - exited["t"],
        }
        out.append(TrialBreakdown(trial, phases, fitted["t"] - started, started, fitted["t"]))
    return sorted(out, key=lambda b: b.start)


def mean_phases(breakdowns: list[TrialBreakdown]) -> dict[str, float]:
    n = max(1, len(breakdowns))
    return {phase: sum(b.phases[phase] for b in breakdowns) / n for phase in PHASES}


def efficiency(learning_s: float, wall_s: float, slots: int) -> float:
    """Share of the sweep's slot time spent learning: Σ learner time / (sweep wall x concurrent slots)."""
    return learning_s / (wall_s * slots) if wall_s > 0 and slots > 0 else float("nan")
