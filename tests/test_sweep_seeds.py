"""Seeds of a sweep: which run fields a trial's seed sets, and the end-of-sweep summary over seeds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_sweep_config import load_error, variant, write_sweep

from clapray.sweep import load_sweep_config, sweep_from_mapping
from clapray.sweep.summary import mean_std_ci, summary_lines


def test_by_default_the_seed_sets_only_the_init_seed(tmp_path):
    sweep = load_sweep_config(write_sweep(tmp_path, variant(seeds=[3, 4])))
    assert sweep.seed_fields == ("seeds.init",)
    for seed in (3, 4):
        cfg = sweep.run_config_for(sweep.cells()[0], {"method.kd_weight": 1.0}, seed)
        assert cfg.seeds.init == seed and cfg.seeds.class_order == sweep.base.seeds.class_order


def test_seed_fields_can_change_the_class_order_too(tmp_path):
    sweep = load_sweep_config(write_sweep(tmp_path, variant(seeds=[3, 4],
                                                            seed_fields=["seeds.init", "seeds.class_order"])))
    configs = [sweep.run_config_for(sweep.cells()[0], {"method.kd_weight": 1.0}, seed) for seed in (3, 4)]
    assert [(c.seeds.init, c.seeds.class_order) for c in configs] == [(3, 3), (4, 4)]
    assert configs[0].run_id() != configs[1].run_id()
    # Only the class order may be driven alone as well.
    alone = load_sweep_config(write_sweep(tmp_path, variant(seeds=[5], seed_fields=["seeds.class_order"])))
    cfg = alone.run_config_for(alone.cells()[0], {"method.kd_weight": 1.0}, 5)
    assert (cfg.seeds.init, cfg.seeds.class_order) == (alone.base.seeds.init, 5)
    assert sweep_from_mapping(sweep.to_dict(), "<round trip>").seed_fields == ("seeds.init", "seeds.class_order")
    assert "each sets seeds.init and seeds.class_order" in __import__("clapray.sweep").sweep.describe(sweep)


@pytest.mark.parametrize("value", [[], ["seeds.init", "seeds.init"], ["optim.lr"], "seeds.init", [1]])
def test_bad_seed_fields_are_refused_in_one_line(tmp_path, value):
    err = load_error(tmp_path, variant(seed_fields=value))
    assert err.field == "seed_fields"


@pytest.mark.parametrize("where", ["set", "space", "grid"])
def test_a_seed_field_set_elsewhere_is_refused(tmp_path, where):
    data = variant(seed_fields=["seeds.init", "seeds.class_order"])
    if where == "set":
        data["set"] = {**data["set"], "seeds.class_order": 2}
    elif where == "space":
        data["search"]["space"]["seeds.class_order"] = {"int": [0, 4]}
    else:
        data["grid"]["seeds.class_order"] = [0, 1]
    err = load_error(tmp_path, data)
    assert err.field.endswith("seeds.class_order") and "seed_fields" in err.expected
    # Without seed_fields listing it, the class order is an ordinary field.
    data.pop("seed_fields")
    load_sweep_config(write_sweep(tmp_path, data))


def test_mean_std_ci_matches_the_t_interval():
    values = [61.0, 64.5, 70.25, 58.0]
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert mean_std_ci(values) == (f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f} (4) "
                                   f"[{lo:.1f}, {hi:.1f}]")
    assert mean_std_ci([61.0]) == "61.0 (1)"
    assert mean_std_ci([]) == "-"


def _runs() -> pd.DataFrame:
    rows = []
    for seed, (zs, clap_a, clap_b) in enumerate([(60.0, 71.0, 50.0), (64.0, 76.0, 55.0), (62.0, 72.0, 49.0)]):
        rows.append(dict(cell="setting=zero_shot", configuration="setting=zero_shot#0", seed=seed, avg_acc=80.0,
                         last_acc=zs, status="finished", sampled="{}", **{"method.variant": "zeroshot"}))
        rows.append(dict(cell="setting=standard", configuration="setting=standard#0", seed=seed, avg_acc=85.0,
                         last_acc=clap_a, status="finished", sampled=json.dumps({"method.kd_weight": 4.4}),
                         **{"method.variant": "handcrafted"}))
        rows.append(dict(cell="setting=standard", configuration="setting=standard#1", seed=seed, avg_acc=70.0,
                         last_acc=clap_b, status="finished" if seed < 2 else "error",
                         sampled=json.dumps({"method.kd_weight": 30.0}), **{"method.variant": "handcrafted"}))
    return pd.DataFrame(rows)


def test_summary_pairs_each_configuration_with_zero_shot_by_seed():
    lines = summary_lines(_runs())
    assert "paired by seed" in lines[0]
    by_config = {line.split(":")[0].strip().split()[0]: line for line in lines[1:]}
    assert set(by_config) == {"setting=zero_shot#0", "setting=standard#0", "setting=standard#1"}
    # Paired differences 11, 12, 10 (not the difference of the means' spread); the failed seed is left out.
    assert by_config["setting=standard#0"].endswith("vs zero-shot " + mean_std_ci([11.0, 12.0, 10.0]))
    assert by_config["setting=standard#1"].endswith("vs zero-shot " + mean_std_ci([-10.0, -9.0]))
    assert "Last " + mean_std_ci([50.0, 55.0]) in by_config["setting=standard#1"]
    assert "kd_weight=4.4" in by_config["setting=standard#0"]
    assert "vs zero-shot" not in by_config["setting=zero_shot#0"]


def test_summary_without_a_single_reference_has_no_pairs():
    runs = _runs()
    assert all("vs zero-shot" not in line for line in summary_lines(runs[runs["method.variant"] != "zeroshot"]))
    assert summary_lines(runs.iloc[0:0]) == []
