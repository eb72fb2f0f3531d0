"""Frozen-feature headroom: zero-shot, nearest-class-mean and the linear-probe ceiling, and their command."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from clapray.bench.__main__ import main as bench_main
from clapray.shapes.evaluate import (
    Headroom,
    accuracy,
    headroom,
    linear_probe_logits,
    nearest_class_mean_logits,
    scenario_features,
    scenario_headroom,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_CONFIG = "tiny"  # the shipped tiny random-weight config: seconds, no pretraining
TINY_SCENARIO = ["data.shapes.num_classes=6", "data.num_tasks=2", "data.shapes.train_per_class=10",
                 "data.shapes.test_per_class=4"]


def _clusters(num_classes: int, per_class: int, dim: int, seed: int, *, spread: float = 0.3,
              nuisance: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit features around ``num_classes`` random class directions: ``x [N, d]``, ``y [N]``, centres ``[C, d]``.

    ``nuisance`` adds a large per-image offset along one shared direction, unrelated to the class.
    """
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=g), dim=-1)
    y = torch.arange(num_classes).repeat_interleave(per_class)
    x = centres[y] + spread * torch.randn(len(y), dim, generator=g) / math.sqrt(dim)
    if nuisance:
        x[:, 0] += nuisance * torch.randn(len(y), generator=g)
    return torch.nn.functional.normalize(x, dim=-1), y, centres


def test_zero_shot_is_the_learners_zero_shot_path():
    """Over all classes after the last task, the learner's zeroshot variant scores what the headroom's
    zero-shot scores: the same classifier on the same features, labels and text features."""
    from clapray.config import load_run_config, resolve_config_argument
    from clapray.learner import ContinualLearner

    cfg = load_run_config(resolve_config_argument(TINY_CONFIG),
                          ["method.variant=zeroshot", "data.shapes.num_classes=8", "data.num_tasks=2",
                           "data.shapes.train_per_class=4", "data.shapes.test_per_class=10"])
    learner = ContinualLearner(cfg)
    last = learner.run()[-1]
    result = scenario_headroom(learner.backbone, learner.scenario)
    assert result.num_classes == 8 and result.num_test == 80 and result.num_train == 32
    # Both tasks have 40 evaluation images, so the macro mean over tasks is the accuracy over all images.
    assert result.zero_shot_acc == pytest.approx(last.last_acc, abs=1e-6)


def test_scenario_features_label_every_image_with_its_own_class():
    """Labels and text rows follow the scenario's class order, not the benchmark's (a random-weight
    backbone predicts one class for every image, so accuracies alone could not tell)."""
    from clapray.builders import build_backbone, build_scenario_from_config
    from clapray.config import load_run_config, resolve_config_argument
    from clapray.model.text_features import template_text_features

    cfg = load_run_config(resolve_config_argument(TINY_CONFIG), TINY_SCENARIO)
    backbone, scenario = build_backbone(cfg), build_scenario_from_config(cfg)
    assert scenario.class_names != scenario.benchmark.class_names  # the class order is shuffled
    f = scenario_features(backbone, scenario)
    assert f.class_names == scenario.class_names
    for split, indices, labels in ((scenario.benchmark.train, f.train_indices, f.train_y),
                                   (scenario.eval_split, f.test_indices, f.test_y)):
        assert sorted(labels.tolist()) == sorted(np.repeat(np.arange(6), len(labels) // 6).tolist())
        for i, label in zip(indices.tolist(), labels.tolist(), strict=True):
            assert split.attributes(i).class_name == f.class_names[label]
    own = template_text_features(backbone, [f.class_names[4]], scenario.benchmark.templates).mean.cpu()
    torch.testing.assert_close(f.text_features[4:5], own)
    k = len(f.test_indices) - 1
    image = backbone.preprocess(scenario.eval_split[int(f.test_indices[k])][0])[None]
    torch.testing.assert_close(f.test_x[k:], backbone.encode_images(image).cpu())


def test_probe_learns_separable_features_that_zero_shot_misses():
    train_x, train_y, centres = _clusters(5, 30, 16, seed=0)
    test_x, test_y = _clusters_like(centres, 20, seed=1)
    # Text features pointing elsewhere (a permutation of the class directions): zero-shot is wrong.
    wrong_text = centres.roll(1, dims=0)
    result = headroom(train_x, train_y, test_x, test_y, wrong_text, 100.0)
    assert isinstance(result, Headroom)
    assert (result.num_classes, result.num_train, result.num_test) == (5, 150, 100)
    assert result.linear_probe_acc >= 95.0 and result.ncm_acc >= 95.0, result
    assert result.zero_shot_acc <= 10.0, result
    assert result.chance_acc == 20.0
    # With the right text features zero-shot is as good: the same classifier, other weights.
    assert headroom(train_x, train_y, test_x, test_y, centres, 100.0).zero_shot_acc >= 95.0


def _clusters_like(centres: torch.Tensor, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(len(centres)).repeat_interleave(per_class)
    x = centres[y] + 0.3 * torch.randn(len(y), centres.shape[1], generator=g) / math.sqrt(centres.shape[1])
    return torch.nn.functional.normalize(x, dim=-1), y


def test_probe_beats_class_means_when_a_nuisance_direction_dominates():
    """Classes that differ in small directions under a large shared nuisance: a probe learns to ignore it."""
    g = torch.Generator().manual_seed(0)
    dim, per_class = 8, 40

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(4).repeat_interleave(n)
        x = torch.zeros(len(y), dim)
        x[:, 0] = 5.0 * torch.randn(len(y), generator=g)  # nuisance, shared by all classes
        x[torch.arange(len(y)), 1 + y] = 0.5  # the class signal
        x[:, 1:] += 0.05 * torch.randn(len(y), dim - 1, generator=g)
        return x, y

    train_x, train_y = sample(per_class)
    test_x, test_y = sample(25)
    probe, wd = linear_probe_logits(train_x, train_y, test_x, 4)
    ncm = nearest_class_mean_logits(train_x, train_y, test_x, 4)
    assert probe.shape == ncm.shape == (100, 4)
    assert accuracy(probe, test_y) >= 95.0 > accuracy(ncm, test_y) + 20.0
    assert wd > 0


def test_probe_is_deterministic_and_uses_only_training_labels():
    train_x, train_y, centres = _clusters(4, 25, 12, seed=3, spread=1.5)
    test_x, test_y = _clusters_like(centres, 10, seed=4)
    first, wd = linear_probe_logits(train_x, train_y, test_x, 4)
    again, wd_again = linear_probe_logits(train_x, train_y, test_x, 4)
    assert torch.equal(first, again) and wd == wd_again
    # Permuting the test set permutes the logits and nothing else.
    perm = torch.randperm(len(test_x), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(linear_probe_logits(train_x, train_y, test_x[perm], 4)[0], first[perm])


def test_headroom_command_on_a_tiny_random_model(capsys):
    assert bench_main(["headroom", TINY_CONFIG, *[f"--set={o}" for o in TINY_SCENARIO]]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("shapes: 6 classes in 2 tasks, 60 training / 24 evaluation images; "
                               "clapray-tiny-vit (random weights)"), lines[0]
    rows = [re.match(r"(\S+(?: \S+)?) +([-+]?[\d.]+)(%| points)", line) for line in lines[1:]]
    assert all(rows), lines
    values = {row[1]: float(row[2]) for row in rows}
    assert list(values) == ["chance", "zero-shot", "nearest-class-mean", "linear probe", "headroom"], lines
    assert values["chance"] == pytest.approx(100 / 6, abs=0.05)
    for name in ("zero-shot", "nearest-class-mean", "linear probe"):
        assert 0.0 <= values[name] <= 100.0, lines
    assert values["headroom"] == pytest.approx(values["linear probe"] - values["zero-shot"], abs=0.11)


def test_headroom_command_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["headroom", TINY_CONFIG, "--set", "data.num_tasks=0"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "data.num_tasks" in err
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["headroom", "no-such-config"])
    assert exit_info.value.code == 2 and "no-such-config" in capsys.readouterr().err
