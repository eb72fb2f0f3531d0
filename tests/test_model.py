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
    """§16.2: VGA ~4.2M (4,204,032) and 0.52M (525,312) per task pair at d = 512; the official CoOp/MaPLe
    adapter pair has a LayerNorm in each head: 525,312 + 2 x 1,024 = 527,360."""
    vga = VisualGuidedAttention(512, depth=1, heads=1)
    assert sum(p.numel() for p in vga.parameters()) == 4_204_032
    adapter = ProbabilisticAdapter(512)
    assert sum(p.numel() for p in adapter.parameters()) == 525_312
    # 10 tasks + VGA: ~9.46M (§16.2)
    assert sum(p.numel() for p in vga.parameters()) + 10 * 525_312 == 9_457_152
    assert sum(p.numel() for p in ProbabilisticAdapter(512, layer_norm=True).parameters()) == 527_360
    # w/o VI: the mean head only, with its one LayerNorm.
    assert sum(p.numel() for p in ProbabilisticAdapter(512, layer_norm=True, deterministic=True).parameters()) == (
        512 * 512 + 512 + 1_024)


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
    assert sigma is None and mu.shape == (3, D) and isinstance(deterministic.mu_norm, torch.nn.LayerNorm)


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


# --------------------------------------------------------------------------------------------------
# Exact values against independent float64 re-implementations of what the official code computes
# (torch.nn.TransformerDecoder post-LN GELU, Adapter = [LayerNorm ->] Linear per head, the loss terms).


def f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def ref_layer_norm(x: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    centred = x - x.mean(dim=-1, keepdim=True)
    return centred / torch.sqrt(centred.pow(2).mean(dim=-1, keepdim=True) + 1e-5) * f64(ln.weight) + f64(ln.bias)


def ref_attention(queries: torch.Tensor, keys: torch.Tensor, mha: torch.nn.MultiheadAttention,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention written out, queries [L, E] over keys/values [S, E]; mask True = blocked."""
    e, h = queries.shape[-1], mha.num_heads
    dh = e // h
    w, b = f64(mha.in_proj_weight), f64(mha.in_proj_bias)
    q, k, v = (x @ w[i * e:(i + 1) * e].T + b[i * e:(i + 1) * e] for i, x in enumerate((queries, keys, keys)))
    heads = []
    for i in range(h):
        part = slice(i * dh, (i + 1) * dh)
        scores = q[:, part] @ k[:, part].T / math.sqrt(dh)
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ v[:, part])
    return torch.cat(heads, dim=-1) @ f64(mha.out_proj.weight).T + f64(mha.out_proj.bias)


def ref_decoder_layer(x: torch.Tensor, memory: torch.Tensor, layer, mask: torch.Tensor) -> torch.Tensor:
    """PyTorch's default decoder layer: post-LN residual blocks, exact (erf) GELU in the feed-forward."""
    x = ref_layer_norm(x + ref_attention(x, x, layer.self_attn, mask), layer.norm1)
    x = ref_layer_norm(x + ref_attention(x, memory, layer.multihead_attn), layer.norm2)
    hidden = x @ f64(layer.linear1.weight).T + f64(layer.linear1.bias)
    hidden = 0.5 * hidden * (1.0 + torch.erf(hidden / math.sqrt(2.0)))
    return ref_layer_norm(x + hidden @ f64(layer.linear2.weight).T + f64(layer.linear2.bias), layer.norm3)


def ref_vga(vga: VisualGuidedAttention, text: torch.Tensor, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """h = T + decoder(T, X): queries = the class texts, memory = the batch's images, no final norm."""
    x = f64(text)
    for layer in vga.decoder.layers:
        x = ref_decoder_layer(x, f64(images), layer, mask)
    return f64(text) + x


def ref_adapter(adapter: ProbabilisticAdapter, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The official Adapter pair: each head [LayerNorm ->] Linear, sigma = 0.999 softplus(.) + 0.001."""
    def head(norm, linear):
        x = ref_layer_norm(h, norm) if isinstance(norm, torch.nn.LayerNorm) else h
        return x @ f64(linear.weight).T + f64(linear.bias)

    mu = head(adapter.mu_norm, adapter.mu)
    if adapter.sigma is None:
        return mu, None
    return mu, 0.999 * torch.log1p(torch.exp(head(adapter.sigma_norm, adapter.sigma))) + 0.001


def ref_kd(template_mean: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """S[c, c'] = <p_c, mean_m z^(m)_c'>; CE of each row against its own class, by hand."""
    scores = f64(template_mean) @ f64(samples).mean(dim=0).T
    return (torch.logsumexp(scores, dim=1) - torch.diagonal(scores)).mean()


def ref_head(head: ClapHead, x: dict, n_samples: int, regularize: tuple[int, ...], seed: int):
    """The head's forward in float64, drawing the same noise (eps [M, n_i, d] per task, in task order)."""
    h = ref_vga(head.vga, x["text"], x["images"], x["task_mask"])
    torch.manual_seed(seed)
    blocks, kl, kd = [], torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for task, (start, end) in enumerate(x["task_slices"]):
        mu, sigma = ref_adapter(head.adapters[task], h[start:end])
        z = mu[None] if sigma is None else mu[None] + sigma[None] * f64(torch.randn(n_samples, *mu.shape))
        blocks.append(10.0 * torch.einsum("bd,mnd->mbn", f64(x["images"]), h[start:end][None] + z))
        if task in regularize:
            if sigma is not None:
                kl = kl + (0.5 * (sigma.pow(2) + mu.pow(2) - 1.0) - torch.log(sigma)).mean(dim=0).sum()
            kd = kd + ref_kd(x["template_mean"][start:end], z)
    return torch.cat(blocks, dim=-1), kl, kd


def perturbed_head(**overrides) -> tuple[ClapHead, dict]:
    """A head with two tasks of 3 and 2 classes whose every parameter (LayerNorm affines included) is moved off
    its init, so that no symmetry hides a wrong formula."""
    torch.manual_seed(0)
    head = ClapHead(D, logit_scale=10.0, method=method(**overrides))
    text = F.normalize(torch.randn(5, D), dim=-1)
    stats = dict(template_mean=text + 0.1 * torch.randn(5, D), template_variance=torch.rand(5, D) * 1e-4)
    head.grow(0, stats["template_mean"][:3], stats["template_variance"][:3])
    head.grow(1, stats["template_mean"], stats["template_variance"])
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.2 * torch.randn_like(p))
    inputs = dict(images=F.normalize(torch.randn(4, D), dim=-1), text=text, task_slices=((0, 3), (3, 5)),
                  task_mask=task_attention_mask(np.array([0, 0, 0, 1, 1])))
    return head.eval(), {**inputs, **stats}


@pytest.mark.parametrize("depth, heads", [(1, 1), (2, 4)])
def test_vga_output_equals_an_independent_post_ln_gelu_decoder(depth, heads):
    head, x = perturbed_head(vga={"depth": depth, "heads": heads})
    got = head.vga(x["text"], x["images"], x["task_mask"])
    expected = ref_vga(head.vga, x["text"], x["images"], x["task_mask"])
    assert torch.allclose(f64(got), expected, atol=1e-5), (got - expected).abs().max()


def test_vga_dropout_is_the_pytorch_default_at_every_site():
    """0.1 in the three residual branches, the feed-forward and both attentions (what the official decoder,
    built with PyTorch's defaults, uses in main training)."""
    assert VGAConfig().dropout == 0.1
    vga = ClapHead(D, 10.0, MethodConfig()).vga
    rates = [m.p for m in vga.modules() if isinstance(m, torch.nn.Dropout)]
    rates += [m.dropout for m in vga.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    assert len(rates) == 6 and all(r == 0.1 for r in rates), rates


@pytest.mark.parametrize("layer_norm", [False, True], ids=["handcrafted", "coop"])
def test_adapter_heads_equal_the_official_adapter_pair(layer_norm):
    torch.manual_seed(1)
    adapter = ProbabilisticAdapter(D, layer_norm=layer_norm)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.3 * torch.randn_like(p))  # the two LayerNorms get different affine parameters
    assert len([m for m in adapter.modules() if isinstance(m, torch.nn.LayerNorm)]) == (2 if layer_norm else 0)
    h = torch.randn(3, D)
    mu, sigma = adapter(h)
    ref_mu, ref_sigma = ref_adapter(adapter, f64(h))
    assert torch.allclose(f64(mu), ref_mu, atol=1e-5) and torch.allclose(f64(sigma), ref_sigma, atol=1e-6)


@pytest.mark.parametrize("overrides", [{}, {"variant": "coop"}, {"deterministic": True}],
                         ids=["handcrafted", "coop", "wo_VI"])
@pytest.mark.parametrize("regularize", [(1,), (0, 1)], ids=["current", "all"])
def test_head_logits_kl_and_kd_equal_an_independent_float64_forward(overrides, regularize):
    head, x = perturbed_head(vga={"heads": 2}, **overrides)
    torch.manual_seed(7)
    out = head(x["images"], x["text"], x["task_slices"], x["task_mask"], 3, regularize=regularize,
               template_mean=x["template_mean"])
    logits, kl, kd = ref_head(head, x, 1 if head.deterministic else 3, regularize, seed=7)
    assert out.logits.shape == logits.shape
    assert torch.allclose(f64(out.logits), logits, rtol=1e-5, atol=1e-4), (f64(out.logits) - logits).abs().max()
    assert out.kl.item() == pytest.approx(kl.item(), rel=1e-5, abs=1e-6)
    assert out.kd.item() == pytest.approx(kd.item(), rel=1e-5)


def test_kd_equals_the_official_template_by_sample_similarity():
    """The official term: sims = stack_m(P [n, K, d] @ z_m^T) -> [M, n, K, n], mean over K then M, CE with
    target c; on non-symmetric inputs, where the transposed matrix gives another value."""
    g = torch.Generator().manual_seed(3)
    n, k, d, m = 3, 4, 5, 6
    per_template = F.normalize(torch.randn(n, k, d, generator=g, dtype=torch.float64), dim=-1)
    samples = torch.randn(m, n, d, generator=g, dtype=torch.float64)
    sims = torch.stack([per_template @ samples[r].T for r in range(m)]).mean(dim=2).mean(dim=0)  # [n, n]
    expected = -torch.stack([torch.log_softmax(sims[c], dim=0)[c] for c in range(n)]).mean()
    got = language_aware_kd(per_template.mean(dim=1).float(), samples.float())
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    transposed = -torch.stack([torch.log_softmax(sims.T[c], dim=0)[c] for c in range(n)]).mean()
    assert abs(transposed.item() - expected.item()) > 1e-2  # the case tells the two apart


def test_kl_is_averaged_over_classes_and_summed_over_dims_by_hand():
    """Two classes, three dims: class 0 has mu (1, 0, 0) and sigma 2 in its last dim, class 1 mu (0, 2, 0).
    Per element 0.5 (sigma^2 + mu^2 - 1) - log sigma: class 0 = 0.5 + (1.5 - log 2), class 1 = 2;
    mean over classes = 2 - log(2) / 2 (summing over classes and averaging over dims would give (4 - log 2) / 3)."""
    mu = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    sigma = torch.tensor([[1.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    assert kl_to_standard_normal(mu, sigma).item() == pytest.approx(2 - math.log(2) / 2)


def test_shared_adapter_is_reinitialised_every_task_only_when_asked():
    """The official code re-runs the language-aware init of the single shared adapter at every task (P15)."""
    head, x = make_head(task_specific_adapters=False, reinit_shared_adapter=True)
    with torch.no_grad():
        head.adapters[0].mu.weight.fill_(0.5)
    head.grow(2, x["template_mean"], x["template_variance"])
    expected = x["template_mean"].T @ x["template_mean"] / D
    assert len(head.adapters) == 1 and torch.allclose(head.adapters[0].mu.weight, expected, atol=1e-6)


@pytest.mark.parametrize("rule", ["random", "task"])
def test_data_driven_prior_context_rules(rule, monkeypatch):
    """``random`` (the official call): a random ceil(0.67 B) of the batch, whatever the labels; ``task``: the
    batch's images of the task's classes, a random share when they are all of them, N(0, I) when there are none."""
    head, x = make_head(prior="data_driven", prior_context=rule)
    head.eval()
    contexts = []
    real = head.visual_guided

    def spy(text, images, mask, slices=()):
        contexts.append(images)
        return real(text, images, mask, slices)

    monkeypatch.setattr(head, "visual_guided", spy)
    images = x["images"]  # task 1 holds classes 3, 4, 5
    for labels, in_task in (([3, 4, 0, 1], [0, 1]), ([0, 1, 2, 0], []), ([3, 4, 5, 3], None)):
        contexts.clear()
        out = head(images, x["text"], x["task_slices"], x["task_mask"], 2, regularize=(1,),
                   template_mean=x["template_mean"], labels=torch.tensor(labels))
        assert torch.isfinite(out.kl) and torch.equal(contexts[0], images)  # the batch's own pass first
        if rule == "task" and in_task == []:
            assert len(contexts) == 1  # no context: the standard normal prior
        elif rule == "task" and in_task:
            assert len(contexts) == 2 and torch.equal(contexts[1], images[in_task])
        else:
            rows = {tuple(r.tolist()) for r in images}
            assert len(contexts) == 2 and len(contexts[1]) == math.ceil(0.67 * 4)
            assert {tuple(r.tolist()) for r in contexts[1]} <= rows
