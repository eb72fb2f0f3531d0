"""The CLAP head: VGA + per-task probabilistic adapters + Monte-Carlo class embeddings (§1, §4 - §7, §14).

Given L2-normalised image embeddings X [B, d] and base text features T [C, d] of the C classes seen so
far (ordered task by task), one forward pass computes

    H      = T + VGA(T, X)                                  [C, d]   ([B, C, d] with per-image context
                                                                      or per-image queries T [B, C, d])
    for every task i, over its class block C_i:
      mu_i, sigma_i = adapter_i(H[C_i])
      z^(m)         = mu_i + sigma_i * eps^(m)              [M, n_i, d]  (reparameterised; same draws for
                                                                          every image of the batch)
      W^(m)         = H[C_i] + z^(m)                        (not re-normalised, P11)
      logits_i^(m)  = s * X W^(m)^T                         [M, B, n_i]
    logits = concat_i logits_i                              [M, B, C]

and, for the tasks asked for, the KL to the prior and the language-aware KD term (both unweighted). The
deterministic "w/o VI" head uses W = H + mu (M = 1, no KL). The head knows nothing of prompts: any prompt
variant supplies T, shared [C, d] or per image [B, C, d] (CoCoOp), and optionally an image-specific term
T_img [B, C, d] added to every class embedding, W_{b,c} = T_img_{b,c} + H_c + z_c (AttriCLIP, §3.4).

With task tokens (AttriCLIP, ``--expandable-tokens``) one learnable token per task joins the VGA queries,
[C + T, d] under the mask of :func:`~clapray.model.vga.task_attention_mask` with ``task_tokens``, and the
decoder's output at token i is added to the h_c of every class of task i.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from clapray.config import MethodConfig
from clapray.errors import UserError
from clapray.losses import kl_between_normals, kl_to_standard_normal, language_aware_kd
from clapray.model.adapters import ProbabilisticAdapter, language_aware_init
from clapray.model.prompts.catalog import variant_spec
from clapray.model.vga import VisualGuidedAttention


@dataclass
class HeadOutput:
    logits: Tensor  # [M, B, C]
    kl: Tensor  # scalar: sum over the regularised tasks of KL_i (0 for the deterministic head)
    kd: Tensor  # scalar: sum over the regularised tasks of L_KD,i


class ClapHead(nn.Module):
    def __init__(self, dim: int, logit_scale: float, method: MethodConfig, *, task_tokens: bool = False,
                 dtype: torch.dtype = torch.float32):
        """``dtype``: of every parameter, and of the computation (inputs are cast to it). float32, or float16
        for the official all-half modules (``backbone.precision: fp16``, §2)."""
        super().__init__()
        vga = method.vga
        spec = variant_spec(method.variant)
        heads = vga.heads or spec.default_vga_heads(dim, method.deterministic)
        self.vga = (VisualGuidedAttention(dim, depth=vga.depth, heads=heads, ff_dim=vga.ff_dim, dropout=vga.dropout,
                                          context=vga.context) if vga.enabled else None)
        if method.prior == "data_driven" and (self.vga is None or vga.context != "batch"):
            raise UserError("method.prior: data_driven needs method.vga.enabled and vga.context batch")
        self.adapters = nn.ModuleList()
        self.dim = dim
        self.logit_scale = float(logit_scale)
        self.deterministic = method.deterministic
        self.task_specific = method.task_specific_adapters
        self.layer_norm = spec.uses_adapter_layer_norm(method.deterministic)
        self.prior = method.prior
        self.prior_context = method.prior_context
        self.prior_context_size = method.prior_context_size
        self.language_init = method.language_init
        self.reinit_shared_adapter = method.reinit_shared_adapter
        # One [1, d] token per task (only meaningful with VGA, which is what reads them).
        self.task_tokens = nn.ParameterList() if task_tokens and self.vga is not None else None
        self.param_dtype = dtype
        self.to(dtype)

    # ------------------------------------------------------------------------------------------------
    # Growth

    def adapter_index(self, task: int) -> int:
        return task if self.task_specific else 0

    def grow(self, task: int, template_mean: Tensor, template_variance: Tensor) -> None:
        """Prepare task ``task``: add its adapter (or reuse the shared one) and its task token.

        A new adapter is initialised from the template statistics of all classes seen so far. With one
        shared adapter the init runs only when it is created, unless ``method.reinit_shared_adapter``: the
        official code re-initialises it at every task, which wipes what it learned (P15).
        """
        index = self.adapter_index(task)
        created = len(self.adapters) <= index
        while len(self.adapters) <= index:
            adapter = ProbabilisticAdapter(self.dim, layer_norm=self.layer_norm, deterministic=self.deterministic)
            self.adapters.append(adapter.to(device=template_mean.device, dtype=self.param_dtype))
            if self.language_init:
                language_aware_init(adapter, template_mean, template_variance)
        if not created and not self.task_specific and self.reinit_shared_adapter and self.language_init:
            language_aware_init(self.adapters[index], template_mean, template_variance)
        if self.task_tokens is not None:
            while len(self.task_tokens) <= task:
                # The first token is N(0, 1); every later one a fresh xavier-uniform draw (§3.4).
                token = torch.empty(1, self.dim, device=template_mean.device, dtype=self.param_dtype)
                if len(self.task_tokens) == 0:
                    nn.init.normal_(token)
                else:
                    nn.init.xavier_uniform_(token)
                self.task_tokens.append(nn.Parameter(token))

    def trainable(self, task: int, adapters: str, task_tokens: str) -> list[nn.Parameter]:
        """The adapters and task tokens a phase of ``task`` trains (:class:`~clapray.phases.Phase`): the
        ``current`` task's or ``all`` seen ones; task tokens also ``none``. VGA is added by the caller."""
        chosen = (self.adapters[self.adapter_index(task)] if adapters == "current" else self.adapters)
        params = list(chosen.parameters())
        if self.task_tokens is not None and task_tokens != "none":
            params += [self.task_tokens[task]] if task_tokens == "current" else list(self.task_tokens)[:task + 1]
        return params

    def visual_guided(self, text: Tensor, images: Tensor, task_mask: Tensor,
                      task_slices: Sequence[tuple[int, int]] = ()) -> Tensor:
        """H = T + VGA(T, X): [C, d], or [B, C, d] with per-image context or queries; T itself without VGA.

        With task tokens, ``task_slices`` says which classes belong to which task: the decoder's output at
        token i (its value minus the token: the outer residual is not applied to tokens) is added to h_c of
        every class c of task i.
        """
        if self.vga is None:
            return text
        if self.task_tokens is None:
            return self.vga(text, images, task_mask)
        n_tasks = len(task_slices)
        tokens = torch.cat(list(self.task_tokens)[:n_tasks])  # [T, d]
        if text.dim() == 3:
            tokens = tokens[None].expand(text.shape[0], -1, -1)  # [B, T, d]
        n_classes = text.shape[-2]
        out = self.vga(torch.cat([text, tokens], dim=-2), images, task_mask)  # [.., C + T, d]
        token_out = out[..., n_classes:, :] - tokens  # [.., T, d]
        sizes = torch.tensor([end - start for start, end in task_slices], device=text.device)
        task_of_row = torch.repeat_interleave(torch.arange(n_tasks, device=text.device), sizes)  # [C]
        return out[..., :n_classes, :] + token_out[..., task_of_row, :]

    # ------------------------------------------------------------------------------------------------
    # Forward

    def forward(self, images: Tensor, text: Tensor, task_slices: Sequence[tuple[int, int]], task_mask: Tensor,
                n_samples: int, *, regularize: Sequence[int] = (), template_mean: Tensor | None = None,
                labels: Tensor | None = None, image_text: Tensor | None = None) -> HeadOutput:
        """Logits [M, B, C] of the seen classes and the KL/KD terms of the tasks in ``regularize``.

        Args:
            images: [B, d] normalised image embeddings.
            text: [C, d] base text features of the seen classes, task blocks in order; or [B, C, d] per image.
            task_slices: (start, end) of every seen task's block of classes in ``text``.
            task_mask: [C, C] bool VGA self-attention mask ([C + T, C + T] with task tokens).
            n_samples: M (ignored by the deterministic head, which has M = 1).
            regularize: task indices whose KL and KD terms are computed.
            template_mean: [C, d] unnormalised template means, needed when KD or a language prior is used.
            labels: [B] targets, used by the data-driven prior to pick its context images.
            image_text: optional [B, C, d] image-specific term of every class embedding (AttriCLIP).
        """
        dtype = self.param_dtype
        images, text = images.to(dtype), text.to(dtype)
        template_mean = None if template_mean is None else template_mean.to(dtype)
        image_text = None if image_text is None else image_text.to(dtype)
        h = self.visual_guided(text, images, task_mask, task_slices)  # [C, d] or [B, C, d]
        per_image = h.dim() == 3
        m = 1 if self.deterministic else n_samples
        blocks, kl, kd = [], images.new_zeros(()), images.new_zeros(())
        for task, (start, end) in enumerate(task_slices):
            h_i = h[..., start:end, :]  # [n_i, d] or [B, n_i, d]
            adapter = self.adapters[self.adapter_index(task)]
            mu, sigma = adapter(h_i)
            if sigma is None:
                z = mu[None]  # [1, ..., n_i, d]
            else:
                eps = torch.randn((m, *mu.shape), device=mu.device, dtype=mu.dtype)
                z = mu[None] + sigma[None] * eps  # [M, ..., n_i, d]
            w = h_i[None] + z
            if per_image:
                logits = self.logit_scale * torch.einsum("bd,mbnd->mbn", images, w)
            else:
                logits = self.logit_scale * torch.einsum("bd,mnd->mbn", images, w)
            if image_text is not None:
                # s <x_b, t_{b,c}>, the same for every sample: added to the logits rather than to W, so no
                # [M, B, n, d] tensor is materialised.
                logits = logits + self.logit_scale * torch.einsum("bd,bnd->bn", images, image_text[:, start:end])[None]
            blocks.append(logits)
            if task in regularize:
                if sigma is not None:
                    kl = kl + self._kl(task, mu, sigma, start, end, images, text, task_mask, template_mean, labels,
                                       task_slices)
                if template_mean is not None:
                    kd = kd + language_aware_kd(template_mean[start:end], z)
        return HeadOutput(torch.cat(blocks, dim=-1), kl, kd)

    def _kl(self, task: int, mu: Tensor, sigma: Tensor, start: int, end: int, images: Tensor, text: Tensor,
            task_mask: Tensor, template_mean: Tensor | None, labels: Tensor | None,
            task_slices: Sequence[tuple[int, int]]) -> Tensor:
        if self.prior == "standard":
            return kl_to_standard_normal(mu, sigma)
        adapter = self.adapters[self.adapter_index(task)]
        if self.prior == "language_aware":
            # p = adapter_i(mean_k p_{c,k}): the current adapter applied to the hand-crafted means (§6).
            assert template_mean is not None, "the language-aware prior needs the template means"
            prior_mu, prior_sigma = adapter(template_mean[start:end])
            return kl_between_normals(mu, sigma, prior_mu, prior_sigma)
        # Data-driven prior (--use-np-prior): the adapter applied to text features guided by context images
        # only (§6). The official code always passes a random share of the batch as context
        # (``prior_context: random``); its context helper's other rule, which the code never reaches, is
        # ``task``: the batch's images of this task's classes, a random share of the batch when they are the
        # whole batch, N(0, I) when there are none.
        context = self._prior_context(images, labels, start, end)
        if context is None:
            return kl_to_standard_normal(mu, sigma)
        if text.dim() == 3:
            raise UserError("method.prior: data_driven needs text features shared by the batch (not cocoop)")
        prior_h = self.visual_guided(text, context, task_mask, task_slices)[start:end]
        prior_mu, prior_sigma = adapter(prior_h)
        return kl_between_normals(mu, sigma, prior_mu, prior_sigma)

    def _prior_context(self, images: Tensor, labels: Tensor | None, start: int, end: int) -> Tensor | None:
        """The context images of the data-driven prior of the task with classes [start, end), or None (N(0, I))."""
        batch = images.shape[0]

        def random_share() -> Tensor:
            keep = math.ceil(self.prior_context_size * batch)
            return images[torch.randperm(batch)[:keep].to(images.device)]

        if self.prior_context == "random":
            return random_share()
        in_task = (labels >= start) & (labels < end) if labels is not None else images.new_zeros(0, dtype=torch.bool)
        n_context = int(in_task.sum())
        if n_context == 0:
            return None
        return random_share() if n_context == batch else images[in_task]


def final_learned_parameter_count(head: ClapHead | None, prompt: Any, num_tasks: int) -> int:
    """Trainable parameters once all ``num_tasks`` tasks are learned: VGA, the final number of adapters (and
    task tokens) and the prompt variant's trained parameters; 0 without a head (zero-shot)."""
    if head is None:
        return 0
    vga = sum(p.numel() for p in head.vga.parameters()) if head.vga is not None else 0
    adapters = num_tasks if head.task_specific else 1
    probe = ProbabilisticAdapter(head.dim, layer_norm=head.layer_norm, deterministic=head.deterministic)
    tokens = num_tasks * head.dim if head.task_tokens is not None else 0
    return vga + adapters * sum(p.numel() for p in probe.parameters()) + tokens + prompt.learned_parameter_count()
