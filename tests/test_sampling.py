"""The seeded randomness of a run: how evaluation images are ordered and batched (§13, pitfall P1)."""

from __future__ import annotations

import numpy as np
import pytest

from clapray.config import load_run_config, shipped_config_path
from clapray.learner import ContinualLearner
from clapray.metrics import per_batch_ece
from clapray.sampling import evaluation_batches

# Three tasks of class-sorted evaluation images: task j owns indices [10 j, 10 j + 10).
TASKS = [np.arange(10 * j, 10 * j + 10) for j in range(3)]


def batches(plan):
    bounds = np.cumsum([0, *plan.batch_sizes])
    return [plan.indices[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def test_official_batches_are_per_task_shuffled_and_fixed_per_run():
    plan = evaluation_batches(TASKS, batch_size=4, mixed=False, shuffled=True, seed=7, stream="seen")
    assert plan.batch_sizes == (4, 4, 2) * 3
    for k, batch in enumerate(batches(plan)):
        assert len({int(i) // 10 for i in batch}) == 1  # one task per batch: a VGA context holds one task
        assert int(batch[0]) // 10 == k // 3
    assert sorted(plan.indices.tolist()) == list(range(30))
    assert not np.array_equal(plan.indices, np.concatenate(TASKS))  # shuffled within tasks
    # The order of a task is the same at every step of the run (a later step only adds tasks) ...
    first_two = evaluation_batches(TASKS[:2], batch_size=4, mixed=False, shuffled=True, seed=7, stream="seen")
    np.testing.assert_array_equal(first_two.indices, plan.indices[:20])
    # ... and is drawn from the seed: another seed, another order.
    other = evaluation_batches(TASKS, batch_size=4, mixed=False, shuffled=True, seed=8, stream="seen")
    assert not np.array_equal(other.indices, plan.indices)


def test_sorted_and_mixed_protocols():
    plan = evaluation_batches(TASKS, batch_size=4, mixed=False, shuffled=False, seed=7, stream="seen")
    np.testing.assert_array_equal(plan.indices, np.arange(30))
    mixed = evaluation_batches(TASKS, batch_size=4, mixed=True, shuffled=True, seed=7, stream="seen")
    assert mixed.batch_sizes == (4,) * 7 + (2,)
    assert sorted(mixed.indices.tolist()) == list(range(30))
    assert any(len({int(i) // 10 for i in b}) > 1 for b in batches(mixed))  # batches mix tasks


def test_per_batch_ece_follows_the_real_batches():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=10)
    targets = rng.integers(0, 5, size=10)
    sizes = [4, 2, 4]
    bounds = np.cumsum([0, *sizes])
    expected = np.mean([per_batch_ece(probs[a:b], targets[a:b], batch_size=b - a)
                        for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    assert per_batch_ece(probs, targets, batch_size=sizes) == pytest.approx(expected, abs=1e-12)
    assert per_batch_ece(probs, targets, batch_size=sizes) != pytest.approx(per_batch_ece(probs, targets, 4))
    with pytest.raises(ValueError, match="summing to 10"):
        per_batch_ece(probs, targets, batch_size=[4, 4])


@pytest.mark.parametrize("order", ["shuffled", "sorted"])
def test_the_learner_evaluates_in_the_planned_batches(one_thread, order):
    cfg = load_run_config(shipped_config_path("tiny"), [
        "backbone.model=clapray-tiny-vit", "backbone.pretrained=null", "data.shapes.num_classes=6",
        "data.shapes.train_per_class=2", "data.shapes.test_per_class=5", "data.num_tasks=3",
        "optim.batch_size=4", "optim.epochs=1", "method.vga.ff_dim=32", f"eval.order={order}",
        "method.mc_samples_train=1", "method.mc_samples_eval=2"])
    learner = ContinualLearner(cfg)
    calls = []
    real = learner._image_batches

    def recording(split, indices, batch_sizes=None):
        if split is learner.scenario.eval_split:
            calls.append((np.asarray(indices).copy(), batch_sizes))
        return real(split, indices, batch_sizes)

    learner._image_batches = recording
    learner.learn_task(0)
    (seen, seen_sizes), (future, future_sizes) = calls
    scenario = learner.scenario
    tasks_of = np.asarray(scenario.task_of_class)[np.asarray(scenario.eval_targets)]
    assert sorted(seen.tolist()) == sorted(scenario.eval_indices(0).tolist())
    assert sorted(future.tolist()) == sorted(np.concatenate([scenario.eval_indices(1), scenario.eval_indices(2)]))
    assert seen_sizes == (4, 4, 2) and future_sizes == (4, 4, 4, 4, 4)
    if order == "sorted":
        np.testing.assert_array_equal(seen, scenario.eval_indices(0))
        assert list(tasks_of[future]) == sorted(tasks_of[future])
    else:
        assert not np.array_equal(seen, scenario.eval_indices(0))
        # The future tasks are one shuffled stream: its first batches already mix tasks 1 and 2.
        assert list(tasks_of[future]) != sorted(tasks_of[future])


def test_reevaluate_draws_again_without_touching_the_run(one_thread):
    cfg = load_run_config(shipped_config_path("tiny"), [
        "backbone.model=clapray-tiny-vit", "backbone.pretrained=null", "data.shapes.num_classes=4",
        "data.shapes.train_per_class=3", "data.shapes.test_per_class=6", "data.num_tasks=2",
        "optim.batch_size=4", "optim.epochs=1", "method.vga.ff_dim=32", "method.mc_samples_train=1",
        "method.mc_samples_eval=3"])
    learner = ContinualLearner(cfg)
    learner.run()
    history, rows = [r.to_dict() for r in learner.history], [list(r) for r in learner._acc_rows]
    import torch

    state = torch.get_rng_state()
    a, again, b = (learner.reevaluate(seed=s) for s in (0, 0, 1))
    assert a == again  # the same draws for the same seed
    assert a["ece_per_batch"] != b["ece_per_batch"]  # other draws, other numbers
    assert learner.reevaluate(seed=0, order="sorted", mc_samples=1)["ece_per_batch"] != a["ece_per_batch"]
    # Nothing of the run changed: history, accuracy rows, the global RNG stream, the config.
    assert [r.to_dict() for r in learner.history] == history and learner._acc_rows == rows
    assert torch.equal(torch.get_rng_state(), state) and learner.cfg is cfg
