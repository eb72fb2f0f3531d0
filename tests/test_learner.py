"""The continual learner on tiny shapes scenarios: what trains when, memory, budget, resume, failures."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from official_reference import official_herding
from phase_recorder import PhaseRecorder

from clapray import phases
from clapray.config import EXEMPLAR_SELECTORS, load_run_config, shipped_config_path
from clapray.learner import ContinualLearner, TrainingDiverged
from clapray.results import verify_consistency
from clapray.run import main
from clapray.sampling import seed_phase

TINY = ["method.variant=handcrafted", "data.shapes.num_classes=8", "data.shapes.train_per_class=6",
        "data.shapes.test_per_class=4", "data.num_tasks=4", "optim.epochs=1", "optim.batch_size=8",
        "method.mc_samples_train=3", "method.mc_samples_eval=3", "method.vga.ff_dim=64",
        "memory.policy=per_class", "memory.size=2"]


def config(*overrides: str):
    return load_run_config(shipped_config_path("tiny"), [*TINY, *overrides])


def comparable(result) -> str:
    """A task result without what legitimately differs between two identical runs (NaN-safe to compare)."""
    data = result.to_dict()
    data.pop("timings"), data.pop("peak_memory_mb")
    return json.dumps(data, sort_keys=True)


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_old_adapters_do_not_change_in_main_training():
    learner = ContinualLearner(config("method.consolidation.enabled=false"))
    learner.learn_task(0)
    adapter0, vga = params(learner.head.adapters[0]), params(learner.head.vga)
    learner.learn_task(1)
    assert same(adapter0, params(learner.head.adapters[0]))
    assert not same(vga, params(learner.head.vga))  # VGA trains in every task
    assert len(learner.head.adapters) == 2


def official_lrs(total: int, peak: float, warmup: int) -> list[float]:
    """The official per-step schedule (§12.1): ``warmup`` linear steps strictly between 0 and the peak, then
    cosine from the peak towards peak x 1e-3 over the remaining steps."""
    final, n = peak * 1e-3, total - warmup
    ramp = [peak * (i + 1) / (warmup + 1) for i in range(warmup)]
    return ramp + [final + 0.5 * (peak - final) * (1 + math.cos(math.pi * s / n)) for s in range(n)]


def test_each_phase_trains_regularises_and_schedules_what_the_method_says(monkeypatch):
    """Observed from outside through three real tasks: main training of task t trains VGA (in train mode) and
    adapter t only, with the KD and KL of task t, under warmup + cosine at lr x B/20; consolidation trains
    every adapter with VGA frozen in eval mode, with the KD and KL of every seen task, at lr/10 without warmup;
    exemplar selection and evaluation compute no loss terms."""
    recorder = PhaseRecorder(monkeypatch)
    learner = ContinualLearner(config("optim.epochs=3"))
    for task in range(3):
        learner.learn_task(task)
    peak = 1e-3 * 8 / 20  # optim.lr x batch / 20
    assert {c.kd_tasks == [] and c.kl_terms == 0 and c.regularize == () for c in recorder.calls[None]} == {True}
    for task in range(3):
        main = ("train", task)
        assert recorder.calls[main] and all(
            c.regularize == (task,) and c.kd_tasks == [task] and c.kl_terms == 1 and c.vga_training
            for c in recorder.calls[main]), recorder.calls[main][0]
        assert recorder.moved(main, "head.vga.") and recorder.moved(main, f"head.adapters.{task}.")
        assert not any(recorder.moved(main, f"head.adapters.{old}.") for old in range(task))
        steps = len(recorder.lrs[main])
        assert recorder.lrs[main] == pytest.approx(official_lrs(steps, peak, int(0.3 * steps)), rel=1e-12)
        if task == 0:
            assert ("consolidate", 0) not in recorder.calls
            continue
        consolidate = ("consolidate", task)
        seen = list(range(task + 1))
        assert recorder.calls[consolidate] and all(
            c.regularize == tuple(seen) and c.kd_tasks == seen and c.kl_terms == task + 1 and not c.vga_training
            for c in recorder.calls[consolidate]), recorder.calls[consolidate][0]
        assert all(recorder.moved(consolidate, f"head.adapters.{i}.") for i in seen)
        assert not recorder.moved(consolidate, "head.vga.")
        steps = len(recorder.lrs[consolidate])
        assert steps > 1 and recorder.lrs[consolidate] == pytest.approx(official_lrs(steps, peak / 10, 0), rel=1e-12)


def test_consolidation_trains_old_adapters_and_freezes_vga():
    learner = ContinualLearner(config())
    learner.learn_task(0)
    learner.learn_task(1)
    adapter0, vga = params(learner.head.adapters[0]), params(learner.head.vga)
    setup = learner.setup_task(1)
    stats = learner.run_phase(phases.consolidation(1, learner.cfg), setup)
    assert stats.steps > 0
    assert not same(adapter0, params(learner.head.adapters[0]))
    assert same(vga, params(learner.head.vga))


@pytest.mark.parametrize("policy, size, expected_per_task", [
    ("per_class", 2, [2, 2, 2, 2]),
    ("total", 6, [3, 1, 1, 0]),  # floor(6 / seen classes): 6/2, 6/4, 6/6, 6/8
])
def test_memory_follows_the_budget_policy_at_every_task(policy, size, expected_per_task):
    cfg = config(f"memory.policy={policy}", f"memory.size={size}", "budget.max_steps_per_task=1",
                 "method.consolidation.epochs=1")
    learner = ContinualLearner(cfg)
    for task, k in enumerate(expected_per_task):
        learner.learn_task(task)
        counts = learner.memory.class_counts()
        seen = learner.scenario.task_bounds(task)[1]
        assert sorted(counts) == list(range(seen)) if k else all(v == 0 for v in counts.values())
        assert all(v == k for v in counts.values()), (task, counts)
        assert learner.history[-1].extra["memory_size"] == k * seen


@pytest.mark.parametrize("selection", ["official", "clapray"])
@pytest.mark.parametrize("selector", EXEMPLAR_SELECTORS)
def test_every_selector_runs_in_the_learner_under_both_protocols(selector, selection):
    """Two tasks with 8 exemplars in total: 4 per class after task 0, 2 after task 1."""
    learner = ContinualLearner(config(f"memory.selector={selector}", f"memory.selection={selection}",
                                      "memory.policy=total", "memory.size=8", "budget.max_steps_per_task=1"))
    learner.learn_task(0)
    first = {c: learner.memory.indices_of(c).tolist() for c in learner.memory.classes}
    assert sorted(first) == [0, 1] and all(len(v) == 4 for v in first.values())
    learner.learn_task(1)
    counts = learner.memory.class_counts()
    assert counts == {0: 2, 1: 2, 2: 2, 3: 2}
    new = set(learner.scenario.train_indices(1).tolist())
    assert {i for c in (2, 3) for i in learner.memory.indices_of(c).tolist()} <= new
    for c, before in first.items():
        kept = learner.memory.indices_of(c).tolist()
        assert set(kept) <= set(before)
        if selection == "clapray" or selector in ("first_k", "random"):
            assert kept == before[:2]  # old classes keep a prefix


@pytest.mark.parametrize("selector", ["herding", "entropy"])
def test_official_selection_rescores_old_memory_and_new_data_with_the_current_model(selector):
    """The learner's official herding / entropy equal the official loop applied to the MC-mean logits of the
    model that selected, run over the old memory then the new task's images in evaluation batches."""
    cfg = config(f"memory.selector={selector}", "memory.policy=total", "memory.size=8",
                 "method.consolidation.enabled=false", "budget.max_steps_per_task=1")
    learner = ContinualLearner(cfg)
    learner.learn_task(0)
    old = learner.memory.indices()
    learner.learn_task(1)  # no consolidation: the model after task 1 is the model that selected
    candidates = np.concatenate([old, learner.scenario.train_indices(1)])
    labels = np.asarray(learner.scenario.train_targets)[candidates]
    seed_phase(cfg.seeds.init, 1, "memory")
    batches = learner._image_batches(learner.scenario.benchmark.train, candidates)
    logits = learner._predict(batches, learner.setup_task(1))[0].double().numpy()
    if selector == "herding":
        expected = official_herding(logits, labels, 2)
    else:
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        minus_entropy = (probs * np.log(probs)).sum(axis=1)
        expected = {c: np.flatnonzero(labels == c)[np.argsort(minus_entropy[labels == c])[:2]].tolist()
                    for c in range(4)}
    for c in range(4):
        assert learner.memory.indices_of(c).tolist() == candidates[expected[c]].tolist(), c


@pytest.mark.parametrize("options", [("memory.selector=entropy", "memory.selection_views=train"),
                                     ("memory.selector=variance", "memory.official_mc_reshape=true")],
                         ids=["train_views", "official_mc_reshape"])
def test_official_selection_accidents_run_in_the_learner_reproducibly(options):
    cfg = config(*options, "memory.policy=total", "memory.size=8", "budget.max_steps_per_task=1")
    memories = []
    for _ in range(2):
        learner = ContinualLearner(cfg)
        learner.learn_task(0)
        learner.learn_task(1)
        memories.append(learner.memory)
    assert memories[0] == memories[1] and memories[0].class_counts() == {0: 2, 1: 2, 2: 2, 3: 2}


def test_replay_free_keeps_no_memory_and_skips_consolidation():
    learner = ContinualLearner(config("budget.replay_free=true"))
    for task in range(2):
        learner.learn_task(task)
    assert len(learner.memory) == 0
    assert learner.history[-1].extra["n_consolidation_steps"] == 0
    assert "consolidation" not in learner.history[-1].losses


def test_compute_budget_caps_optimiser_steps():
    learner = ContinualLearner(config("optim.epochs=3", "budget.max_steps_per_task=2"))
    learner.learn_task(0)
    assert learner.history[-1].extra["n_steps"] == 2
    free = ContinualLearner(config("optim.epochs=3"))
    free.learn_task(0)
    assert free.history[-1].extra["n_steps"] == 3 * 2  # 12 images, batch 8 -> 2 steps per epoch


def test_same_seeds_same_numbers_and_seeds_are_separate():
    first = [comparable(r) for r in ContinualLearner(config()).run()]
    second = [comparable(r) for r in ContinualLearner(config()).run()]
    assert first == second
    other_init = ContinualLearner(config("seeds.init=11"))
    assert np.array_equal(other_init.scenario.class_order, ContinualLearner(config()).scenario.class_order)
    other_order = ContinualLearner(config("seeds.class_order=3"))
    assert not np.array_equal(other_order.scenario.class_order, other_init.scenario.class_order)
    assert [comparable(r) for r in other_init.run()] != first


def test_resume_after_task_two_equals_an_uninterrupted_run(tmp_path):
    cfg = config()
    uninterrupted = [comparable(r) for r in ContinualLearner(cfg).run()]
    interrupted = ContinualLearner(cfg)
    interrupted.learn_task(0)
    interrupted.learn_task(1)
    interrupted.save(tmp_path / "checkpoint.pt")
    torch.manual_seed(1234)  # whatever happened in between must not matter
    resumed = ContinualLearner(cfg)
    resumed.load(tmp_path / "checkpoint.pt")
    assert resumed.tasks_done == 2 and len(resumed.memory) == len(interrupted.memory)
    assert [comparable(r) for r in resumed.run()] == uninterrupted


def test_checkpoint_of_another_config_is_refused(tmp_path):
    from clapray.errors import UserError

    learner = ContinualLearner(config())
    learner.learn_task(0)
    learner.save(tmp_path / "c.pt")
    with pytest.raises(UserError, match="different configuration"):
        ContinualLearner(config("method.kd_weight=1")).load(tmp_path / "c.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        learner.load(tmp_path / "broken.pt")


def test_divergence_raises():
    learner = ContinualLearner(config("optim.lr=100", "optim.lr_rule=fixed", "optim.epochs=3"))
    with pytest.raises(TrainingDiverged, match="non-finite"):
        learner.run()


def test_deterministic_variant_and_per_image_context_run():
    for extra in (["method.deterministic=true"], ["method.vga.context=image", "eval.protocol=mixed"]):
        results = ContinualLearner(config(*extra, "budget.max_steps_per_task=1")).run()
        assert len(results) == 4 and all(np.isfinite(r.last_acc) for r in results)


def run_cli(tmp_path, *extra: str) -> int:
    return main(["tiny", "--out", str(tmp_path), *sum((["--set", s] for s in [*TINY, *extra]), [])])


def test_cli_writes_consistent_parquet_and_resumes_after_a_failure(tmp_path, monkeypatch, capsys):
    reference = tmp_path / "reference"
    assert run_cli(reference) == 0
    # A run that fails at task 2 keeps tasks 0 and 1 and records the error ...
    real = ContinualLearner.learn_task

    def failing(self, task):
        if task == 2:
            raise RuntimeError("injected failure")
        return real(self, task)

    monkeypatch.setattr(ContinualLearner, "learn_task", failing)
    store = tmp_path / "store"
    with pytest.raises(RuntimeError, match="injected"):
        run_cli(store)
    runs = pd.read_parquet(store / "runs")
    assert runs.loc[0, "status"] == "error" and "injected failure" in runs.loc[0, "error"]
    assert sorted(pd.read_parquet(store / "tasks")["task"]) == [0, 1]
    # ... and the same command continues from task 2 and ends where the uninterrupted run ended.
    monkeypatch.setattr(ContinualLearner, "learn_task", real)
    capsys.readouterr()
    assert run_cli(store) == 0
    assert "resuming" in capsys.readouterr().out
    assert verify_consistency(store) == [] and verify_consistency(reference) == []
    columns = ["task", "last_acc", "avg_acc", "bwt", "ece", "loss_train"]
    got = pd.read_parquet(store / "tasks").sort_values("task")[columns].reset_index(drop=True)
    want = pd.read_parquet(reference / "tasks").sort_values("task")[columns].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)
    final = pd.read_parquet(store / "runs")
    assert final.loc[0, "status"] == "finished" and final.loc[0, "tasks_done"] == 4
    accuracy = pd.read_parquet(store / "accuracy")
    assert set(accuracy.columns) >= {"task", "eval_task", "acc"} and len(accuracy) == 10
    # A finished run is not run again.
    assert run_cli(store) == 0
    assert "already finished" in capsys.readouterr().out


def test_cli_records_divergence_as_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "clapray.run", "tiny", "--out", str(tmp_path),
                           *sum((["--set", s] for s in [*TINY, "optim.lr=100", "optim.lr_rule=fixed",
                                                         "optim.epochs=3"]), [])],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "non-finite loss" in proc.stderr
    runs = pd.read_parquet(tmp_path / "runs")
    assert runs.loc[0, "status"] == "error" and "non-finite loss" in runs.loc[0, "error"]
