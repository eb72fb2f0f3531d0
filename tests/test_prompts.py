"""Prompt variants (§3): every registered variant runs in the learner, VI and w/o VI, and each trains what it
declares. Tests parametrised over the registry cover a new registry entry automatically."""

from __future__ import annotations

import hashlib
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from phase_recorder import PhaseRecorder

from clapray import phases
from clapray.config import PROMPT_VARIANTS, MethodConfig, PromptConfig, VGAConfig, load_run_config
from clapray.errors import ConfigError, UserError
from clapray.learner import ContinualLearner
from clapray.model.clap import ClapHead
from clapray.model.prompts import TowerDims, load_all_variants
from clapray.model.vga import task_attention_mask

# A 3-task shapes scenario on the tiny random-weight backbone, set field by field (independent of the
# shipped tiny config).
TINY = ["backbone.model=clapray-tiny-vit", "backbone.pretrained=null", "device=cpu", "data.dataset=shapes",
        "data.num_workers=0", "data.shapes.num_classes=6", "data.shapes.train_per_class=4",
        "data.shapes.test_per_class=2", "data.shapes.image_size=32", "data.num_tasks=3", "optim.epochs=1",
        "optim.batch_size=4", "method.mc_samples_train=2", "method.mc_samples_eval=2", "method.vga.ff_dim=32",
        "memory.policy=per_class", "memory.size=1", "method.consolidation.epochs=1", "seeds.init=0",
        "seeds.class_order=0"]
PROMPT_REGISTRY = load_all_variants()
VARIANTS = list(PROMPT_REGISTRY)
LEARNING = [v for v in VARIANTS if PROMPT_REGISTRY[v].spec.learns]


def config(variant: str, *overrides: str):
    return load_run_config(None, [*TINY, f"method.variant={variant}", *overrides])


def clones(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def comparable(result) -> str:
    data = result.to_dict()
    data.pop("timings"), data.pop("peak_memory_mb")
    return json.dumps(data, sort_keys=True)


def first_batch(learner: ContinualLearner, task: int = 0, size: int = 4):
    """Training images (with labels) of ``task``, in index order."""
    loader = learner._loader(learner.scenario.train_indices(task), learner.backbone.preprocess, size)
    images, labels, _ = next(iter(loader))
    return images, labels


def all_images(learner: ContinualLearner) -> torch.Tensor:
    indices = np.concatenate([learner.scenario.train_indices(t) for t in range(learner.num_tasks)])
    loader = learner._loader(indices, learner.backbone.preprocess, len(indices))
    return next(iter(loader))[0]


def prepare_step(learner: ContinualLearner, task: int = 0):
    """What ``_fit`` does before its first step: grow the head and make only main training's parameters trainable."""
    setup = learner.setup_task(task)
    params = learner.phase_parameters(phases.main_training(task, learner.cfg), setup)
    for p in learner._learnable():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    learner.head.train()
    learner.prompt.train()
    return setup, params


# --------------------------------------------------------------------------------------------------
# The registry


def test_registry_is_the_configs_list_and_every_variant_is_sweepable():
    assert list(PROMPT_REGISTRY) == list(PROMPT_VARIANTS)
    for name, cls in PROMPT_REGISTRY.items():
        assert cls.name == name and cls.spec.summary and cls.spec.label and cls.spec.name == name
    # The feature cache may only stand in for the frozen tower: MaPLe is the one variant that prompts it.
    assert {n for n, c in PROMPT_REGISTRY.items() if not c.spec.image_tower_frozen} == {"maple"}
    assert {n for n, c in PROMPT_REGISTRY.items() if not c.spec.learns} == {"zeroshot"}


@pytest.mark.parametrize("deterministic", [False, True], ids=["VI", "wo_VI"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_runs_a_three_task_scenario(variant, deterministic, one_thread):
    learner = ContinualLearner(config(variant, f"method.deterministic={str(deterministic).lower()}"))
    towers = digest(learner.backbone.model)
    prompts = clones(learner.prompt)
    results = learner.run()
    assert [r.task for r in results] == [0, 1, 2]
    assert all(math.isfinite(r.last_acc) and math.isfinite(r.avg_acc) for r in results)
    assert digest(learner.backbone.model) == towers  # the towers never change
    final = results[-1].extra
    if not PROMPT_REGISTRY[variant].spec.learns:
        assert learner.head is None and final["trainable_params"] == 0 and final["n_steps"] == 0
        assert learner.final_trainable_parameter_count() == 0
        return
    assert final["n_steps"] > 0 and all(math.isfinite(v) for v in results[-1].losses.values())
    assert results[-1].extra["n_consolidation_steps"] > 0
    # After the last task the count so far is the final count written to `runs`.
    head = sum(p.numel() for p in learner.head.parameters())
    assert final["trainable_params"] == head + learner.prompt.learned_parameter_count()
    assert learner.final_trainable_parameter_count() == final["trainable_params"]
    assert (head == sum(p.numel() for p in learner.head.vga.parameters())
            + sum(p.numel() for p in learner.head.adapters.parameters())
            + (3 * learner.head.dim if learner.head.task_tokens is not None else 0))
    learned = learner.prompt.trainable_parameters()
    if learned:  # whatever the variant declares it trains has moved
        changed = [not torch.equal(a, b) for a, b in zip(prompts, clones(learner.prompt), strict=False)]
        assert any(changed)


def test_parameter_counts_at_vit_b16_dims():
    """Prompt parameters per variant, and VGA ~4.2M / adapters ~0.52M per task at d = 512 (§16.2), no weights."""
    dims = TowerDims.from_model_config("ViT-B-16")
    assert (dims.embed_dim, dims.text_width, dims.vision_width, dims.text_layers) == (512, 512, 768, 12)
    counts = {name: cls.parameter_count(dims, PromptConfig()) for name, cls in PROMPT_REGISTRY.items()}
    assert counts == {"handcrafted": 0, "zeroshot": 0, "coop": 12 * 512,
                      "maple": 2 * 512 + 8 * 2 * 512 + 9 * (512 * 768 + 768),  # 3,555,072
                      "attriclip": 10 * 512 + 10 * 12 * 512,  # 66,560
                      "cocoop": 12 * 512 + (512 * 32 + 32) + (32 * 512 + 512)}  # 39,456
    official = PromptConfig(maple_official_untrained=True)
    assert PROMPT_REGISTRY["maple"].parameter_count(dims, official) == 2 * 512
    for name in LEARNING:
        for deterministic in (False, True):
            method = MethodConfig(variant=name, deterministic=deterministic)
            head = ClapHead(512, 100.0, method, task_tokens=PROMPT_REGISTRY[name].spec.uses_task_tokens)
            assert sum(p.numel() for p in head.vga.parameters()) == 4_204_032  # ~4.2M, any head count
            zeros = torch.zeros(3, 512)
            head.grow(0, zeros, zeros)
            trainable = head.trainable(0, "current", "current")
            adapter = sum(p.numel() for p in head.adapters[0].parameters())
            heads = 1 if deterministic else 2
            layer_norms = heads * 2 * 512 if head.layer_norm else 0  # one LayerNorm(d) inside each head
            assert adapter == (512 * 512 + 512) * heads + layer_norms
            if name == "handcrafted" and not deterministic:
                assert adapter == 525_312  # ~0.52M per task
            if name in ("coop", "maple", "cocoop") and not deterministic:
                assert adapter == 527_360  # the official CoOp / MaPLe adapter pair
            tokens = 512 if PROMPT_REGISTRY[name].spec.uses_task_tokens else 0
            assert sum(p.numel() for p in trainable) == adapter + tokens


def test_prompted_towers_without_prompts_are_open_clips_towers(one_thread):
    """The re-sequenced towers equal open_clip's own encoders (and trimming the padding changes nothing)."""
    from clapray.model.prompts.towers import SlotPrompts, encode_images_with_prompts, encode_text_embeddings

    learner = ContinualLearner(config("handcrafted"))
    backbone = learner.backbone
    texts = ["a photo of a red circle.", "a blurry photo of the big blue square."]
    slots = SlotPrompts(backbone, texts, 2, field="test")
    assert slots.length < backbone.context_length  # trimmed to the longest prompt
    x = torch.cat([slots.prefix, slots.slots, slots.suffix], dim=1)  # each prompt's own words in its slots
    with torch.no_grad():
        assert torch.allclose(encode_text_embeddings(backbone, x, slots.pool), backbone.encode_texts(texts),
                              atol=1e-5)
        images, _ = first_batch(learner)
        none = torch.zeros(0, backbone.vision_width)
        assert torch.allclose(encode_images_with_prompts(backbone, images, none), backbone.encode_images(images),
                              atol=1e-5)


# --------------------------------------------------------------------------------------------------
# What each variant trains


def test_coop_context_gets_gradients_and_the_towers_do_not(one_thread):
    learner = ContinualLearner(config("coop"))
    setup, params = prepare_step(learner)
    ctx = learner.prompt.learned.ctx
    assert ctx.shape == (12, learner.backbone.text_width) and any(p is ctx for p in params)
    images, labels = first_batch(learner)
    loss, _ = learner.step_loss(images, labels, setup, (0,))
    loss.backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in learner.backbone.model.parameters())
    # CoOp's text features are those of every seen class, one batched pass, independent of the images.
    text = learner.prompt.text_features(setup.num_seen)
    assert text.queries.shape == (setup.num_seen, learner.backbone.embed_dim) and text.per_image is None
    consolidation = phases.consolidation(1, learner.cfg)
    assert consolidation is not None and consolidation.prompt and learner.prompt.trainable_parameters() == [ctx]


def test_maple_image_features_follow_its_prompts(one_thread):
    learner = ContinualLearner(config("maple"))
    prompt = learner.prompt
    assert prompt.depth == 2 and len(prompt.learned.deep_text) == 1  # depth 9 capped at the tiny towers' 2
    images, _ = first_batch(learner)
    with torch.no_grad():
        base = prompt.encode_images(images)
        assert not torch.allclose(base, learner.backbone.encode_images(images), atol=1e-4)
        for tensor in (prompt.learned.ctx, prompt.learned.deep_text[0], prompt.learned.deep_proj[0].weight):
            saved = tensor.clone()
            tensor.add_(torch.randn_like(tensor))
            assert not torch.allclose(prompt.encode_images(images), base, atol=1e-4)
            tensor.copy_(saved)
        assert torch.equal(prompt.encode_images(images), base)


@pytest.mark.parametrize("official", [False, True], ids=["trained", "official_untrained"])
def test_maple_deep_prompts_train_unless_the_official_flag(official, one_thread):
    learner = ContinualLearner(config("maple", f"method.prompt.maple_official_untrained={str(official).lower()}"))
    prompt = learner.prompt
    with torch.no_grad():
        shallow_before, deep_before = (t.clone() for t in (prompt.visual_prompts()[0], prompt.visual_prompts()[1][0]))
    ctx_before = prompt.learned.ctx.detach().clone()
    learner.learn_task(0)
    with torch.no_grad():
        shallow_after, deep_after = prompt.visual_prompts()[0], prompt.visual_prompts()[1][0]
    assert not torch.equal(prompt.learned.ctx, ctx_before)  # the shallow context always learns
    assert not torch.equal(shallow_after, shallow_before)  # ... and the image tower sees it through proj
    # The deep visual prompts (deep text prompts through their coupling layers) move only when trained.
    assert torch.equal(deep_after, deep_before) == official
    expected = prompt.learned.ctx.numel() if official else sum(p.numel() for p in prompt.learned.parameters())
    assert prompt.learned_parameter_count() == expected


def test_attriclip_selection_differs_across_images_and_is_batched_exactly(one_thread):
    learner = ContinualLearner(config("attriclip"))
    prompt = learner.prompt.eval()
    with torch.no_grad():
        x = prompt.encode_images(all_images(learner))  # 24 images of 6 classes
        selection = prompt.select(x)
        assert selection.shape == (len(x), 3)
        assert len(torch.unique(selection, dim=0)) > 1  # images choose different attributes
        text = prompt.text_features(4, x[:6])
        assert text.per_image.shape == (6, 4, learner.backbone.embed_dim)
        assert torch.allclose(text.queries, text.per_image.mean(dim=0))
        for b in range(6):  # the batched pass equals encoding each image's prompts alone
            alone = prompt.text_features(4, x[b:b + 1]).per_image[0]
            assert torch.allclose(text.per_image[b], alone, atol=1e-5)
        assert text.loss is None  # the extra losses are training-only


def test_attriclip_losses_weights_and_gradients(one_thread):
    learner = ContinualLearner(config("attriclip", "method.prompt.attriclip_ortho_weight=0.25",
                                      "method.prompt.attriclip_match_weight=2.0"))
    setup, params = prepare_step(learner)
    prompt = learner.prompt
    images, labels = first_batch(learner)
    x = prompt.encode_images(images)
    text = prompt.text_features(setup.num_seen, x)
    manual = 0.25 * prompt.orthogonality_loss() + 2.0 * prompt.matching_loss(x, prompt.select(x))
    assert torch.allclose(text.loss, manual)
    loss, terms = learner.step_loss(images, labels, setup, (0,))
    assert terms["prompt"] is not None and terms["prompt"] > 0
    loss.backward()
    assert prompt.learned.keys.grad.abs().sum() > 0 and prompt.learned.prompts.grad.abs().sum() > 0
    assert learner.head.task_tokens[0].grad.abs().sum() > 0
    assert setup.mask.shape == (setup.num_seen + 1, setup.num_seen + 1)  # one task token in VGA


def test_attriclip_task_tokens_grow_and_all_train_in_consolidation(monkeypatch, one_thread):
    """Main training of task 1 trains its own token only; consolidation (as the official code, which unfreezes
    every task token with the adapters) trains them all, and VGA too (AttriCLIP's quirk)."""
    recorder = PhaseRecorder(monkeypatch)
    learner = ContinualLearner(config("attriclip"))
    learner.learn_task(0)
    assert len(learner.head.task_tokens) == 1
    learner.learn_task(1)
    assert len(learner.head.task_tokens) == 2
    main, consolidate = ("train", 1), ("consolidate", 1)
    assert not recorder.moved(main, "head.task_tokens.0") and recorder.moved(main, "head.task_tokens.1")
    assert recorder.moved(consolidate, "head.task_tokens.0") and recorder.moved(consolidate, "head.task_tokens.1")
    assert recorder.moved(consolidate, "head.vga.") and all(c.vga_training for c in recorder.calls[consolidate])
    assert recorder.moved(consolidate, "prompt.") and learner.history[-1].losses["consolidation_prompt"] > 0
    spec = PROMPT_REGISTRY["attriclip"].spec
    assert spec.task_tokens_train_in_consolidation and phases.consolidation(1, learner.cfg).task_tokens == "all"
    assert all(phases.consolidation(1, config(v)).task_tokens == "none" for v in LEARNING if v != "attriclip")


def test_cocoop_context_differs_across_images_and_is_batched_exactly(one_thread):
    learner = ContinualLearner(config("cocoop"))
    setup, params = prepare_step(learner)
    prompt = learner.prompt
    images, labels = first_batch(learner)
    x = prompt.encode_images(images)
    ctx = prompt.conditioned_context(x)
    assert ctx.shape == (4, 12, learner.backbone.text_width)
    assert not torch.allclose(ctx[0], ctx[1])  # each image conditions its own context
    hidden = prompt.learned.meta_net[0].out_features
    assert hidden == learner.backbone.embed_dim // 16
    text = prompt.text_features(setup.num_seen, x)
    assert text.queries.shape == (4, setup.num_seen, learner.backbone.embed_dim)
    assert not torch.allclose(text.queries[0], text.queries[1])
    with torch.no_grad():
        for b in range(4):
            assert torch.allclose(text.queries[b], prompt.text_features(setup.num_seen, x[b:b + 1]).queries[0],
                                  atol=1e-5)
    loss, _ = learner.step_loss(images, labels, setup, (0,))
    loss.backward()
    assert prompt.learned.ctx.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompt.learned.meta_net.parameters())


# --------------------------------------------------------------------------------------------------
# The head's per-image text and task tokens


def test_head_per_image_queries_image_term_and_task_tokens():
    torch.manual_seed(0)
    d = 16
    head = ClapHead(d, 10.0, MethodConfig(vga=VGAConfig(ff_dim=32)), task_tokens=True).eval()
    stats = torch.randn(5, d), torch.rand(5, d) * 1e-4
    head.grow(0, *stats)
    head.grow(1, *stats)
    slices, task_of_class = ((0, 2), (2, 5)), np.array([0, 0, 1, 1, 1])
    mask = task_attention_mask(task_of_class, task_tokens=True)
    expected = torch.ones(7, 7, dtype=torch.bool)
    expected[np.ix_([0, 1, 5], [0, 1, 5])] = False
    expected[np.ix_([2, 3, 4, 6], [2, 3, 4, 6])] = False
    assert torch.equal(mask, expected)
    images, text = F.normalize(torch.randn(3, d), dim=-1), F.normalize(torch.randn(5, d), dim=-1)
    # A task token reaches only its own task's classes.
    h = head.visual_guided(text, images, mask, slices)
    with torch.no_grad():
        head.task_tokens[1].add_(1.0)
    h_changed = head.visual_guided(text, images, mask, slices)
    assert torch.allclose(h[:2], h_changed[:2], atol=1e-6) and not torch.allclose(h[2:], h_changed[2:], atol=1e-4)
    # The image-specific term adds s <x_b, t_{b,c}> to every sample's logits.
    image_text = torch.randn(3, 5, d)
    torch.manual_seed(1)
    plain = head(images, text, slices, mask, 4).logits
    torch.manual_seed(1)
    with_term = head(images, text, slices, mask, 4, image_text=image_text).logits
    term = 10.0 * torch.einsum("bd,bcd->bc", images, image_text)  # [B, C], the same for every sample
    assert torch.allclose(with_term - plain, term[None].expand(4, -1, -1), atol=1e-4)
    # Per-image queries [B, C, d] give per-image class embeddings, in both VGA contexts.
    for context in ("batch", "image"):
        per_image = ClapHead(d, 10.0, MethodConfig(vga=VGAConfig(ff_dim=32, context=context))).eval()
        per_image.grow(0, *stats)
        per_image.grow(1, *stats)
        out = per_image(images, text[None].repeat(3, 1, 1), slices, task_attention_mask(task_of_class), 4,
                        regularize=(0, 1), template_mean=stats[0])
        assert out.logits.shape == (4, 3, 5) and torch.isfinite(out.kl) and torch.isfinite(out.kd)


# --------------------------------------------------------------------------------------------------
# Checkpoints, zero-shot, user errors, runs table


@pytest.mark.parametrize("variant", LEARNING)
def test_resume_restores_the_prompt_parameters(variant, tmp_path, one_thread):
    cfg = config(variant)
    uninterrupted = [comparable(r) for r in ContinualLearner(cfg).run()]
    interrupted = ContinualLearner(cfg)
    interrupted.learn_task(0)
    interrupted.learn_task(1)
    interrupted.save(tmp_path / "checkpoint.pt")
    torch.manual_seed(1234)
    resumed = ContinualLearner(cfg)
    resumed.load(tmp_path / "checkpoint.pt")
    assert all(torch.equal(a, b) for a, b in zip(clones(resumed.prompt), clones(interrupted.prompt), strict=True))
    assert [comparable(r) for r in resumed.run()] == uninterrupted


def test_zeroshot_variant_in_the_learner_is_clip_zero_shot_classification(one_thread):
    # Computed here independently of the learner: encode every evaluation image with the frozen tower,
    # classify it among the template-ensemble text features of the classes seen so far.
    from clapray.model.text_features import template_text_features

    cfg = config("zeroshot")
    learner = ContinualLearner(cfg)
    results = learner.run()
    scenario, backbone = learner.scenario, learner.backbone
    text = template_text_features(backbone, scenario.class_names, scenario.benchmark.templates).mean
    for step, result in enumerate(results):
        n_seen = scenario.task_bounds(step)[1]
        expected = []
        for j in range(step + 1):
            images = torch.stack([backbone.preprocess(scenario.eval_split[int(i)][0])
                                  for i in scenario.eval_indices(j)])
            targets = torch.as_tensor(np.asarray(scenario.eval_targets)[scenario.eval_indices(j)])
            logits = backbone.encode_images(images) @ text[:n_seen].T
            expected.append(100.0 * (logits.argmax(1) == targets).float().mean().item())
        assert result.accuracy_row == pytest.approx(expected, abs=1e-9)
        assert result.losses == {} and result.extra["n_steps"] == 0


def test_bad_prompt_options_fail_with_one_line_naming_the_field(one_thread):
    with pytest.raises(ConfigError, match=r"method\.variant: expected one of handcrafted, coop"):
        config("copo")
    with pytest.raises(ConfigError, match=r"method\.prompt\.attriclip_top_k: expected an integer <= "):
        config("attriclip", "method.prompt.attriclip_top_k=11")
    with pytest.raises(ConfigError, match=r"method\.prompt\.n_ctx: expected an integer >= 1"):
        config("coop", "method.prompt.n_ctx=0")
    with pytest.raises(UserError, match=r"^method\.prompt\.n_ctx: the prompts need \d+ tokens"):
        ContinualLearner(config("coop", "method.prompt.n_ctx=80"))  # the text tower takes 77
    with pytest.raises(UserError, match=r"^method\.prior: data_driven is not available with variant cocoop"):
        ContinualLearner(config("cocoop", "method.prior=data_driven"))


def test_runs_table_counts_what_the_variant_trains(tmp_path, one_thread):
    from clapray.run import main

    counts = {}
    for official in ("false", "true"):
        store = tmp_path / official
        overrides = [*TINY, "method.variant=maple", f"method.prompt.maple_official_untrained={official}",
                     "data.num_tasks=2", "data.shapes.num_classes=4", "eval.phndd=false"]
        assert main(["tiny", "--out", str(store), *sum((["--set", s] for s in overrides), [])]) == 0
        counts[official] = int(pd.read_parquet(store / "runs").loc[0, "trainable_params"])
    dims = TowerDims.from_model_config("clapray-tiny-vit")
    deep = (PROMPT_REGISTRY["maple"].parameter_count(dims, PromptConfig())
            - PROMPT_REGISTRY["maple"].parameter_count(dims, PromptConfig(maple_official_untrained=True)))
    assert deep > 0 and counts["false"] - counts["true"] == deep


# --------------------------------------------------------------------------------------------------
# The benchmark


ROW = re.compile(r"^(?P<backbone>\S+)\s+(?P<variant>\S+)\s+(?P<head>VI|w/o VI|-)\s+(?P<params>[\d,]+)\s+"
                 r"(?P<prompt>[\d,]+)\s+(?P<train>[\d.]+|-)\s+(?P<eval>[\d.]+)\s+(?P<memory>[\d.]+|-)$")


def test_bench_variants_prints_every_variant_and_head(capsys, one_thread):
    from clapray.bench.__main__ import main

    assert main(["variants", "--backbone", "clapray-tiny-vit", "--batch", "2", "--classes", "3", "--steps", "1",
                 "--mc-samples", "2", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [m.groupdict() for m in map(ROW.match, lines) if m]
    assert {(r["variant"], r["head"]) for r in rows} == (
        {(v, h) for v in LEARNING for h in ("VI", "w/o VI")} | {("zeroshot", "-")})
    assert len(rows) == 2 * len(LEARNING) + 1
    dims = TowerDims.from_model_config("clapray-tiny-vit")
    for r in rows:
        assert int(r["prompt"].replace(",", "")) == PROMPT_REGISTRY[r["variant"]].parameter_count(dims, PromptConfig())
        assert float(r["eval"]) > 0
        if r["variant"] == "zeroshot":
            assert r["train"] == "-" and r["params"] == "0"
        else:
            assert float(r["train"]) > 0 and float(r["memory"]) > 0
    with pytest.raises(SystemExit) as exit_info:
        main(["variants", "--variants", "handcrafted,copo"])
    assert exit_info.value.code == 2


def test_maple_official_flag_leaves_eval_text_features_unnormalised(one_thread):
    for official in (False, True):
        flag = f"method.prompt.maple_unnormalised_eval_text={str(official).lower()}"
        learner = ContinualLearner(config("maple", flag))
        prompt = learner.prompt
        with torch.no_grad():
            trained = prompt.train().text_features(4).queries
            evaluated = prompt.eval().text_features(4).queries
        ones = torch.ones(4)
        assert torch.allclose(trained.norm(dim=-1), ones, atol=1e-5)  # training always normalises
        if official:
            assert not torch.allclose(evaluated.norm(dim=-1), ones, atol=1e-2)
            assert torch.allclose(F.normalize(evaluated, dim=-1), trained, atol=1e-5)
        else:
            assert torch.allclose(evaluated, trained, atol=1e-6)


def test_coop_raw_class_names_keep_their_underscores(one_thread):
    from clapray.model.prompts.cocoop import CoCoOpPrompts
    from clapray.model.prompts.coop import CoOpPrompts, context_prompts
    from clapray.model.text_features import template_text_features

    assert context_prompts(["sea_lion"], 2) == ["X X sea lion."]
    assert context_prompts(["sea_lion"], 2, raw_names=True) == ["X X sea_lion."]
    backbone = ContinualLearner(config("coop")).backbone
    names = ["sea_lion", "oak_tree", "castle"]
    templates = template_text_features(backbone, names, ["a photo of a {}."])
    for cls in (CoOpPrompts, CoCoOpPrompts):
        plain, raw = (cls(backbone, templates, PromptConfig(n_ctx=2, coop_raw_class_names=flag))
                      for flag in (False, True))
        # "sea_lion" tokenises to one more token ("_") than "sea lion": the end token moves one position right.
        assert (raw.prompts.pool - plain.prompts.pool).tolist() == [1, 1, 0]


@pytest.mark.parametrize("variant", LEARNING)
def test_fp16_precision_trains_half_modules(variant, monkeypatch, one_thread):
    """``backbone.precision: fp16`` makes VGA, adapters, task tokens and prompts half parameters trained in
    fp16, as the official code (GPU only in a run; the module path is checked here on CPU half kernels)."""
    import clapray.learner as learner_module

    monkeypatch.setattr(learner_module, "trainable_dtype", lambda cfg, device: torch.float16)
    learner = ContinualLearner(config(variant, "budget.max_steps_per_task=2"))
    before = clones(learner.prompt.learned)
    results = [learner.learn_task(0), learner.learn_task(1)]
    params = [*learner.head.parameters(), *learner.prompt.learned.parameters()]
    assert params and all(p.dtype == torch.float16 for p in params)
    assert all(math.isfinite(v) for r in results for v in r.losses.values())
    assert all(math.isfinite(r.last_acc) for r in results)
    if learner.prompt.trainable_parameters():
        assert any(not torch.equal(a, b) for a, b in zip(before, clones(learner.prompt.learned), strict=True))
