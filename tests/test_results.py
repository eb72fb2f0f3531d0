"""Tests for clapray.results: the Parquet store's files, schemas, atomicity, reading and aggregation."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

from clapray import results as R
from clapray.config import RunConfig
from clapray.task_result import NoveltyDetection, RunProvenance, TaskResult
from clapray.typed_config import from_mapping

NAN = float("nan")

# a[t, j] after step t on task j (percent), NaN above the diagonal.
MATRIX = np.array([[90.0, NAN, NAN],
                   [80.0, 70.0, NAN],
                   [75.0, 65.0, 60.0]])
# Hand-computed from MATRIX: A_t = macro mean of row t, Avg_t = mean of A_0..A_t,
# BwT_t = mean over j < t of a[t, j] - a[j, j].
A = [90.0, 75.0, 200.0 / 3]
AVG = [90.0, 82.5, (90.0 + 75.0 + 200.0 / 3) / 3]
BWT = [NAN, -10.0, -10.0]
IDS = {"sweep": "s1", "cell": "base", "trial_id": "t-001", "seed": 0}


def config(**sections: Any) -> RunConfig:
    return from_mapping(RunConfig, sections, "test")


def fake_results(matrix: np.ndarray = MATRIX, losses: dict[str, float] | None = None,
                 timings: dict[str, float] | None = None) -> list[TaskResult]:
    """TaskResults of a run whose accuracy matrix is ``matrix``, summaries as hand-computed above."""
    n = matrix.shape[0]
    out = []
    for t in range(n):
        row = tuple(float(v) for v in matrix[t, : t + 1])
        a = [float(np.mean(matrix[s, : s + 1])) for s in range(t + 1)]
        bwt = float(np.mean([matrix[t, j] - matrix[j, j] for j in range(t)])) if t else NAN
        out.append(TaskResult(
            task=t, num_tasks=n, accuracy_row=row, task_aware_row=tuple(min(v + 5, 100.0) for v in row),
            n_eval=tuple(100 + j for j in range(t + 1)), last_acc=a[-1], avg_acc=float(np.mean(a)), bwt=bwt,
            ece=0.05 + 0.01 * t, ece_per_batch=0.06 + 0.01 * t,
            phndd=NoveltyDetection(0.8 + 0.05 * t, 0.7, 0.4 - 0.1 * t, 0.45) if t < n - 1 else None,
            losses=dict(losses if losses is not None
                        else {"train": 1.0 / (t + 1), "train_ce": 0.5, "consolidation": 0.2}),
            timings=dict(timings if timings is not None else {"train": 10.0, "evaluate": 2.0, "total": 12.5}),
            peak_memory_mb=1000.0 + 10 * t, extra={"n_steps": 40 * (t + 1)}))
    return out


def write_run(root: Any, run_id: str, cfg: RunConfig | None = None, upto: int | None = None,
              results: list[TaskResult] | None = None, **kwargs: Any) -> R.RunWriter:
    results = results if results is not None else fake_results()
    writer = R.RunWriter(root, run_id, cfg or config(), ids=kwargs.pop("ids", IDS), **kwargs)
    for t in range(len(results) if upto is None else upto):
        writer.write_task(results[t], results[: t + 1])
    return writer


def run_row(root: Path, run_id: str) -> dict[str, Any]:
    return pq.read_table(root / "runs" / f"{run_id}.parquet").to_pylist()[0]


# --------------------------------------------------------------------------------------------------


def test_hand_computed_constants_match_the_fake_results() -> None:
    res = fake_results()
    assert [r.last_acc for r in res] == pytest.approx(A)
    assert [r.avg_acc for r in res] == pytest.approx(AVG)
    assert math.isnan(res[0].bwt) and [r.bwt for r in res[1:]] == pytest.approx(BWT[1:])


def test_three_tasks_write_all_tables_and_status_transitions(tmp_path: Path) -> None:
    res = fake_results()
    writer = R.RunWriter(tmp_path, "run-a", config(memory={"size": 500}), ids=IDS,
                         provenance=RunProvenance("fp123", trainable_params=12345, used_feature_cache=False))
    statuses = []
    for t in range(3):
        writer.write_task(res[t], res[: t + 1], gpu_s=3.0 * (t + 1))
        statuses.append(run_row(tmp_path, "run-a")["status"])
    assert statuses == ["running", "running", "finished"]

    tasks = pd.read_parquet(tmp_path / "tasks")
    accuracy = pd.read_parquet(tmp_path / "accuracy")
    runs = pd.read_parquet(tmp_path / "runs")
    assert (len(tasks), len(accuracy), len(runs)) == (3, 6, 1)

    # Fixed names scripts rely on; ids first, in the given order, on every table.
    assert {"task", "eval_task", "acc", "task_aware_acc", "n_samples"} <= set(accuracy.columns)
    assert {"task", "last_acc", "avg_acc", "bwt", "ece", "ece_per_batch", "num_tasks", "phndd_auroc", "loss_train",
            "loss_train_kd", "train_s", "consolidate_s", "total_s", "peak_memory_mb",
            "n_steps"} <= set(tasks.columns)
    assert {"avg_acc", "last_acc", "bwt", "ece", "status", "error", "tasks_done", "memory.size",
            "method.vga.depth", "git_sha", "config_yaml", "trainable_params"} <= set(runs.columns)
    for frame in (tasks, accuracy, runs):
        assert list(frame.columns[:5]) == ["sweep", "cell", "trial_id", "seed", "run_id"]
        assert (frame["sweep"] == "s1").all() and (frame["seed"] == 0).all()

    tasks = tasks.sort_values("task")
    assert tasks["task"].tolist() == [0, 1, 2]
    assert tasks["last_acc"].tolist() == pytest.approx(A)
    assert tasks["avg_acc"].tolist() == pytest.approx(AVG)
    assert math.isnan(tasks["bwt"].iloc[0]) and tasks["bwt"].iloc[1:].tolist() == pytest.approx([-10.0, -10.0])
    assert tasks["loss_train"].tolist() == pytest.approx([1.0, 0.5, 1 / 3])
    assert tasks["loss_train_kd"].isna().all()  # a loss this run never had
    assert tasks["consolidate_s"].isna().all() and tasks["total_s"].tolist() == [12.5] * 3
    assert tasks["n_steps"].tolist() == [40, 80, 120]
    assert tasks["phndd_auroc"].iloc[:2].tolist() == pytest.approx([0.8, 0.85])
    assert math.isnan(tasks["phndd_auroc"].iloc[2])  # no novelty detection after the last task

    acc = accuracy.sort_values(["task", "eval_task"])
    assert list(zip(acc["task"], acc["eval_task"], strict=False)) == [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    assert acc["acc"].tolist() == [90.0, 80.0, 70.0, 75.0, 65.0, 60.0]
    assert acc["task_aware_acc"].tolist() == [95.0, 85.0, 75.0, 80.0, 70.0, 65.0]
    assert acc["n_samples"].tolist() == [100, 100, 101, 100, 101, 102]

    run = runs.iloc[0]
    assert run["status"] == "finished" and pd.isna(run["error"])
    assert (run["tasks_done"], run["num_tasks"]) == (3, 3)
    assert run["last_acc"] == pytest.approx(A[2]) and run["avg_acc"] == pytest.approx(AVG[2])
    assert run["bwt"] == pytest.approx(-10.0) and run["ece"] == pytest.approx(0.07)
    assert run["phndd_auroc"] == pytest.approx(0.825)  # mean over the two steps that have it
    assert run["phndd_fpr95"] == pytest.approx(0.35)
    assert run["wall_s"] == pytest.approx(37.5) and run["gpu_s"] == pytest.approx(9.0)
    assert run["peak_memory_mb"] == pytest.approx(1020.0)
    assert run["memory.size"] == 500 and run["method.vga.depth"] == 1 and run["data.sequence"] == "[]"
    assert run["trainable_params"] == 12345 and not run["used_feature_cache"]
    assert run["dataset_fingerprint"] == "fp123"
    assert run["config_hash"] == config(memory={"size": 500}).config_hash()
    assert from_mapping(RunConfig, yaml.safe_load(run["config_yaml"]), "back") == config(memory={"size": 500})
    assert set(json.loads(run["package_versions"])) >= {"clapray", "torch", "numpy", "pyarrow", "pandas"}
    assert run["git_sha"] is None or len(run["git_sha"]) == 40
    # Timestamps are Parquet timestamps in UTC (pandas: tz-aware), not text.
    schema = pq.read_schema(tmp_path / "runs" / "run-a.parquet")
    assert schema.field("started_at").type == pa.timestamp("ms", tz="UTC") == schema.field("updated_at").type
    assert str(run["started_at"].tz) == "UTC" and run["updated_at"] >= run["started_at"]
    # Average forgetting from the matrix: F_1 = 90 - 80; F_2 = mean(max(90, 80) - 75, 70 - 65).
    assert run["forgetting"] == pytest.approx(10.0)
    assert math.isnan(tasks["forgetting"].iloc[0]) and tasks["forgetting"].iloc[1:].tolist() == pytest.approx([10, 10])
    assert math.isnan(run["fwt"])  # these results carry no next-task accuracies

    assert R.verify_consistency(tmp_path) == []


def test_verify_consistency_detects_tampered_files(tmp_path: Path) -> None:
    write_run(tmp_path, "run-a")
    write_run(tmp_path, "run-b")
    path = tmp_path / "accuracy" / "run-a.parquet"  # one file per run: rows (0,0) (1,0) (1,1) (2,0) ...
    table = pq.read_table(path)
    values = table.column("acc").to_pylist()
    values[3] += 3.0  # a[2, 0]: changes A_2, Avg and BwT at task 2
    pq.write_table(table.set_column(table.schema.get_field_index("acc"), "acc", pa.array(values)), path)
    problems = R.verify_consistency(tmp_path)
    assert problems and all("run-a" in p for p in problems)
    assert any("tasks: run run-a task 2: last_acc" in p for p in problems)
    assert any("runs: run run-a: bwt" in p for p in problems)

    # A tasks row disagreeing with an intact accuracy table is caught too.
    write_run(tmp_path, "run-a")
    assert R.verify_consistency(tmp_path) == []
    path = tmp_path / "tasks" / "run-b.parquet"
    table = pq.read_table(path)
    avg = table.column("avg_acc").to_pylist()
    avg[1] = 81.0
    pq.write_table(table.set_column(table.schema.get_field_index("avg_acc"), "avg_acc", pa.array(avg)), path)
    assert [p for p in R.verify_consistency(tmp_path)] == [
        "tasks: run run-b task 1: avg_acc = 81.0 but the accuracy table gives 82.5"]


def test_retried_task_overwrites_and_second_run_adds_rows(tmp_path: Path) -> None:
    res = fake_results()
    writer = write_run(tmp_path, "run-a", upto=2, results=res)
    writer.write_task(res[1], res[:2])  # a retry of task 1
    assert len(pd.read_parquet(tmp_path / "tasks")) == 2
    assert len(pd.read_parquet(tmp_path / "accuracy")) == 3
    assert writer.finished_tasks() == [0, 1]

    # A run whose id extends the first one's must not be confused with it.
    other = write_run(tmp_path, "run-a--task-001", upto=1)
    assert writer.finished_tasks() == [0, 1] and other.finished_tasks() == [0]
    assert len(pd.read_parquet(tmp_path / "tasks")) == 3
    assert len(pd.read_parquet(tmp_path / "runs")) == 2
    assert sorted(pd.read_parquet(tmp_path / "accuracy")["run_id"].value_counts().tolist()) == [1, 3]
    assert R.verify_consistency(tmp_path) == []
    assert R.RunWriter(tmp_path, "fresh", config(), ids=IDS).finished_tasks() == []


def test_runs_with_different_config_nullness_and_loss_keys_share_one_schema(tmp_path: Path) -> None:
    # "a-..." sorts first: its file's schema is the one a plain directory read starts from.
    write_run(tmp_path, "a-null", config(memory={"size": None}, data={"num_tasks": None}),
              results=fake_results(losses={"train": 1.0}, timings={"total": 1.0}))
    write_run(tmp_path, "b-set", config(memory={"size": 500}, data={"num_tasks": 3, "sequence": ["cifar100"]}),
              results=fake_results(losses={"train": 2.0, "train_kd": 0.3, "consolidation_kl": 0.1, "aux_extra": 9.0},
                                   timings={"total": 2.0, "sample": 0.5}))
    for table in ("runs", "tasks", "accuracy"):
        sa, sb = pq.read_schema(tmp_path / table / "a-null.parquet"), pq.read_schema(tmp_path / table / "b-set.parquet")
        assert sa.remove_metadata() == sb.remove_metadata(), table  # same names, order and types
    assert pq.read_schema(tmp_path / "runs/a-null.parquet").field("memory.size").type == pa.int64()

    runs = pd.read_parquet(tmp_path / "runs").set_index("run_id")
    assert math.isnan(runs.loc["a-null", "memory.size"]) and runs.loc["b-set", "memory.size"] == 500
    assert runs.loc["b-set", "data.sequence"] == '["cifar100"]' and runs.loc["a-null", "data.sequence"] == "[]"
    tasks = pd.read_parquet(tmp_path / "tasks")
    assert len(tasks) == 6
    for column, expected in (("loss_train_kd", {"a-null": True, "b-set": False}),
                             ("loss_consolidation_kl", {"a-null": True, "b-set": False})):
        assert tasks.groupby("run_id")[column].apply(lambda s: s.isna().all()).to_dict() == expected, column
    # Keys outside the fixed columns (a future variant's) are kept as JSON, not as new columns.
    other = tasks.set_index("run_id")["other_metrics"]
    assert other.loc["a-null"].isna().all()
    assert {json.dumps(json.loads(v), sort_keys=True) for v in other.loc["b-set"]} == {
        '{"loss_aux_extra": 9.0, "sample_s": 0.5}'}
    assert "loss_aux_extra" not in tasks.columns
    assert R.verify_consistency(tmp_path) == []

    # Extra run columns must be the same for every run of a store, like the id columns.
    with pytest.raises(ValueError, match="extra columns"):
        R.RunWriter(tmp_path, "c", config(), ids=IDS, extra={"custom_count": 7})


def test_load_table_empty_root_and_several_roots(tmp_path: Path) -> None:
    for table, expected in (("runs", {"run_id", "avg_acc", "last_acc", "status", "memory.size"}),
                            ("tasks", {"run_id", "task", "last_acc", "loss_train", "total_s"}),
                            ("accuracy", {"run_id", "task", "eval_task", "acc"})):
        frame = R.load_table(tmp_path / "nothing-here", table)
        assert len(frame) == 0 and expected <= set(frame.columns)
    assert R.load_table(tmp_path, "accuracy")["acc"].dtype == np.float64
    with pytest.raises(ValueError, match="table"):
        R.load_table(tmp_path, "trials")  # type: ignore[arg-type]

    write_run(tmp_path / "one", "run-a", upto=2)
    write_run(tmp_path / "two", "run-b", ids={"sweep": "s2", "cell": "x", "trial_id": "t9", "seed": 4})
    both = R.load_table([tmp_path / "one", str(tmp_path / "two"), tmp_path / "empty"], "tasks")
    assert both.groupby("run_id").size().to_dict() == {"run-a": 2, "run-b": 3}
    assert R.verify_consistency([tmp_path / "one", tmp_path / "two"]) == []


def test_leftover_temporary_file_is_ignored_by_readers(tmp_path: Path) -> None:
    write_run(tmp_path, "run-a", upto=1)
    # What a crash between writing and renaming leaves behind, named as the writer names it.
    junk = tmp_path / "tasks" / ".run-a.parquet.0123456789ab.tmp"
    junk.write_bytes(b"PAR1 half a file")
    (tmp_path / "tasks" / "_SUCCESS").write_bytes(b"")
    assert len(pd.read_parquet(tmp_path / "tasks")) == 1
    assert len(R.load_table(tmp_path, "tasks")) == 1
    assert R.RunWriter(tmp_path, "run-a", config(), ids=IDS).finished_tasks() == [0]

    # A name without the leading dot would break the directory read: the rule the writer relies on.
    visible = tmp_path / "tasks" / "run-a.parquet.tmp"
    visible.write_bytes(b"PAR1 half a file")
    with pytest.raises(pa.ArrowInvalid):
        pd.read_parquet(tmp_path / "tasks")


def test_failed_write_leaves_previous_file_and_no_temporary(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    res = fake_results()
    writer = write_run(tmp_path, "run-a", upto=2, results=res)
    before = {d: (tmp_path / d / "run-a.parquet").read_bytes() for d in ("tasks", "accuracy")}

    seen: list[str] = []

    def crash(table: pa.Table, where: str, filesystem: Any = None, **kwargs: Any) -> None:
        with filesystem.open_output_stream(where) as out:
            out.write(b"PAR1 partial")
        # While the half-written file exists, the directory must still read (the temporary name is hidden).
        seen.append(os.path.basename(where))
        directory = Path(where).parent
        assert len(pd.read_parquet(directory)) == {"accuracy": 3, "tasks": 2, "runs": 1}[directory.name]
        raise OSError("disk full")

    monkeypatch.setattr("clapray.results.writer.pq.write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        writer.write_task(res[1], res[:2])
    monkeypatch.undo()
    assert len(seen) == 1 and seen[0].startswith(".run-a.parquet.")
    leftovers = [p.name for d in ("tasks", "accuracy", "runs") for p in (tmp_path / d).iterdir()
                 if not p.name.endswith(".parquet")]
    assert leftovers == []
    assert {d: (tmp_path / d / "run-a.parquet").read_bytes() for d in ("tasks", "accuracy")} == before
    assert R.verify_consistency(tmp_path) == []


def test_mark_and_resume_keep_summaries(tmp_path: Path) -> None:
    res = fake_results()
    writer = write_run(tmp_path, "run-a", upto=2, results=res)
    writer.mark("error", "loss is NaN at step 17", gpu_s=1.5)
    row = run_row(tmp_path, "run-a")
    assert (row["status"], row["error"], row["tasks_done"]) == ("error", "loss is NaN at step 17", 2)
    assert row["avg_acc"] == pytest.approx(AVG[1]) and row["gpu_s"] == 1.5

    # A new writer for the same run (a resumed process) keeps the start time and summaries.
    resumed = R.RunWriter(tmp_path, "run-a", config(), ids=IDS)
    assert resumed.finished_tasks() == [0, 1]
    resumed.mark("stopped")
    again = run_row(tmp_path, "run-a")
    assert again["status"] == "stopped" and again["error"] is None
    assert again["started_at"] == row["started_at"] and again["avg_acc"] == pytest.approx(AVG[1])
    resumed.write_task(res[2], res)
    assert run_row(tmp_path, "run-a")["status"] == "finished"

    # A run that fails before its first task still gets a row.
    early = R.RunWriter(tmp_path, "run-early", config(), ids=IDS)
    early.mark("error", "out of memory")
    row = run_row(tmp_path, "run-early")
    assert (row["status"], row["tasks_done"], row["num_tasks"]) == ("error", 0, None)
    assert math.isnan(row["avg_acc"])
    assert len(pd.read_parquet(tmp_path / "runs")) == 2
    assert R.verify_consistency(tmp_path) == []
    with pytest.raises(ValueError, match="status"):
        early.mark("done")  # type: ignore[arg-type]


def test_writer_validates_its_arguments(tmp_path: Path) -> None:
    cfg = config()
    for bad in ("a/b", "", "..", "run id", "r:1"):
        with pytest.raises(ValueError, match="run_id"):
            R.RunWriter(tmp_path, bad, cfg)
    with pytest.raises(TypeError, match="seed"):
        R.RunWriter(tmp_path, "r", cfg, ids={"seed": [1, 2]})
    with pytest.raises(TypeError, match="custom_count"):
        R.RunWriter(tmp_path, "r", cfg, extra={"custom_count": None})
    with pytest.raises(ValueError, match="extra column"):
        R.RunWriter(tmp_path, "r", cfg, extra={"trainable_params": 3})  # a fixed provenance column
    with pytest.raises(ValueError, match="id column"):
        R.RunWriter(tmp_path, "r", cfg, ids={"task": 1})  # would clash with a store column
    with pytest.raises(ValueError, match="extra column"):
        R.RunWriter(tmp_path, "r", cfg, extra={"memory.size": 3})
    assert R.RunWriter(tmp_path, "r", cfg, ids={"seed": np.int64(3)})._ids == {"seed": 3}

    write_run(tmp_path, "run-a", upto=1)
    with pytest.raises(ValueError, match="same id keys"):
        R.RunWriter(tmp_path, "run-b", cfg, ids={"sweep": "s1", "seed": 0})

    res = fake_results()
    writer = R.RunWriter(tmp_path, "run-c", cfg, ids=IDS)
    with pytest.raises(ValueError, match="history"):
        writer.write_task(res[1], res[1:2])  # history without task 0
    with pytest.raises(ValueError, match="accuracy_row"):
        short = dataclasses.replace(res[1], accuracy_row=(80.0,))
        writer.write_task(short, [res[0], short])
    assert writer.finished_tasks() == []


def test_aggregate_matches_hand_computation() -> None:
    df = pd.DataFrame({
        "method": ["clap", "clap", "clap", "clap", "coop", "coop"],
        "memory.size": [2000.0, 2000.0, 2000.0, NAN, 2000.0, 2000.0],
        "seed": [0, 1, 2, 0, 0, 1],
        "avg_acc": [70.0, 72.0, 77.0, 50.0, 80.0, NAN],
        "last_acc": [60.0, 61.0, 62.0, 40.0, 70.0, 71.0],
    })
    out = R.aggregate(df, ["method", "memory.size"], ["avg_acc", "last_acc"])
    assert list(out.columns) == ["method", "memory.size",
                                 "avg_acc_mean", "avg_acc_std", "avg_acc_ci95", "avg_acc_count",
                                 "last_acc_mean", "last_acc_std", "last_acc_ci95", "last_acc_count"]
    assert len(out) == 3  # the missing memory size is a group of its own
    clap = out[(out["method"] == "clap") & (out["memory.size"] == 2000.0)].iloc[0]
    std = math.sqrt((9 + 1 + 16) / 2)  # deviations -3, -1, +4 from the mean 73
    assert clap["avg_acc_mean"] == pytest.approx(73.0) and clap["avg_acc_std"] == pytest.approx(std)
    assert clap["avg_acc_ci95"] == pytest.approx(4.3027 * std / math.sqrt(3))
    assert clap["avg_acc_count"] == 3
    assert clap["last_acc_ci95"] == pytest.approx(4.3027 * 1.0 / math.sqrt(3))
    coop = out[out["method"] == "coop"].iloc[0]
    assert (coop["avg_acc_mean"], coop["avg_acc_count"]) == (80.0, 1)  # NaN values are not counted
    assert math.isnan(coop["avg_acc_std"]) and math.isnan(coop["avg_acc_ci95"])
    assert coop["last_acc_std"] == pytest.approx(math.sqrt(0.5))
    assert coop["last_acc_ci95"] == pytest.approx(12.7062 * math.sqrt(0.5) / math.sqrt(2))
    nan_group = out[out["memory.size"].isna()].iloc[0]
    assert (nan_group["method"], nan_group["avg_acc_mean"], nan_group["avg_acc_count"]) == ("clap", 50.0, 1)

    whole = R.aggregate(df, [], ["last_acc"])
    assert len(whole) == 1 and whole["last_acc_count"].iloc[0] == 6
    assert whole["last_acc_mean"].iloc[0] == pytest.approx(np.mean(df["last_acc"]))
    assert whole["last_acc_ci95"].iloc[0] == pytest.approx(2.5706 * np.std(df["last_acc"], ddof=1) / math.sqrt(6))
    with pytest.raises(KeyError, match="bwt"):
        R.aggregate(df, ["method"], ["bwt"])


def test_t_quantiles_match_reference_values() -> None:
    # Reference values: scipy.stats.t.ppf(0.975, dof), rounded to 6 decimals.
    reference = {1: 12.706205, 2: 4.302653, 5: 2.570582, 10: 2.228139, 29: 2.04523, 30: 2.042272,
                 31: 2.039513, 40: 2.021075, 60: 2.000298, 100: 1.983972, 1000: 1.962339, 10**6: 1.959966}
    for dof, value in reference.items():
        assert R.t_critical_975(dof) == pytest.approx(value, abs=1e-4), dof
    assert math.isnan(R.t_critical_975(0))


def test_plain_paths_and_file_uris_are_the_same_store(tmp_path: Path) -> None:
    write_run(str(tmp_path), "run-a", upto=1)
    write_run(f"file://{tmp_path}", "run-b", upto=2)
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    write_run("", "run-c", filesystem=fs)
    for root in (tmp_path, str(tmp_path), f"file://{tmp_path}"):
        counts = R.load_table(root, "tasks").groupby("run_id").size().to_dict()
        assert counts == {"run-a": 1, "run-b": 2, "run-c": 3}
    assert sorted(os.listdir(tmp_path / "runs")) == ["run-a.parquet", "run-b.parquet", "run-c.parquet"]
    assert R.verify_consistency(f"file://{tmp_path}") == []


def test_module_imports_no_heavy_frameworks() -> None:
    code = ("import sys, clapray.results; bad = [m for m in ('torch', 'ray', 'optuna') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_s3_store_against_a_local_moto_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs where moto is importable, or against CLAPRAY_TEST_S3_ENDPOINT (an S3 server on localhost)."""
    endpoint = os.environ.get("CLAPRAY_TEST_S3_ENDPOINT")
    server = None
    if endpoint is None:
        moto_server = pytest.importorskip("moto.server")
        port = _free_port()
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
        server.start()
        endpoint = f"http://127.0.0.1:{port}"
    try:
        host = endpoint.split("://", 1)[1]
        fs = pafs.S3FileSystem(endpoint_override=host, scheme="http", access_key="test", secret_key="test",
                               region="us-east-1", allow_bucket_creation=True,
                               allow_delayed_open=True)  # one PUT per file, as s3:// URIs get from the store
        bucket = f"clapray-test-{os.getpid()}"
        fs.create_dir(bucket)
        write_run(f"{bucket}/store", "run-a", filesystem=fs)
        write_run(f"{bucket}/store", "run-b", upto=1, filesystem=fs)
        tasks = R.load_table(f"{bucket}/store", "tasks", filesystem=fs)
        assert tasks.groupby("run_id").size().to_dict() == {"run-a": 3, "run-b": 1}
        assert R.verify_consistency(f"{bucket}/store", filesystem=fs) == []

        # The same store through an s3:// URI, as a sweep's storage path would give it.
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(key, value)
        uri = f"s3://{bucket}/store?endpoint_override={host}&scheme=http"
        write_run(uri, "run-c", upto=2)
        assert len(R.load_table(uri, "runs")) == 3
        assert R.RunWriter(uri, "run-c", config(), ids=IDS).finished_tasks() == [0, 1]
        assert R.verify_consistency(uri) == []
    finally:
        if server is not None:
            server.stop()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_respect_the_umask(tmp_path: Path, umask: int) -> None:
    from clapray.fileio import write_bytes_atomic

    old = os.umask(umask)
    try:
        write_run(tmp_path, "run-a", upto=1)
        write_bytes_atomic(tmp_path / "cache" / "entry.bin", b"x")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    for path in (tmp_path / "runs" / "run-a.parquet", tmp_path / "tasks" / "run-a.parquet",
                 tmp_path / "cache" / "entry.bin"):
        assert path.stat().st_mode & 0o777 == expected, (path, oct(path.stat().st_mode & 0o777))


def test_verify_consistency_reports_a_missing_table_and_an_unreadable_file(tmp_path: Path) -> None:
    import shutil

    write_run(tmp_path, "run-a")
    write_run(tmp_path, "run-b")
    assert R.verify_consistency(tmp_path) == []
    shutil.rmtree(tmp_path / "runs")
    problems = R.verify_consistency(tmp_path)
    assert problems == ["runs: no row for run run-a, which has tasks and accuracy rows (its runs file is missing or "
                        "unreadable)",
                        "runs: no row for run run-b, which has tasks and accuracy rows (its runs file is missing or "
                        "unreadable)"]
    write_run(tmp_path, "run-a")
    write_run(tmp_path, "run-b")
    victim = tmp_path / "tasks" / "run-b.parquet"
    victim.write_bytes(victim.read_bytes()[:50])
    problems = R.verify_consistency(tmp_path)
    assert problems[0].startswith(f"tasks: {victim} is unreadable (")
    assert "runs: run run-b: tasks_done = 3 but 0 task rows" in problems
    with pytest.raises(pa.ArrowInvalid):
        R.load_table(tmp_path, "tasks")
    assert len(R.load_table(tmp_path, "tasks", skip_unreadable=True)) == 3


def test_an_unreadable_file_of_one_run_does_not_stop_other_runs_writing(tmp_path: Path) -> None:
    write_run(tmp_path, "run-a")
    for table in ("runs", "tasks"):
        victim = tmp_path / table / "run-a.parquet"
        victim.write_bytes(victim.read_bytes()[:50])
    write_run(tmp_path, "run-b")  # reads the store's id columns from another run's file: skips the damaged one
    own = R.RunWriter(tmp_path, "run-a", config(), ids=IDS)  # its own damaged row: started afresh
    assert own.stored_row() is None and own.finished_tasks() == []
    write_run(tmp_path, "run-a")  # rewrites every row of the run
    assert R.verify_consistency(tmp_path) == []


def test_compaction_folds_ended_runs_and_a_writer_never_rewrites_one(tmp_path: Path) -> None:
    from clapray.results.compact import compact
    from clapray.results.writer import RunCompacted

    write_run(tmp_path, "done")
    write_run(tmp_path, "stopped", upto=1).mark("stopped", "ASHA")
    write_run(tmp_path, "running", upto=2)
    before = {t: R.load_table(tmp_path, t).sort_values(["run_id", "task"]).reset_index(drop=True)
              for t in ("tasks", "accuracy")}
    report = compact(str(tmp_path))
    assert report.runs_compacted == 2 and report.runs_left == ["running"]
    assert sorted(p.name.startswith("part-") for p in (tmp_path / "tasks").glob("*.parquet")) == [False, True]
    assert sorted(p.name for p in (tmp_path / "tasks").glob("*.parquet"))[1] == "running.parquet"
    for table, frame in before.items():
        after = pd.read_parquet(tmp_path / table).sort_values(["run_id", "task"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(after, frame)
    assert R.verify_consistency(tmp_path) == []
    writer = R.RunWriter(tmp_path, "done", config(), ids=IDS)
    assert writer.compacted_in is not None and writer.holds_complete_run(3)
    assert writer.stored_row()["status"] == "finished"
    with pytest.raises(RunCompacted):
        writer.mark("error", "late failure")
    # The running run goes on and ends; a second compaction folds it into a new part with the others.
    write_run(tmp_path, "running")
    assert compact(str(tmp_path)).runs_compacted == 1
    assert [p.name[:5] for p in (tmp_path / "tasks").glob("*.parquet")] == ["part-"]
    assert R.verify_consistency(tmp_path) == []


def test_an_interrupted_compaction_leaves_duplicates_that_the_next_one_removes(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from clapray.results import compact as C

    write_run(tmp_path, "a")
    write_run(tmp_path, "b")
    calls = []

    def crash(fs, path):  # the crash: right after the first part is written, before any input is deleted
        calls.append(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(C, "_delete", crash)
    with pytest.raises(KeyboardInterrupt):
        C.compact(str(tmp_path))
    monkeypatch.undo()
    assert any("duplicate rows" in p for p in R.verify_consistency(tmp_path))  # duplicated, nothing lost
    report = C.compact(str(tmp_path))
    assert report.leftovers_removed >= 1
    assert R.verify_consistency(tmp_path) == []
    assert len(pd.read_parquet(tmp_path / "runs")) == 2


def test_compact_cli_refuses_while_a_driver_holds_the_store(tmp_path: Path) -> None:
    from clapray.results.lease import SweepLease

    write_run(tmp_path, "a")
    lease = SweepLease(str(tmp_path))
    lease.acquire()
    try:
        proc = subprocess.run([sys.executable, "-m", "clapray.results", "compact", str(tmp_path)],
                              capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent, timeout=120)
    finally:
        lease.release()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"pid {os.getpid()}," in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["a.parquet"]
    proc = subprocess.run([sys.executable, "-m", "clapray.results", "verify", str(tmp_path)], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parent.parent, timeout=120)
    assert proc.returncode == 0 and "consistent" in proc.stdout
