"""Continual-CLIP, the zero-shot reference row of every table (§20, ``classifier/zero_shot.py``).

The frozen CLIP with the hand-crafted template-ensemble text features: logits s * <x̂, t_c> over the seen
classes. It trains nothing: the learner builds no head for it and skips training, memory and
consolidation; ``python -m clapray.run`` keeps its faster path (:mod:`clapray.zeroshot`, every evaluation
image encoded once), and sweeps run it through the learner like any variant.
"""

from __future__ import annotations

from clapray.model.prompts.base import register_variant
from clapray.model.prompts.handcrafted import HandcraftedPrompts


@register_variant
class ZeroShot(HandcraftedPrompts):
    name = "zeroshot"
