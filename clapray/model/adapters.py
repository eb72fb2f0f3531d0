"""Task-specific distribution encoders ("adapters", method reference §5, §8, §14).

Task t owns an adapter mapping visual-guided text features h [.., d] to a posterior over the residual
class embedding: q(z | h) = N(mu(h), diag(sigma(h)^2)), with

    mu(h)    = W_mu h + b_mu
    sigma(h) = 0.999 * softplus(W_s h + b_s) + 0.001        (a standard deviation, bounded below)

The hand-crafted variant uses bare Linear layers; CoOp, MaPLe and the deterministic variant put a
LayerNorm(d) before them. The deterministic "w/o VI" adapter has the mean head only.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ProbabilisticAdapter(nn.Module):
    """(mu, sigma) heads of one task; ``sigma is None`` for the deterministic variant."""

    def __init__(self, dim: int, *, layer_norm: bool = False, deterministic: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.mu = nn.Linear(dim, dim)
        self.sigma = None if deterministic else nn.Linear(dim, dim)

    @property
    def deterministic(self) -> bool:
        return self.sigma is None

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor | None]:
        """h [..., d] -> (mu [..., d], sigma [..., d] or None)."""
        h = self.norm(h)
        mu = self.mu(h)
        if self.sigma is None:
            return mu, None
        return mu, 0.999 * F.softplus(self.sigma(h)) + 0.001


def language_aware_init(adapter: ProbabilisticAdapter, template_mean: Tensor, template_variance: Tensor) -> bool:
    """Initialise the adapter's weights from the hand-crafted prompt statistics of all seen classes (§8).

    W_mu <- M^T M / d and W_sigma <- V^T V / d, where M [C, d] are the per-class means of the normalised
    template embeddings (not re-normalised) and V [C, d] their per-dimension unbiased variances; d is the
    embedding dim (the official code divides by d, not by C). Biases keep PyTorch's default init.

    Computed in float64: the entries of V^T V / d are ~1e-9, which fp16 rounds to zero (the official
    code's underflow) and which float32 keeps. Returns False (and leaves the adapter untouched) when
    the statistics are not finite, e.g. a NaN variance from a single template in another code path.
    """
    dim = template_mean.shape[1]
    mean = template_mean.detach().to(torch.float64)
    var = template_variance.detach().to(torch.float64)
    w_mu = mean.T @ mean / dim  # [d, d], symmetric
    w_sigma = var.T @ var / dim
    if not (torch.isfinite(w_mu).all() and torch.isfinite(w_sigma).all()):
        warnings.warn("language-aware init skipped: template statistics are not finite", RuntimeWarning,
                      stacklevel=2)
        return False
    with torch.no_grad():
        adapter.mu.weight.copy_(w_mu.to(adapter.mu.weight.dtype))
        if adapter.sigma is not None:
            adapter.sigma.weight.copy_(w_sigma.to(adapter.sigma.weight.dtype))
    return True
