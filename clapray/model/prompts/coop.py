"""CoOp prompts inside CLAP (§3.2).

One learnable context of ``n_ctx`` vectors (text-tower width, init N(0, 0.02^2)), shared by every class and
every task, class token at the end: [SOS][ctx_1..ctx_n][class name][.][EOS]. The prompt strings are
tokenised once as "X X ... X <name>." and the "X" embeddings are replaced by the context.

Every training step re-encodes the prompts of ALL seen classes in one batched pass through the frozen
text tower ([C, L, w] -> [C, d]), so gradients reach the context; evaluation encodes them once per pass.
The context trains in every task and during memory consolidation (§3.2, §11). The head uses the CoOp
settings: VGA with d/64 heads and a LayerNorm inside each adapter head.

Class names: underscores become spaces, as in every other prompt of the method; the released CoOp code
builds its prompts from the raw names ("X .. X sea_lion."), which ``method.prompt.coop_raw_class_names:
true`` reproduces (CoCoOp inherits the choice).

Trainable prompt parameters: n_ctx x text width (12 x 512 = 6,144 for ViT-B/16).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clapray.config import PromptConfig
from clapray.model.prompts.base import PromptText, PromptVariant, init_normal_, register_variant
from clapray.model.prompts.towers import SlotPrompts, TowerDims, encode_text_embeddings
from clapray.model.text_features import class_prompt


def context_prompts(class_names, n_ctx: int, *, raw_names: bool = False) -> list[str]:
    """ "X X ... X <name>." per class: n_ctx placeholder tokens, then the class name (underscores as spaces,
    or kept with ``raw_names``, as the released CoOp code)."""
    placeholders = " ".join(["X"] * n_ctx)
    if raw_names:
        return [f"{placeholders} {name}." for name in class_names]
    return [class_prompt(f"{placeholders} {{}}.", name) for name in class_names]


@register_variant
class CoOpPrompts(PromptVariant):
    name = "coop"

    def __init__(self, backbone, templates, options: PromptConfig):
        super().__init__(backbone, templates, options)
        texts = context_prompts(self.class_names, options.n_ctx, raw_names=options.coop_raw_class_names)
        self.prompts = SlotPrompts(backbone, texts, options.n_ctx, field="method.prompt.n_ctx")

    @classmethod
    def make_parameters(cls, dims: TowerDims, options: PromptConfig) -> nn.Module:
        learned = nn.Module()
        learned.ctx = nn.Parameter(init_normal_(torch.empty(options.n_ctx, dims.text_width)))  # [n_ctx, w]
        return learned

    def text_features(self, num_seen: int, image_features: Tensor | None = None) -> PromptText:
        x, pool = self.prompts.fill(self.learned.ctx, num_seen)  # [C, L, w]
        return PromptText(encode_text_embeddings(self.backbone, x, pool))  # [C, d]
