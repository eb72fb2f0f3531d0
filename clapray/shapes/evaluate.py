"""Feature quality of a frozen (mini-)CLIP: zero-shot, nearest-class-mean and a linear-probe ceiling.

Three classifiers on the same frozen image features say how much room a benchmark leaves a method that
learns on top of them:

* **zero-shot**: the template-ensemble text feature of every class, the classifier of the learner's
  zero-shot variant (:func:`clapray.model.prompts.zeroshot.zero_shot_logits`);
* **nearest-class-mean**: the normalised mean training feature of every class;
* **linear probe**: multinomial logistic regression with an L2 penalty, trained offline on the training
  features of all classes at once (its strength picked on a held-out fifth of them). No head that sees
  only these features and the same training images is expected to beat it by much, so the gap between
  it and zero-shot is the headroom a continual learner can show.

:func:`evaluate` measures the first two on the held-out continual classes (what ``python -m
clapray.pretrain`` prints); :func:`scenario_headroom` measures all three on a class-incremental scenario
(what ``python -m clapray.bench headroom`` prints).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clapray.model.backbone import Backbone
from clapray.model.prompts.zeroshot import zero_shot_logits
from clapray.model.text_features import template_text_features
from clapray.shapes.benchmark import CONTINUAL_CLASSES, build_shapes

PROBE_WEIGHT_DECAYS: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2)
"""L2 strengths the linear probe chooses from (penalty ``wd * ||W||^2`` on the mean cross-entropy)."""

_PROBE_HOLDOUT = 5  # every 5th training image of a class validates the L2 strength


# --------------------------------------------------------------------------------------------------
# Classifiers on frozen features


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in percent of ``logits [N, C]`` against ``labels [N]``."""
    return 100.0 * logits.argmax(dim=1).eq(labels).float().mean().item()


def nearest_class_mean_logits(train_x: Tensor, train_y: Tensor, test_x: Tensor, num_classes: int) -> Tensor:
    """Cosine to the normalised mean training feature of each class: ``[M, C]`` for ``test_x [M, d]``."""
    sums = torch.zeros(num_classes, train_x.shape[1], dtype=train_x.dtype).index_add_(0, train_y, train_x)
    return F.normalize(test_x, dim=-1) @ F.normalize(sums, dim=-1).T


def fit_linear_probe(x: Tensor, y: Tensor, num_classes: int, weight_decay: float, *,
                     max_iter: int = 300) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression ``x W + b`` by full-batch L-BFGS; returns ``W [d, C]``, ``b [C]``.

    Minimises ``mean CE + weight_decay * ||W||^2`` in float64 from zeros: deterministic, and the
    problem is convex, so the optimiser's path does not matter.
    """
    x64, y64 = x.double(), y.long()
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(x64 @ weight + bias, y64) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return weight.detach(), bias.detach()


def linear_probe_logits(train_x: Tensor, train_y: Tensor, test_x: Tensor, num_classes: int, *,
                        weight_decays: Sequence[float] = PROBE_WEIGHT_DECAYS) -> tuple[Tensor, float]:
    """Logits ``[M, C]`` of a linear probe trained on ``train_x [N, d]``, and the L2 strength it chose.

    The strength is the one of ``weight_decays`` with the best accuracy on every fifth training image of
    each class after fitting on the rest (ties: the stronger penalty); the probe is then refitted on all
    training images. Only training images are used to choose, so the test accuracy is honest.
    """
    if len(weight_decays) == 0:
        raise ValueError("weight_decays is empty")
    x, test = train_x.double(), test_x.double()
    chosen = float(weight_decays[0])
    if len(weight_decays) > 1:
        rank = _rank_within_class(train_y)
        held = torch.from_numpy(rank % _PROBE_HOLDOUT == _PROBE_HOLDOUT - 1)
        if held.any() and (~held).any():
            scores = []
            for wd in weight_decays:
                weight, bias = fit_linear_probe(x[~held], train_y[~held], num_classes, wd)
                scores.append((accuracy(x[held] @ weight + bias, train_y[held]), wd))
            chosen = float(max(scores, key=lambda s: (s[0], s[1]))[1])
    weight, bias = fit_linear_probe(x, train_y, num_classes, chosen)
    return (test @ weight + bias).float(), chosen


def _rank_within_class(labels: Tensor) -> np.ndarray:
    """Position of every image among the images of its class, in index order: ``[N]`` int."""
    y = labels.numpy()
    rank = np.zeros(len(y), dtype=np.int64)
    for c in np.unique(y):
        where = np.flatnonzero(y == c)
        rank[where] = np.arange(len(where))
    return rank


# --------------------------------------------------------------------------------------------------
# Headroom on a scenario


@dataclasses.dataclass(frozen=True)
class Headroom:
    """Accuracies (%) over all classes of a scenario at once, on frozen image features.

    Attributes:
        num_classes: classes (chance is ``100 / num_classes``).
        num_train: training images the probe and the class means were fitted on.
        num_test: evaluation images.
        zero_shot_acc: template-ensemble text features, argmax.
        ncm_acc: nearest normalised class-mean training feature.
        linear_probe_acc: the linear probe (a ceiling for heads on these features).
        probe_weight_decay: the probe's L2 strength (chosen on training images).
    """

    num_classes: int
    num_train: int
    num_test: int
    zero_shot_acc: float
    ncm_acc: float
    linear_probe_acc: float
    probe_weight_decay: float

    @property
    def chance_acc(self) -> float:
        return 100.0 / self.num_classes

    def lines(self) -> list[str]:
        """A few lines for humans."""
        return [
            f"chance              {self.chance_acc:5.1f}%",
            f"zero-shot           {self.zero_shot_acc:5.1f}%  (template-ensemble text features, argmax)",
            f"nearest-class-mean  {self.ncm_acc:5.1f}%  (normalised mean training feature per class)",
            f"linear probe        {self.linear_probe_acc:5.1f}%  (logistic regression on all {self.num_train} "
            f"training images, L2 {self.probe_weight_decay:g})",
            f"headroom            {self.linear_probe_acc - self.zero_shot_acc:+5.1f} points (probe - zero-shot)",
        ]


def headroom(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, text_features: Tensor,
             logit_scale: float) -> Headroom:
    """Zero-shot, nearest-class-mean and linear-probe accuracy from features.

    Args:
        train_x, train_y: ``[N, d]`` training image features and their labels ``[N]`` in ``[0, C)``.
        test_x, test_y: ``[M, d]`` evaluation image features and labels ``[M]``.
        text_features: ``[C, d]`` one (template-ensemble) text feature per class, in label order.
        logit_scale: the model's ``s`` (does not change the zero-shot argmax; kept for the same logits).
    """
    num_classes = int(text_features.shape[0])
    zero_shot = accuracy(zero_shot_logits(test_x, text_features, logit_scale), test_y)
    ncm = accuracy(nearest_class_mean_logits(train_x, train_y, test_x, num_classes), test_y)
    probe_logits, wd = linear_probe_logits(train_x, train_y, test_x, num_classes)
    return Headroom(num_classes=num_classes, num_train=len(train_y), num_test=len(test_y),
                    zero_shot_acc=zero_shot, ncm_acc=ncm, linear_probe_acc=accuracy(probe_logits, test_y),
                    probe_weight_decay=wd)


def encode_images(backbone: Backbone, split: Any, indices: Sequence[int] | None = None, *,
                  batch_size: int = 512) -> Tensor:
    """Frozen features ``[N, d]`` of ``split[i]`` for ``i`` in ``indices`` (all images by default)."""
    order = range(len(split)) if indices is None else [int(i) for i in indices]
    features = []
    chunk: list[Tensor] = []
    for i in order:
        chunk.append(backbone.preprocess(split[i][0]))
        if len(chunk) == batch_size:
            features.append(backbone.encode_images(torch.stack(chunk)).cpu())
            chunk = []
    if chunk:
        features.append(backbone.encode_images(torch.stack(chunk)).cpu())
    return torch.cat(features) if features else torch.empty(0, backbone.embed_dim)


@dataclasses.dataclass(frozen=True, eq=False)
class ScenarioFeatures:
    """The frozen features of a scenario's images and classes, labels in the scenario's class order.

    Attributes:
        train_indices, test_indices: the images' indices into the training and the evaluation split.
        train_x, test_x: ``[N, d]`` and ``[M, d]`` L2-normalised image features of those images.
        train_y, test_y: ``[N]`` and ``[M]`` labels, positions in ``class_names``.
        text_features: ``[C, d]`` template-ensemble text feature of every class, in ``class_names`` order.
        class_names: the scenario's classes, in its (task) order.
        logit_scale: the backbone's ``s``.
    """

    train_indices: np.ndarray
    test_indices: np.ndarray
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    text_features: Tensor
    class_names: tuple[str, ...]
    logit_scale: float


def scenario_features(backbone: Backbone, scenario: Any) -> ScenarioFeatures:
    """Every task's training images (validation images excluded) and evaluation images, encoded.

    Labels are the scenario's (remapped) ones and the text features come from the benchmark's templates,
    as the learner's zero-shot variant makes them.
    """
    tasks = range(scenario.num_tasks)
    train_idx = np.concatenate([scenario.train_indices(t) for t in tasks])
    test_idx = np.concatenate([scenario.eval_indices(t) for t in tasks])
    text = template_text_features(backbone, scenario.class_names, scenario.benchmark.templates).mean.cpu()
    return ScenarioFeatures(
        train_indices=train_idx, test_indices=test_idx,
        train_x=encode_images(backbone, scenario.benchmark.train, train_idx),
        train_y=torch.from_numpy(np.asarray(scenario.train_targets)[train_idx]),
        test_x=encode_images(backbone, scenario.eval_split, test_idx),
        test_y=torch.from_numpy(np.asarray(scenario.eval_targets)[test_idx]),
        text_features=text, class_names=tuple(scenario.class_names), logit_scale=backbone.logit_scale,
    )


def scenario_headroom(backbone: Backbone, scenario: Any) -> Headroom:
    """:func:`headroom` on a class-incremental scenario, all its tasks' classes together
    (:func:`scenario_features`)."""
    f = scenario_features(backbone, scenario)
    return headroom(f.train_x, f.train_y, f.test_x, f.test_y, f.text_features, f.logit_scale)


# --------------------------------------------------------------------------------------------------
# The mini-CLIP's own evaluation on the held-out classes


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Feature quality of a backbone on the continual classes' ``shapes`` images.

    Attributes:
        num_classes: classes evaluated (chance is ``1 / num_classes``).
        zero_shot_acc: top-1 accuracy (%) of test images against the mean template text features.
        mean_cosine: mean cosine similarity between image features of different classes.
        ncm_acc: top-1 accuracy (%) of test images against the (normalised) mean train image feature
            of each class: how separable the frozen image features are.
    """

    num_classes: int
    zero_shot_acc: float
    mean_cosine: float
    ncm_acc: float

    def summary(self) -> str:
        """One line for humans."""
        return (f"{self.num_classes} classes (chance {100 / self.num_classes:.1f}%): zero-shot "
                f"{self.zero_shot_acc:.1f}%, nearest-class-mean {self.ncm_acc:.1f}%, mean cosine "
                f"between classes {self.mean_cosine:.3f}")


def evaluate(
    backbone: Backbone,
    classes: Sequence[str] = CONTINUAL_CLASSES,
    *,
    train_per_class: int = 20,
    test_per_class: int = 20,
    image_size: int = 64,
    seed: int = 0,
) -> Evaluation:
    """Zero-shot, nearest-class-mean and inter-class cosine on a ``shapes`` benchmark of ``classes``.

    The benchmark is built exactly as a continual run builds it (same templates, same images for the
    same seed and size) and fed through the backbone's own eval preprocessing.
    """
    bench = build_shapes(Path("."), classes=list(classes), train_per_class=train_per_class,
                         test_per_class=test_per_class, image_size=image_size, seed=seed)
    test_x, test_y = encode_images(backbone, bench.test), torch.as_tensor(bench.test.targets)  # [N, d], [N]
    train_x, train_y = encode_images(backbone, bench.train), torch.as_tensor(bench.train.targets)
    text = template_text_features(backbone, bench.class_names, bench.templates).mean.cpu()  # [C, d]
    num_classes = len(bench.class_names)
    zero_shot = accuracy(zero_shot_logits(test_x, text, backbone.logit_scale), test_y)
    ncm = accuracy(nearest_class_mean_logits(train_x, train_y, test_x, num_classes), test_y)

    sims = test_x @ test_x.T  # [N, N]
    other = test_y.view(-1, 1) != test_y.view(1, -1)
    mean_cosine = sims[other].mean().item()
    return Evaluation(num_classes=num_classes, zero_shot_acc=zero_shot, mean_cosine=mean_cosine, ncm_acc=ncm)
