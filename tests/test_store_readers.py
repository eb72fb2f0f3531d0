"""A mixed store reads the same in pandas, pyarrow.dataset, polars and DuckDB, at their default options.

The store holds what a real sweep leaves: runs of the real learner with every kind of loss it reports
(consolidating with replay, replay-free without consolidation, zero-shot with no loss at all, AttriCLIP with
its prompt loss), a trial stopped after one task, a failed one and one that failed before its first task,
then the same store compacted. Each reader, told nothing but the folder, must see every column of the
table's one schema and every row.
"""

from __future__ import annotations

import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from clapray import results as R
from clapray.config import load_run_config, shipped_config_path
from clapray.learner import ContinualLearner
from clapray.results.compact import compact

TINY = ["data.shapes.num_classes=6", "data.shapes.train_per_class=6", "data.shapes.test_per_class=3",
        "data.num_tasks=2", "optim.epochs=1", "optim.batch_size=8", "method.mc_samples_train=2",
        "method.mc_samples_eval=2", "method.vga.ff_dim=64", "memory.policy=per_class", "memory.size=2"]
# (run id, overrides, what the writer records): the kinds of trials a sweep store mixes.
KINDS = [
    ("clap-replay", ["method.variant=handcrafted"], "finished"),  # consolidates: consolidation_* losses
    ("clap-replay-free", ["method.variant=handcrafted", "budget.replay_free=true"], "finished"),
    ("zero-shot", ["method.variant=zeroshot"], "finished"),  # no loss at all
    ("attriclip", ["method.variant=attriclip"], "finished"),  # its own prompt loss
    ("stopped", ["method.variant=handcrafted"], "stopped"),  # ASHA stopped it after task 0
    ("failed", ["method.variant=handcrafted", "budget.replay_free=true"], "error"),  # failed after task 0
    ("failed-early", ["method.variant=handcrafted"], "error-early"),  # failed before any task
]
READERS = ("pandas", "pyarrow.dataset", "polars", "duckdb")


def read_with(reader: str, folder: str) -> tuple[list[str], int]:
    """(columns, row count) of the table in ``folder`` as ``reader`` sees it with default options."""
    if reader == "pandas":
        frame = pd.read_parquet(folder)
        return list(frame.columns), len(frame)
    if reader == "pyarrow.dataset":
        table = pads.dataset(folder, format="parquet").to_table()
        return table.column_names, table.num_rows
    if reader == "polars":
        polars = pytest.importorskip("polars")
        frame = polars.read_parquet(f"{folder}/*.parquet")
        return frame.columns, frame.height
    duckdb = pytest.importorskip("duckdb")
    relation = duckdb.sql(f"SELECT * FROM read_parquet('{folder}/*.parquet')")
    return list(relation.columns), len(relation.fetchall())


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("mixed")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    reported: dict[str, set[str]] = {}
    try:
        for seed, (run_id, overrides, outcome) in enumerate(KINDS):
            cfg = load_run_config(shipped_config_path("tiny"), [*TINY, *overrides])
            ids = {"sweep": "mixed", "cell": run_id, "trial_id": run_id, "seed": seed}
            learner = ContinualLearner(cfg)
            writer = R.RunWriter(root, run_id, cfg, ids=ids, provenance=learner.provenance())
            if outcome == "error-early":
                writer.mark("error", "out of memory")
                continue
            tasks = learner.num_tasks if outcome == "finished" else 1
            for task in range(tasks):
                result = learner.learn_task(task)
                reported.setdefault("losses", set()).update(result.losses)
                reported.setdefault("timings", set()).update(result.timings)
                writer.write_task(result, learner.history)
            if outcome != "finished":
                writer.mark(outcome, "stopped by the scheduler after task 1" if outcome == "stopped" else "NaN loss")
    finally:
        torch.set_num_threads(before)
    return root, reported


def expected_rows(root) -> dict[str, int]:
    return {table: sum(pq.read_metadata(p).num_rows for p in (root / table).glob("*.parquet"))
            for table in ("runs", "tasks", "accuracy", "calibration")}


def test_the_learner_reports_only_losses_and_timings_with_fixed_columns(mixed_store):
    _, reported = mixed_store
    assert reported["losses"] <= set(R.LOSS_KEYS), reported["losses"] - set(R.LOSS_KEYS)
    assert reported["timings"] <= set(R.TIMING_KEYS)
    # The mix really covers what the fixed columns exist for.
    assert {"train_prompt", "consolidation_kd", "consolidation_kl", "train_kl"} <= reported["losses"]


@pytest.mark.parametrize("compacted", [False, True], ids=["per-run files", "compacted"])
def test_every_reader_sees_every_column_and_row_of_a_mixed_store(mixed_store, tmp_path, compacted):
    import shutil

    root = tmp_path / "store"
    shutil.copytree(mixed_store[0], root)
    counts = expected_rows(root)
    if compacted:
        report = compact(str(root))
        assert report.runs_compacted == len(KINDS)
        assert {t: len(list((root / t).glob("*.parquet"))) for t in counts} == {t: 1 for t in counts}
        assert expected_rows(root) == counts
    assert counts["runs"] == len(KINDS) and counts["tasks"] == 4 * 2 + 2
    statuses = pd.read_parquet(root / "runs").set_index("run_id")["status"].to_dict()
    assert statuses == {"clap-replay": "finished", "clap-replay-free": "finished", "zero-shot": "finished",
                        "attriclip": "finished", "stopped": "stopped", "failed": "error", "failed-early": "error"}
    for table in ("runs", "tasks", "accuracy", "calibration"):
        folder = str(root / table)
        schema_names = pq.read_schema(next((root / table).glob("*.parquet"))).names
        for reader in READERS:
            columns, rows = read_with(reader, folder)
            assert columns == schema_names, (table, reader, set(schema_names) ^ set(columns))
            assert rows == counts[table], (table, reader)
    tasks = pd.read_parquet(root / "tasks").set_index("run_id")
    assert tasks.loc["clap-replay", "loss_consolidation_kd"].notna().any()  # from task 1 on
    assert tasks.loc["zero-shot", "loss_train"].isna().all()
    assert tasks.loc["attriclip", "loss_train_prompt"].notna().all()
    assert tasks.loc["clap-replay-free", "loss_consolidation"].isna().all()
    assert R.verify_consistency(root) == []
