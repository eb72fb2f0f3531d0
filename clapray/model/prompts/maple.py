"""MaPLe prompts inside CLAP (§3.3, §19): multimodal deep prompts coupled text -> vision.

Text side: ``maple_length`` (n, default 2) learnable context tokens right after the start token. With
n <= 4 they start from the embeddings of the first n words of "a photo of a" and the prompt reads
"a photo of a <name>." (MaPLe's construction: [SOS][ctx_1][ctx_2]["of a <name>."][EOS]); with n > 4 they
start from N(0, 0.02^2) and the prompt is "X .. X <name>.".

Deep prompts: depth J (``maple_depth``, default 9, capped at the layer count of the shallower tower):
J - 1 further sets of n text tokens (N(0, 0.02^2)) replace the context positions at the input of text
blocks 1..J-1 (block 0 sees the shallow context).

Vision side, through coupling functions Linear(text width -> vision width), both read from the model:
``proj`` maps the shallow context to n visual tokens appended after the patch tokens before ``ln_pre``;
J - 1 more coupling layers (initialised as copies of one layer, like MaPLe's clones) map the deep text
prompts to the visual tokens that replace those n positions at the input of vision blocks 1..J-1.

The image embeddings therefore depend on the prompts: ``image_tower_frozen`` is false, the image tower
runs with autograd in training (expensive) and no feature cache applies.

Training (§3.3 quirk, P14): by default everything above trains, as MaPLe intends. The released CLAP4CLIP
code selects trainable parameters by name and so leaves the deep prompts and all coupling layers at their
random init (only the shallow context learns; the visual shallow prompt is proj(ctx) through a frozen
random projection); ``method.prompt.maple_official_untrained: true`` reproduces that. Prompts train in
every task and during consolidation. Head settings: VGA d/64 heads, a LayerNorm in each adapter head.

Evaluation quirk: the released test path re-encodes the prompts and feeds the text features to VGA and the
adapters without L2-normalising them (training normalises); ``method.prompt.maple_unnormalised_eval_text:
true`` reproduces that in evaluation and exemplar selection (the modules in eval mode).

Trainable prompt parameters, ViT-B/16 (w = 512, vision 768, J = 9, n = 2): 2 x 512 + 8 x 2 x 512 +
9 x (512 x 768 + 768) = 3,555,072; with the official flag 1,024.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor, nn

from clapray.config import PromptConfig
from clapray.errors import UserError
from clapray.model.prompts.base import PromptText, PromptVariant, init_normal_, register_variant
from clapray.model.prompts.towers import (
    SlotPrompts,
    TowerDims,
    check_prompted_vision,
    encode_images_with_prompts,
    encode_text_embeddings,
)
from clapray.model.text_features import class_prompt

logger = logging.getLogger(__name__)

CONTEXT_INIT = "a photo of a"
CONTEXT_INIT_WORDS = 4  # tokens of CONTEXT_INIT: MaPLe initialises from it only when n_ctx <= 4


def effective_depth(dims: TowerDims, options: PromptConfig) -> int:
    """J, capped at the number of blocks of the shallower tower (a tiny test model has 2)."""
    if dims.vision_layers is None or dims.vision_width is None:
        raise UserError("method.variant: maple needs a transformer image tower (ViT)")
    return min(options.maple_depth, dims.text_layers, dims.vision_layers)


@register_variant
class MaplePrompts(PromptVariant):
    name = "maple"

    def __init__(self, backbone, templates, options: PromptConfig):
        check_prompted_vision(backbone)
        super().__init__(backbone, templates, options)
        n = options.maple_length
        self.depth = effective_depth(self.dims, options)
        if self.depth < options.maple_depth:
            logger.info("maple: prompt depth %d capped at %d, the layer count of %s", options.maple_depth,
                        self.depth, backbone.model_name)
        if n <= CONTEXT_INIT_WORDS:
            texts = [class_prompt(f"{CONTEXT_INIT} {{}}.", name) for name in self.class_names]
        else:
            texts = [class_prompt(" ".join(["X"] * n) + " {}.", name) for name in self.class_names]
        self.prompts = SlotPrompts(backbone, texts, n, field="method.prompt.maple_length")
        if n <= CONTEXT_INIT_WORDS:
            with torch.no_grad():
                self.learned.ctx.copy_(self.prompts.slots[0])  # the embeddings of "a photo" (n = 2)

    @classmethod
    def make_parameters(cls, dims: TowerDims, options: PromptConfig) -> nn.Module:
        n, depth = options.maple_length, effective_depth(dims, options)
        learned = nn.Module()
        learned.ctx = nn.Parameter(init_normal_(torch.empty(n, dims.text_width)))  # [n, w]
        learned.deep_text = nn.ParameterList(
            [nn.Parameter(init_normal_(torch.empty(n, dims.text_width))) for _ in range(depth - 1)])  # J-1 x [n, w]
        learned.proj = nn.Linear(dims.text_width, dims.vision_width)  # shallow coupling
        single = nn.Linear(dims.text_width, dims.vision_width)
        learned.deep_proj = nn.ModuleList([copy.deepcopy(single) for _ in range(depth - 1)])
        return learned

    @classmethod
    def learned_subset(cls, learned: nn.Module, options: PromptConfig) -> list[nn.Parameter]:
        if options.maple_official_untrained:
            return [learned.ctx]
        return list(learned.parameters())

    def visual_prompts(self) -> tuple[Tensor, list[Tensor]]:
        """Shallow [n, vw] and deep (J-1 x [n, vw]) visual prompts, coupled from the text prompts."""
        learned = self.learned
        deep = [proj(p) for proj, p in zip(learned.deep_proj, learned.deep_text, strict=False)]
        return learned.proj(learned.ctx), deep

    def encode_images(self, images: Tensor) -> Tensor:
        """The prompted image tower [B, 3, S, S] -> [B, d]; with autograd when it is enabled (training)."""
        shallow, deep = self.visual_prompts()
        return encode_images_with_prompts(self.backbone, images, shallow, deep)

    def text_features(self, num_seen: int, image_features: Tensor | None = None) -> PromptText:
        x, pool = self.prompts.fill(self.learned.ctx, num_seen)  # [C, L, w]
        normalize = self.training or not self.options.maple_unnormalised_eval_text
        return PromptText(encode_text_embeddings(self.backbone, x, pool, deep=list(self.learned.deep_text),
                                                 normalize=normalize))
