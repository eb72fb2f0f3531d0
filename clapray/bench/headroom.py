"""``python -m clapray.bench headroom``: how much room a scenario's frozen features leave a learner.

Loads the backbone a run config names (default: the shipped ``shapes_cl``, i.e. the mini-CLIP, pretrained
on first use and cached), builds that config's scenario and prints, over all its classes at once, the
zero-shot accuracy (template-ensemble text features, argmax), the ceiling of a linear probe trained
offline on the frozen features of every task's training images, nearest-class-mean and chance
(:mod:`clapray.shapes.evaluate`). A method that learns heads on frozen features, CLAP4CLIP among them,
can only show a gain over zero-shot where the probe is well above it.

    python -m clapray.bench headroom
    python -m clapray.bench headroom --set data.shapes.seed=1 --set seeds.class_order=1
    python -m clapray.bench headroom my.yaml
"""

from __future__ import annotations

import argparse
import time

DESCRIPTION = "frozen-feature headroom of a scenario: zero-shot against a linear-probe ceiling and class means"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default="shapes_cl",
                        help="run YAML, or a shipped config name (default shapes_cl)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field, repeatable (e.g. data.shapes.seed=1)")


def main(args: argparse.Namespace) -> int:
    from clapray.builders import build_backbone, build_scenario_from_config, resolve_device
    from clapray.config import load_run_config, resolve_config_argument
    from clapray.shapes.evaluate import scenario_headroom

    cfg = load_run_config(resolve_config_argument(args.config), args.overrides)
    device = resolve_device(cfg)
    backbone = build_backbone(cfg, device)
    scenario = build_scenario_from_config(cfg)
    start = time.perf_counter()
    result = scenario_headroom(backbone, scenario)
    weights = cfg.backbone.pretrained or "random weights"
    print(f"{cfg.data.dataset}: {result.num_classes} classes in {scenario.num_tasks} tasks, {result.num_train} "
          f"training / {result.num_test} evaluation images; {cfg.backbone.model} ({weights}), frozen features "
          f"({time.perf_counter() - start:.1f}s)")
    for line in result.lines():
        print(line)
    return 0
