"""The CLIP stand-in: class split, captions, tiny pretraining runs, cache reuse, CLI; a slow quality test."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import open_clip
import pytest
import torch

import clapray.pretrain as cli
from clapray.errors import UserError
from clapray.model import load_backbone
from clapray.shapes import captions, pool
from clapray.shapes import mini_clip as mc
from clapray.shapes import pretrain as pt
from clapray.shapes.attributes import COLOURS, SHAPES, all_shape_classes, sample_attributes, shape_class
from clapray.shapes.benchmark import CONTINUAL_CLASSES, PRETRAIN_CLASSES
from clapray.shapes.evaluate import evaluate

REPO_ROOT = Path(__file__).resolve().parents[1]
# A run of a few seconds: 84 classes x 2 images, batch 16, 3 steps.
TINY = dict(steps=3, images_per_class=2, batch_size=16, warmup_steps=1)


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------------
# Class split


def test_class_split_is_disjoint_and_compositional():
    cl, pre = CONTINUAL_CLASSES, PRETRAIN_CLASSES
    plain = all_shape_classes(len(COLOURS) * len(SHAPES))
    assert len(cl) >= 50 and len(cl) == 60
    assert not set(cl) & set(pre)
    assert sorted(cl + pre) == sorted(plain)
    assert len(set(cl)) == len(cl) and len(set(pre)) == len(pre)
    # Every colour and every shape is seen in pretraining, through other combinations.
    assert {shape_class(n).colour for n in pre} == set(COLOURS)
    assert {shape_class(n).shape for n in pre} == set(SHAPES)
    # Balanced: each colour and each shape is held out equally often.
    assert set(Counter(shape_class(n).colour for n in cl).values()) == {5}
    assert set(Counter(shape_class(n).shape for n in cl).values()) == {5}
    # Stable order: the canonical one (the CL set is a prefix, so it contains the default shapes classes).
    assert list(cl) == plain[: len(cl)]
    assert set(all_shape_classes(50)) <= set(cl)
    assert pool.continual_classes() == cl and pool.pretrain_classes() == pre


def test_patterned_pretraining_classes_never_name_a_continual_combination():
    cl = set(CONTINUAL_CLASSES)
    extra = pool.pretrain_classes(patterned=True)[len(PRETRAIN_CLASSES):]
    assert len(extra) == 3 * len(PRETRAIN_CLASSES)
    for name in extra:
        c = shape_class(name)
        assert c.pattern != "plain" and f"{c.colour} {c.shape}" not in cl


# --------------------------------------------------------------------------------------------------
# Captions


def test_captions_contain_the_class_phrase_and_vary():
    phrasings = set()
    for name in PRETRAIN_CLASSES[::7] + pool.PATTERNED_PRETRAIN_CLASSES[::40]:
        for k in range(25):
            attrs = sample_attributes(3, "train", name, k)
            caption = captions.compose_caption(attrs, captions.caption_variant(3, name, k))
            assert name in caption, caption
            assert caption == captions.compose_caption(attrs, captions.caption_variant(3, name, k))  # deterministic
            assert " a a" not in caption and "a o" not in caption.replace("an o", "")
            phrasings.add(caption.replace(name, "{}"))
    assert len(phrasings) > 50


def test_caption_uses_the_attributes():
    attrs = sample_attributes(0, "train", "red triangle", 0)
    phrasings = {captions.compose_caption(attrs, v) for v in range(400)}
    text = " ".join(phrasings)
    for word in (attrs.size, attrs.background_colour, "red triangle"):
        assert word in text
    assert any(c.startswith("a photo of a red triangle") for c in phrasings)
    assert any("an orange" in captions.compose_caption(sample_attributes(0, "train", "orange heart", k), 0)
               for k in range(3))


def test_pretraining_captions_never_name_a_continual_class():
    pairs = pool.render_pool(pt.make_settings(images_per_class=3), 32, open_clip.get_tokenizer(pt.MODEL_NAME))
    for caption in pairs.captions:
        assert not any(f" {name}" in f" {caption}" for name in CONTINUAL_CLASSES), caption


def test_a_caption_can_leave_the_shape_unnamed():
    attrs = sample_attributes(3, "train", "red square", 4)
    for variant in range(60):
        caption = captions.compose_caption(attrs, variant, name_shape=False)
        assert "red " in caption and "square" not in caption, caption
        assert any(f"red {noun}" in caption for noun in captions.GENERIC_SHAPE_NOUNS), caption
        assert caption == captions.compose_caption(attrs, variant, name_shape=False)  # deterministic


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 1.0])
def test_the_shape_is_named_in_the_set_fraction_of_captions(rate):
    named = [captions.mentions_shape(0, name, k, rate) for name in PRETRAIN_CLASSES for k in range(20)]
    assert abs(sum(named) / len(named) - rate) < 0.03, (rate, sum(named) / len(named))
    assert named == [captions.mentions_shape(0, name, k, rate) for name in PRETRAIN_CLASSES for k in range(20)]
    pairs = pool.render_pool(pt.make_settings(images_per_class=2, shape_mention_rate=rate), 32,
                             open_clip.get_tokenizer(pt.MODEL_NAME))
    with_shape = [bool(set(c.rstrip('.').replace(',', ' ').split()) & set(SHAPES)) for c in pairs.captions]
    if rate in (0.0, 1.0):
        assert all(w == bool(rate) for w in with_shape)


def test_the_pool_labels_every_image_with_its_shape_and_colour():
    pairs = pool.render_pool(pt.make_settings(images_per_class=2), 32, open_clip.get_tokenizer(pt.MODEL_NAME))
    assert pairs.shape_ids.shape == pairs.colour_ids.shape == (len(pairs),)
    for name, shape, colour in zip(pairs.class_names, pairs.shape_ids.tolist(), pairs.colour_ids.tolist(), strict=True):
        assert (SHAPES[shape], list(COLOURS)[colour]) == (shape_class(name).shape, shape_class(name).colour)


def test_truncated_text_encoder_matches_open_clip():
    torch.manual_seed(0)
    model = open_clip.create_model(pt.MODEL_NAME).eval()
    tokens = open_clip.get_tokenizer(pt.MODEL_NAME)(["a photo of a red triangle.", "the blue star shape."])
    length = int(tokens.argmax(dim=-1).max()) + 1
    with torch.no_grad():
        full = model.encode_text(tokens)
        short = pt.encode_text(model, tokens[:, :length])
    torch.testing.assert_close(short, full, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Settings and cache location


def test_settings_key_and_validation(monkeypatch, tmp_path):
    base = pt.make_settings()
    assert base.key() == pt.make_settings().key()
    assert len({base.key(), pt.make_settings(seed=1).key(), pt.make_settings(steps=5).key()}) == 3
    with pytest.raises(UserError, match="unknown setting"):
        pt.make_settings(stpes=3)
    with pytest.raises(UserError, match="steps"):
        pt.make_settings(steps=0)
    with pytest.raises(UserError, match="model_name"):
        pt.make_settings(model_name="no-such-model")
    for field, value in (("shape_mention_rate", 1.5), ("shape_mention_rate", -0.1), ("attribute_weight", -1),
                         ("attribute_weight", True)):
        with pytest.raises(UserError, match=field):
            pt.make_settings(**{field: value})
    assert base.key() != pt.make_settings(shape_mention_rate=1.0).key() != pt.make_settings(attribute_weight=0).key()

    monkeypatch.setenv(mc.CACHE_ENV, str(tmp_path / "c"))
    assert mc.default_cache_dir() == tmp_path / "c" / "mini-clip"
    assert mc.checkpoint_path(base).parent.parent == tmp_path / "c" / "mini-clip"
    assert mc.checkpoint_path(base, tmp_path / "d") == tmp_path / "d" / base.key() / "model.pt"
    monkeypatch.delenv(mc.CACHE_ENV)
    assert mc.default_cache_dir() == Path.home() / ".cache" / "clapray" / "mini-clip"


# --------------------------------------------------------------------------------------------------
# Tiny pretraining runs


def test_tiny_run_loads_is_reused_and_is_deterministic(tmp_path, monkeypatch):
    rng_before = torch.get_rng_state()
    path = mc.ensure_mini_clip(tmp_path / "a", threads=1, **TINY)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone
    assert path == mc.checkpoint_path(pt.make_settings(**TINY), tmp_path / "a") and path.is_file()
    assert (path.parent / mc.INFO_NAME).is_file()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]

    backbone = load_backbone(pt.MODEL_NAME, pretrained=str(path))
    state = torch.load(path, weights_only=True)
    assert set(state) == set(backbone.model.state_dict())
    torch.testing.assert_close(backbone.model.state_dict()["text_projection"], state["text_projection"])
    assert backbone.context_length == backbone.tokenize(["a red star"]).shape[1]
    evaluation = evaluate(backbone, CONTINUAL_CLASSES[:6], train_per_class=2, test_per_class=2)
    assert evaluation.num_classes == 6 and 0 <= evaluation.zero_shot_acc <= 100
    assert 0 <= evaluation.ncm_acc <= 100 and -1 <= evaluation.mean_cosine <= 1
    assert "chance 16.7%" in evaluation.summary()

    # Reuse: no retraining, the file is untouched.
    stat, data = path.stat(), path.read_bytes()

    def no_training(*args, **kwargs):
        raise AssertionError("pretrain() called although the checkpoint is cached")

    monkeypatch.setattr(mc, "pretrain", no_training)
    assert mc.ensure_mini_clip(tmp_path / "a", threads=1, **TINY) == path
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.read_bytes() == data
    monkeypatch.undo()

    # Determinism: the same settings elsewhere give the same bytes; another seed does not.
    again = mc.ensure_mini_clip(tmp_path / "b", threads=1, **TINY)
    assert again.read_bytes() == data
    other = mc.ensure_mini_clip(tmp_path / "b", threads=1, **{**TINY, "seed": 1})
    assert other != again and other.read_bytes() != data

    # --force retrains in place and, being deterministic, writes the same bytes again.
    forced = mc.ensure_mini_clip(tmp_path / "a", force=True, threads=1, **TINY)
    assert forced == path and path.read_bytes() == data


def test_training_lowers_the_loss_and_restores_the_caller_settings():
    torch.use_deterministic_algorithms(False)
    settings = pt.make_settings(**{**TINY, "steps": 24, "warmup_steps": 4})
    result = pt.pretrain(settings, threads=1, log=None)
    assert not torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 1
    assert result.pool_size == 2 * len(PRETRAIN_CLASSES) and len(result.losses) == 24
    # A batch of 16 starts near chance, ln(16) = 2.77, and the loss falls as colours are picked up.
    assert result.losses[0] > 2.5
    assert sum(result.losses[-6:]) / 6 < sum(result.losses[:6]) / 6 - 0.1, result.losses
    assert 1.0 <= result.logit_scale <= 100.0


def test_the_attribute_loss_joins_the_contrastive_loss_and_trains_the_tower():
    """Same init and first batch with and without the attribute heads: the first losses differ by the
    heads' cross-entropy (about ln 12 at random prototypes), and the trained towers differ."""
    plain = pt.pretrain(pt.make_settings(**{**TINY, "steps": 2, "attribute_weight": 0.0}), threads=1, log=None)
    heads = pt.pretrain(pt.make_settings(**{**TINY, "steps": 2, "attribute_weight": 1.0}), threads=1, log=None)
    assert 1.8 < heads.losses[0] - plain.losses[0] < 4.0, (heads.losses, plain.losses)
    assert set(heads.state_dict) == set(plain.state_dict)  # the heads are not part of the checkpoint
    visual = [k for k in plain.state_dict if k.startswith("visual.")]
    assert any(not torch.equal(plain.state_dict[k], heads.state_dict[k]) for k in visual)


def test_concurrent_callers_train_once(tmp_path, monkeypatch):
    calls = []
    real = pt.pretrain

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(mc, "pretrain", counting)
    paths: list[Path] = []
    workers = [threading.Thread(target=lambda: paths.append(mc.ensure_mini_clip(tmp_path, threads=1, **TINY)))
               for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(paths) == 2 and paths[0] == paths[1] and len(calls) == 1
    load_backbone(pt.MODEL_NAME, pretrained=str(paths[0]))


# --------------------------------------------------------------------------------------------------
# Command line


def test_cli_reuses_a_cached_checkpoint(tmp_path, capsys, monkeypatch):
    settings = pt.make_settings(steps=1)
    path = mc.checkpoint_path(settings, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"cached")
    monkeypatch.setattr(mc, "pretrain", lambda *a, **k: pytest.fail("retrained a cached checkpoint"))
    assert cli.main(["--steps", "1", "--cache-dir", str(tmp_path), "--no-eval"]) == 0
    out = capsys.readouterr().out
    assert "reusing" in out and str(path) in out.splitlines()
    assert path.read_bytes() == b"cached"


def test_cli_errors_are_one_line(tmp_path, capsys):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "clapray.pretrain", "--cache-dir", str(tmp_path), "--steps", "0"]
    proc = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "steps" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--cache-dir", str(tmp_path), "--threads", "0"])
    assert exit_info.value.code == 2 and "--threads" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------------
# Quality (slow: the full default pretraining, a few minutes)


@pytest.mark.slow
def test_default_pretraining_transfers_to_the_continual_classes(mini_clip_cache):
    torch.set_num_threads(2)
    path = mc.ensure_mini_clip(Path(mini_clip_cache) / "mini-clip")
    backbone = load_backbone(pt.MODEL_NAME, pretrained=str(path))
    result = evaluate(backbone)
    torch.manual_seed(0)
    random = evaluate(load_backbone(pt.MODEL_NAME))
    assert result.num_classes == len(CONTINUAL_CLASSES)
    # Chance is 1.7%; the default run measured 29.5% zero-shot, 28.2% nearest-class-mean and a mean
    # inter-class cosine of 0.05 (the random model: 2.3%, 3.8% and 0.73).
    assert result.zero_shot_acc > 15.0, result.summary()
    assert result.ncm_acc > 15.0, result.summary()
    assert result.mean_cosine < 0.3 < random.mean_cosine, (result.summary(), random.summary())


@pytest.mark.slow
def test_the_shipped_scenario_leaves_a_learner_headroom(mini_clip_cache):
    """The relation real CLIP has to CIFAR-100: zero-shot well above chance but far below what a head
    trained on the frozen features reaches (what ``python -m clapray.bench headroom`` prints)."""
    from clapray.builders import build_backbone, build_scenario_from_config
    from clapray.config import load_run_config, shipped_config_paths
    from clapray.shapes.evaluate import scenario_headroom

    torch.set_num_threads(2)
    cfg = load_run_config(shipped_config_paths()["shapes_cl"], [f"backbone.cache_dir={mini_clip_cache}"])
    result = scenario_headroom(build_backbone(cfg), build_scenario_from_config(cfg))
    assert 40.0 <= result.zero_shot_acc <= 75.0, result.lines()
    assert result.linear_probe_acc >= 90.0, result.lines()
    assert result.ncm_acc > result.zero_shot_acc, result.lines()


def test_the_clapray_shapes_tag_resolves_to_the_cached_checkpoint(tmp_path, monkeypatch):
    from clapray.builders import MINI_CLIP_TAG, resolve_pretrained
    from clapray.config import load_run_config

    cfg = load_run_config(None, [f"backbone.pretrained={MINI_CLIP_TAG}", "backbone.model=clapray-tiny-vit"])
    with pytest.raises(UserError, match="backbone.pretrained: clapray-shapes is the pretraining of"):
        resolve_pretrained(cfg)
    # With a checkpoint in place (here a tiny one) the tag resolves to it without training anything.
    monkeypatch.setattr(mc, "make_settings", lambda **overrides: pt.PretrainSettings(**TINY).validate())
    path = mc.ensure_mini_clip(tmp_path / "mini-clip")
    cfg = load_run_config(None, [f"backbone.pretrained={MINI_CLIP_TAG}", f"backbone.model={pt.MODEL_NAME}",
                                 f"backbone.cache_dir={tmp_path}"])
    assert resolve_pretrained(cfg) == str(path)
    assert load_run_config(None, ["backbone.pretrained=openai"]).backbone.pretrained == "openai"
    assert resolve_pretrained(load_run_config(None, ["backbone.pretrained=openai"])) == "openai"
