"""CoCoOp prompts inside CLAP: CoOp's context conditioned on each image by a meta-net.

No released or compiled CLAP4CLIP variant has a meta-net (§3.5); this module defines the combination:

1. Context: ``n_ctx`` learnable vectors v_1..v_n (text-tower width w, init N(0, 0.02^2)), the CoOp context of
   §3.2, class token at the end: [SOS][v_1(x)..v_n(x)][class name][.][EOS].
2. Meta-net (CoCoOp's design): a two-layer bottleneck on the image's L2-normalised frozen embedding x̂
   (dim d): Linear(d, d / r) -> ReLU -> Linear(d / r, w), r = ``cocoop_reduction`` (16). Its output
   pi(x̂) [w] is added to every context vector: v_m(x) = v_m + pi(x̂).
3. Per-image text features: t_{b,c} = normalize(f_t(prompt_c(x_b))), [B, C, d], from ONE batched pass of
   B x C prompts through the frozen text tower (no loop over images).
4. CLAP on top, per image: the VGA queries are image b's own text features, h_{b,c} = t_{b,c} +
   VGA(T_b, X)_c (with ``vga.context: batch`` every image's queries attend over the whole batch, as the
   official VGA does; with ``image`` over x_b only). The task-specific adapters read h_{b,c}:
   q(z_{b,c}) = N(mu_i(h_{b,c}), sigma_i(h_{b,c})^2) with a LayerNorm in each head (as CoOp); the M
   samples are drawn per image and class, w^(m)_{b,c} = h_{b,c} + z^(m)_{b,c}, logits s <x̂_b, w^(m)_{b,c}>.
   The deterministic (w/o VI) head uses w_{b,c} = h_{b,c} + mu_i(h_{b,c}).
5. Losses: CE over the M samples as usual; KL averaged over images and classes of a task; the
   language-aware KD uses z averaged over samples and images. VGA has d/64 heads (CoOp's setting).
6. Training: context and meta-net train in every task and in memory consolidation (like CoOp's context).
   The data-driven prior is not available (its context images would need their own text features).

Cost: B x C prompt sequences per step instead of C, the reason CoCoOp is slow and memory-hungry.
Trainable prompt parameters (ViT-B/16: d = w = 512, r = 16): 12 x 512 + (512 x 32 + 32) + (32 x 512 + 512)
= 39,456.
"""

from __future__ import annotations

from torch import Tensor, nn

from clapray.config import PromptConfig
from clapray.model.prompts.base import PromptText, register_variant
from clapray.model.prompts.coop import CoOpPrompts
from clapray.model.prompts.towers import TowerDims, encode_text_embeddings


@register_variant
class CoCoOpPrompts(CoOpPrompts):
    """CoOp's prompts and context (inherited), shifted per image by the meta-net."""

    name = "cocoop"

    @classmethod
    def make_parameters(cls, dims: TowerDims, options: PromptConfig) -> nn.Module:
        learned = super().make_parameters(dims, options)  # .ctx [n_ctx, w]
        hidden = max(1, dims.embed_dim // options.cocoop_reduction)
        learned.meta_net = nn.Sequential(nn.Linear(dims.embed_dim, hidden), nn.ReLU(inplace=True),
                                         nn.Linear(hidden, dims.text_width))
        return learned

    def conditioned_context(self, image_features: Tensor) -> Tensor:
        """v_m + pi(x̂_b) for every image: [B, n_ctx, w]."""
        shift = self.learned.meta_net(image_features)  # [B, w]
        return self.learned.ctx[None] + shift[:, None]

    def text_features(self, num_seen: int, image_features: Tensor | None = None) -> PromptText:
        if image_features is None:
            raise ValueError("cocoop text features depend on the images: pass image_features")
        ctx = self.conditioned_context(image_features)  # [B, n, w]
        x, pool = self.prompts.fill(ctx, num_seen)  # [B * C, L, w], image-major
        t = encode_text_embeddings(self.backbone, x, pool)  # [B * C, d]
        return PromptText(t.reshape(ctx.shape[0], num_seen, -1))  # [B, C, d]
