"""Run configuration: official defaults, field-precise errors, overrides, round trips."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from clapray.config import RunConfig, load_run_config
from clapray.errors import ConfigError
from clapray.typed_config import apply_overrides, describe_fields, from_mapping

CONFIG_DIR = Path(__file__).resolve().parents[1] / "clapray" / "configs"


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_the_official_reference_configuration():
    """§12.3b: the README command of the official code."""
    cfg = RunConfig()
    assert (cfg.backbone.model, cfg.backbone.pretrained) == ("ViT-B-16", "openai")
    assert cfg.method.variant == "handcrafted" and not cfg.method.deterministic
    assert (cfg.method.vga.enabled, cfg.method.vga.depth, cfg.method.vga.ff_dim, cfg.method.vga.dropout) == (
        True, 1, 2048, 0.1)
    assert cfg.method.mc_samples_train == cfg.method.mc_samples_eval == 20
    assert cfg.method.kd_weight == 15.0 and cfg.method.kl_weight == 0.001
    assert cfg.method.prior == "standard" and cfg.method.language_init and cfg.method.task_specific_adapters
    assert (cfg.method.consolidation.enabled, cfg.method.consolidation.epochs,
            cfg.method.consolidation.lr_factor) == (True, 2, 0.1)
    assert cfg.memory.selector == "first_k" and cfg.memory.policy == "auto"
    # The official selection protocol; its accidents (flipped views, the MC reshape) are opt-in.
    assert (cfg.memory.selection, cfg.memory.selection_views, cfg.memory.official_mc_reshape) == (
        "official", "test", False)
    assert cfg.method.prior_context == "random" and not cfg.method.reinit_shared_adapter
    prompt = cfg.method.prompt
    assert not (prompt.maple_official_untrained or prompt.maple_unnormalised_eval_text or prompt.coop_raw_class_names)
    assert (cfg.optim.epochs, cfg.optim.batch_size, cfg.optim.lr, cfg.optim.lr_rule) == (5, 32, 1e-3, "batch_scaled")
    assert (cfg.optim.warmup, cfg.optim.warmup_fraction, cfg.optim.momentum, cfg.optim.weight_decay) == (
        "fraction", 0.3, 0.0, 0.0)
    assert cfg.eval.batch_size is None and cfg.eval.protocol == "per_task" and cfg.eval.ece_bins == 15
    assert (cfg.seeds.class_order, cfg.seeds.init) == (10, 10)
    assert not cfg.budget.replay_free and cfg.budget.max_steps_per_task is None


def test_every_field_is_documented():
    rows = describe_fields(RunConfig)
    assert len(rows) > 50
    undocumented = [name for name, _, _, doc in rows if not doc.strip()]
    assert undocumented == []


def test_configs_are_frozen():
    cfg = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "text, field, fragment",
    [
        ("memory:\n  size: -5\n  policy: total\n", "memory.size", "got -5"),
        ("memory:\n  sise: 5\n", "memory.sise", "unknown field"),
        ("optimm:\n  lr: 0.1\n", "optimm", "unknown field"),
        ("optim:\n  epochs: five\n", "optim.epochs", "expected an integer >= 1"),
        ("optim:\n  epochs: 2.5\n", "optim.epochs", "got 2.5"),
        ("method:\n  variant: coopp\n", "method.variant", "one of handcrafted"),
        ("method:\n  vga:\n    depth: 0\n", "method.vga.depth", ">= 1"),
        ("method:\n  deterministic: 'yes'\n", "method.deterministic", "true or false"),
        ("data:\n  val_fraction: 1.0\n", "data.val_fraction", "< 1"),
        ("data:\n  shapes:\n    num_classes: 1\n", "data.shapes.num_classes", ">= 2"),
        ("memory: 3\n", "memory", "a mapping"),
        ("memory:\n  policy: per_class\n", "memory.size", "when policy is per_class"),
        ("eval:\n  split: val\n", "eval.split", "val_fraction > 0"),
        ("name: a/b\n", "name", "without '/'"),
    ],
)
def test_bad_yaml_names_file_field_expected_and_got(tmp_path, text, field, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    err = info.value
    message = str(err)
    assert err.field == field
    assert message.startswith(f"{path}: {field}: expected ")
    assert fragment in message
    assert "\n" not in message


def test_every_leaf_field_rejects_a_wrong_type_by_name():
    """Parametrised over the whole config tree: adding a field automatically adds its check."""
    for dotted, _, _, _ in describe_fields(RunConfig):
        data = apply_overrides({}, [f"{dotted}={{bogus: 1}}"], RunConfig)
        with pytest.raises(ConfigError) as info:
            from_mapping(RunConfig, data, "x.yaml")
        assert info.value.field == dotted, dotted


def test_malformed_and_missing_files(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.yaml: line 2: expected valid YAML"):
        load_run_config(write(tmp_path, "a: 1\n  b: [\n"))
    with pytest.raises(ConfigError, match="no such file"):
        load_run_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="<top level>: expected a mapping"):
        load_run_config(write(tmp_path, "- 1\n- 2\n"))


def test_empty_file_gives_defaults(tmp_path):
    assert load_run_config(write(tmp_path, "")) == RunConfig()


def test_overrides_apply_and_validate(tmp_path):
    path = write(tmp_path, "memory:\n  size: 500\n")
    cfg = load_run_config(path, ["memory.policy=per_class", "optim.lr=1e-2", "data.sequence=[imagenet100, cifar100]",
                                 "backbone.pretrained=null"])
    assert cfg.memory.policy == "per_class" and cfg.memory.size == 500
    assert cfg.optim.lr == pytest.approx(1e-2)
    assert cfg.data.sequence == ("imagenet100", "cifar100")
    assert cfg.backbone.pretrained is None
    for override, field in [("memory.size=-1", "memory.size"), ("memroy.size=1", "memroy"),
                            ("method.vga=3", "method.vga"), ("optim.lr.x=1", "optim.lr"),
                            ("seeds.init=true", "seeds.init")]:
        with pytest.raises(ConfigError) as info:
            load_run_config(path, [override])
        assert info.value.source == "--set" and info.value.field == field, override
    with pytest.raises(ConfigError, match="dotted.field=value"):
        load_run_config(path, ["memory.size"])


def test_cross_field_error_from_an_override_names_the_combination(tmp_path):
    path = write(tmp_path, "data:\n  val_fraction: 0.1\neval:\n  split: val\n")
    assert load_run_config(path).eval.split == "val"
    with pytest.raises(ConfigError) as info:
        load_run_config(path, ["data.val_fraction=0"])
    assert info.value.field == "eval.split" and "with --set" in info.value.source


def test_yaml_round_trip_and_hash(tmp_path):
    cfg = load_run_config(None, ["memory.policy=total", "memory.size=1000", "data.sequence=[a, b]"])
    again = load_run_config(write(tmp_path, cfg.to_yaml()))
    assert again == cfg and again.config_hash() == cfg.config_hash()
    renamed = load_run_config(None, ["memory.policy=total", "memory.size=1000", "data.sequence=[a, b]",
                                     "name=other", "output_dir=elsewhere"])
    assert renamed.config_hash() == cfg.config_hash()
    changed = load_run_config(None, ["memory.policy=total", "memory.size=1001", "data.sequence=[a, b]"])
    assert changed.config_hash() != cfg.config_hash()
    assert cfg.run_id() == f"clap4clip-{cfg.config_hash()}"


def test_flatten_has_one_column_per_leaf():
    flat = RunConfig().flatten()
    assert set(flat) == {row[0] for row in describe_fields(RunConfig)}
    assert flat["method.vga.depth"] == 1 and flat["data.sequence"] == []


def test_float_fields_accept_yaml_exponent_strings(tmp_path):
    # PyYAML reads `1e-3` (no dot) as a string; the config must still take it as a number.
    cfg = load_run_config(write(tmp_path, "optim:\n  lr: 1e-3\n"))
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == pytest.approx(1e-3)


def test_constructing_in_python_validates_too():
    from clapray.config import MemoryConfig

    with pytest.raises(ConfigError, match="MemoryConfig: size"):
        MemoryConfig(policy="total", size=-3)


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_run_config_loads(path):
    cfg = load_run_config(path)
    # Every shipped YAML spells only fields that exist; loading it again from its dump is lossless.
    assert from_mapping(RunConfig, yaml.safe_load(cfg.to_yaml()), str(path)) == cfg
