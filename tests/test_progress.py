"""Heartbeats inside a task (clapray.progress): throttling, files, the learner's hook, single runs; and the
forward-transfer inputs every run records after each task (clapray.metrics.transfer)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from clapray.config import load_run_config, shipped_config_path
from clapray.errors import UserError
from clapray.progress import (
    HEARTBEAT_ENV,
    ConsoleSink,
    FileSink,
    Heartbeat,
    Throttled,
    format_duration,
    heartbeat_interval,
    progress_path,
    read_heartbeat,
)

TINY = ["data.shapes.num_classes=6", "data.shapes.train_per_class=6", "data.shapes.test_per_class=3",
        "data.num_tasks=3", "optim.epochs=2", "optim.batch_size=4", "eval.batch_size=4",
        "method.mc_samples_train=2", "method.mc_samples_eval=2", "method.vga.ff_dim=64", "memory.policy=per_class",
        "memory.size=2"]


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throttled_passes_at_most_one_heartbeat_per_interval():
    clock, beats = FakeClock(), []
    hook = Throttled(beats.append, num_tasks=4, interval=10.0, clock=clock)
    for t in range(0, 35):  # one call per second
        clock.now = float(t)
        hook(1, "train", t + 1, 35)
    # None in the first 10 s (a short task stays silent), then one per 10 s.
    assert [b.done for b in beats] == [11, 21, 31]
    assert [b.seq for b in beats] == [1, 2, 3] and all(b.task == 1 and b.num_tasks == 4 for b in beats)
    assert beats[0].describe() == "task 2/4  train step 11/35"
    assert Heartbeat(-1, 0, "encode", 3, 40, 0.0, 1).describe() == "encode batch 3/40"


def test_a_failing_sink_never_stops_the_run():
    def broken(_beat):
        raise OSError("disk full")

    hook = Throttled(broken, num_tasks=1, interval=0.0)
    hook(0, "train", 1, 2)  # logged, not raised


def test_heartbeat_interval_from_the_environment(monkeypatch):
    monkeypatch.delenv(HEARTBEAT_ENV, raising=False)
    assert heartbeat_interval() == 10.0
    monkeypatch.setenv(HEARTBEAT_ENV, "0.5")
    assert heartbeat_interval() == 0.5
    for bad in ("fast", "-1", "nan"):
        monkeypatch.setenv(HEARTBEAT_ENV, bad)
        with pytest.raises(UserError, match=f"{HEARTBEAT_ENV}: expected seconds >= 0"):
            heartbeat_interval()


def test_heartbeat_files_round_trip(tmp_path):
    path = progress_path(str(tmp_path), "trial-x")
    assert path == f"{tmp_path}/_progress/trial-x.json"
    assert read_heartbeat(path) is None  # not written yet
    beat = Heartbeat(task=2, num_tasks=5, phase="evaluate", done=3, total=9, at=123.5, seq=7)
    FileSink(path)(beat)
    assert read_heartbeat(path) == beat
    (tmp_path / "_progress" / "trial-x.json").write_text("{not json")
    assert read_heartbeat(path) is None


def test_durations():
    assert [format_duration(s) for s in (0, 42.4, 65, 3599, 7620, math.nan, -1)] == \
        ["0s", "42s", "1m05s", "59m59s", "2h07m", "-", "-"]


@pytest.fixture(scope="module")
def observed_runs():
    """Tiny runs of CLAP with replay, replay-free, and zero-shot, with a hook recording every call."""
    import torch

    from clapray.learner import ContinualLearner

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for name, overrides in (("clap", ["method.variant=handcrafted", "memory.selector=herding"]),
                                ("zeroshot", ["method.variant=zeroshot"])):
            calls: list[tuple[int, str, int, int]] = []
            cfg = load_run_config(shipped_config_path("tiny"), [*TINY, *overrides])
            learner = ContinualLearner(cfg, progress=lambda *args, calls=calls: calls.append(args))
            out[name] = (learner.run(), calls)
    finally:
        torch.set_num_threads(before)
    return out


def test_the_learner_reports_every_step_and_batch_of_every_phase(observed_runs):
    history, calls = observed_runs["clap"]
    for result in history:
        task = result.task
        mine = [c for c in calls if c[0] == task]
        train = [(done, total) for _, phase, done, total in mine if phase == "train"]
        # One call per optimiser step, counting up to a total that is the phase's real step count.
        assert train == [(i, result.extra["n_steps"]) for i in range(1, result.extra["n_steps"] + 1)]
        consolidate = [(d, n) for _, p, d, n in mine if p == "consolidate"]
        assert [d for d, _ in consolidate] == list(range(1, result.extra["n_consolidation_steps"] + 1))
        assert all(n == result.extra["n_consolidation_steps"] for _, n in consolidate)
        evaluate = [(d, n) for _, p, d, n in mine if p == "evaluate"]
        # The seen tasks and (before the last task) the future ones, one count across both passes.
        assert evaluate and [d for d, _ in evaluate] == list(range(1, evaluate[0][1] + 1))
        assert {p for _, p, _, _ in mine} <= {"train", "memory", "consolidate", "evaluate"}
    encode = [c for c in calls if c[1] == "encode"]  # the feature cache, built on first use, outside a task
    assert encode and {c[0] for c in encode} == {-1} and encode[-1][2] == encode[-1][3]
    assert any(p == "memory" for _, p, _, _ in calls)  # herding scores the task's images to choose exemplars
    zeroshot_phases = {p for _, p, _, _ in observed_runs["zeroshot"][1]}
    assert zeroshot_phases == {"encode", "evaluate"}  # the feature cache is built, nothing trains


def test_next_task_accuracies_are_recorded_before_the_last_task(observed_runs):
    for name, (history, _) in observed_runs.items():
        for result in history[:-1]:
            before, reference = result.extra["next_task_acc"], result.extra["next_task_zero_shot_acc"]
            assert 0.0 <= before <= 100.0 and 0.0 <= reference <= 100.0, name
            if name == "zeroshot":
                # Zero-shot adds nothing to zero-shot: its transfer is 0 by construction.
                assert before == pytest.approx(reference)
        assert "next_task_acc" not in history[-1].extra


def test_next_task_accuracies_by_hand():
    from clapray.metrics import next_task_accuracies

    # Two seen classes (0, 1), next task's classes 2 and 3; four images of the next task.
    model = np.array([[5.0, 0.0], [0.0, 1.0], [0.0, 0.0], [9.0, 0.0]])
    zero_shot = np.array([[0.0, 0.0, 1.0, 0.0],   # zs right (2); model's class 0 (5.0) beats zs' 1.0: wrong
                          [0.0, 0.0, 2.0, 0.0],   # right both ways
                          [3.0, 0.0, 0.0, 1.0],   # zs wrong (class 0 wins); joined: model's 0.0 vs zs 1.0 -> right
                          [0.0, 0.0, 0.0, 4.0]])  # zs right; joined: model's 9.0 wins -> wrong
    targets = np.array([2, 2, 3, 3])
    assert next_task_accuracies(model, zero_shot, targets) == (50.0, 75.0)
    with pytest.raises(ValueError, match="labels of the next task"):
        next_task_accuracies(model, zero_shot, np.array([0, 2, 3, 3]))
    assert all(math.isnan(v) for v in next_task_accuracies(model[:0], zero_shot[:0], targets[:0]))


def test_a_single_run_prints_heartbeats(tmp_path, monkeypatch):
    import torch

    from clapray.run import execute

    monkeypatch.setenv(HEARTBEAT_ENV, "0")
    cfg = load_run_config(shipped_config_path("tiny"), [*TINY, f"output_dir={tmp_path}"])
    out = io.StringIO()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        execute(cfg, out=out)
    finally:
        torch.set_num_threads(before)
    lines = out.getvalue().splitlines()
    assert "  ... task 1/3  train step 1/" in "\n".join(lines)
    assert any(line.startswith("  ... task 3/3  evaluate batch ") for line in lines)
    # The frozen-feature cache is encoded first (its own heartbeats), then task 1's come before its summary.
    assert lines[0] == "  ... encode batch 1/3"
    first_summary = next(i for i, line in enumerate(lines) if line.startswith("task  1/3"))
    assert lines[first_summary - 1].startswith("  ... task 1/3  evaluate batch ")


def test_console_sink_prefix():
    out = io.StringIO()
    ConsoleSink(out)(Heartbeat(0, 2, "consolidate", 4, 8, 0.0, 1))
    assert out.getvalue() == "  ... task 1/2  consolidate step 4/8\n"
