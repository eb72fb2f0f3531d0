"""CLAP model components: VGA and its task mask, adapters and their init, the loss terms, the head."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from clapray.config import MethodConfig, VGAConfig
from clapray.losses import kl_between_normals, kl_to_standard_normal, language_aware_kd, mc_cross_entropy
from clapray.model.adapters import ProbabilisticAdapter, language_aware_init
from clapray.model.clap import ClapHead
from clapray.model.prompts.catalog import variant_spec
from clapray.model.vga import VisualGuidedAttention, task_attention_mask

D = 16


def method(**overrides) -> MethodConfig:
    vga = overrides.pop("vga", {})
    return MethodConfig(vga=VGAConfig(**{"ff_dim": 32, **vga}), **overrides)


def test_task_mask_is_block_diagonal():
    mask = task_attention_mask(np.array([0, 0, 1, 1, 1, 2]))
    assert mask.dtype == torch.bool and mask.shape == (6, 6)
    expected = torch.ones(6, 6, dtype=torch.bool)
    expected[:2, :2] = expected[2:5, 2:5] = expected[5:, 5:] = False
    assert torch.equal(mask, expected)


def test_vga_mask_blocks_cross_task_attention():
    torch.manual_seed(0)
    vga = VisualGuidedAttention(D, depth=2, heads=2, ff_dim=32).eval()
    text = torch.randn(5, D)
    images = F.normalize(torch.randn(4, D), dim=-1)
    mask = task_attention_mask(np.array([0, 0, 1, 1, 1]))
    changed = text.clone()
    changed[2:] += torch.randn(3, D)  # task 1's queries change
    out, out_changed = vga(text, images, mask), vga(changed, images, mask)
    assert torch.allclose(out[:2] - text[:2], out_changed[:2] - changed[:2], atol=1e-6)  # task 0 unaffected
    no_mask = torch.zeros(5, 5, dtype=torch.bool)
    assert not torch.allclose(vga(text, images, no_mask)[:2], vga(changed, images, no_mask)[:2], atol=1e-4)


def test_vga_outer_residual_and_contexts():
    torch.manual_seed(0)
    vga = VisualGuidedAttention(D, heads=1, ff_dim=32, context="batch").eval()
    text = torch.randn(3, D)
    images = F.normalize(torch.randn(4, D), dim=-1)
    mask = task_attention_mask(np.zeros(3, dtype=int))
    decoded = vga.decoder(text[None], images[None], tgt_mask=mask)[0]
    assert torch.allclose(vga(text, images, mask), text + decoded)
    # Batch context: every image shares one h, which depends on the other images of the batch.
    assert vga(text, images, mask).shape == (3, D)
    assert not torch.allclose(vga(text, images, mask), vga(text, images[:2], mask))
    # Image context: h of image b depends on image b only.
    per_image = VisualGuidedAttention(D, heads=1, ff_dim=32, context="image").eval()
    per_image.load_state_dict(vga.state_dict())
    h = per_image(text, images, mask)
    assert h.shape == (4, 3, D)
    assert torch.allclose(h[:2], per_image(text, images[:2], mask), atol=1e-6)
    assert torch.allclose(h[1], vga(text, images[1:2], mask), atol=1e-6)  # one image: both contexts agree


def test_vga_heads_must_divide_dim():
    from clapray.errors import UserError

    with pytest.raises(UserError, match="method.vga.heads"):
        VisualGuidedAttention(D, heads=3)


def test_default_heads_follow_the_official_variants():
    assert variant_spec("handcrafted").default_vga_heads(512, False) == 1
    assert variant_spec("handcrafted").default_vga_heads(512, True) == 8
    assert variant_spec("coop").default_vga_heads(768, False) == 12
    assert variant_spec("attriclip").default_vga_heads(512, False) == 8


def test_vga_and_adapter_parameter_counts_at_vit_b16_width():
    """§16.2: VGA ~4.2M (4,204,032) and 0.52M (525,312) per task pair at d = 512."""
    vga = VisualGuidedAttention(512, depth=1, heads=1)
    assert sum(p.numel() for p in vga.parameters()) == 4_204_032
    adapter = ProbabilisticAdapter(512)
    assert sum(p.numel() for p in adapter.parameters()) == 525_312
    # 10 tasks + VGA: ~9.46M (§16.2)
    assert sum(p.numel() for p in vga.parameters()) + 10 * 525_312 == 9_457_152


def test_adapter_sigma_is_a_bounded_softplus():
    adapter = ProbabilisticAdapter(D)
    with torch.no_grad():
        adapter.sigma.weight.zero_()
        adapter.sigma.bias.fill_(-50.0)
    _, sigma = adapter(torch.randn(3, D))
    assert torch.allclose(sigma, torch.full_like(sigma, 0.001), atol=1e-6)
    with torch.no_grad():
        adapter.sigma.bias.fill_(0.0)
    _, sigma = adapter(torch.randn(3, D))
    assert torch.allclose(sigma, torch.full_like(sigma, 0.999 * math.log(2) + 0.001))
    deterministic = ProbabilisticAdapter(D, layer_norm=True, deterministic=True)
    mu, sigma = deterministic(torch.randn(3, D))
    assert sigma is None and mu.shape == (3, D) and isinstance(deterministic.norm, torch.nn.LayerNorm)


def test_language_aware_init_formula_and_guards():
    torch.manual_seed(0)
    mean, var = torch.randn(6, D), torch.rand(6, D) * 1e-4
    adapter = ProbabilisticAdapter(D)
    bias_before = adapter.mu.bias.clone()
    assert language_aware_init(adapter, mean, var)
    assert torch.allclose(adapter.mu.weight, mean.T @ mean / D, atol=1e-6)
    assert torch.allclose(adapter.sigma.weight, var.T @ var / D, atol=1e-14)
    assert adapter.sigma.weight.abs().max() > 0  # ~1e-9 entries survive in fp32 (fp16 would flush them)
    assert torch.equal(adapter.mu.bias, bias_before)  # biases keep their default init
    untouched = ProbabilisticAdapter(D)
    weight = untouched.mu.weight.clone()
    with pytest.warns(RuntimeWarning, match="not finite"):
        assert not language_aware_init(untouched, mean, torch.full((6, D), float("nan")))
    assert torch.equal(untouched.mu.weight, weight)


def test_kl_matches_a_hand_computed_case_and_torch():
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    sigma = torch.ones(2, 2)
    # Per class: sum_d mu^2 / 2 -> class 0: 0.5, class 1: 0; averaged over classes, summed over dims: 0.25.
    assert kl_to_standard_normal(mu, sigma).item() == pytest.approx(0.25)
    torch.manual_seed(0)
    mu, sigma = torch.randn(5, 7), torch.rand(5, 7) + 0.1
    reference = kl_divergence(Normal(mu, sigma), Normal(0.0, 1.0)).mean(dim=0).sum()
    assert kl_to_standard_normal(mu, sigma).item() == pytest.approx(reference.item(), rel=1e-5)
    prior_mu, prior_sigma = torch.randn(5, 7), torch.rand(5, 7) + 0.2
    reference = kl_divergence(Normal(mu, sigma), Normal(prior_mu, prior_sigma)).mean(dim=0).sum()
    assert kl_between_normals(mu, sigma, prior_mu, prior_sigma).item() == pytest.approx(reference.item(), rel=1e-5)


def test_kd_matches_a_hand_computed_case():
    template_mean = torch.eye(2)
    residual = torch.eye(2)[None].repeat(3, 1, 1)  # [M=3, n=2, d=2], the same in every sample
    # S = I: each row's CE = -log(e / (e + 1)) = log(1 + 1/e).
    assert language_aware_kd(template_mean, residual).item() == pytest.approx(math.log(1 + math.exp(-1)))
    # Samples are averaged before the scores: two samples whose mean is the identity give the same loss.
    two = torch.stack([2 * torch.eye(2), torch.zeros(2, 2)])
    assert language_aware_kd(template_mean, two).item() == pytest.approx(math.log(1 + math.exp(-1)))


def test_mc_cross_entropy_is_the_mean_of_per_sample_losses():
    torch.manual_seed(0)
    logits, targets = torch.randn(4, 3, 5), torch.tensor([0, 4, 2])
    expected = torch.stack([F.cross_entropy(logits[m], targets) for m in range(4)]).mean()
    assert mc_cross_entropy(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)


def make_head(**overrides) -> tuple[ClapHead, dict]:
    torch.manual_seed(0)
    head = ClapHead(D, logit_scale=10.0, method=method(**overrides))
    text = F.normalize(torch.randn(6, D), dim=-1)
    stats = dict(template_mean=text.clone(), template_variance=torch.rand(6, D) * 1e-4)
    head.grow(0, stats["template_mean"][:3], stats["template_variance"][:3])
    head.grow(1, stats["template_mean"], stats["template_variance"])
    inputs = dict(images=F.normalize(torch.randn(4, D), dim=-1), text=text, task_slices=((0, 3), (3, 6)),
                  task_mask=task_attention_mask(np.array([0, 0, 0, 1, 1, 1])))
    return head, {**inputs, **stats}


def test_head_draws_m_distinct_samples_and_deterministic_draws_one():
    head, x = make_head()
    head.eval()
    out = head(x["images"], x["text"], x["task_slices"], x["task_mask"], 7)
    assert out.logits.shape == (7, 4, 6)
    flat = out.logits.reshape(7, -1)
    assert all(not torch.allclose(flat[i], flat[j]) for i in range(7) for j in range(i + 1, 7))
    det, x = make_head(deterministic=True)
    det.eval()
    out = det(x["images"], x["text"], x["task_slices"], x["task_mask"], 7, regularize=(0, 1),
              template_mean=x["template_mean"])
    assert out.logits.shape == (1, 4, 6) and out.kl.item() == 0.0 and out.kd.item() > 0


def test_head_logits_follow_the_formula():
    """logits^(m) = s * x . (h + z^(m)) with z = mu + sigma * eps, per task block."""
    head, x = make_head()
    head.eval()
    torch.manual_seed(5)
    out = head(x["images"], x["text"], x["task_slices"], x["task_mask"], 2, regularize=(1,),
               template_mean=x["template_mean"])
    torch.manual_seed(5)
    h = head.vga(x["text"], x["images"], x["task_mask"])
    blocks, kls = [], []
    for task, (start, end) in enumerate(x["task_slices"]):
        mu, sigma = head.adapters[task](h[start:end])
        z = mu[None] + sigma[None] * torch.randn(2, *mu.shape)
        blocks.append(10.0 * torch.einsum("bd,mnd->mbn", x["images"], h[start:end][None] + z))
        kls.append(kl_divergence(Normal(mu, sigma), Normal(0.0, 1.0)).mean(dim=0).sum())
    assert torch.allclose(out.logits, torch.cat(blocks, dim=-1), atol=1e-5)
    assert out.kl.item() == pytest.approx(kls[1].item(), rel=1e-5)  # only task 1 was regularised


def test_shared_adapter_is_initialised_once():
    head, x = make_head(task_specific_adapters=False)
    assert len(head.adapters) == 1
    with torch.no_grad():
        head.adapters[0].mu.weight.fill_(0.5)  # what task 0 "learned"
    head.grow(2, x["template_mean"], x["template_variance"])
    assert len(head.adapters) == 1 and torch.all(head.adapters[0].mu.weight == 0.5)


def test_per_image_context_head_shapes():
    head, x = make_head(vga={"context": "image"})
    head.eval()
    out = head(x["images"], x["text"], x["task_slices"], x["task_mask"], 3, regularize=(0, 1),
               template_mean=x["template_mean"])
    assert out.logits.shape == (3, 4, 6) and torch.isfinite(out.kl) and torch.isfinite(out.kd)
    one = head(x["images"][:1], x["text"], x["task_slices"], x["task_mask"], 3)
    assert one.logits.shape == (3, 1, 6)
