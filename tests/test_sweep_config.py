"""Sweep configuration: shipped sweeps, one-line field-precise errors, cells, spaces and trial configs."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from clapray.config import PROMPT_VARIANTS, RunConfig
from clapray.errors import ConfigError, UserError
from clapray.sweep import describe, load_sweep_config, resolve_sweep_argument, sweep_from_mapping
from clapray.sweep.loader import apply_sweep_overrides
from clapray.sweep.model import REPORTED_METRICS, Distribution, SweepConfig

ROOT = Path(__file__).resolve().parents[1]
SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))

# A small valid sweep on the tiny random-weight base; error tests change one thing in it.
MINIMAL: dict[str, Any] = {
    "name": "t",
    "base": "tiny",
    "set": {"method.variant": "handcrafted"},
    "grid": {"setting": ["standard", "replay_free"]},
    "search": {"trials_per_cell": 2, "space": {"method.kd_weight": {"float": [0.0, 30.0]}}},
}


def write_sweep(tmp_path: Path, data: dict[str, Any], name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def variant(**changes: Any) -> dict[str, Any]:
    """MINIMAL with top-level keys replaced (None removes the key)."""
    data = copy.deepcopy(MINIMAL)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def load_error(tmp_path: Path, data: dict[str, Any], overrides: tuple[str, ...] = ()) -> ConfigError:
    path = write_sweep(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_sweep_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return info.value


def assert_error(err: ConfigError, source: str | Path, field: str, *fragments: str) -> None:
    message = str(err)
    assert message.startswith(f"{source}: {field}: expected "), message
    for fragment in fragments:
        assert fragment in message, message


def first_values(sweep: SweepConfig, cell) -> dict[str, Any]:
    """A sampled configuration: the lowest value (or first choice) of every parameter active in ``cell``."""
    sampled: dict[str, Any] = {}
    for name, dist in sweep.active_space(cell).items():
        if sweep.is_active(name, cell, sampled):
            sampled[name] = dist.choices[0] if dist.kind == "choice" else dist.low
    return sampled


# --------------------------------------------------------------------------------------------------
# Shipped sweeps.


def test_sweeps_are_shipped():
    assert {p.stem for p in SWEEP_FILES} >= {"quickstart", "ablation", "variants", "resource", "table3"}


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_shipped_sweep_loads_and_describes(path: Path):
    text = path.read_text()
    assert text.startswith("#"), "every shipped sweep starts with a comment saying what it studies"
    sweep = load_sweep_config(path)
    cells = sweep.cells()
    assert cells and len({c.name for c in cells}) == len(cells)
    assert sweep.trial_count() == sum(sweep.trials_for(c) for c in cells) * len(sweep.seeds)
    text = describe(sweep)
    assert sweep.name in text and f"total: {len(cells)} cell(s), {sweep.trial_count()} trial(s)" in text
    for cell in cells:
        assert cell.name in text
        cfg = sweep.run_config_for(cell, first_values(sweep, cell), sweep.seeds[0])
        assert cfg.method.variant in PROMPT_VARIANTS
        assert cfg.name == f"{sweep.name}-{cell.name}" and "/" not in cfg.name


def test_quickstart_sweep_is_small_and_runs_on_cpu():
    sweep = load_sweep_config(ROOT / "sweeps" / "quickstart.yaml")
    assert [c.name for c in sweep.cells()] == ["setting=zero_shot", "setting=standard", "setting=replay_free"]
    assert [sweep.trials_for(c) for c in sweep.cells()] == [1, 2, 2]
    # Every configuration over three seeds, each another class order: numbers with an error bar.
    assert sweep.seeds == (0, 1, 2) and sweep.seed_fields == ("seeds.init", "seeds.class_order")
    assert sweep.trial_count() == 15
    assert sweep.base.device == "cpu" and sweep.base.data.dataset == "shapes_cl"
    assert sweep.base.backbone.pretrained == "clapray-shapes"
    assert [sweep.cell_config(c).method.variant for c in sweep.cells()] == ["zeroshot", "handcrafted", "handcrafted"]
    assert [sweep.cell_config(c).budget.replay_free for c in sweep.cells()] == [False, False, True]
    assert sweep.resources.gpus_per_worker == 0 and sweep.resources.cpus_per_worker == 1
    assert sweep.storage == "results"


def test_table3_sweep_removes_one_component_per_cell():
    sweep = load_sweep_config(ROOT / "sweeps" / "table3.yaml")
    full = sweep.cell_config("setting=full")
    assert full.method.variant == "handcrafted" and full.uses_memory and full.method.vga.enabled
    removed = {
        "setting=without_vga": lambda c: not c.method.vga.enabled,
        "setting=shared_adapter": lambda c: not c.method.task_specific_adapters,
        "setting=without_consolidation": lambda c: not c.method.consolidation.enabled,
        "setting=without_language_aware": lambda c: c.method.kd_weight == 0 and not c.method.language_init,
        "setting=without_vi": lambda c: c.method.deterministic,
        "setting=replay_free": lambda c: c.budget.replay_free,
    }
    for name, check in removed.items():
        cfg = sweep.cell_config(name)
        assert check(cfg) and not check(full), name
        # Exactly one component differs from the full method (the run fields compared as dictionaries).
        changed = {k for k, v in _flat(cfg.to_dict()).items() if _flat(full.to_dict())[k] != v} - {"name"}
        assert len(changed) == (2 if name == "setting=without_language_aware" else 1), (name, changed)
    assert sweep.cell_config("setting=zero_shot").method.variant == "zeroshot"
    assert sweep.seeds == (0, 1, 2) and sweep.seed_fields == ("seeds.init", "seeds.class_order")
    assert not sweep.search.space and sweep.trial_count() == 8 * 3


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_variants_sweep_is_table_one():
    sweep = load_sweep_config(ROOT / "sweeps" / "variants.yaml")
    datasets = {c.overrides["data.dataset"] for c in sweep.cells()}
    assert datasets == {"cifar100", "imagenet100", "imagenet_r", "cub200", "vtab"}
    rows = {(c.overrides["method.variant"], c.overrides["method.deterministic"]) for c in sweep.cells()}
    # Every variant with and without VI, and the zero-shot reference row once (it has no head).
    learned = [v for v in PROMPT_VARIANTS if v != "zeroshot"]
    assert rows == {("zeroshot", False)} | {(v, det) for v in learned for det in (False, True)}
    assert sweep.search.algorithm == "grid" and not sweep.search.space
    assert sweep.seeds == (0, 1, 2) and sweep.trial_count() == len(rows) * 5 * 3
    # data.num_tasks stays null, so VTAB gets its own 5 tasks from the benchmark.
    assert sweep.base.data.num_tasks is None


def test_ablation_sweep_conditions():
    sweep = load_sweep_config(ROOT / "sweeps" / "ablation.yaml")
    assert set(sweep.grid["method.variant"]) == set(PROMPT_VARIANTS)
    assert len(sweep.cells()) == len(PROMPT_VARIANTS) * 6 and sweep.scheduler is not None
    standard = sweep.cell("variant=handcrafted,deterministic=false,setting=standard")
    replay_free = sweep.cell("variant=handcrafted,deterministic=false,setting=replay_free")
    deterministic = sweep.cell("variant=handcrafted,deterministic=true,setting=standard")
    assert "memory.size" in sweep.active_space(standard)
    assert "memory.size" not in sweep.active_space(replay_free)
    assert "method.mc_samples_train" not in sweep.active_space(deterministic)
    assert replay_free.overrides["budget.replay_free"] is True
    # Zero-shot trains nothing: nothing is sampled and its cells run one configuration.
    zeroshot = sweep.cell("variant=zeroshot,deterministic=false,setting=standard")
    assert not sweep.active_space(zeroshot) and sweep.trials_for(zeroshot) == 1
    # The prompt variants' own sizes are searched only where they apply.
    assert "method.prompt.maple_depth" in sweep.active_space("variant=maple,deterministic=false,setting=standard")
    assert "method.prompt.maple_depth" not in sweep.active_space(standard)
    assert "method.prompt.n_ctx" in sweep.active_space("variant=cocoop,deterministic=true,setting=budget")


def test_sweep_config_imports_no_heavy_frameworks():
    code = ("import sys; from clapray.sweep import load_sweep_config, describe; "
            "describe(load_sweep_config('sweeps/quickstart.yaml')); "
            "print(sorted(m for m in ('torch', 'ray', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------------
# Errors: one line naming the file and the dotted field.


def test_unknown_top_level_key(tmp_path):
    err = load_error(tmp_path, variant(grdi={"setting": ["standard"]}))
    assert_error(err, tmp_path / "sweep.yaml", "grdi", "one of the fields name, base", "got an unknown field")


def test_name_is_required_and_safe(tmp_path):
    assert_error(load_error(tmp_path, variant(name=None)), tmp_path / "sweep.yaml", "name", "required")
    assert_error(load_error(tmp_path, variant(name="a/b")), tmp_path / "sweep.yaml", "name", "directory name")


@pytest.mark.parametrize("where, data, field", [
    ("grid", {"grid": {"method.vga.depht": [1, 2]}}, "grid.method.vga.depht"),
    ("space", {"search": {"trials_per_cell": 2, "space": {"method.vga.depht": {"int": [1, 4]}}}},
     "search.space.method.vga.depht"),
    ("set", {"set": {"method.variant": "handcrafted", "optim.lrr": 0.1}}, "set.optim.lrr"),
    ("settings", {"settings": {"tiny": {"budget.max_step": 5}}}, "settings.tiny.budget.max_step"),
    ("same_as", {"search": {"trials_per_cell": 2, "space": {"method.kd_weight": {"float": [0.0, 1.0]}},
                            "same_as": {"method.kl_wieght": "method.kd_weight"}}}, "search.same_as.method.kl_wieght"),
])
def test_unknown_run_config_field(tmp_path, where, data, field):
    err = load_error(tmp_path, variant(**data))
    assert_error(err, tmp_path / "sweep.yaml", field, "a run config field", "got an unknown field")


def test_unknown_field_suggests_the_close_one(tmp_path):
    err = load_error(tmp_path, variant(grid={"method.vga.depht": [1, 2]}))
    assert "such as method.vga.depth" in str(err)


def test_section_and_managed_fields_are_refused(tmp_path):
    err = load_error(tmp_path, variant(grid={"method.vga": [1]}))
    assert_error(err, tmp_path / "sweep.yaml", "grid.method.vga", "leaf field")
    err = load_error(tmp_path, variant(grid={"seeds.init": [1, 2]}))
    assert_error(err, tmp_path / "sweep.yaml", "grid.seeds.init", "list init seeds under seeds")


def space(**entries: Any) -> dict[str, Any]:
    return {"search": {"trials_per_cell": 2, "space": {k.replace("__", "."): v for k, v in entries.items()}}}


def test_distribution_bounds_checked_against_field_range(tmp_path):
    err = load_error(tmp_path, variant(**space(method__vga__depth={"int": [0, 4]})))
    assert str(err) == (f"{tmp_path / 'sweep.yaml'}: search.space.method.vga.depth: expected an integer >= 1 "
                        "and <= 64, got 0")


def test_float_distribution_on_int_field(tmp_path):
    err = load_error(tmp_path, variant(**space(method__vga__depth={"float": [1, 4]})))
    assert_error(err, tmp_path / "sweep.yaml", "search.space.method.vga.depth",
                 "an int or choice distribution", "got a float distribution")


def test_numeric_distribution_on_text_field(tmp_path):
    err = load_error(tmp_path, variant(**space(memory__selector={"int": [1, 4]})))
    assert_error(err, tmp_path / "sweep.yaml", "search.space.memory.selector", "a choice distribution")


def test_choice_values_each_validated(tmp_path):
    err = load_error(tmp_path, variant(**space(method__mc_samples_train={"choice": [5, 0]})))
    assert_error(err, tmp_path / "sweep.yaml", "search.space.method.mc_samples_train", "integer >= 1", "got 0")
    err = load_error(tmp_path, variant(**space(memory__selector={"choice": ["herding", "bogus"]})))
    assert_error(err, tmp_path / "sweep.yaml", "search.space.memory.selector", "first_k", "got 'bogus'")


def test_log_range_needs_positive_low(tmp_path):
    err = load_error(tmp_path, variant(**space(optim__lr={"float": [0.0, 0.1], "log": True})))
    assert_error(err, tmp_path / "sweep.yaml", "search.space.optim.lr.float", "low > 0 with log: true")


def test_step_must_divide_the_range(tmp_path):
    err = load_error(tmp_path, variant(**space(memory__size={"int": [500, 5000], "step": 400})))
    assert_error(err, tmp_path / "sweep.yaml", "search.space.memory.size.step", "divides the range", "got 400")


@pytest.mark.parametrize("spec, field, fragment", [
    ({"int": [4, 1]}, "search.space.method.vga.depth.int", "low < high"),
    ({"int": [1, 4], "float": [1, 4]}, "search.space.method.vga.depth", "exactly one of int, float, choice"),
    ({"int": [1, 4], "steps": 1}, "search.space.method.vga.depth.steps", "got an unknown key"),
    ({"int": [1, 2.5]}, "search.space.method.vga.depth.int", "two integers"),
    ({"choice": []}, "search.space.method.vga.depth.choice", "non-empty list"),
    ({"choice": [1, 1]}, "search.space.method.vga.depth", "distinct choices"),
])
def test_malformed_distributions(tmp_path, spec, field, fragment):
    err = load_error(tmp_path, variant(**space(method__vga__depth=spec)))
    assert_error(err, tmp_path / "sweep.yaml", field, fragment)


def test_grid_axis_and_space_entry_on_same_field(tmp_path):
    data = variant(grid={"method.kd_weight": [1.0, 2.0]}, **space(method__kd_weight={"float": [0.0, 3.0]}))
    err = load_error(tmp_path, data)
    assert_error(err, tmp_path / "sweep.yaml", "search.space.method.kd_weight", "not a grid axis")


def test_when_on_unknown_axis(tmp_path):
    data = variant(**space(memory__size={"int": [10, 20], "when": {"settting": "standard"}}))
    err = load_error(tmp_path, data)
    assert_error(err, tmp_path / "sweep.yaml", "search.space.memory.size.when.settting",
                 "a grid axis (setting) or another search parameter", "got an unknown name")


def test_when_value_must_be_an_axis_value(tmp_path):
    data = variant(**space(memory__size={"int": [10, 20], "when": {"setting": "budget"}}))
    err = load_error(tmp_path, data)
    assert_error(err, tmp_path / "sweep.yaml", "search.space.memory.size.when.setting",
                 "values of the grid axis (standard, replay_free)", "got 'budget'")


def test_when_may_name_a_later_parameter_but_not_a_cycle(tmp_path):
    data = variant(**space(method__kd_weight={"float": [0.0, 1.0], "when": {"method.mc_samples_train": 5}},
                           method__mc_samples_train={"choice": [1, 5]}))
    sweep = load_sweep_config(write_sweep(tmp_path, data))
    assert sweep.search.param_names == ("method.mc_samples_train", "method.kd_weight")  # parents first
    data = variant(**space(method__kd_weight={"float": [0.0, 1.0], "when": {"method.mc_samples_train": 5}},
                           method__mc_samples_train={"choice": [1, 5], "when": {"method.vga.depth": 1}},
                           method__vga__depth={"int": [1, 2], "when": {"method.mc_samples_train": 1}}))
    err = load_error(tmp_path, data)
    assert_error(err, tmp_path / "sweep.yaml", "search.space.method.kd_weight.when", "conditions without a cycle",
                 "a cycle through method.kd_weight, method.mc_samples_train, method.vga.depth")
    data = variant(**space(method__kd_weight={"float": [0.0, 1.0], "when": {"method.kd_weight": 0.5}}))
    assert_error(load_error(tmp_path, data), tmp_path / "sweep.yaml", "search.space.method.kd_weight.when."
                 "method.kd_weight", "got the parameter itself")
    data = variant(**space(method__mc_samples_train={"choice": [1, 5]},
                           method__kd_weight={"float": [0.0, 1.0], "when": {"method.mc_samples_train": 3}}))
    assert_error(load_error(tmp_path, data), tmp_path / "sweep.yaml",
                 "search.space.method.kd_weight.when.method.mc_samples_train", "choice [1, 5]", "got 3")


def test_every_prompt_variant_is_available_and_unknown_ones_are_refused(tmp_path):
    sweep = load_sweep_config(write_sweep(tmp_path, variant(set=None, grid={"method.variant": list(PROMPT_VARIANTS)})))
    assert [c.overrides["method.variant"] for c in sweep.cells()] == list(PROMPT_VARIANTS)
    err = load_error(tmp_path, variant(grid={"method.variant": ["handcrafted", "copo"]}))
    assert_error(err, tmp_path / "sweep.yaml", "grid.method.variant",
                 "a prompt variant (handcrafted, coop, maple, attriclip, cocoop, zeroshot)", "got 'copo'")


def test_grid_algorithm_refuses_float_parameters(tmp_path):
    data = variant(search={"algorithm": "grid", "space": {"method.kd_weight": {"float": [0.0, 30.0]}}})
    err = load_error(tmp_path, data)
    assert_error(err, tmp_path / "sweep.yaml", "search.space.method.kd_weight",
                 "a choice or int distribution with algorithm grid", "got a float distribution")


def test_grid_algorithm_trials_per_cell(tmp_path):
    grid_space = {"method.mc_samples_train": {"choice": [1, 5]}, "method.vga.depth": {"int": [1, 2]}}
    err = load_error(tmp_path, variant(search={"algorithm": "grid", "trials_per_cell": 3, "space": grid_space}))
    assert_error(err, tmp_path / "sweep.yaml", "search.trials_per_cell", "null or the grid size 4", "got 3")
    sweep = load_sweep_config(write_sweep(tmp_path, variant(
        search={"algorithm": "grid", "trials_per_cell": None, "space": grid_space})))
    assert [sweep.grid_size(c) for c in sweep.cells()] == [4, 4]
    assert sweep.trial_count() == 2 * 4 * 1
    assert Distribution("int", 1, 5, 2).values() == (1, 3, 5)


def test_grid_algorithm_with_cell_dependent_sizes(tmp_path):
    grid_space = {"method.mc_samples_train": {"choice": [1, 5]},
                  "memory.size": {"int": [10, 30], "step": 10, "when": {"setting": "standard"}}}
    sweep = load_sweep_config(write_sweep(tmp_path, variant(search={"algorithm": "grid", "space": grid_space})))
    assert {c.name: sweep.grid_size(c) for c in sweep.cells()} == {"setting=standard": 6, "setting=replay_free": 2}
    assert sweep.trial_count() == 8
    err = load_error(tmp_path, variant(search={"algorithm": "grid", "trials_per_cell": 6, "space": grid_space}))
    assert_error(err, tmp_path / "sweep.yaml", "search.trials_per_cell", "null, as the cells' grid sizes differ")


def test_negative_or_repeated_seeds(tmp_path):
    err = load_error(tmp_path, variant(seeds=[0, -1]))
    assert_error(err, tmp_path / "sweep.yaml", "seeds", "distinct integers in [0, 2147483647]", "[0, -1]")
    assert_error(load_error(tmp_path, variant(seeds=[2**70])), tmp_path / "sweep.yaml", "seeds", "[0, 2147483647]")
    assert_error(load_error(tmp_path, variant(seeds=[1, 1])), tmp_path / "sweep.yaml", "seeds")
    assert_error(load_error(tmp_path, variant(seeds=[])), tmp_path / "sweep.yaml", "seeds")


def test_bad_scheduler(tmp_path):
    err = load_error(tmp_path, variant(scheduler={"hyperband": {"grace_tasks": 1}}))
    assert_error(err, tmp_path / "sweep.yaml", "scheduler.hyperband", "asha", "got an unknown scheduler")
    err = load_error(tmp_path, variant(scheduler={"asha": {"grace": 2}}))
    assert_error(err, tmp_path / "sweep.yaml", "scheduler.asha.grace", "got an unknown field")
    err = load_error(tmp_path, variant(scheduler={"asha": {"grace_tasks": 0}}))
    assert_error(err, tmp_path / "sweep.yaml", "scheduler.asha.grace_tasks", "integer >= 1")


def test_cell_breaking_a_cross_field_rule(tmp_path):
    # Each value is fine alone; only the combination split=val with val_fraction 0 is not.
    data = variant(set={"method.variant": "handcrafted", "data.val_fraction": 0.1},
                   grid={"eval.split": ["test", "val"], "data.val_fraction": [0.1, 0.0]})
    err = load_error(tmp_path, data)
    assert_error(err, tmp_path / "sweep.yaml", "cells[split=val,val_fraction=0].eval.split",
                 "test unless data.val_fraction > 0", "got 'val'")


def test_cell_breaking_a_section_rule(tmp_path):
    err = load_error(tmp_path, variant(grid={"memory.policy": ["auto", "per_class"]}))
    assert_error(err, tmp_path / "sweep.yaml", "cells[policy=per_class].memory.size", "when policy is per_class")


def test_other_errors(tmp_path):
    source = tmp_path / "sweep.yaml"
    assert_error(load_error(tmp_path, variant(grid={"setting": ["standard", "bogus"]})), source, "grid.setting",
                 "names of settings (standard, replay_free, budget)")
    assert_error(load_error(tmp_path, variant(grid={"method.vga.depth": []})), source, "grid.method.vga.depth",
                 "non-empty list")
    assert_error(load_error(tmp_path, variant(grid={"method.vga.depth": [0, 1]})), source, "grid.method.vga.depth",
                 "integer >= 1", "got 0")
    assert_error(load_error(tmp_path, variant(storage="http://x/y")), source, "storage", "s3://bucket/prefix")
    assert_error(load_error(tmp_path, variant(retries=-1)), source, "retries", "integer >= 0")
    assert_error(load_error(tmp_path, variant(resources={"gpus_per_worker": 1})), source,
                 "resources.gpus_per_worker", "0 when the runs' device is cpu")
    assert_error(load_error(tmp_path, variant(search={"metric": "accuracy", "trials_per_cell": 1})), source,
                 "search.metric", "one of " + ", ".join(REPORTED_METRICS))
    assert_error(load_error(tmp_path, variant(search={"space": {"method.kd_weight": {"float": [0.0, 1.0]}}})),
                 source, "search.trials_per_cell", "null only with algorithm grid")
    assert_error(load_error(tmp_path, variant(search={"trials_per_cell": 3})), source, "search.trials_per_cell",
                 "1 or null when search.space is empty")
    assert_error(load_error(tmp_path, variant(base="no-such-config")), source, "base",
                 "a shipped run config name (", "tiny")
    assert_error(load_error(tmp_path, variant(base={"memory": {"size": -5}})), source, "base.memory.size",
                 "integer >= 0")
    data = variant(**space(method__mc_samples_train={"choice": [1, 5]}))
    data["search"]["same_as"] = {"method.mc_samples_train": "method.mc_samples_eval"}
    assert_error(load_error(tmp_path, data), source, "search.same_as.method.mc_samples_train",
                 "got a search parameter")


def test_base_path_is_resolved_against_the_sweep_file(tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    run_yaml = tmp_path / "runs" / "mine.yaml"
    tiny = (ROOT / "clapray" / "configs" / "tiny.yaml").read_text()
    run_yaml.write_text(tiny.replace("optim:\n  epochs: 1\n", "optim:\n  epochs: 3\n"))
    folder = tmp_path / "sweeps"
    folder.mkdir()
    path = write_sweep(folder, variant(base="../runs/mine.yaml"))
    monkeypatch.chdir(ROOT)  # not the sweep's folder: the relative path must still resolve
    assert load_sweep_config(path).base.optim.epochs == 3
    run_yaml.write_text("memory:\n  size: -5\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: memory\.size: expected an integer >= 0"):
        load_sweep_config(path)


# --------------------------------------------------------------------------------------------------
# Overrides of sweep fields.


def test_overrides_of_sweep_fields(tmp_path):
    path = write_sweep(tmp_path, MINIMAL)
    sweep = load_sweep_config(path, ["search.trials_per_cell=3", "storage=/tmp/elsewhere", "seeds=[4, 5]",
                                     "set.optim.epochs=2", "grid.setting=[standard]",
                                     "search.space.method.kd_weight.float=[1.0, 2.0]"])
    assert sweep.trial_count() == 1 * 3 * 2
    assert sweep.storage == "/tmp/elsewhere" and sweep.seeds == (4, 5)
    assert sweep.base.optim.epochs == 2
    assert sweep.params["method.kd_weight"].distribution.low == 1.0


def test_override_errors_name_set(tmp_path):
    path = write_sweep(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as info:
        load_sweep_config(path, ["search.trials_per_cell=0"])
    assert str(info.value).startswith("--set: search.trials_per_cell: expected an integer >= 1")
    with pytest.raises(ConfigError, match=r"^--set: storge: expected one of the sweep fields"):
        load_sweep_config(path, ["storge=/tmp/x"])
    with pytest.raises(ConfigError, match=r"^--set: base.optim.epochs: expected base=<name or path>"):
        load_sweep_config(path, ["base.optim.epochs=1"])
    with pytest.raises(ConfigError, match=r"^--set: set.optim.epochs: expected an integer >= 1"):
        load_sweep_config(path, ["set.optim.epochs=0"])


def test_override_paths_inside_field_keyed_sections():
    data, touched = apply_sweep_overrides(MINIMAL, ["settings.tiny.budget.max_steps_per_task=5",
                                                    "search.space.optim.lr.log=true", "scheduler.asha.grace_tasks=2"])
    assert data["settings"] == {"tiny": {"budget.max_steps_per_task": 5}}
    assert data["search"]["space"]["optim.lr"] == {"log": True}
    assert data["scheduler"] == {"asha": {"grace_tasks": 2}}
    assert touched == ["settings.tiny.budget.max_steps_per_task", "search.space.optim.lr.log",
                       "scheduler.asha.grace_tasks"]
    assert MINIMAL.get("settings") is None  # the input is not modified


# --------------------------------------------------------------------------------------------------
# Cells, conditional spaces and trial run configs.

CONDITIONAL: dict[str, Any] = variant(
    set={"method.variant": "handcrafted", "method.kd_weight": 1.0},
    grid={"method.vga.depth": [1, 2], "setting": ["standard", "replay_free"]},
    settings={"replay_free": {"budget.replay_free": True, "method.consolidation.enabled": False}},
    search={
        "algorithm": "tpe", "seed": 3, "trials_per_cell": 4,
        "space": {
            "method.deterministic": {"choice": [False, True]},
            "method.mc_samples_train": {"choice": [1, 10], "when": {"method.deterministic": False}},
            "memory.size": {"int": [10, 40], "step": 10, "when": {"setting": "standard"}},
            "optim.lr": {"float": [1.0e-4, 1.0e-2], "log": True},
        },
        "same_as": {"method.mc_samples_eval": "method.mc_samples_train"},
    },
    seeds=[0, 1],
)


@pytest.fixture(scope="module")
def conditional() -> SweepConfig:
    return sweep_from_mapping(CONDITIONAL, "conditional.yaml")


def test_cells_are_named_and_expanded(conditional):
    names = [c.name for c in conditional.cells()]
    assert names == ["depth=1,setting=standard", "depth=1,setting=replay_free",
                     "depth=2,setting=standard", "depth=2,setting=replay_free"]
    cell = conditional.cell("depth=2,setting=replay_free")
    assert cell.overrides == {"budget.replay_free": True, "method.consolidation.enabled": False,
                              "method.vga.depth": 2}
    assert cell.axes == {"method.vga.depth": 2, "setting": "replay_free"}
    assert conditional.settings["budget"] == {"budget.max_steps_per_task": 200}  # built-ins stay available
    assert conditional.search.mode == "max"  # from the metric
    assert conditional.trial_count() == 4 * 4 * 2


def test_active_space_and_is_active(conditional):
    standard = conditional.cell("depth=1,setting=standard")
    replay_free = conditional.cell("depth=1,setting=replay_free")
    assert list(conditional.active_space(standard)) == ["method.deterministic", "method.mc_samples_train",
                                                        "memory.size", "optim.lr"]
    assert "memory.size" not in conditional.active_space(replay_free)
    assert conditional.active_space(standard)["optim.lr"] == Distribution("float", 1e-4, 1e-2, None, True)
    assert conditional.is_active("method.mc_samples_train", standard, {"method.deterministic": False})
    assert not conditional.is_active("method.mc_samples_train", standard, {"method.deterministic": True})
    assert not conditional.is_active("method.mc_samples_train", standard, {})  # parent not drawn yet
    assert not conditional.is_active("memory.size", replay_free, {})
    assert conditional.grid_size(standard) is None  # continuous lr


def test_run_config_for(conditional):
    cell = conditional.cell("depth=2,setting=replay_free")
    sampled = {"method.deterministic": True, "method.mc_samples_train": 10, "memory.size": 30, "optim.lr": 0.005}
    cfg = conditional.run_config_for(cell, sampled, 1)
    assert isinstance(cfg, RunConfig)
    assert cfg.name == "t-depth=2,setting=replay_free"
    assert cfg.seeds.init == 1 and cfg.seeds.class_order == 0  # the base's class order is kept
    assert cfg.method.vga.depth == 2 and cfg.budget.replay_free and not cfg.method.consolidation.enabled
    assert cfg.method.deterministic and cfg.optim.lr == 0.005 and cfg.method.kd_weight == 1.0
    # Inactive parameters are ignored: deterministic=true switches off mc_samples_train, replay_free memory.size.
    assert cfg.method.mc_samples_train == 5 and cfg.memory.size is None
    assert cfg.method.mc_samples_eval == 5  # copied from the (base) mc_samples_train

    standard = conditional.cell("depth=2,setting=standard")
    sampled_on = {**sampled, "method.deterministic": False}
    cfg_on = conditional.run_config_for(standard, sampled_on, 1)
    assert cfg_on.method.mc_samples_train == 10 and cfg_on.method.mc_samples_eval == 10
    assert cfg_on.memory.size == 30 and not cfg_on.budget.replay_free

    hashes = {conditional.run_config_for(c, sampled_on, seed).config_hash()
              for c in conditional.cells() for seed in conditional.seeds}
    assert len(hashes) == len(conditional.cells()) * len(conditional.seeds)
    other_lr = conditional.run_config_for(standard, {**sampled_on, "optim.lr": 0.001}, 1)
    assert other_lr.config_hash() != cfg_on.config_hash()
    assert conditional.run_config_for(standard.name, sampled_on, 1, output_dir="/tmp/o").output_dir == "/tmp/o"


def test_run_config_for_refuses_wrong_samples(conditional):
    cell = conditional.cell("depth=1,setting=standard")
    with pytest.raises(ValueError, match="memory.size is active"):
        conditional.run_config_for(cell, {"method.deterministic": True, "optim.lr": 0.001}, 0)
    with pytest.raises(ValueError, match="not search parameters"):
        conditional.run_config_for(cell, {"method.deterministic": True, "memory.size": 10, "optim.lr": 0.001,
                                          "cell": "x"}, 0)
    with pytest.raises(ConfigError, match=r"memory\.size: expected an integer >= 0"):
        conditional.run_config_for(cell, {"method.deterministic": True, "memory.size": -10, "optim.lr": 0.001}, 0)


def test_round_trip_through_to_dict(conditional):
    again = sweep_from_mapping(yaml.safe_load(yaml.safe_dump(conditional.to_dict(), sort_keys=True)), "again.yaml")
    assert [c.name for c in again.cells()] == [c.name for c in conditional.cells()]
    assert again.params == conditional.params and again.trial_count() == conditional.trial_count()
    cell = conditional.cells()[0]
    sampled = {"method.deterministic": False, "method.mc_samples_train": 1, "memory.size": 10, "optim.lr": 0.001}
    assert (again.run_config_for(cell.name, sampled, 0).config_hash()
            == conditional.run_config_for(cell, sampled, 0).config_hash())


def test_describe_lists_cells_space_and_budget(conditional):
    text = describe(conditional)
    assert "total: 4 cell(s), 32 trial(s)" in text
    assert "memory.size" in text and "when setting=standard" in text
    assert "when method.deterministic=false" in text
    assert "depth=1,setting=replay_free" in text and "method.consolidation.enabled=false" in text


def test_no_grid_is_one_cell(tmp_path):
    sweep = load_sweep_config(write_sweep(tmp_path, variant(grid=None)))
    assert [c.name for c in sweep.cells()] == ["base"] and sweep.cells()[0].overrides == {}
    assert sweep.trial_count() == 2


def test_values_are_normalised_by_the_run_config(tmp_path):
    # YAML reads 1e-3 (no dot) as a string; the run config and hence the cells see the number.
    path = tmp_path / "sweep.yaml"
    path.write_text("name: t\nbase: tiny\nset: {method.variant: handcrafted}\n"
                    "grid: {optim.lr: [1e-3, 2e-3]}\n")
    sweep = load_sweep_config(path)
    assert [c.overrides["optim.lr"] for c in sweep.cells()] == [0.001, 0.002]
    assert [c.name for c in sweep.cells()] == ["lr=0.001", "lr=0.002"]


def test_shorthands_and_defaults(tmp_path):
    sweep = load_sweep_config(write_sweep(tmp_path, variant(scheduler="asha", search=None, seeds=None,
                                                          settings={"standard": None})))
    assert sweep.scheduler is not None and sweep.scheduler.grace_tasks == 1
    assert sweep.search.algorithm == "tpe" and not sweep.search.space and sweep.seeds == (0,)
    assert sweep.trial_count() == 2  # nothing sampled: one configuration per cell
    assert sweep.scheduler.reduction_factor == 3.0 and sweep.retries == 2 and sweep.storage == "results"
    sweep = load_sweep_config(write_sweep(tmp_path, variant(scheduler=None, storage="s3://bucket/prefix")))
    assert sweep.scheduler is None and sweep.storage_path() == "s3://bucket/prefix"


def test_sweep_pickles(conditional):
    again = pickle.loads(pickle.dumps(conditional))
    assert again.cells() == conditional.cells() and again.search == conditional.search


def test_resolve_sweep_argument(tmp_path):
    assert resolve_sweep_argument(None).name == "quickstart.yaml"
    assert resolve_sweep_argument("ablation") == ROOT / "sweeps" / "ablation.yaml"
    assert resolve_sweep_argument(str(tmp_path / "x.yaml")) == tmp_path / "x.yaml"
    with pytest.raises(UserError, match="no shipped sweep of that name"):
        resolve_sweep_argument("nonesuch")
