"""The run CLI end to end (config -> scenario -> backbone -> learner -> files), with the zero-shot variant."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from clapray.builders import build_backbone, build_scenario_from_config
from clapray.config import load_run_config, resolve_config_argument, shipped_config_path
from clapray.metrics.step import step_metrics
from clapray.results import verify_consistency
from clapray.run import main

SMALL = ["data.shapes.num_classes=8", "data.shapes.train_per_class=4", "data.shapes.test_per_class=6",
         "data.num_tasks=4"]


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clapray.run", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_core_imports_neither_ray_nor_optuna():
    code = ("import sys, clapray, clapray.config, clapray.data, clapray.model, clapray.metrics, "
            "clapray.run; bad = [m for m in ('ray', 'optuna') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("text, field", [
    ("memory:\n  sise: 3\n", "memory.sise"),
    ("optim:\n  epochs: many\n", "optim.epochs"),
    ("memory:\n  policy: total\n  size: -5\n", "memory.size"),
])
def test_bad_config_exits_2_with_one_line(tmp_path, text, field):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    proc = run_cli(str(path), cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith(f"error: {path}: {field}: expected")
    assert list(tmp_path.iterdir()) == [path]  # nothing written for a rejected config


def test_bad_override_exits_2(tmp_path):
    proc = run_cli("--set", "method.vga.depht=2", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --set: method.vga.depht: expected one of")


def test_unknown_config_name_exits_2(tmp_path):
    proc = run_cli("cifar1000", cwd=tmp_path)
    assert proc.returncode == 2 and "shipped:" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_dataset_exits_2_naming_the_path(tmp_path):
    proc = run_cli("cifar100", "--set", f"data.root={tmp_path / 'nowhere'}", "--set", "data.download=false",
                   "--set", "backbone.model=clapray-tiny-vit", "--set", "backbone.pretrained=null",
                   "--set", "method.variant=zeroshot", "--out", str(tmp_path / "store"), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cifar-100-python" in proc.stderr


def test_dry_run_prints_the_resolved_config(capsys):
    assert main(["tiny", "--dry-run", "--set", "memory.selector=herding"]) == 0
    printed = capsys.readouterr().out
    assert "selector: herding" in printed and "dataset: shapes\n" in printed


def test_the_default_run_is_clap_on_shapes_cl_with_the_mini_clip(capsys, monkeypatch):
    # Without a config: a run whose numbers mean something (the pretrained mini-CLIP, held-out classes),
    # not the random-weight smoke run. The dry run checks it without pretraining anything.
    import clapray.shapes.mini_clip as mini_clip

    monkeypatch.setattr(mini_clip, "pretrain", lambda *a, **k: pytest.fail("a dry run pretrained"))
    assert main(["--dry-run"]) == 0
    printed = capsys.readouterr().out
    for line in ("model: clapray-mini-resnet", "pretrained: clapray-shapes", "dataset: shapes_cl",
                 "variant: handcrafted"):
        assert f"  {line}\n" in printed, printed
    assert load_run_config(resolve_config_argument(None)) == load_run_config(shipped_config_path("shapes_cl"))


def test_zeroshot_run_writes_the_store_and_is_deterministic(tmp_path, capsys):
    args = ["tiny", "--out", str(tmp_path), "--set", "method.variant=zeroshot", *sum((["--set", s] for s in SMALL), [])]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("task ") == 4 and "done:" in out
    accuracy = pd.read_parquet(tmp_path / "accuracy")
    tasks = pd.read_parquet(tmp_path / "tasks")
    runs = pd.read_parquet(tmp_path / "runs")
    assert len(runs) == 1 and runs.loc[0, "status"] == "finished" and runs.loc[0, "trainable_params"] == 0
    assert sorted(tasks["task"]) == [0, 1, 2, 3]
    assert len(accuracy) == 1 + 2 + 3 + 4
    assert accuracy.groupby("task")["n_samples"].sum().tolist() == [12, 24, 36, 48]
    assert verify_consistency(tmp_path) == []
    first = tasks.sort_values("task")[["last_acc", "avg_acc", "bwt", "ece"]].to_numpy()
    assert main(args) == 0  # same config, same files, same numbers, no duplicated rows
    again = pd.read_parquet(tmp_path / "tasks").sort_values("task")
    assert len(again) == 4
    np.testing.assert_array_equal(first, again[["last_acc", "avg_acc", "bwt", "ece"]].to_numpy())


def test_shapes_ten_task_scenario_is_quick_and_tiny_backbone_encodes_it():
    cfg = load_run_config(shipped_config_path("tiny"), ["data.num_tasks=10", "data.shapes.num_classes=50",
                                                  "data.shapes.train_per_class=100"])
    start = time.perf_counter()
    scenario = build_scenario_from_config(cfg)
    built = time.perf_counter() - start
    assert scenario.num_tasks == 10 and scenario.num_classes == 50
    assert built < 5.0, f"building the 10-task scenario took {built:.1f}s"
    backbone = build_backbone(cfg, torch.device("cpu"))
    dataset = scenario.task_dataset(9, "train", transform=backbone.preprocess)
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=False)
    images, labels, indices = next(iter(loader))
    features = backbone.encode_images(images)
    assert features.shape == (16, backbone.embed_dim)
    assert torch.allclose(features.norm(dim=1), torch.ones(16), atol=1e-5)
    assert set(labels.tolist()) <= set(scenario.classes_of_task(9).tolist())


def test_zeroshot_step_metrics_follow_task_indexing():
    """A planted logit matrix: images of task 1 are predicted as a task-0 class, all else right.

    After task 0, task 0 is perfect (100). After task 1, task 0 stays 100 and task 1 is 0 (task-aware
    accuracy of task 1 is 100 since its own block is correct among its own classes). Off-by-one errors
    in the seen-class slice or the task masks change these numbers.
    """
    cfg = load_run_config(shipped_config_path("tiny"), ["data.num_tasks=2", "data.shapes.num_classes=4",
                                                  "data.shapes.test_per_class=3", "eval.batch_size=2"])
    scenario = build_scenario_from_config(cfg)
    labels = np.repeat(np.arange(4), 3)  # 12 images, classes 0..3, tasks 0,0,1,1
    tasks = np.asarray(scenario.task_of_class)[labels]
    logits = torch.full((12, 4), -5.0)
    logits[np.arange(12), labels] = 5.0
    logits[tasks == 1, 0] = 9.0  # task-1 images are pulled to class 0 (task 0) ...
    history: list[list[float]] = []

    def evaluate_step(step: int) -> dict:
        seen, n_seen = tasks <= step, int(scenario.task_bounds(step)[1])
        future = logits[~seen][:, :n_seen] if step < scenario.num_tasks - 1 else None
        return step_metrics(logits[seen][:, :n_seen], labels[seen], tasks[seen], step,
                            np.asarray(scenario.task_of_class)[:n_seen], history,
                            batch_sizes=[2] * (int(seen.sum()) // 2), ece_bins=15,
                            future_logits=future)

    step0 = evaluate_step(0)
    assert step0["accuracy_row"] == (100.0,) and step0["n_eval"] == (6,)
    assert step0["phndd"] is not None  # task-1 images are the novel data at step 0
    step1 = evaluate_step(1)
    assert step1["accuracy_row"] == (100.0, 0.0)
    assert step1["task_aware_row"] == (100.0, 100.0)
    assert step1["last_acc"] == pytest.approx(50.0)
    assert step1["avg_acc"] == pytest.approx(75.0)
    assert step1["bwt"] == pytest.approx(0.0)
    assert step1["phndd"] is None  # no future tasks after the last one
    assert history == [[100.0], [100.0, 0.0]]
