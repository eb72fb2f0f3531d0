"""``shapes_cl``: the continual-learning half of the shapes family, never captioned in pretraining.

The mini-CLIP of :mod:`clapray.pretrain` learns colours and shapes from captions of one set of
colour x shape combinations; this benchmark draws its classes from the other, disjoint set, so a
zero-shot accuracy above chance on it is transfer to unseen combinations, as with real CLIP on a
downstream dataset. Default: 50 classes, 10 tasks of 5, 100 training and 40 test images per class
(2,000 test images: one image is 0.05 points, so differences of a few points are measurable).

The split (:func:`split_classes`) lives here rather than in the pretraining module so the data layer
can name the continual classes without importing the model code.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from clapray.data.base import Benchmark, BenchmarkShape, register_benchmark
from clapray.data.shapes import COLOURS, SHAPES, all_shape_classes, build_shapes, checked_shapes_options
from clapray.errors import ConfigError

DEFAULT_NUM_CLASSES = 50
DEFAULT_TEST_PER_CLASS = 40


def split_classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(continual, pretraining) class names, both in canonical order.

    The canonical enumeration walks the colour x shape grid in diagonals of 12 classes, each holding
    every colour and every shape once. The first five diagonals (60 classes) are held out for continual
    learning: each colour is held out with five shapes and seen in pretraining with the other seven,
    and likewise each shape. Being a prefix of the canonical list, they also contain the default
    ``shapes`` benchmark (its first 50 classes), so zero-shot on that is transfer too.
    """
    plain = all_shape_classes(len(COLOURS) * len(SHAPES))
    held_out = 5 * len(SHAPES)
    return tuple(plain[:held_out]), tuple(plain[held_out:])


CONTINUAL_CLASSES, PRETRAIN_CLASSES = split_classes()
"""Names of the continual-learning classes (60) and the pretraining classes (84), canonical order."""


def _check_num_classes(num_classes: object) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 2 <= num_classes <= len(
            CONTINUAL_CLASSES):
        raise ConfigError("shapes_cl", "num_classes", f"an integer in [2, {len(CONTINUAL_CLASSES)}] (the classes "
                          "held out from pretraining)", num_classes)
    return num_classes


def _shapes_cl_shape(*, num_classes: int = DEFAULT_NUM_CLASSES, **options) -> BenchmarkShape:
    checked_shapes_options(classes=CONTINUAL_CLASSES[:_check_num_classes(num_classes)], **options)
    return BenchmarkShape(num_classes=num_classes, default_num_tasks=10, generated=True)


@register_benchmark("shapes_cl", shape=_shapes_cl_shape)
def build_shapes_cl(
    root: Path,
    *,
    num_classes: int = DEFAULT_NUM_CLASSES,
    train_per_class: int = 100,
    test_per_class: int = DEFAULT_TEST_PER_CLASS,
    image_size: int = 64,
    seed: int = 0,
    cache: bool = False,
) -> Benchmark:
    """The first ``num_classes`` (at most 60) held-out classes as a ``shapes`` benchmark."""
    classes = CONTINUAL_CLASSES[:_check_num_classes(num_classes)]
    bench = build_shapes(root, classes=classes, train_per_class=train_per_class,
                         test_per_class=test_per_class, image_size=image_size, seed=seed, cache=cache)
    return dataclasses.replace(bench, name="shapes_cl")
