"""AttriCLIP prompts inside CLAP (§3.4): an attribute bank selected per image, task tokens in VGA.

Attribute bank, shared by all tasks and always trainable: keys E [P, d] and prompts A [P, L_a, w] (P =
``attriclip_bank_size`` 10, L_a = ``attriclip_prompt_length`` 12, init N(0, 0.02^2)).

Per image b: scores x̂_b . normalize(E)^T, the top k (``attriclip_top_k``, 3) attributes j_1..j_k in score
order; the prompt of class c is [SOS][A_{j1}; ..; A_{jk}] (k x L_a tokens)[class name][.][EOS], giving
per-image text features t_{b,c} [B, C, d]. They are computed in batched form: images that select the
same ordered attributes share one set of C prompts, so one pass encodes U x C sequences (U <= B distinct
selections) and the result is gathered back to [B, C, d]; no loop over images.

In the head (§3.4): the VGA queries are the batch means mean_b t_{b,c} [C, d] plus one learnable task
token per task (the first drawn from N(0, 1), each later one xavier-uniform, older ones frozen), VGA has
8 heads; for a class c of task i, h_c = mean_b t_{b,c} + VGA_c + VGA(token_i) and the class embedding of
image b is w^(m)_{b,c} = t_{b,c} + h_c + z^(m)_c (the extra per-image term).

Extra losses (both phases, §9): orthogonality of the P attribute-only text embeddings (prompt
[SOS][A_j][.][EOS]), mean |off-diagonal cosine|, weight ``attriclip_ortho_weight`` 0.3; key matching
mean_b mean_j (1 - cos(x̂_b, E_{j})) over the selected keys, weight ``attriclip_match_weight`` 0.7 (its
gradient equals that of -cos, the official form). Keys learn only through the matching loss (top-k has
no gradient). In consolidation the bank and VGA train too (VGA in train mode, the official quirk).

Trainable prompt parameters, ViT-B/16 (d = w = 512): 10 x 512 + 10 x 12 x 512 = 66,560, plus 512 per task
for the task tokens (counted with the head).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clapray.config import PromptConfig
from clapray.model.prompts.base import PromptText, PromptVariant, init_normal_, register_variant
from clapray.model.prompts.coop import context_prompts
from clapray.model.prompts.towers import SlotPrompts, TowerDims, encode_text_embeddings


@register_variant
class AttriClipPrompts(PromptVariant):
    name = "attriclip"

    def __init__(self, backbone, templates, options: PromptConfig):
        super().__init__(backbone, templates, options)
        n_ctx = options.attriclip_top_k * options.attriclip_prompt_length
        self.prompts = SlotPrompts(backbone, context_prompts(self.class_names, n_ctx), n_ctx,
                                   field="method.prompt.attriclip_prompt_length")
        # The attribute-only prompt "[SOS] A_j . [EOS]" of the orthogonality loss.
        self.attribute_prompt = SlotPrompts(backbone, [" ".join(["X"] * options.attriclip_prompt_length) + "."],
                                            options.attriclip_prompt_length,
                                            field="method.prompt.attriclip_prompt_length")

    @classmethod
    def make_parameters(cls, dims: TowerDims, options: PromptConfig) -> nn.Module:
        learned = nn.Module()
        size, length = options.attriclip_bank_size, options.attriclip_prompt_length
        learned.keys = nn.Parameter(init_normal_(torch.empty(size, dims.embed_dim)))  # [P, d]
        learned.prompts = nn.Parameter(init_normal_(torch.empty(size, length, dims.text_width)))  # [P, L_a, w]
        return learned

    def select(self, image_features: Tensor) -> Tensor:
        """Indices [B, k] of each image's top-k attributes, best first."""
        keys = nn.functional.normalize(self.learned.keys, dim=-1)  # [P, d]
        scores = image_features @ keys.T  # [B, P]
        return scores.topk(self.options.attriclip_top_k, dim=-1).indices

    def text_features(self, num_seen: int, image_features: Tensor | None = None) -> PromptText:
        if image_features is None:
            raise ValueError("attriclip text features depend on the images: pass image_features")
        selection = self.select(image_features)  # [B, k]
        unique, inverse = torch.unique(selection, dim=0, return_inverse=True)  # [U, k], [B]
        ctx = self.learned.prompts[unique].flatten(1, 2)  # [U, k * L_a, w]
        x, pool = self.prompts.fill(ctx, num_seen)  # [U * C, L, w]
        t = encode_text_embeddings(self.backbone, x, pool).reshape(len(unique), num_seen, -1)[inverse]  # [B, C, d]
        loss = None
        if self.training:
            loss = (self.options.attriclip_ortho_weight * self.orthogonality_loss()
                    + self.options.attriclip_match_weight * self.matching_loss(image_features, selection))
        return PromptText(queries=t.mean(dim=0), per_image=t, loss=loss)

    def matching_loss(self, image_features: Tensor, selection: Tensor) -> Tensor:
        """mean_b mean_j (1 - cos(x̂_b, E_{selection[b, j]})): pulls the chosen keys towards their images."""
        keys = nn.functional.normalize(self.learned.keys, dim=-1)[selection]  # [B, k, d]
        return (1.0 - (keys * image_features[:, None]).sum(dim=-1)).mean()

    def orthogonality_loss(self) -> Tensor:
        """Mean |cosine| between the text embeddings of different attribute prompts (0 for one attribute)."""
        size = self.learned.prompts.shape[0]
        if size < 2:
            return self.learned.prompts.new_zeros(())
        x, pool = self.attribute_prompt.fill(self.learned.prompts, 1)  # [P, L, w]
        features = encode_text_embeddings(self.backbone, x, pool)  # [P, d]
        cosine = features @ features.T
        off_diagonal = cosine - torch.diag_embed(torch.diagonal(cosine))
        return off_diagonal.abs().sum() / (size * (size - 1))
