"""Method quality on a benchmark that means something on a CPU (the ``slow`` tier).

The mini-CLIP pretrained on shapes captions (:mod:`clapray.shapes`, ``python -m clapray.pretrain``) meets
``shapes_cl``, classes no pretraining caption named, in the shipped ``shapes_cl`` run config (4 tasks x 5
classes, seeds fixed).
Every run here is that config with one change, so the checks compare like with like:

a) the mini-CLIP's zero-shot accuracy is far above chance;
b) CLAP's final Last accuracy against zero-shot (recorded; see the margin below);
c) replay beats replay-free, and forgets less (also the learner issue's "learning is real" checks:
   every task right after training it is well above the untrained model on it);
d) the language-aware KD and init do not hurt (their effect is recorded);
e) VI against w/o VI, with ECE (recorded).

The margins are set from measurements (in the comments) with room for thread-count float noise; each
run's numbers go into the session's closing summary, so CI logs carry them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import QUALITY_ROWS

from clapray.config import load_run_config, shipped_config_paths
from clapray.learner import ContinualLearner
from clapray.task_result import TaskResult

pytestmark = pytest.mark.slow

RUNS = {
    "zero-shot": ["method.variant=zeroshot"],
    "CLAP": [],
    "CLAP replay-free": ["budget.replay_free=true"],
    "CLAP w/o KD and language init": ["method.kd_weight=0", "method.language_init=false"],
    "CLAP w/o VI": ["method.deterministic=true"],
}


@pytest.fixture(scope="module")
def runs(mini_clip_cache, tmp_path_factory):
    """Each named run of :data:`RUNS`, done once on first use: name -> its task results."""
    done: dict[str, list[TaskResult]] = {}
    data_root = tmp_path_factory.mktemp("data")

    def get(name: str) -> list[TaskResult]:
        if name not in done:
            cfg = load_run_config(shipped_config_paths()["shapes_cl"], [
                f"backbone.cache_dir={mini_clip_cache}", f"data.root={data_root}", *RUNS[name]])
            before = torch.get_num_threads()
            torch.set_num_threads(2)
            try:
                results = ContinualLearner(cfg).run()
            finally:
                torch.set_num_threads(before)
            done[name] = results
            last = results[-1]
            QUALITY_ROWS.append((name, f"Avg {last.avg_acc:5.1f}  Last {last.last_acc:5.1f}  BwT "
                                       f"{last.bwt:6.1f}  ECE {last.ece:.3f}  a[t,t] {_mean_diagonal(results):5.1f}"))
        return done[name]

    return get


def _mean_diagonal(results: list[TaskResult]) -> float:
    """Mean over tasks t of a[t, t]: how well each task is learnt right after training it."""
    return float(np.mean([r.accuracy_row[r.task] for r in results]))


def test_zero_shot_is_far_above_chance(runs):
    last = runs("zero-shot")[-1]
    chance = 100.0 / 20
    # Measured 65.1% on the 20 classes (chance 5%).
    assert last.last_acc > 8 * chance, last.last_acc


def test_every_new_task_is_learnt_well_above_the_untrained_model(runs):
    """The learner's a[t, t] (task t right after training it) against the frozen zero-shot model's."""
    trained, untrained = _mean_diagonal(runs("CLAP")), _mean_diagonal(runs("zero-shot"))
    # Measured 94.1 against 85.2 (class-order seed 1, earlier flip draws: 89.8 against 79.5).
    assert trained > untrained + 5.0, (trained, untrained)


def test_replay_beats_replay_free_and_forgets_less(runs):
    replay, free = runs("CLAP")[-1], runs("CLAP replay-free")[-1]
    # Measured BwT -34.8 against -53.3 and Last 68.0 against 59.5 (class-order seed 1, earlier flip draws:
    # BwT -36.3 against -51.7, Last 62.5 against 61.0): replay-free learns each new task as well and
    # forgets far more.
    assert replay.bwt > free.bwt + 8.0, (replay.bwt, free.bwt)
    assert replay.last_acc > free.last_acc, (replay.last_acc, free.last_acc)
    assert replay.accuracy_row[0] > free.accuracy_row[0] + 10.0, (replay.accuracy_row, free.accuracy_row)


def test_clap_final_accuracy_against_zero_shot(runs):
    """The paper's CLAP is far above zero-shot; on this benchmark the frozen mini-CLIP features cap it.

    A linear probe trained offline on all 20 classes' features reaches 67.0% against zero-shot's 65.2%,
    so there is little room: measured CLAP Last 68.0 against 65.1 (class-order seed 1, earlier flip draws:
    62.5 against 65.0). The test guards against CLAP falling clearly below zero-shot and records the
    margin; it does not claim more.
    """
    clap, zero_shot = runs("CLAP")[-1], runs("zero-shot")[-1]
    QUALITY_ROWS.append(("CLAP Last - zero-shot Last", f"{clap.last_acc - zero_shot.last_acc:+.1f}"))
    assert clap.last_acc > zero_shot.last_acc - 5.0, (clap.last_acc, zero_shot.last_acc)


def test_language_aware_kd_and_init_do_not_hurt(runs):
    with_, without = runs("CLAP")[-1], runs("CLAP w/o KD and language init")[-1]
    QUALITY_ROWS.append(("effect of KD + language init on Last", f"{with_.last_acc - without.last_acc:+.1f}"))
    assert with_.last_acc >= without.last_acc - 3.0, (with_.last_acc, without.last_acc)


def test_vi_and_its_deterministic_ablation_are_recorded_with_ece(runs):
    vi, det = runs("CLAP")[-1], runs("CLAP w/o VI")[-1]
    QUALITY_ROWS.append(("VI - w/o VI: Last, ECE", f"{vi.last_acc - det.last_acc:+.1f}, {vi.ece - det.ece:+.3f}"))
    for result in (vi, det):
        assert math.isfinite(result.ece) and 0.0 <= result.ece <= 1.0
        assert result.last_acc > 8 * 100.0 / 20  # both learn: far above chance
