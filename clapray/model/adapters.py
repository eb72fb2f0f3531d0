"""Task-specific distribution encoders ("adapters", method reference §5, §8, §14).

Task t owns an adapter mapping visual-guided text features h [.., d] to a posterior over the residual
class embedding: q(z | h) = N(mu(h), diag(sigma(h)^2)), with

    mu(h)    = W_mu LN_mu(h) + b_mu
    sigma(h) = 0.999 * softplus(W_s LN_s(h) + b_s) + 0.001        (a standard deviation, bounded below)

The hand-crafted variant uses bare Linear layers (LN = identity). CoOp, MaPLe, CoCoOp and the deterministic
variant put a LayerNorm(d) *inside each head*, as the official ``Adapter`` does (``nn.Sequential(LayerNorm,
Linear)`` built once for the mean and once for the standard deviation): two LayerNorms per pair, each with
its own affine parameters, 527,360 parameters per pair at d = 512 (525,312 without them). The
deterministic "w/o VI" adapter has the mean head only.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ProbabilisticAdapter(nn.Module):
    """(mu, sigma) heads of one task; ``sigma is None`` for the deterministic variant.

    ``mu_norm`` / ``sigma_norm`` are the heads' own LayerNorms (``nn.Identity`` without ``layer_norm``); the
    Linear layers keep the names ``mu`` and ``sigma`` so the language-aware init writes ``mu.weight`` and
    ``sigma.weight``.
    """

    def __init__(self, dim: int, *, layer_norm: bool = False, deterministic: bool = False):
        super().__init__()
        self.mu_norm = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.mu = nn.Linear(dim, dim)
        self.sigma_norm = None if deterministic else (nn.LayerNorm(dim) if layer_norm else nn.Identity())
        self.sigma = None if deterministic else nn.Linear(dim, dim)

    @property
    def deterministic(self) -> bool:
        return self.sigma is None

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor | None]:
        """h [..., d] -> (mu [..., d], sigma [..., d] or None)."""
        mu = self.mu(self.mu_norm(h))
        if self.sigma is None:
            return mu, None
        return mu, 0.999 * F.softplus(self.sigma(self.sigma_norm(h))) + 0.001


def language_aware_init(adapter: ProbabilisticAdapter, template_mean: Tensor, template_variance: Tensor) -> bool:
    """Initialise the adapter's weights from the hand-crafted prompt statistics of all seen classes (§8).

    W_mu <- M^T M / d and W_sigma <- V^T V / d, where M [C, d] are the per-class means of the normalised
    template embeddings (not re-normalised) and V [C, d] their per-dimension unbiased variances; d is the
    embedding dim (the official code divides by d, not by C). Biases and LayerNorms keep PyTorch's
    default init.

    Computed in float64 and then cast to the adapter's dtype: the entries of V^T V / d are ~1e-9, which
    float32 keeps and fp16 rounds to zero (the official code's underflow, reproduced with half adapters,
    ``backbone.precision: fp16``). Returns False (and leaves the adapter untouched) when the statistics
    are not finite, e.g. a NaN variance from a single template in another code path.
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
