"""Hand-crafted prompts (base CLAP, §3.1).

t_c = normalize(mean_k f_t(template_k(name_c))): the template ensemble, encoded once per run by the frozen
text tower (the learner's template features). No prompt parameter: only the head (VGA and adapters) learns.
"""

from __future__ import annotations

from torch import Tensor

from clapray.model.prompts.base import PromptText, PromptVariant, register_variant


@register_variant
class HandcraftedPrompts(PromptVariant):
    name = "handcrafted"

    def text_features(self, num_seen: int, image_features: Tensor | None = None) -> PromptText:
        return PromptText(self.template_text[:num_seen])  # [C, d]
