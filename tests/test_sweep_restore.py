"""When a sweep's folder holds a Tune experiment that can be restored."""

from __future__ import annotations

import ray.tune

from clapray.sweep.recovery import restorable, trials_from_experiment


def test_a_tuner_file_without_a_saved_experiment_state_is_not_restorable(tmp_path):
    """A driver killed after Tune wrote its tuner file but before its first experiment state leaves a
    folder Tune calls restorable and cannot restore; the sweep starts afresh instead of crashing."""
    root = str(tmp_path)
    assert not restorable(root) and trials_from_experiment(root) == []
    (tmp_path / "tuner.pkl").write_bytes(b"saved tuner")
    assert ray.tune.Tuner.can_restore(root)
    assert not restorable(root) and trials_from_experiment(root) == []
    (tmp_path / "experiment_state-2026-12-07_00-49-12.json").write_text("{}")
    assert restorable(root)
