"""Running open_clip's frozen towers on learnable prompt tokens (§3.2 - §3.4, §19).

open_clip encodes token ids (text) or pixels (images); prompt learning needs to feed embeddings in which
some positions are learnable vectors, and, for MaPLe, to overwrite those positions between transformer
blocks. Nothing here copies open_clip's model code: the helpers call the towers' own modules
(``token_embedding``, ``positional_embedding``, ``transformer.resblocks``, ``ln_final``,
``text_projection``; ``conv1``, ``class_embedding``, ``ln_pre``, ``_pool``, ``proj``) in the order the
towers use them, and loop over the residual blocks themselves so that prompts can be swapped in.

Tensors are batch-first here ([N, L, width]); towers built with ``batch_first=False`` are handled per
block. The towers' weights stay frozen (``requires_grad=False``): gradients flow *through* them into the
prompt vectors only.

Text sequences are trimmed to the longest prompt actually used (position of its end-of-text token + 1)
when the text tower is causal: with a causal mask a position never attends to later ones, so the padding
after the end-of-text token cannot change the pooled feature, and a 77-token sequence typically shrinks
to ~20 (the transformer's cost is linear-to-quadratic in the length).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clapray.errors import UserError
from clapray.model.backbone import Backbone


@dataclasses.dataclass(frozen=True)
class TowerDims:
    """The sizes that decide a prompt variant's parameter shapes (read from the model, never hard-coded).

    For OpenAI ViT-B/16: embed_dim 512, text_width 512, vision_width 768, 12 and 12 layers.
    """

    embed_dim: int
    text_width: int
    vision_width: int | None
    text_layers: int
    vision_layers: int | None
    context_length: int

    @classmethod
    def from_backbone(cls, backbone: Backbone) -> TowerDims:
        visual = getattr(backbone.model.visual, "transformer", None)
        return cls(embed_dim=backbone.embed_dim, text_width=backbone.text_width, vision_width=backbone.vision_width,
                   text_layers=len(backbone.model.transformer.resblocks),
                   vision_layers=len(visual.resblocks) if visual is not None else None,
                   context_length=backbone.context_length)

    @classmethod
    def from_model_config(cls, name: str) -> TowerDims:
        """Dims of an open_clip config (``ViT-B-16``) without building the model (no weights, no memory)."""
        config = open_clip.get_model_config(name)
        if config is None:
            raise UserError(f"unknown open_clip model config {name!r}")
        text, vision = config["text_cfg"], config["vision_cfg"]
        return cls(embed_dim=int(config["embed_dim"]), text_width=int(text["width"]),
                   vision_width=int(vision["width"]), text_layers=int(text["layers"]),
                   vision_layers=int(vision["layers"]), context_length=int(text.get("context_length", 77)))


def _run_blocks(transformer: nn.Module, x: Tensor, attn_mask: Tensor | None,
                deep: Sequence[Tensor] = (), start: int = 1) -> Tensor:
    """Residual blocks on batch-first ``x`` [N, L, w]; ``deep[i-1]`` replaces the tokens at ``start`` (a
    block of ``len(deep[i-1])`` positions, negative = counted from the end) at the input of block i >= 1."""
    batch_first = getattr(transformer, "batch_first", True)
    for i, block in enumerate(transformer.resblocks):
        if 1 <= i <= len(deep):
            x = replace_tokens(x, deep[i - 1], start)
        if batch_first:
            x = block(x, attn_mask=attn_mask)
        else:  # the block wants [L, N, w]
            x = block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
    return x


def replace_tokens(x: Tensor, prompts: Tensor, start: int) -> Tensor:
    """``x`` [N, L, w] with positions start..start+n replaced by ``prompts`` [n, w] (or [N, n, w]).

    Built by concatenation, not in-place assignment, so autograd sees the prompts as inputs.
    """
    n = prompts.shape[-2]
    begin = start if start >= 0 else x.shape[1] + start
    prompts = prompts.to(x.dtype)
    if prompts.dim() == 2:
        prompts = prompts[None].expand(x.shape[0], -1, -1)
    return torch.cat([x[:, :begin], prompts, x[:, begin + n:]], dim=1)


# --------------------------------------------------------------------------------------------------
# Text tower


def _text_pool_indices(backbone: Backbone, tokens: Tensor) -> Tensor:
    """Position of the pooled token of every prompt (the end-of-text token for OpenAI-style towers)."""
    model = backbone.model
    pool = getattr(model, "text_pool_type", "argmax")
    if pool == "argmax":
        return tokens.argmax(dim=-1)
    if pool == "eos":
        return (tokens == model.text_eos_id).int().argmax(dim=-1)
    raise UserError(f"backbone.model: prompt variants need a text tower pooled at its end-of-text token "
                    f"(open_clip text_pool_type argmax or eos), {backbone.model_name} uses {pool!r}")


class SlotPrompts(nn.Module):
    """Frozen token embeddings of N prompts with ``n_slots`` learnable positions right after the start token.

    Each prompt string is tokenised once; its embeddings are split into ``prefix`` [N, 1, w] (start token),
    the ``n_slots`` positions that learnable vectors fill, and ``suffix`` [N, L - 1 - n, w] (the rest: class
    name, '.', end token, padding). Buffers are not persistent: they follow from the backbone and the
    prompt strings, so checkpoints carry only the learnable vectors.
    """

    def __init__(self, backbone: Backbone, texts: Sequence[str], n_slots: int, *, field: str):
        super().__init__()
        tokenizer, limit = backbone.tokenizer, backbone.context_length
        encode = getattr(tokenizer, "encode", None)
        if encode is not None:
            longest = max(len(encode(t)) for t in texts) + 2  # + start and end tokens
            if longest > limit:
                raise UserError(f"{field}: the prompts need {longest} tokens (learnable ones included) but the "
                                f"text tower of {backbone.model_name} takes {limit}; use fewer prompt tokens")
        tokens = backbone.tokenize(list(texts))  # [N, context_length]
        pool = _text_pool_indices(backbone, tokens)  # [N]
        model = backbone.model
        # Causal towers allow trimming every prompt to the longest one (see the module docstring).
        length = int(pool.max()) + 1 if getattr(model, "attn_mask", None) is not None else tokens.shape[1]
        with torch.no_grad():
            embedded = model.token_embedding(tokens.to(backbone.device)).float()  # [N, L, w]
        self.n_slots = n_slots
        self.length = length
        self.register_buffer("pool", pool.to(backbone.device), persistent=False)  # [N]
        self.register_buffer("prefix", embedded[:, :1].clone(), persistent=False)  # [N, 1, w]
        self.register_buffer("slots", embedded[:, 1:1 + n_slots].clone(), persistent=False)  # [N, n, w]
        self.register_buffer("suffix", embedded[:, 1 + n_slots:length].clone(), persistent=False)  # [N, L-1-n, w]

    def fill(self, ctx: Tensor, rows: int) -> tuple[Tensor, Tensor]:
        """Embeddings [G * rows, L, w] and pool indices [G * rows] of the first ``rows`` prompts.

        ``ctx`` [n, w] fills every prompt alike (G = 1); ``ctx`` [G, n, w] gives G groups (one per image,
        or per attribute selection), group-major: row ``g * rows + c`` is prompt c filled with ``ctx[g]``.
        """
        prefix, suffix, pool = self.prefix[:rows], self.suffix[:rows], self.pool[:rows]
        ctx = ctx.to(prefix.dtype)
        if ctx.dim() == 2:
            return torch.cat([prefix, ctx[None].expand(rows, -1, -1), suffix], dim=1), pool
        groups = ctx.shape[0]
        seq = torch.cat([prefix[None].expand(groups, -1, -1, -1),
                         ctx[:, None].expand(-1, rows, -1, -1),
                         suffix[None].expand(groups, -1, -1, -1)], dim=2)  # [G, rows, L, w]
        return seq.reshape(groups * rows, self.length, -1), pool.repeat(groups)


def encode_text_embeddings(backbone: Backbone, x: Tensor, pool: Tensor, deep: Sequence[Tensor] = (), *,
                           normalize: bool = True) -> Tensor:
    """The text tower on token embeddings ``x`` [N, L, w] -> L2-normalised fp32 features [N, d].

    ``pool`` [N] are the pooled (end-of-text) positions; ``deep[i-1]`` [n, w] replaces positions 1..n at the
    input of block i (MaPLe's deep text prompts). Runs with autograd on (gradients reach the prompts).
    ``normalize=False`` returns the projected features as they are (MaPLe's official test path).
    """
    model = backbone.model
    cast = model.transformer.get_cast_dtype()
    length = x.shape[1]
    mask = model.attn_mask[:length, :length] if getattr(model, "attn_mask", None) is not None else None
    with backbone.autocast():
        x = x.to(cast) + model.positional_embedding[:length].to(cast)
        x = _run_blocks(model.transformer, x, mask, deep, start=1)
        x = model.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), pool]  # [N, w]
        projection = model.text_projection
        if projection is not None:
            pooled = projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection
    return F.normalize(pooled.float(), dim=-1) if normalize else pooled.float()


# --------------------------------------------------------------------------------------------------
# Image tower


def check_prompted_vision(backbone: Backbone) -> None:
    """Visual prompts need a plain ViT image tower (class token, patch tokens, no attention pooler)."""
    visual = backbone.model.visual
    plain_vit = isinstance(visual, open_clip.transformer.VisionTransformer)
    if not plain_vit or getattr(visual, "attn_pool", None) is not None:
        raise UserError(f"method.variant: maple needs a ViT image tower without attention pooling; "
                        f"{backbone.model_name} has {type(visual).__name__}")


def encode_images_with_prompts(backbone: Backbone, images: Tensor, shallow: Tensor,
                               deep: Sequence[Tensor] = ()) -> Tensor:
    """The image tower with visual prompts -> L2-normalised fp32 features [B, d] (autograd on).

    ``shallow`` [n, vw] is appended after the patch tokens before ``ln_pre`` (MaPLe, §3.3); ``deep[i-1]``
    [n, vw] replaces those n last tokens at the input of block i. The prompt tokens are dropped before
    pooling, which leaves class-token pooling unchanged and keeps them out of average pooling.
    """
    visual = backbone.model.visual
    n = shallow.shape[0]
    x = images.to(backbone.device, dtype=backbone.input_dtype, non_blocking=True)
    with backbone.autocast():
        x = visual.conv1(x)  # [B, vw, grid, grid]
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [B, grid^2, vw]
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)  # [B, 1 + grid^2, vw]
        x = visual.patch_dropout(x)  # identity in eval mode (the frozen tower always is)
        x = torch.cat([x, shallow.to(x.dtype)[None].expand(x.shape[0], -1, -1)], dim=1)  # [B, 1 + grid^2 + n, vw]
        x = visual.ln_pre(x)
        x = _run_blocks(visual.transformer, x, None, deep, start=-n)
        pooled, _ = visual._pool(x[:, :x.shape[1] - n])
        if visual.proj is not None:
            pooled = pooled @ visual.proj
    return F.normalize(pooled.float(), dim=-1)
