"""The terms of the CLAP objective (method reference §5 - §9), as pure functions of tensors.

    main training of task t:  CE_MC + gamma * KD_t + beta * KL_t
    consolidation after t:    CE_MC + gamma * sum_{i<=t} KD_i + beta * sum_{i<=t} KL_i
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def mc_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over all M x B rows: the Monte-Carlo estimate of the expected log-likelihood.

    logits [M, B, C] (M = 1 for the deterministic variant), targets [B] -> scalar.
    """
    m, b, c = logits.shape
    return F.cross_entropy(logits.reshape(m * b, c), targets.repeat(m))


def kl_to_standard_normal(mu: Tensor, sigma: Tensor) -> Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) of one task's classes: averaged over classes, summed over dims (§6).

    mu, sigma [..., n, d] (leading axes, e.g. per-image context, are averaged like classes) -> scalar.
    """
    kl = 0.5 * (sigma.pow(2) + mu.pow(2) - 1.0) - torch.log(sigma)  # [..., n, d]
    return kl.reshape(-1, kl.shape[-1]).mean(dim=0).sum()


def kl_between_normals(mu: Tensor, sigma: Tensor, prior_mu: Tensor, prior_sigma: Tensor) -> Tensor:
    """KL(N(mu, sigma^2) || N(prior_mu, prior_sigma^2)), averaged over classes, summed over dims."""
    kl = (torch.log(prior_sigma) - torch.log(sigma)
          + (sigma.pow(2) + (mu - prior_mu).pow(2)) / (2.0 * prior_sigma.pow(2)) - 0.5)
    return kl.reshape(-1, kl.shape[-1]).mean(dim=0).sum()


def language_aware_kd(template_mean: Tensor, residual: Tensor) -> Tensor:
    """Past-task distribution regularisation L_KD of one task (§7), without its weight gamma.

    S[c, c'] = < p_c, z_c' > with p_c [n, d] the class's mean template embedding (mean over templates of
    normalised embeddings, not re-normalised) and z_c' [n, d] the class's residual averaged over the M
    samples (the mean head for the deterministic variant). Each class's residual must align with its own
    hand-crafted text embedding more than the other classes' residuals of the same task do:
    CE over rows of S with target c; no temperature, no logit scale.

    residual: [n, d], or [..., n, d] averaged over leading axes (MC samples, per-image contexts).
    """
    z = residual.reshape(-1, *residual.shape[-2:]).mean(dim=0)  # [n, d]
    scores = template_mean @ z.T  # [n, n]
    return F.cross_entropy(scores, torch.arange(scores.shape[0], device=scores.device))
