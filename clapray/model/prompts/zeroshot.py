"""Continual-CLIP, the zero-shot reference row of every table (§20, ``classifier/zero_shot.py``).

The frozen CLIP with the hand-crafted template-ensemble text features: logits s * <x̂, t_c> over the seen
classes (:func:`zero_shot_logits`, the one zero-shot classifier of clapray: the learner's headless path and
the mini-CLIP's own evaluation both use it). It trains nothing: the learner builds no head for it and skips
training, memory and consolidation.
"""

from __future__ import annotations

from torch import Tensor

from clapray.model.prompts.base import register_variant
from clapray.model.prompts.handcrafted import HandcraftedPrompts


def zero_shot_logits(image_features: Tensor, text_features: Tensor, logit_scale: float) -> Tensor:
    """Zero-shot CLIP logits ``[N, C] = s * X T^T`` of L2-normalised image features ``X`` [N, d] against
    L2-normalised class text features ``T`` [C, d]."""
    return logit_scale * image_features @ text_features.T


@register_variant
class ZeroShot(HandcraftedPrompts):
    name = "zeroshot"
