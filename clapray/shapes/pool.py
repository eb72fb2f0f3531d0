"""What the mini-CLIP is pretrained on: the pretraining classes and the pre-rendered image-caption pool.

The class split (:func:`clapray.shapes.benchmark.split_classes`) keeps the evaluation honest: no
continual class is ever named in a caption or drawn in a pretraining image. Every colour and every shape
still occurs in pretraining, through other combinations, so zero-shot accuracy on the continual classes
measures compositional transfer ("red" and "triangle" were seen, "red triangle" was not).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from clapray.shapes.attributes import COLOURS, SHAPES, all_shape_classes, sample_attributes, shape_class
from clapray.shapes.benchmark import CONTINUAL_CLASSES, PRETRAIN_CLASSES
from clapray.shapes.captions import caption_variant, compose_caption, mentions_shape
from clapray.shapes.render import render_shape

if TYPE_CHECKING:
    from clapray.shapes.pretrain import PretrainSettings

# Patterned variants ("striped red triangle") of the pretraining combinations only: a patterned
# variant of a held-out combination would put its class phrase into the captions.
def _patterned_variants(plain: Sequence[str]) -> tuple[str, ...]:
    wanted = set(plain)
    return tuple(name for name in all_shape_classes()
                 if (c := shape_class(name)).pattern != "plain" and f"{c.colour} {c.shape}" in wanted)


PATTERNED_PRETRAIN_CLASSES: tuple[str, ...] = _patterned_variants(PRETRAIN_CLASSES)


def continual_classes() -> tuple[str, ...]:
    """The held-out continual-learning classes (:data:`CONTINUAL_CLASSES`)."""
    return CONTINUAL_CLASSES


def pretrain_classes(patterned: bool = False) -> tuple[str, ...]:
    """The pretraining classes; with ``patterned``, their striped/dotted/checkered variants follow."""
    return PRETRAIN_CLASSES + (PATTERNED_PRETRAIN_CLASSES if patterned else ())


# --------------------------------------------------------------------------------------------------
# Data


# Pretraining images use their own generator seed, so even if someone builds a benchmark from the
# pretraining classes, its images (seed 0, 1, ...) are not the ones pretrained on.
_IMAGE_SEED_OFFSET = 1_000_003


@dataclasses.dataclass(frozen=True, eq=False)
class Pool:
    """Pre-rendered pretraining pairs: images as model input, captions as token ids.

    Attributes:
        images: uint8 ``[N, 3, S, S]`` at the model's input size.
        tokens: int64 ``[N, L]``, cut after the longest caption's end token (see :func:`encode_text`).
        captions: the N caption strings.
        class_names: the class of each pair.
        shape_ids, colour_ids: int64 ``[N]``, each image's shape and colour as positions in
            :data:`~clapray.shapes.attributes.SHAPES` and :data:`~clapray.shapes.attributes.COLOURS`.
    """

    images: Tensor
    tokens: Tensor
    captions: tuple[str, ...]
    class_names: tuple[str, ...]
    shape_ids: Tensor
    colour_ids: Tensor

    def __len__(self) -> int:
        return len(self.captions)


def render_pool(
    settings: PretrainSettings, image_size: int, tokenizer: Callable[[list[str]], Tensor]
) -> Pool:
    """Render every pretraining image once, compose its caption and tokenize it."""
    classes = pretrain_classes(settings.patterned)
    image_seed = _IMAGE_SEED_OFFSET + settings.seed
    n = len(classes) * settings.images_per_class
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    captions: list[str] = []
    names: list[str] = []
    i = 0
    for name in classes:
        for k in range(settings.images_per_class):
            attrs = sample_attributes(image_seed, "train", name, k)
            image = render_shape(attrs, settings.render_size)
            if settings.render_size != image_size:
                # The same resampling as open_clip's eval transform (bicubic, PIL), so pretraining
                # inputs match what a continual run feeds the frozen tower.
                image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
            images[i] = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
            name_shape = mentions_shape(image_seed, name, k, settings.shape_mention_rate)
            captions.append(compose_caption(attrs, caption_variant(image_seed, name, k), name_shape=name_shape))
            names.append(name)
            i += 1
    tokens = tokenizer(captions)
    # Text positions after the end token cannot influence it (causal mask): drop the all-padding tail.
    length = int(tokens.argmax(dim=-1).max()) + 1
    shapes, colours = list(SHAPES), list(COLOURS)
    shape_ids = torch.tensor([shapes.index(shape_class(n).shape) for n in names], dtype=torch.int64)
    colour_ids = torch.tensor([colours.index(shape_class(n).colour) for n in names], dtype=torch.int64)
    return Pool(images=images, tokens=tokens[:, :length].contiguous(), captions=tuple(captions),
                class_names=tuple(names), shape_ids=shape_ids, colour_ids=colour_ids)

