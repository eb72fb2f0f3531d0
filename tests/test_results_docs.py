"""A store that documents itself: the generated data dictionary, grid coordinates and unused config fields
as columns, the README's Table 1 query in DuckDB, and stores of the previous schema version."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from test_results import fake_results

from clapray import results as R
from clapray.config import RunConfig, load_run_config
from clapray.model.prompts.catalog import VARIANTS
from clapray.results.docs import REGENERATE, schema_markdown
from clapray.task_result import SweepCoordinates
from clapray.typed_config import from_mapping

REPO = Path(__file__).resolve().parents[1]
SWEEP_IDS = ("sweep", "cell", "trial_id", "seed", "configuration")


def test_the_checked_in_data_dictionary_is_current():
    text = (REPO / "docs" / "results-schema.md").read_text()
    assert text == schema_markdown(), f"docs/results-schema.md is stale: run `{REGENERATE}`"


def test_every_column_of_every_table_is_documented_with_a_type():
    text = schema_markdown()
    documented = dict(re.findall(r"^\| `([^`]+)` \| ([^|]+) \|", text, re.M))
    schemas = [R.run_schema(), R.task_schema(), R.accuracy_schema(), R.calibration_schema()]
    for schema in schemas:
        for field in schema:
            assert field.name in documented, field.name
            assert documented[field.name].strip() == str(field.type), field.name
    assert set(SWEEP_IDS) <= set(documented)


def test_the_regenerate_command_is_in_the_readme():
    assert REGENERATE in (REPO / "README.md").read_text()


def _config(*overrides: str) -> RunConfig:
    return load_run_config(None, list(overrides))


def _write(root, run_id: str, cfg: RunConfig, **kwargs) -> None:
    history = fake_results()
    writer = R.RunWriter(root, run_id, cfg, **kwargs)
    for t in range(len(history)):
        writer.write_task(history[t], history[: t + 1])


@pytest.mark.parametrize("overrides, null, kept", [
    (["method.variant=zeroshot"],
     ["method.kd_weight", "method.mc_samples_train", "memory.size", "memory.policy", "optim.lr", "method.vga.depth",
      "method.deterministic", "budget.replay_free", "method.consolidation.epochs"],
     ["method.variant", "optim.batch_size", "data.dataset", "seeds.init", "eval.ece_bins"]),
    (["method.deterministic=true"], ["method.mc_samples_train", "method.mc_samples_eval", "method.kl_weight",
                                     "method.prior"], ["method.kd_weight", "memory.policy", "method.vga.depth"]),
    (["budget.replay_free=true"], ["memory.policy", "memory.selector", "method.consolidation.epochs"],
     ["method.kd_weight", "method.mc_samples_train", "budget.replay_free"]),
    (["method.variant=coop"], ["method.prompt.maple_depth", "method.prompt.attriclip_top_k",
                               "method.prompt.cocoop_reduction"], ["method.prompt.n_ctx"]),
    (["method.variant=cocoop"], ["method.prompt.maple_length"],
     ["method.prompt.n_ctx", "method.prompt.cocoop_reduction"]),
])
def test_fields_a_run_never_reads_are_null_in_its_row(tmp_path, overrides, null, kept):
    cfg = _config(*overrides)
    _write(tmp_path, "r", cfg)
    row = pq.read_table(tmp_path / "runs" / "r.parquet").to_pylist()[0]
    assert [name for name in null if row[name] is not None] == []
    assert [name for name in kept if row[name] is None] == []
    # The YAML keeps every value: the run can be rerun exactly.
    assert from_mapping(RunConfig, yaml.safe_load(row["config_yaml"]), "back") == cfg


def test_each_variant_reads_exactly_the_prompt_options_its_catalogue_entry_declares():
    """Build every learning variant with a recording stand-in for its options and train it on one tiny task:
    the options it touches are the ones its catalogue entry declares (and so the ones the store keeps)."""
    import torch

    from clapray.config import PromptConfig, shipped_config_path
    from clapray.learner import ContinualLearner
    from clapray.model.prompts import build_prompt_variant

    class Recording:
        def __init__(self, options: PromptConfig):
            object.__setattr__(self, "_options", options)
            object.__setattr__(self, "read", set())

        def __getattr__(self, name):
            self.read.add(name)
            return getattr(self._options, name)

    tiny = ["data.shapes.num_classes=4", "data.shapes.train_per_class=4", "data.shapes.test_per_class=2",
            "data.num_tasks=2", "optim.epochs=1", "optim.batch_size=4", "method.mc_samples_train=2",
            "method.mc_samples_eval=2", "method.vga.ff_dim=64", "eval.phndd=false"]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for spec in VARIANTS.values():
            if not spec.learns:
                continue
            cfg = load_run_config(shipped_config_path("tiny"), [*tiny, f"method.variant={spec.name}"])
            learner = ContinualLearner(cfg)
            options = Recording(learner.cfg.method.prompt)
            learner.prompt = build_prompt_variant(spec.name, learner.backbone, learner.templates, options)
            learner.learn_task(0)
            assert options.read == set(spec.prompt_options), spec.name
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------------
# Grid coordinates and the paper's Table 1 in DuckDB


def _matrix(base: float, rng: np.random.Generator) -> np.ndarray:
    m = np.full((3, 3), np.nan)
    for t in range(3):
        m[t, : t + 1] = np.clip(base - 5 * t + rng.normal(0, 2, t + 1), 0, 100)
    return m


@pytest.fixture(scope="module")
def table1_store(tmp_path_factory):
    """A store shaped like the variants sweep's: variant x VI / w/o VI x benchmark cells, several
    configurations in one cell, three seeds, plus replay-free rows Table 1 must leave out."""
    root = tmp_path_factory.mktemp("table1")
    rng = np.random.default_rng(0)
    cells = [("zeroshot", False, "cifar100", 1), ("handcrafted", False, "cifar100", 2),
             ("handcrafted", True, "cifar100", 1), ("coop", False, "cifar100", 1),
             ("zeroshot", False, "cub200", 1), ("handcrafted", False, "cub200", 1),
             ("handcrafted", False, "cub200-replay-free", 1)]
    trial = 0
    for variant, deterministic, benchmark, configurations in cells:
        replay_free = benchmark.endswith("replay-free")
        dataset = benchmark.removesuffix("-replay-free")
        setting = "replay_free" if replay_free else "standard"
        cell = f"variant={variant},deterministic={str(deterministic).lower()},dataset={dataset},setting={setting}"
        for c in range(configurations):
            kd = 5.0 + 10 * c
            for seed in range(3):
                cfg = _config(f"method.variant={variant}", f"method.deterministic={str(deterministic).lower()}",
                              f"data.dataset={dataset}", f"budget.replay_free={str(replay_free).lower()}",
                              f"method.kd_weight={kd}", f"seeds.init={seed}")
                # Replay-free rows score highest, so a Table 1 that forgot to leave them out would show them.
                results = fake_results(_matrix((90 if replay_free else 60) + 10 * rng.random(), rng))
                ids = {"sweep": "variants", "cell": cell, "trial_id": f"t{trial}", "seed": seed,
                       "configuration": f"{cell}#{c}"}
                grid = {"method.variant": variant, "method.deterministic": deterministic, "data.dataset": dataset,
                        "setting": setting}
                writer = R.RunWriter(root, f"trial-t{trial}", cfg, ids=ids,
                                     coordinates=SweepCoordinates.of(grid, {"method.kd_weight": kd}))
                for t in range(3):
                    writer.write_task(results[t], results[: t + 1])
                trial += 1
    return root


def test_grid_coordinates_are_columns_of_runs(table1_store):
    runs = pd.read_parquet(table1_store / "runs")
    assert set(runs["setting"]) == {"standard", "replay_free"}
    grid = runs["grid"].map(json.loads)
    assert (grid.map(lambda g: g["setting"]) == runs["setting"]).all()
    assert (grid.map(lambda g: g["data.dataset"]) == runs["data.dataset"]).all()
    sampled = runs["sampled"].map(json.loads).map(lambda s: s["method.kd_weight"])
    learns = runs["method.variant"] != "zeroshot"
    assert (sampled[learns] == runs.loc[learns, "method.kd_weight"]).all()
    # The zero-shot rows read no KD weight: null in its column, whatever the grid held.
    assert runs.loc[runs["method.variant"] == "zeroshot", "method.kd_weight"].isna().all()


def test_a_status_write_without_coordinates_keeps_them(table1_store, tmp_path):
    import shutil

    root = tmp_path / "store"
    shutil.copytree(table1_store, root)
    cfg = _config("method.variant=zeroshot", "method.deterministic=false", "data.dataset=cifar100",
                  "budget.replay_free=false", "method.kd_weight=5.0", "seeds.init=0")
    row = pq.read_table(root / "runs" / "trial-t0.parquet").to_pylist()[0]
    ids = {k: row[k] for k in SWEEP_IDS}
    R.RunWriter(root, "trial-t0", cfg, ids=ids).mark("stopped", "by hand")  # the driver's status writer
    after = pq.read_table(root / "runs" / "trial-t0.parquet").to_pylist()[0]
    assert after["status"] == "stopped"
    assert (after["setting"], after["grid"], after["sampled"]) == (row["setting"], row["grid"], row["sampled"])


def readme_block(language: str, after: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index(after):]
    block = section[section.index(f"```{language}") + len(f"```{language}"):]
    return block[: block.index("```")]


def test_the_readme_table1_query_runs_in_duckdb_and_picks_the_best_configuration(table1_store):
    duckdb = pytest.importorskip("duckdb")
    sql = readme_block("sql", "The paper's Table 1")
    assert "regexp" not in sql.lower() and "cell" not in sql  # columns only
    sql = sql.replace("results/variants-table1", str(table1_store))
    table = duckdb.sql(sql).df()

    runs = pd.read_parquet(table1_store / "runs")
    runs = runs[(runs["status"] == "finished") & ~runs["budget.replay_free"].fillna(False).astype(bool)]
    runs["inference"] = np.where(runs["method.deterministic"].isna(), "-",
                                 np.where(runs["method.deterministic"].fillna(False).astype(bool), "w/o VI", "VI"))
    per = (runs.groupby(["method.variant", "inference", "data.dataset", "configuration"])
           .agg(avg=("avg_acc", "mean"), avg_std=("avg_acc", "std"), last=("last_acc", "mean"),
                n=("avg_acc", "size")).reset_index())
    best = per.sort_values("avg", ascending=False).groupby(["method.variant", "inference", "data.dataset"]).head(1)

    rows = {(r.variant, r.inference) for r in table.itertuples()}
    assert rows == {("zeroshot", "-"), ("handcrafted", "VI"), ("handcrafted", "w/o VI"), ("coop", "VI")}
    for b in best.itertuples():
        row = table[(table["variant"] == b[1]) & (table["inference"] == b.inference)].iloc[0]
        assert row[f"{b[3]}_Avg"] == f"{b.avg:.2f} ± {b.avg_std:.2f} (n={b.n})"
        assert row[f"{b[3]}_Last"].startswith(f"{b.last:.2f} ± ")
    # A row and benchmark without runs stays empty (coop ran on cifar100 only).
    assert pd.isna(table[table["variant"] == "coop"].iloc[0]["cub200_Avg"])


# --------------------------------------------------------------------------------------------------
# Stores of schema version 1


def _downgrade(path: Path) -> None:
    """Rewrite a runs file as schema version 1 wrote it: ISO-text timestamps, none of the new columns."""
    table = pq.read_table(path)
    table = table.select([c for c in table.column_names if c not in ("setting", "grid", "sampled", "forgetting",
                                                                    "fwt")])
    for name in ("started_at", "updated_at"):
        index = table.column_names.index(name)
        table = table.set_column(index, pa.field(name, pa.string()), pa.array(["2026-01-02T03:04:05+00:00"]))
    meta = dict(table.schema.metadata)
    meta[b"clapray.results.version"] = b"1"
    pq.write_table(table.replace_schema_metadata(meta), path)


def test_a_store_with_files_of_schema_version_1_reads_resumes_and_compacts(tmp_path):
    from clapray.results.compact import compact

    cfg = _config()
    _write(tmp_path, "old", cfg)
    _write(tmp_path, "new", cfg.__class__(**{**cfg.__dict__, "name": "other"}))
    _downgrade(tmp_path / "runs" / "old.parquet")
    runs = R.load_table(tmp_path, "runs").set_index("run_id")
    assert str(runs["started_at"].dtype) == "datetime64[ms, UTC]"
    assert runs.loc["old", "started_at"] == pd.Timestamp("2026-01-02T03:04:05", tz="UTC")
    assert pd.isna(runs.loc["old", "forgetting"]) and runs.loc["new", "forgetting"] == pytest.approx(10.0)
    assert R.verify_consistency(tmp_path) == []
    # A resumed run of the old store keeps its start time, now a timestamp.
    history = fake_results()
    R.RunWriter(tmp_path, "old", cfg).write_task(history[-1], history)
    assert pq.read_table(tmp_path / "runs" / "old.parquet").to_pylist()[0]["started_at"].isoformat() == \
        "2026-01-02T03:04:05+00:00"
    _downgrade(tmp_path / "runs" / "old.parquet")
    assert compact(str(tmp_path)).runs_compacted == 2
    runs = R.load_table(tmp_path, "runs")
    assert len(runs) == 2 and str(runs["started_at"].dtype) == "datetime64[ms, UTC]"
