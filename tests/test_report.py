"""Reports from the results store: tables against pandas, incomplete trials, figures, index, importance,
the CLI's errors, a store being written, a real run's store, and the sweep's live progress lines."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clapray.config import RunConfig
from clapray.report.cli import main as report_main
from clapray.report.load import load_store
from clapray.results import RunWriter
from clapray.task_result import NoveltyDetection, ReliabilityBins, RunProvenance, TaskResult
from clapray.typed_config import from_mapping

REPO = Path(__file__).resolve().parents[1]
NUM_TASKS = 3
SEEDS = (0, 1, 2)
VARIANTS = (False, True)  # method.deterministic: VI, w/o VI
BENCHMARKS = ("cifar100", "imagenet_r")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def results_for(quality: float, rng: np.random.Generator, n_tasks: int = NUM_TASKS) -> list[TaskResult]:
    """TaskResults of a run whose accuracy matrix is about ``quality`` on the diagonal and forgets with age;
    summaries computed as the learner does (macro rows, their running mean, BwT), plus calibration bins."""
    mat = np.full((n_tasks, n_tasks), np.nan)
    for t in range(n_tasks):
        for j in range(t + 1):
            mat[t, j] = float(np.clip(quality - 6.0 * (t - j) + rng.normal(0, 1.0), 0, 100))
    out = []
    for t in range(n_tasks):
        rows = [float(np.mean(mat[s, : s + 1])) for s in range(t + 1)]
        bwt = float(np.mean([mat[t, j] - mat[j, j] for j in range(t)])) if t else math.nan
        bins = ReliabilityBins(n_bins=4, bin=(1, 2, 3, 4), lower=(0.25, 0.5, 0.75, 1.0), upper=(0.5, 0.75, 1.0, 1.0),
                               count=(10, 20, 60, 10), confidence=(0.4, 0.62, 0.9, 1.0),
                               accuracy=(0.3, 0.6, 0.8, 0.9))
        out.append(TaskResult(
            task=t, num_tasks=n_tasks, accuracy_row=tuple(float(v) for v in mat[t, : t + 1]),
            task_aware_row=tuple(float(min(v + 10.0, 100.0)) for v in mat[t, : t + 1]),
            n_eval=tuple(50 for _ in range(t + 1)), last_acc=rows[-1], avg_acc=float(np.mean(rows)), bwt=bwt,
            ece=0.1 + 0.01 * quality / 100 + rng.uniform(0, 0.01), ece_per_batch=0.12 + rng.uniform(0, 0.01),
            phndd=NoveltyDetection(0.7 + rng.uniform(0, 0.1), 0.6, 0.5, 0.55) if t < n_tasks - 1 else None,
            timings={"total": 10.0 + rng.uniform(0, 1)}, calibration=bins))
    return out


def write_trial(root: Path, run_id: str, *, cell: str, seed: int, configuration: str, config: dict,
                quality: float, rng: np.random.Generator, upto: int = NUM_TASKS, status: str | None = None,
                error: str | None = None) -> None:
    cfg = from_mapping(RunConfig, {"seeds": {"init": seed}, **config}, "test")
    writer = RunWriter(root, run_id, cfg, ids={"sweep": "synthetic", "cell": cell, "trial_id": run_id, "seed": seed,
                                               "configuration": configuration},
                       provenance=RunProvenance(trainable_params=1000 + 10 * int(cfg.method.deterministic)))
    history = results_for(quality, rng)
    for t in range(upto):
        writer.write_task(history[t], history[: t + 1])
    if status is not None:
        writer.mark(status, error)


def build_store(root: Path) -> None:
    """12 complete trials (2 variants x 2 benchmarks x 3 seeds, standard setting), one early-stopped,
    one errored and one still-running trial with outlying numbers, and a replay-free search cell of 12
    configurations whose Avg follows the KD weight while the MC samples are noise."""
    rng = np.random.default_rng(0)
    for det in VARIANTS:
        for bench in BENCHMARKS:
            cell = f"deterministic={str(det).lower()},dataset={bench}"
            config = {"data": {"dataset": bench}, "method": {"deterministic": det}}
            quality = 80.0 - 5.0 * det - 3.0 * (bench == "imagenet_r")
            for seed in SEEDS:
                write_trial(root, f"t-{int(det)}-{bench}-{seed}", cell=cell, seed=seed, configuration=f"{cell}#0",
                            config=config, quality=quality, rng=rng)
    vi_cifar = {"data": {"dataset": "cifar100"}, "method": {"deterministic": False}}
    cell = "deterministic=false,dataset=cifar100"
    # Outliers: mixed into the means they would move them by several points.
    write_trial(root, "t-stopped", cell=cell, seed=3, configuration=f"{cell}#0", config=vi_cifar, quality=99.0,
                rng=rng, upto=1, status="stopped", error="stopped by the scheduler after task 1")
    write_trial(root, "t-error", cell=cell, seed=4, configuration=f"{cell}#0", config=vi_cifar, quality=5.0,
                rng=rng, upto=1, status="error", error="TrainingDiverged: loss is nan")
    write_trial(root, "t-running", cell=cell, seed=5, configuration=f"{cell}#0", config=vi_cifar, quality=1.0,
                rng=rng, upto=2)
    search = "setting=replay_free"
    for i in range(12):
        kd = float(rng.uniform(0, 30))
        mc = int(rng.choice([1, 5, 10]))
        write_trial(root, f"s-{i:02d}", cell=search, seed=0, configuration=f"{search}#{i}",
                    config={"data": {"dataset": "cifar100"}, "budget": {"replay_free": True},
                            "method": {"kd_weight": kd, "mc_samples_train": mc, "mc_samples_eval": mc}},
                    quality=40.0 + 1.5 * kd, rng=rng)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store") / "synthetic"
    build_store(root)
    return root


@pytest.fixture(scope="module")
def report(store: Path, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("report")
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert report_main([str(store), "--out", str(out)]) == 0
    return out, buffer.getvalue()


@pytest.fixture
def fast_figures(monkeypatch):
    """Skip rendering (most of a report's time) where a test checks tables or the CLI, not the pictures;
    the figures are drawn for real in the module's shared report and in the real-run test."""
    import matplotlib.pyplot as plt

    from clapray.report import figures

    def save(fig, path):
        plt.close(fig)
        path.write_bytes(PNG_MAGIC)
        return path

    monkeypatch.setattr(figures, "_save", save)


def finished_runs(store: Path) -> pd.DataFrame:
    """The complete trials, straight from the Parquet files (independent of the report's loader)."""
    runs = pd.read_parquet(store / "runs")
    return runs[(runs["status"] == "finished") & (runs["tasks_done"] == runs["num_tasks"])]


# --------------------------------------------------------------------------------------------------


def test_main_table_matches_a_pandas_groupby_and_leaves_incomplete_trials_out(store, report):
    out, _ = report
    runs = finished_runs(store)
    standard = runs[~runs["budget.replay_free"]]
    expected = standard.groupby(["method.deterministic", "data.dataset"])[["avg_acc", "last_acc"]].agg(
        ["mean", "std", "count"])
    table = pd.read_csv(out / "main.csv")
    assert len(table) == len(VARIANTS) * len(BENCHMARKS) * 2
    for row in table.itertuples(index=False):
        det = row.inference == "w/o VI"
        exp = expected.loc[(det, row.benchmark)]
        assert row.mean == pytest.approx(exp[(row.metric, "mean")], abs=1e-9)
        assert row.std == pytest.approx(exp[(row.metric, "std")], abs=1e-9)
        assert row.n == exp[(row.metric, "count")] == len(SEEDS)
    # The stopped (99 %), errored and running trials share the VI/CIFAR100 configuration: left out, n = 3.
    vi = table[(table["inference"] == "VI") & (table["benchmark"] == "cifar100") & (table["metric"] == "avg_acc")]
    assert int(vi["n"].iloc[0]) == 3
    every_finished_or_not = pd.read_parquet(store / "runs")
    mixed = every_finished_or_not[(every_finished_or_not["method.deterministic"] == False)  # noqa: E712
                                  & (every_finished_or_not["data.dataset"] == "cifar100")
                                  & ~every_finished_or_not["budget.replay_free"]]["avg_acc"].mean()
    assert abs(mixed - vi["mean"].iloc[0]) > 1.0  # so the check above can tell the difference
    # Best per column: VI (higher quality) is bold in every column, and nowhere else.
    best = table[table["best"]]
    assert set(best["inference"]) == {"VI"} and len(best) == len(BENCHMARKS) * 2
    md = (out / "main.md").read_text()
    assert md.count("**") == 2 * len(best) and "± " in md and "(n=3; CI ±" in md
    tex = (out / "main.tex").read_text()
    assert r"\textbf{" in tex and r"\multicolumn{2}{c}{CIFAR100}" in tex and r"$\pm$" in tex


def test_incomplete_trials_are_counted_listed_and_reported(store, report):
    out, printed = report
    assert "27 trials: 24 complete, 3 incomplete (1 running, 1 stopped, 1 error)" in printed
    assert "3 incomplete trials are excluded" in printed
    listed = pd.read_csv(out / "incomplete.csv")
    assert dict(zip(listed["run_id"], listed["state"], strict=False)) == {"t-stopped": "stopped", "t-error": "error",
                                                           "t-running": "running"}


def test_other_tables_follow_the_same_trials(store, report):
    out, _ = report
    runs = finished_runs(store)
    # Resource table: the best configuration per variant x benchmark x setting; replay-free has 12 candidates.
    resource = pd.read_csv(out / "resource.csv")
    replay = resource[(resource["setting"] == "replay-free") & (resource["metric"] == "avg_acc")]
    assert replay["mean"].iloc[0] == pytest.approx(runs[runs["budget.replay_free"]]["avg_acc"].max())
    # Calibration: the ECE mean of the standard VI/CIFAR100 trials.
    calib = pd.read_csv(out / "calibration.csv")
    row = calib[(calib["inference"] == "VI") & (calib["benchmark"] == "cifar100") & (calib["metric"] == "ece")]
    expected = runs[(~runs["method.deterministic"]) & (runs["data.dataset"] == "cifar100")
                    & (~runs["budget.replay_free"])]["ece"]
    assert row["mean"].iloc[0] == pytest.approx(expected.mean()) and int(row["n"].iloc[0]) == 3
    novelty = pd.read_csv(out / "novelty.csv")
    assert {"phndd_auroc", "phndd_aupr", "phndd_fpr95"} <= set(novelty["metric"])
    # Cost: every complete trial, per variant x benchmark x setting.
    cost = pd.read_csv(out / "cost.csv")
    params = cost[cost["metric"] == "trainable_params"]
    assert params["n"].sum() == len(runs)
    assert set(params[params["inference"] == "w/o VI"]["mean"]) == {1010.0}
    # Ablation: one table per swept knob, per value; MC samples tied to their eval twin.
    kd = pd.read_csv(out / "ablation__method.kd_weight.csv")
    assert kd[kd["metric"] == "avg_acc"]["n"].sum() == 12
    mc = pd.read_csv(out / "ablation__method.mc_samples_train.csv")
    search = runs[runs["budget.replay_free"]]
    by_mc = search.groupby("method.mc_samples_train")["avg_acc"].mean()
    got = mc[mc["metric"] == "avg_acc"].set_index(mc.columns[1])["mean"]
    for value, mean in by_mc.items():
        assert got.loc[value] == pytest.approx(mean)
    assert "(= method.mc_samples_eval)" in (out / "ablation__method.mc_samples_train.md").read_text()


def test_importance_ranks_the_knob_that_drives_the_metric_first(report):
    out, _ = report
    table = pd.read_csv(out / "importance.csv")
    cell = table[table["cell"] == "setting=replay_free"].sort_values("rank")
    assert cell["parameter"].iloc[0] == "method.kd_weight"
    assert cell["importance"].iloc[0] > 0.6 and cell["importance"].sum() == pytest.approx(1.0)
    assert cell["configurations"].iloc[0] == 12
    assert "method.kd_weight" in (out / "importance.md").read_text()


def test_forgetting_task_il_and_settings_views_follow_the_stored_matrices(store, report):
    out, _ = report
    runs = finished_runs(store)
    accuracy = pd.read_parquet(store / "accuracy")
    # Forgetting, recomputed here from each run's accuracy matrix: F_t = mean_j<t max_l<t a[l, j] - a[t, j].
    forgetting = pd.read_csv(out / "forgetting.csv")
    run = runs[runs["cell"] == "deterministic=false,dataset=cifar100"]
    values = {}
    for run_id in run["run_id"]:
        a = accuracy[accuracy["run_id"] == run_id].pivot(index="task", columns="eval_task", values="acc").to_numpy()
        for t in range(1, a.shape[0]):
            values.setdefault(t, []).append(np.mean([a[:t, j][j:].max() - a[t, j] for j in range(t)]))
    mine = forgetting[(forgetting["inference"] == "VI") & (forgetting["benchmark"] == "cifar100")]
    assert len(mine) == 2
    for row in mine.itertuples(index=False):
        assert row.forgetting_mean == pytest.approx(np.mean(values[row.task]), abs=1e-9, nan_ok=True)
    # Task-IL: the mean over tasks of the task-aware accuracy after the last task, per run, then over seeds.
    table = pd.read_csv(out / "task_vs_class_il.csv")
    last = accuracy.merge(run[["run_id", "num_tasks"]], on="run_id")
    last = last[last["task"] == last["num_tasks"] - 1].groupby("run_id")["task_aware_acc"].mean()
    cell = table[(table["metric"] == "task_il") & (table["benchmark"] == "cifar100") & (table["inference"] == "VI")]
    assert cell["mean"].iloc[0] == pytest.approx(last.mean()) and not math.isnan(last.mean())
    vi_cifar = (table["benchmark"] == "cifar100") & (table["inference"] == "VI")
    class_il = table[(table["metric"] == "class_il") & vi_cifar]
    assert class_il["mean"].iloc[0] < cell["mean"].iloc[0]
    settings = pd.read_csv(out / "settings.csv")
    assert set(settings["setting"]) == {"standard", "replay-free"}


def test_importance_and_curves_only_where_the_data_can_carry_them(tmp_path, capsys, fast_figures):
    # 5 configurations of one cell, a knob that takes two values: neither importance nor a curve.
    rng = np.random.default_rng(1)
    for i in range(5):
        write_trial(tmp_path, f"r-{i}", cell="c", seed=0, configuration=f"c#{i}",
                    config={"method": {"kd_weight": [5.0, 10.0][i % 2]}}, quality=50.0 + i, rng=rng)
    out = tmp_path / "rep"
    assert report_main([str(tmp_path), "--out", str(out)]) == 0
    notes = (out / "index.md").read_text()
    assert "not computed, 5 complete configuration(s)" in notes and "at least 8" in notes
    assert "ablation curve of method.kd_weight: not drawn, the knob took 2 value(s)" in notes
    assert not (out / "ablation__method.kd_weight.png").exists() and (out / "ablation__method.kd_weight.md").exists()
    assert pd.read_csv(out / "importance.csv").empty


def test_every_figure_is_a_png_and_the_index_links_everything(store, report):
    out, printed = report
    pngs = sorted(out.glob("*.png"))
    names = {p.name for p in pngs}
    assert {"accuracy_evolution.png", "reliability.png", "importance.png", "ablation__method.kd_weight.png",
            "ablation__method.mc_samples_train.png", "forgetting.png", "settings.png",
            "accuracy_vs_cost.png"} <= names
    assert sum(n.startswith("accuracy_matrix__") for n in names) == 5  # one per cell
    for path in pngs:
        assert path.read_bytes()[:8] == PNG_MAGIC
        with Image.open(path) as image:
            image.verify()
            assert min(image.size) >= 300  # readable in print at 200 dpi
    index = out / "index.md"
    assert printed.strip().splitlines()[-1] == str(index)
    text = index.read_text()
    links = set(re.findall(r"\]\(([^)]+)\)", text))
    assert all((out / link).is_file() for link in links), links
    for path in [*pngs, *out.glob("*.md"), *out.glob("*.csv"), *out.glob("*.tex")]:
        if path.name != "index.md":
            assert path.name in links, f"{path.name} is not in the index"
    assert "Trials:" in text and "3 incomplete" in text


def test_by_and_metric_options(store, tmp_path, fast_figures):
    out = tmp_path / "rep"
    assert report_main([str(store), "--out", str(out), "--by", "cell", "--metric", "ece"]) == 0
    table = pd.read_csv(out / "main.csv")
    assert set(table["metric"]) == {"ece"} and "cell" in table.columns
    runs = finished_runs(store)
    cells = runs[~runs["budget.replay_free"]].groupby(["cell", "data.dataset"])["ece"].mean()
    assert len(table) == len(cells)
    for row in table.itertuples(index=False):
        assert row.mean == pytest.approx(cells.loc[(row.cell, row.benchmark)])
    # Lower is better for ECE: the bold cell of each benchmark column is its smallest mean.
    for _, column in table.groupby("benchmark"):
        assert column.loc[column["mean"].idxmin(), "best"] and column["best"].sum() == 1


@pytest.mark.parametrize("args, expected", [
    (["{missing}"], "no such directory"),
    (["{empty}"], "not a results store"),
    (["{store}", "--by", "varient"], "--by: 'varient' is not a column of the runs table (did you mean variant"),
    (["{store}", "--metric", "avg_accuracy"], "--metric: 'avg_accuracy' is not a numeric column"),
])
def test_bad_input_is_one_line_and_exit_2(args, expected, store, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    paths = {"missing": str(tmp_path / "nowhere"), "empty": str(tmp_path / "empty"), "store": str(store)}
    with pytest.raises(SystemExit) as exit_info:
        report_main([a.format(**paths) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and expected in err, err


def test_cli_subprocess_error_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "clapray.report", str(tmp_path / "nowhere")], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: {tmp_path / 'nowhere'}: no such directory (expected a results store: " \
                                  "a sweep directory such as results/quickstart, with runs/*.parquet)"


def test_parent_directory_hints_at_the_store_below(store, capsys):
    with pytest.raises(SystemExit):
        report_main([str(store.parent)])
    assert f"stores below it: {store}" in capsys.readouterr().err


def test_finished_run_with_a_missing_task_file_is_incomplete(tmp_path):
    rng = np.random.default_rng(1)
    write_trial(tmp_path, "a", cell="c", seed=0, configuration="c#0", config={}, quality=50, rng=rng)
    write_trial(tmp_path, "b", cell="c", seed=1, configuration="c#0", config={}, quality=50, rng=rng)
    # Task 1's row of b lost (its file rewritten without it).
    path = tmp_path / "tasks" / "b.parquet"
    table = pq.read_table(path)
    pq.write_table(table.filter(pc.not_equal(table.column("task"), 1)), path)
    loaded = load_store([tmp_path])
    states = dict(zip(loaded.runs["run_id"], loaded.runs["state"], strict=True))
    assert states == {"a": "complete", "b": "missing tasks"}


def test_report_on_a_store_being_written(tmp_path, capsys, fast_figures):
    """A writer adds trials and tasks while the report reads: the report succeeds, counts what it saw."""
    root = tmp_path / "live"
    rng = np.random.default_rng(2)
    write_trial(root, "done", cell="c", seed=0, configuration="c#0", config={}, quality=60, rng=rng)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set() and i < 200:
            write_trial(root, f"w-{i:03d}", cell="c", seed=i + 1, configuration="c#0", config={}, quality=60,
                        rng=np.random.default_rng(i), upto=1 + i % NUM_TASKS)
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert report_main([str(root), "--out", str(tmp_path / "rep")]) == 0
    finally:
        stop.set()
        thread.join()
    printed = capsys.readouterr().out
    assert re.search(r"\d+ complete, \d+ incomplete", printed), printed
    assert (tmp_path / "rep" / "index.md").exists()


def test_report_on_a_store_with_only_incomplete_trials_replaces_an_older_report(tmp_path, capsys, fast_figures):
    rng = np.random.default_rng(3)
    write_trial(tmp_path, "r", cell="c", seed=0, configuration="c#0", config={}, quality=50, rng=rng, upto=1)
    out = tmp_path / "report"
    out.mkdir()
    # An earlier report here drew a knob this store does not have; a user's file sits beside it.
    (out / ".report-files").write_text("ablation__old.png\nindex.md\n")
    (out / "ablation__old.png").write_bytes(PNG_MAGIC)
    (out / "mine.txt").write_text("a user's file")
    assert report_main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "0 complete, 1 incomplete (1 running)" in printed
    assert printed.strip().splitlines()[-1] == str(out / "index.md")
    assert not (out / "ablation__old.png").exists() and (out / "mine.txt").exists()
    assert (out / "main.md").exists() and "run" in (out / "incomplete.md").read_text()


def test_report_on_a_real_run_store(tmp_path, capsys, one_thread):
    """A store written by ``python -m clapray.run`` (zero-shot on tiny generated data), calibration included."""
    from clapray.run import main as run_main

    small = ["data.shapes.num_classes=8", "data.shapes.train_per_class=4", "data.shapes.test_per_class=6",
             "data.num_tasks=4", "method.variant=zeroshot"]
    assert run_main(["tiny", "--out", str(tmp_path), *sum((["--set", s] for s in small), [])]) == 0
    calibration = pd.read_parquet(tmp_path / "calibration")
    assert sorted(calibration["task"].unique()) == [0, 1, 2, 3]
    tasks = pd.read_parquet(tmp_path / "tasks")
    per_task = calibration.assign(gap=(calibration["accuracy"] - calibration["mean_confidence"]).abs()
                                  * calibration["count"]).groupby("task")
    ece = per_task["gap"].sum() / per_task["count"].sum()
    np.testing.assert_allclose(ece.to_numpy(), tasks.sort_values("task")["ece"].to_numpy(), atol=1e-9)
    capsys.readouterr()
    assert report_main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "1 complete, 0 incomplete" in printed
    out = tmp_path / "report"
    assert (out / "reliability.png").exists() and (out / "accuracy_evolution.png").exists()
    table = pd.read_csv(out / "main.csv")
    runs = pd.read_parquet(tmp_path / "runs")
    assert table[table["metric"] == "avg_acc"]["mean"].iloc[0] == pytest.approx(runs["avg_acc"].iloc[0])


def test_report_imports_neither_ray_nor_torch():
    code = ("import sys, clapray.report.cli, clapray.report.build; "
            "bad = [m for m in ('ray', 'torch') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


# --------------------------------------------------------------------------------------------------
# The sweep's live view


def test_trial_states_and_cell_summary_lines():
    from clapray.sweep.callbacks import TrialState, cell_summary, classify_trial, progress_lines

    def state(status, result=None, cell="a"):
        return classify_trial(status, result, 5, "avg_acc", cell)

    assert state("RUNNING", {"tasks_done": 2}).state == "running"
    assert state("PENDING").state == "pending" and state("PAUSED").state == "pending"
    assert state("ERROR").state == "failed"
    assert state("TERMINATED", {"tasks_done": 5, "avg_acc": 71.5}) == TrialState("a", "done", 71.5)
    assert state("TERMINATED", {"tasks_done": 3, "avg_acc": 90.0}).state == "stopped"
    assert state("TERMINATED", {"tasks_done": 2, "diverged": True}).state == "failed"
    assert state("TERMINATED", {"tasks_done": 5, "avg_acc": float("nan")}) == TrialState("a", "done", None)
    states = [state("TERMINATED", {"tasks_done": 5, "avg_acc": 70.0}),
              state("TERMINATED", {"tasks_done": 5, "avg_acc": 72.5}),
              state("TERMINATED", {"tasks_done": 3, "avg_acc": 99.0}),  # a stopped trial's value is not "best"
              state("RUNNING"), state("PENDING"), state("ERROR"),
              state("RUNNING", cell="b")]
    assert cell_summary(states, "a", "avg_acc", "max") == \
        "[2 done, 1 running, 1 pending, 1 stopped, 1 failed; best avg_acc 72.50]"
    assert cell_summary(states, "a", "avg_acc", "min").endswith("best avg_acc 70.00]")
    assert cell_summary(states, "b", "avg_acc", "max") == \
        "[0 done, 1 running, 0 pending, 0 stopped, 0 failed; best avg_acc -]"
    assert progress_lines(states, "avg_acc", "max") == [
        "a  [2 done, 1 running, 1 pending, 1 stopped, 1 failed; best avg_acc 72.50]",
        "b  [0 done, 1 running, 0 pending, 0 stopped, 0 failed; best avg_acc -]"]


def test_progress_printer_counts_from_every_trial(capsys):
    from clapray.sweep.callbacks import ProgressPrinter
    from clapray.sweep.progress import SweepPlan

    plan = SweepPlan(metric="avg_acc", mode="max", trials={"c": 4}, num_tasks={"c": 3})
    printer = ProgressPrinter(plan, out=sys.stdout)

    def trial(tid, status, result=None, params=None):
        return SimpleNamespace(trial_id=tid, status=status, last_result=result or {},
                               config={"cell": "c", "seed": 0, "params": params or {}})

    earlier = trial("t0", "TERMINATED", {"tasks_done": 3, "avg_acc": 60.0})  # e.g. finished before a resume
    current = trial("t1", "RUNNING", {"tasks_done": 3, "avg_acc": 65.0}, {"method.kd_weight": 12.512345})
    waiting = trial("t2", "PENDING")
    trials = [earlier, current, waiting]
    printer.on_trial_result(0, trials, current, {"tasks_done": 2, "last_acc": 50.0, "avg_acc": 55.0})
    # Ray Tune calls on_trial_complete while the trial's status is still RUNNING.
    printer.on_trial_complete(0, trials, current)
    current.status = "TERMINATED"
    printer.on_experiment_end(trials)
    lines = capsys.readouterr().out.strip().splitlines()
    # 1 of 4 trials ended; one task finished this session, so the ETA is known (a number of seconds).
    assert re.fullmatch(r"c  t1  seed 0  kd_weight=12\.51  task 2/3  acc  50\.00  avg  55\.00  "
                        r"\[1 done, 1 running, 1 pending, 0 stopped, 0 failed; best avg_acc 60\.00\]  "
                        r"\| 1/4 trials, elapsed \d+s, ETA \d+s", lines[0]), lines[0]
    assert lines[1].startswith("c  t1  seed 0  kd_weight=12.51  finished  "
                               "[2 done, 0 running, 1 pending, 0 stopped, 0 failed; best avg_acc 65.00]  | 2/4 trials")
    assert lines[2] == "c  [2 done, 0 running, 1 pending, 0 stopped, 0 failed; best avg_acc 65.00]"


def test_report_reads_and_writes_an_s3_store(monkeypatch, capsys, fast_figures):
    """A store under an ``s3://`` URI (a local moto server): the report is written beside it, in the bucket."""
    import os
    import socket

    import pyarrow.fs as pafs

    moto_server = pytest.importorskip("moto.server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
            monkeypatch.setenv(key, value)
        fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", access_key="test",
                               secret_key="test", region="us-east-1", allow_bucket_creation=True)
        bucket = f"clapray-report-{os.getpid()}"
        fs.create_dir(bucket)
        uri = f"s3://{bucket}/sweep?endpoint_override=127.0.0.1:{port}&scheme=http"
        rng = np.random.default_rng(5)
        for seed in SEEDS:
            write_trial(uri, f"p-{seed}", cell="c", seed=seed, configuration="c#0", config={}, quality=50, rng=rng)
        write_trial(uri, "p-run", cell="c", seed=9, configuration="c#0", config={}, quality=50, rng=rng, upto=1)
        assert report_main([uri]) == 0
        printed = capsys.readouterr().out
        assert "3 complete, 1 incomplete (1 running)" in printed
        assert printed.strip().splitlines()[-1] == f"s3://{bucket}/sweep/report/index.md?endpoint_override=" \
                                                  f"127.0.0.1:{port}&scheme=http"
        written = {i.base_name for i in fs.get_file_info(pafs.FileSelector(f"{bucket}/sweep/report"))}
        assert {"index.md", "main.md", "main.csv", "main.tex", "accuracy_evolution.png"} <= written
        with fs.open_input_stream(f"{bucket}/sweep/report/main.csv") as stream:
            table = pd.read_csv(stream)
        runs = finished_runs_from(uri)
        assert table[table["metric"] == "avg_acc"]["mean"].iloc[0] == pytest.approx(runs["avg_acc"].mean())
    finally:
        server.stop()


def finished_runs_from(uri: str) -> pd.DataFrame:
    from clapray.results import load_table

    runs = load_table(uri, "runs")
    return runs[runs["status"] == "finished"]
