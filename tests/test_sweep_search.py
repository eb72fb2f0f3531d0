"""The per-cell Optuna searcher without Ray running: persisted studies, start points, seeds, resume."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from clapray.errors import ConfigError
from clapray.sweep import sweep_from_mapping
from clapray.sweep.search import CellSearch
from clapray.sweep.studies import StudyJournal, load_studies

SWEEP = {
    "name": "s", "base": "tiny",
    "grid": {"setting": ["standard", "replay_free"]},
    "search": {"algorithm": "tpe", "seed": 3, "metric": "avg_acc", "trials_per_cell": 3, "space": {
        "method.kd_weight": {"float": [0.0, 30.0]},
        "memory.size": {"int": [10, 50], "step": 10, "when": {"setting": "standard"}}},
        "start_from": [{"method.kd_weight": 15.0, "memory.size": 20}]},
    "seeds": [0, 1],
}


def searcher(tmp_path, data=SWEEP) -> CellSearch:
    sweep = sweep_from_mapping(data, "sweep.yaml")
    return CellSearch(sweep, num_tasks={c.name: 2 for c in sweep.cells()}, journal=StudyJournal(str(tmp_path)))


def finish(search: CellSearch, trial_id: str, value: float | None, *, tasks_done: int = 2, error: bool = False):
    result = None if error else {"tasks_done": tasks_done, "avg_acc": value}
    search.on_trial_complete(trial_id, result, error=error)


def test_every_cell_has_a_persisted_study_told_the_seed_means(tmp_path):
    search = searcher(tmp_path)
    suggestions = {f"t{i}": search.suggest(f"t{i}") for i in range(12)}
    assert search.suggest("t12") == search.FINISHED  # 2 cells x 3 configurations x 2 seeds
    by_conf: dict[str, list] = {}
    for trial_id, s in suggestions.items():
        by_conf.setdefault(s["configuration"], []).append((trial_id, s))
    assert all(len(v) == 2 and {s["seed"] for _, s in v} == {0, 1} for v in by_conf.values())
    # The start point comes first in every cell, restricted to the parameters the cell samples.
    assert suggestions["t0"]["params"] == {"method.kd_weight": 15.0, "memory.size": 20}
    first_free = next(s for s in suggestions.values() if s["cell"] == "setting=replay_free")
    assert first_free["params"] == {"method.kd_weight": 15.0}
    for k, (trial_id, _) in enumerate(t for v in by_conf.values() for t in v):
        finish(search, trial_id, 50.0 + k)
    # A fresh process sees every study in the journal, each trial told once with the mean over its seeds.
    studies = load_studies(str(tmp_path))
    assert set(studies) == {"s/setting=standard", "s/setting=replay_free"}
    for study in studies.values():
        complete = study.get_trials(states=(TrialState.COMPLETE,))
        assert len(complete) == len(study.trials) == 3
    values = sorted(t.value for study in studies.values() for t in study.trials)
    assert values == [50.5 + 2 * k for k in range(6)]
    # optuna's own loader opens the same file (what optuna-dashboard reads).
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "optuna.journal")))
    assert len(optuna.load_study(study_name="s/setting=standard", storage=storage).trials) == 3


def test_stopped_and_failed_seeds_make_pruned_and_failed_trials(tmp_path):
    data = {**SWEEP, "grid": {"setting": ["replay_free"]},
            "search": {**SWEEP["search"], "trials_per_cell": 2, "start_from": None}}
    data["search"]["space"] = {"method.kd_weight": {"float": [0.0, 30.0]}}
    search = searcher(tmp_path, data)
    ids = [f"t{i}" for i in range(4)]
    for trial_id in ids:
        search.suggest(trial_id)
    finish(search, "t0", 60.0)
    finish(search, "t1", 70.0, tasks_done=1)  # stopped by ASHA after one task
    finish(search, "t2", None, error=True)
    finish(search, "t3", 80.0)
    study = load_studies(str(tmp_path))["s/setting=replay_free"]
    assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.FAIL]


def test_a_resumed_search_continues_the_same_studies_and_releases_orphans(tmp_path):
    search = searcher(tmp_path)
    for i in range(4):
        search.suggest(f"t{i}")
    checkpoint = tmp_path / "searcher.pkl"
    search.save(str(checkpoint))
    # Asked after the checkpoint: lost with the killed driver, never told.
    search.suggest("t4")
    search.suggest("t5")
    resumed = searcher(tmp_path)
    resumed.restore(str(checkpoint))
    for trial_id in ("t0", "t1", "t2", "t3"):
        finish(resumed, trial_id, 40.0)
    for i in range(4, 12):
        assert resumed.suggest(f"t{i}") is not None
        finish(resumed, f"t{i}", 30.0 + i)
    assert resumed.suggest("t12") == resumed.FINISHED
    studies = load_studies(str(tmp_path))
    for study in studies.values():
        states = [t.state for t in study.trials]
        assert states.count(TrialState.COMPLETE) == 3 and TrialState.RUNNING not in states
    orphans = [t for s in studies.values() for t in s.trials if t.state == TrialState.FAIL]
    assert len(orphans) == 2  # t4 and t5 opened a configuration in each cell after the checkpoint


@pytest.mark.parametrize("algorithm", ["tpe", "random", "gp", "cmaes"])
def test_every_sampler_runs_a_cell(tmp_path, algorithm):
    data = {**SWEEP, "search": {**SWEEP["search"], "algorithm": algorithm, "trials_per_cell": 4}}
    search = searcher(tmp_path, data)
    for i in range(16):
        s = search.suggest(f"t{i}")
        assert 0.0 <= s["params"]["method.kd_weight"] <= 30.0
        finish(search, f"t{i}", s["params"]["method.kd_weight"])
    studies = load_studies(str(tmp_path))
    assert all(len(s.get_trials(states=(TrialState.COMPLETE,))) == 4 for s in studies.values())
    assert all(not math.isnan(t.value) for s in studies.values() for t in s.trials)


def test_start_points_are_validated(tmp_path):
    bad = {**SWEEP, "search": {**SWEEP["search"], "start_from": [{"method.kd_weight": 45.0}]}}
    with pytest.raises(ConfigError, match=r"search\.start_from\[0\]\.method\.kd_weight: expected a value of float"):
        sweep_from_mapping(bad, "sweep.yaml")
    bad = {**SWEEP, "search": {**SWEEP["search"], "start_from": [{"optim.lr": 0.1}]}}
    with pytest.raises(ConfigError, match=r"search\.start_from\[0\]\.optim\.lr: expected a search parameter"):
        sweep_from_mapping(bad, "sweep.yaml")


def test_a_configuration_told_before_a_kill_is_not_told_again(tmp_path):
    """A driver killed after its searcher told the study a configuration's result, but before Ray Tune saved
    those trials as ended: the resumed sweep runs the trials' ends again (final results, or a failure) and
    the searcher, restored from before the tell, must leave the studies' first answers as they are."""
    search = searcher(tmp_path)
    trials = [f"t{i}" for i in range(4)]  # the first configuration of each cell, both seeds
    for trial_id in trials:
        search.suggest(trial_id)
    checkpoint = tmp_path / "searcher.pkl"
    search.save(str(checkpoint))
    for trial_id in trials:
        finish(search, trial_id, 40.0)  # told, then the driver is killed
    resumed = searcher(tmp_path)
    resumed.restore(str(checkpoint))
    for trial_id in trials[:3]:
        finish(resumed, trial_id, 40.0)  # the resumed trials report their final results again
    resumed.on_trial_complete(trials[3], error=True)  # and Tune's failure path ends one of them
    studies = [s for s in load_studies(str(tmp_path)).values() if s.trials]
    assert len(studies) == 2
    for study in studies:
        assert [(t.state, t.value) for t in study.trials] == [(TrialState.COMPLETE, 40.0)]
