"""Method quality on a benchmark that means something on a CPU (the ``slow`` tier), with error bars.

The mini-CLIP pretrained on shapes captions (:mod:`clapray.shapes`, ``python -m clapray.pretrain``) meets
``shapes_cl``, classes no pretraining caption named, in the shipped ``shapes_cl`` run config (4 tasks x 5
classes). Its frozen features leave room: a linear probe reaches about 95% where zero-shot reaches about
63% (``python -m clapray.bench headroom``), as real CLIP on CIFAR-100.

Every configuration runs with three seeds, each seed another class order and initialisation (as the
paper's repeated runs and the shipped sweeps), and every comparison is paired by seed: its margin is
stated on the 95% t-interval of the paired difference (2 degrees of freedom). The checks:

a) the mini-CLIP's zero-shot accuracy is far above chance;
b) CLAP's final Last accuracy beats zero-shot's by at least 10 points, the interval above 0;
c) replay beats replay-free, and forgets less (also the learner's "learning is real" check: every task
   right after training it is well above the untrained model on it);
d) the language-aware KD and init: their effect recorded with its interval;
e) VI against w/o VI: Last and ECE recorded with their intervals.

Each configuration's numbers go into the session's closing summary, so CI logs carry them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch
from conftest import QUALITY_ROWS

from clapray.config import load_run_config, shipped_config_paths
from clapray.learner import ContinualLearner
from clapray.results.reader import t_critical_975
from clapray.task_result import TaskResult

pytestmark = pytest.mark.slow

SEEDS: tuple[int, ...] = (0, 1, 2)
CHANCE = 100.0 / 20

RUNS = {
    "zero-shot": ["method.variant=zeroshot"],
    "CLAP": [],
    "CLAP replay-free": ["budget.replay_free=true"],
    "CLAP w/o KD and language init": ["method.kd_weight=0", "method.language_init=false"],
    "CLAP w/o VI": ["method.deterministic=true"],
}


def interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and the two ends of its 95% t-interval."""
    x = np.asarray(values, dtype=np.float64)
    half = t_critical_975(len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def described(values: Sequence[float]) -> str:
    mean, lo, hi = interval(values)
    return f"{mean:+6.1f} [{lo:+.1f}, {hi:+.1f}] (n={len(values)})"


@pytest.fixture(scope="module")
def runs(mini_clip_cache, tmp_path_factory) -> Callable[[str], list[list[TaskResult]]]:
    """Each named run of :data:`RUNS` under every seed, done once on first use: name -> per seed, its
    task results."""
    done: dict[str, list[list[TaskResult]]] = {}
    data_root = tmp_path_factory.mktemp("data")

    def get(name: str) -> list[list[TaskResult]]:
        if name not in done:
            per_seed = []
            for seed in SEEDS:
                cfg = load_run_config(shipped_config_paths()["shapes_cl"], [
                    f"backbone.cache_dir={mini_clip_cache}", f"data.root={data_root}", f"seeds.init={seed}",
                    f"seeds.class_order={seed}", *RUNS[name]])
                before = torch.get_num_threads()
                torch.set_num_threads(2)
                try:
                    per_seed.append(ContinualLearner(cfg).run())
                finally:
                    torch.set_num_threads(before)
            done[name] = per_seed
            QUALITY_ROWS.append((name, "  ".join(
                f"{what} {interval(values)[0]:5.1f} ± {np.std(values, ddof=1):.1f}" for what, values in (
                    ("Avg", [r[-1].avg_acc for r in per_seed]), ("Last", [r[-1].last_acc for r in per_seed]),
                    ("BwT", [r[-1].bwt for r in per_seed]), ("ECE%", [100 * r[-1].ece for r in per_seed]),
                    ("a[t,t]", [_mean_diagonal(r) for r in per_seed])))))
        return done[name]

    return get


def _mean_diagonal(results: list[TaskResult]) -> float:
    """Mean over tasks t of a[t, t]: how well each task is learnt right after training it."""
    return float(np.mean([r.accuracy_row[r.task] for r in results]))


def paired(runs, a: str, b: str, metric: Callable[[list[TaskResult]], float]) -> list[float]:
    """Per seed, ``metric`` of run ``a`` minus that of run ``b``."""
    return [metric(x) - metric(y) for x, y in zip(runs(a), runs(b), strict=True)]


def last_acc(results: list[TaskResult]) -> float:
    return results[-1].last_acc


def test_zero_shot_is_far_above_chance(runs):
    mean, lo, _ = interval([r[-1].last_acc for r in runs("zero-shot")])
    # Measured 63.0 on every seed (chance 5%): the 20 classes are the same whatever their order.
    assert lo > 8 * CHANCE, (mean, lo)


def test_every_new_task_is_learnt_well_above_the_untrained_model(runs):
    """The learner's a[t, t] (task t right after training it) against the frozen zero-shot model's."""
    gain = paired(runs, "CLAP", "zero-shot", _mean_diagonal)
    QUALITY_ROWS.append(("CLAP - zero-shot a[t,t]", described(gain)))
    assert interval(gain)[1] > 0.0, gain


def test_clap_beats_zero_shot_by_ten_points(runs):
    """The paper's central claim on this benchmark: CLAP's final accuracy far above zero-shot's."""
    gain = paired(runs, "CLAP", "zero-shot", last_acc)
    QUALITY_ROWS.append(("CLAP - zero-shot Last", described(gain)))
    mean, lo, _ = interval(gain)
    # Measured +23.9 [+21.6, +26.2] over seeds 0-2 (Last 86.9 ± 0.9 against 63.0 ± 0.0).
    assert mean >= 10.0 and lo > 0.0, gain


def test_replay_beats_replay_free_and_forgets_less(runs):
    last = paired(runs, "CLAP", "CLAP replay-free", last_acc)
    bwt = paired(runs, "CLAP", "CLAP replay-free", lambda r: r[-1].bwt)
    first = paired(runs, "CLAP", "CLAP replay-free", lambda r: r[-1].accuracy_row[0])
    QUALITY_ROWS.append(("replay - replay-free Last, BwT", f"{described(last)}, {described(bwt)}"))
    assert interval(last)[1] > 0.0, last
    assert interval(bwt)[1] > 0.0, bwt
    assert interval(first)[1] > 0.0, first  # the first task is what replay keeps


def test_language_aware_kd_and_init_effect_is_recorded(runs):
    effect = paired(runs, "CLAP", "CLAP w/o KD and language init", last_acc)
    QUALITY_ROWS.append(("effect of KD + language init on Last", described(effect)))
    # Not a claim of direction (the paper's +0.6 to +1.5 is inside this benchmark's noise): a guard
    # that removing them does not clearly help.
    assert interval(effect)[2] > 0.0, effect


def test_vi_and_its_deterministic_ablation_are_recorded_with_ece(runs):
    last = paired(runs, "CLAP", "CLAP w/o VI", last_acc)
    ece = paired(runs, "CLAP", "CLAP w/o VI", lambda r: 100 * r[-1].ece)
    QUALITY_ROWS.append(("VI - w/o VI: Last, ECE (points)", f"{described(last)}, {described(ece)}"))
    for per_seed in (runs("CLAP"), runs("CLAP w/o VI")):
        for results in per_seed:
            assert math.isfinite(results[-1].ece) and 0.0 <= results[-1].ece <= 1.0
            assert results[-1].last_acc > 8 * CHANCE  # both learn: far above chance
