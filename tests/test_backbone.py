"""Tests of the frozen open_clip backbone and the hand-crafted template features (CPU, no network)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image
from torch import nn

import clapray.model as cm
from clapray.errors import UserError, WeightsUnavailableError
from clapray.model import load_backbone, template_text_features
from clapray.model.catalog import model_configs, resolve_model_name

TINY = "clapray-tiny-vit"
CONFIG_FILES = sorted(Path(cm.CONFIG_DIR).glob("*.json"))
REPO_ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def offline(monkeypatch):
    """Hub offline mode plus a resolver that refuses every host, so nothing can wait on the network.

    huggingface_hub reads HF_HUB_OFFLINE once at import, so the module constant is patched as well as
    the environment variable.
    """
    from huggingface_hub import constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)


@pytest.fixture(scope="module", autouse=True)
def import_probe():
    """A fresh interpreter importing clapray.model, started once and checked by the last test.

    Importing torch and open_clip takes seconds; running it beside the other tests hides that cost.
    """
    code = "import clapray.model, sys; assert 'ray' not in sys.modules and 'optuna' not in sys.modules"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_backbone(TINY)


def _single_line(err: BaseException) -> str:
    text = str(err)
    assert text and "\n" not in text and "\r" not in text, repr(text)
    return text


# --------------------------------------------------------------------------------------------------
# bundled configs
# --------------------------------------------------------------------------------------------------


def test_configs_are_shipped():
    assert CONFIG_FILES, "no bundled model configs"
    assert all(p.stem.startswith("clapray-") for p in CONFIG_FILES)
    assert set(cm.bundled_model_names()) == {p.stem for p in CONFIG_FILES}
    assert TINY in cm.bundled_model_names()


@pytest.mark.parametrize("config_path", CONFIG_FILES, ids=lambda p: p.stem)
def test_bundled_config_loads_frozen_and_encodes(config_path: Path):
    cfg = json.loads(config_path.read_text())
    torch.manual_seed(0)
    bb = load_backbone(config_path.stem)

    # Standard CLIP text tower, as prompt-learning variants need it.
    assert isinstance(bb.model, open_clip.CLIP)
    for attr in ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection"):
        assert getattr(bb.model, attr) is not None, attr

    # Dimensions are read from the model and agree with the config.
    assert bb.embed_dim == cfg["embed_dim"] == bb.model.text_projection.shape[1] == bb.model.visual.output_dim
    assert bb.text_width == cfg["text_cfg"]["width"]
    resnet_tower = isinstance(cfg["vision_cfg"]["layers"], list)  # open_clip's ModifiedResNet: layers per stage
    assert bb.vision_width == (None if resnet_tower else cfg["vision_cfg"]["width"])
    assert bb.image_size == cfg["vision_cfg"]["image_size"]
    assert bb.context_length == cfg["text_cfg"]["context_length"]
    assert bb.tokenize(["a red circle"]).shape == (1, bb.context_length)  # the tokenizer follows the config

    n_params = sum(p.numel() for p in bb.model.parameters())
    assert 1_000_000 <= n_params <= 20_000_000, n_params
    assert all(not p.requires_grad for p in bb.model.parameters())
    assert not bb.model.training and not any(m.training for m in bb.model.modules())
    assert bb.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)  # open_clip's init value

    images = torch.randn(8, 3, bb.image_size, bb.image_size)
    feats = bb.encode_images(images)
    assert feats.shape == (8, bb.embed_dim) and feats.dtype == torch.float32
    assert torch.allclose(feats.norm(dim=-1), torch.ones(8), atol=1e-5)
    assert not feats.requires_grad

    texts = ["a photo of a cat.", "a photo of a dog.", "a blurry photo of a sea lion."]
    tfeats = bb.encode_texts(texts)
    assert tfeats.shape == (3, bb.embed_dim) and tfeats.dtype == torch.float32
    assert torch.allclose(tfeats.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(tfeats[0], tfeats[1])


def test_register_model_configs_is_idempotent():
    from open_clip import factory

    before = list(factory._MODEL_CONFIG_PATHS)
    for _ in range(3):
        names = cm.register_model_configs()
    assert factory._MODEL_CONFIG_PATHS == before
    assert set(names) <= set(open_clip.list_models())


# --------------------------------------------------------------------------------------------------
# weights: random init, local checkpoints, tags
# --------------------------------------------------------------------------------------------------


def test_random_init_is_controlled_by_the_callers_seed():
    torch.manual_seed(123)
    a = load_backbone(TINY)
    torch.manual_seed(123)
    b = load_backbone(TINY)
    torch.manual_seed(124)
    c = load_backbone(TINY)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.identity() == b.identity() != c.identity()
    assert a.fingerprint()["weights"]["kind"] == "random"


def test_local_checkpoint_round_trip(tiny, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), path)
    torch.manual_seed(999)  # a different seed: equal outputs can only come from the file
    loaded = load_backbone(TINY, pretrained=str(path))

    images = torch.randn(4, 3, tiny.image_size, tiny.image_size)
    assert torch.equal(loaded.encode_images(images), tiny.encode_images(images))
    assert torch.equal(loaded.encode_texts(["a cat", "a dog"]), tiny.encode_texts(["a cat", "a dog"]))
    assert loaded.pretrained == str(path.absolute())
    weights = loaded.fingerprint()["weights"]
    assert weights["kind"] == "file" and weights["size"] == path.stat().st_size
    assert all(not p.requires_grad for p in loaded.model.parameters()) and not loaded.model.training

    # Rewriting the file changes the fingerprint (size/mtime), so feature caches are not reused.
    torch.save({k: v + 1 for k, v in tiny.model.state_dict().items()}, path)
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert load_backbone(TINY, pretrained=str(path)).identity() != loaded.identity()


class _Holder(nn.Module):
    """Tensor container scripted into a TorchScript archive, the format of OpenAI's released .pt."""

    def forward(self) -> int:
        return 0


def test_torchscript_checkpoint_is_loaded(tiny, tmp_path):
    root = _Holder()
    for name, tensor in tiny.model.state_dict().items():
        *parents, leaf = name.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, _Holder())
            module = getattr(module, part)
        module.register_buffer(leaf, tensor.clone())
    path = tmp_path / "tiny-jit.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(root).save(str(path))
        loaded = load_backbone(TINY, pretrained=str(path))
    ref, got = tiny.model.state_dict(), loaded.model.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_checkpoint_of_another_architecture_is_a_one_line_user_error(tmp_path):
    torch.manual_seed(0)
    small = load_backbone("clapray-small-vit")
    path = tmp_path / "small.pt"
    torch.save(small.model.state_dict(), path)
    with pytest.raises(UserError) as info:
        load_backbone(TINY, pretrained=str(path))
    assert str(path) in _single_line(info.value)


def test_cached_tag_weights_load_offline_and_follow_the_tags_quick_gelu(tiny, tmp_path, monkeypatch, offline):
    """A tag whose file is already in the hub cache loads with no network, as ViT-B-16/openai would.

    The fake tag sits in open_clip's registry for the tiny config and is marked quick_gelu like the
    OpenAI tags, so the built model must use QuickGELU although the config does not ask for it.
    """
    from open_clip import pretrained as oc_pretrained

    repo = "clapray-tests/tiny-vit"
    tags = {"fake_openai": {"hf_hub": repo + "/", "quick_gelu": True}}
    monkeypatch.setitem(oc_pretrained._PRETRAINED, TINY, tags)
    snapshot = tmp_path / ("models--" + repo.replace("/", "--")) / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    torch.save(tiny.model.state_dict(), snapshot / "open_clip_pytorch_model.bin")

    loaded = load_backbone(TINY, "fake_openai", cache_dir=str(tmp_path))
    assert loaded.quick_gelu
    assert any(isinstance(m, open_clip.transformer.QuickGELU) for m in loaded.model.modules())
    ref, got = tiny.model.state_dict(), loaded.model.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert loaded.fingerprint()["weights"] == {"kind": "tag", "tag": "fake_openai"}
    assert loaded.pretrained == "fake_openai"


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------


def test_unknown_model_name_lists_close_matches():
    with pytest.raises(UserError) as info:
        load_backbone("ViT-B-61")
    msg = _single_line(info.value)
    assert "ViT-B-61" in msg and "ViT-B-16" in msg


def test_openai_spelling_of_model_names_is_accepted(tiny):
    assert resolve_model_name("ViT-B/16") == "ViT-B-16"


def test_the_torch_free_catalogue_knows_what_open_clip_knows():
    """The dry run checks model names from the JSON files alone; they must be open_clip's list exactly."""
    cm.backbone.register_model_configs()
    assert set(model_configs()) == set(open_clip.list_models())


def test_unknown_pretrained_tag_lists_valid_tags():
    with pytest.raises(UserError) as info:
        load_backbone("ViT-B-16", "opnai")
    msg = _single_line(info.value)
    assert "opnai" in msg and "openai" in msg and "laion2b_s34b_b88k" in msg
    assert not isinstance(info.value, WeightsUnavailableError)


def test_missing_checkpoint_file_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "ViT-B-16.pt"
    with pytest.raises(UserError) as info:
        load_backbone(TINY, pretrained=str(missing))
    assert str(missing) in _single_line(info.value)
    with pytest.raises(UserError) as info:
        load_backbone(TINY, pretrained=str(tmp_path))  # a directory is not a checkpoint
    assert str(tmp_path) in _single_line(info.value)


def test_hub_download_offline_is_weights_unavailable(tmp_path, offline):
    cache = tmp_path / "weights-cache"
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        load_backbone("ViT-B-16", "openai", cache_dir=str(cache))
    assert time.monotonic() - start < 10  # failed fast, did not wait on a network timeout
    msg = _single_line(info.value)
    assert str(cache) in msg and "ViT-B-16" in msg and "openai" in msg
    assert "pretrained" in msg  # says how to provide a local checkpoint instead


def test_url_download_failure_is_weights_unavailable(tmp_path, monkeypatch, offline):
    """Without huggingface_hub open_clip downloads from the tag's URL with urllib."""
    from open_clip import pretrained as oc_pretrained

    def refuse(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))

    monkeypatch.setattr(oc_pretrained, "_has_hf_hub", False)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    cache = tmp_path / "clip-cache"
    with pytest.raises(WeightsUnavailableError) as info:
        load_backbone("ViT-B-16", "openai", cache_dir=str(cache))
    msg = _single_line(info.value)
    assert str(cache / "ViT-B-16.pt") in msg and "URLError" in msg


def test_schema_and_custom_text_models_are_rejected():
    for name in ("hf-hub:timm/ViT-B-16-SigLIP", "ViT-B-16-SigLIP"):
        with pytest.raises(UserError) as info:
            load_backbone(name)
        _single_line(info.value)


# --------------------------------------------------------------------------------------------------
# precision, preprocessing, input checks
# --------------------------------------------------------------------------------------------------


def test_bf16_on_cpu_is_close_to_fp32_and_returns_fp32(tiny, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), path)
    bf16 = load_backbone(TINY, str(path), precision="bf16")
    images = torch.randn(8, 3, tiny.image_size, tiny.image_size)
    ref, got = tiny.encode_images(images), bf16.encode_images(images)
    assert got.dtype == torch.float32
    assert torch.allclose(got.norm(dim=-1), torch.ones(8), atol=1e-5)
    assert (ref * got).sum(-1).min() > 0.98  # cosine similarity
    assert not torch.equal(ref, got)  # autocast really ran in bf16
    texts = ["a photo of a cat.", "a photo of a dog."]
    tref, tgot = tiny.encode_texts(texts), bf16.encode_texts(texts)
    assert tgot.dtype == torch.float32 and (tref * tgot).sum(-1).min() > 0.98
    assert bf16.identity() != tiny.identity()  # precision is part of the cache key


def test_fp16_on_cpu_and_unknown_precision_are_user_errors():
    with pytest.raises(UserError) as info:
        load_backbone(TINY, precision="fp16")
    assert "CUDA" in _single_line(info.value)
    with pytest.raises(UserError):
        load_backbone(TINY, precision="fp8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 towers need CUDA")
def test_fp16_on_cuda_returns_fp32_unit_vectors():
    torch.manual_seed(0)
    bb = load_backbone(TINY, device="cuda", precision="fp16")
    assert bb.model.visual.conv1.weight.dtype == torch.float16
    feats = bb.encode_images(torch.randn(4, 3, bb.image_size, bb.image_size))
    assert feats.dtype == torch.float32 and feats.device.type == "cuda"
    assert torch.allclose(feats.norm(dim=-1), torch.ones(4, device="cuda"), atol=1e-4)
    assert bb.encode_texts(["a cat"]).dtype == torch.float32


def test_preprocess_accepts_pil_images(tiny):
    image = Image.new("RGB", (50, 37), color=(200, 30, 90))
    grey = Image.new("L", (40, 40), color=128)  # converted to RGB by the transform
    batch = torch.stack([tiny.preprocess(image), tiny.preprocess(grey)])
    assert batch.shape == (2, 3, tiny.image_size, tiny.image_size) and batch.dtype == torch.float32
    assert tiny.encode_images(batch).shape == (2, tiny.embed_dim)


def test_encoder_input_checks_and_batching(tiny):
    with pytest.raises(ValueError):
        tiny.encode_images(torch.randn(2, 3, tiny.image_size + 8, tiny.image_size + 8))
    with pytest.raises(ValueError):
        tiny.encode_images(torch.randn(3, tiny.image_size, tiny.image_size))
    with pytest.raises(TypeError):
        tiny.encode_texts("a single string")
    assert tiny.encode_texts([]).shape == (0, tiny.embed_dim)
    assert tiny.tokenize(["a cat", "a dog"]).shape == (2, tiny.context_length)

    texts = [f"a photo of object number {i}." for i in range(7)]
    assert torch.allclose(tiny.encode_texts(texts, batch_size=3), tiny.encode_texts(texts), atol=1e-5)
    images = torch.randn(5, 3, tiny.image_size, tiny.image_size)
    assert torch.allclose(tiny.encode_images(images, batch_size=2), tiny.encode_images(images), atol=1e-5)


# --------------------------------------------------------------------------------------------------
# hand-crafted template features
# --------------------------------------------------------------------------------------------------


def test_template_features_shapes_norms_and_statistics(tiny):
    names = ["apple", "sea_lion", "maple_tree"]
    templates = ["a photo of a {}.", "a blurry photo of a {}.", "a photo of a {}.", "art of the {}."]
    tf = template_text_features(tiny, names, templates)
    C, K, d = 3, 3, tiny.embed_dim
    assert tf.templates == ("a photo of a {}.", "a blurry photo of a {}.", "art of the {}.")
    assert tf.class_names == tuple(names) and (tf.num_classes, tf.num_templates) == (C, K)
    assert tf.per_template.shape == (C, K, d) and tf.mean.shape == (C, d)
    assert tf.template_mean_unnormalised.shape == (C, d) and tf.template_variance.shape == (C, d)
    assert torch.allclose(tf.per_template.norm(dim=-1), torch.ones(C, K), atol=1e-5)
    assert torch.allclose(tf.mean.norm(dim=-1), torch.ones(C), atol=1e-5)
    assert (tf.template_mean_unnormalised.norm(dim=-1) <= 1 + 1e-6).all()

    # Entry [c, k] is template k applied to class c with underscores replaced.
    direct = tiny.encode_texts(["a blurry photo of a sea lion.", "art of the maple tree."])
    assert torch.allclose(tf.per_template[1, 1], direct[0], atol=1e-5)
    assert torch.allclose(tf.per_template[2, 2], direct[1], atol=1e-5)

    mean = tf.per_template.mean(dim=1)
    assert torch.allclose(tf.template_mean_unnormalised, mean, atol=1e-6)
    assert torch.allclose(tf.mean, mean / mean.norm(dim=-1, keepdim=True), atol=1e-6)
    centred = tf.per_template - mean[:, None]
    assert torch.allclose(tf.template_variance, (centred**2).sum(dim=1) / (K - 1), atol=1e-7)
    assert torch.isfinite(tf.template_variance).all() and (tf.template_variance > 0).any()


def test_single_template_has_zero_variance(tiny):
    tf = template_text_features(tiny, ["cat", "dog"], ["a photo of a {}.", "a photo of a {}."])
    assert tf.num_templates == 1
    assert torch.equal(tf.template_variance, torch.zeros(2, tiny.embed_dim))
    assert torch.allclose(tf.mean, tf.per_template[:, 0], atol=1e-6)


def test_prompt_formatting_and_template_validation(tiny):
    assert cm.class_prompt("a photo of a {}.", "sea_lion") == "a photo of a sea lion."
    assert cm.format_prompts(["a_b", "c"], ["x {}", "y {}"]) == ["x a b", "y a b", "x c", "y c"]
    assert cm.dedupe_templates(["b {}", "a {}", "b {}", "c {}", "a {}"]) == ("b {}", "a {}", "c {}")
    with pytest.raises(ValueError):
        template_text_features(tiny, ["cat"], ["a photo without placeholder"])
    with pytest.raises(ValueError):
        template_text_features(tiny, [], ["a {}"])
    with pytest.raises(TypeError):
        template_text_features(tiny, "cat", ["a {}"])


# Kept last so the subprocess started by the import_probe fixture has run beside the other tests.
def test_import_does_not_pull_ray_or_optuna(import_probe):
    output, _ = import_probe.communicate(timeout=120)
    assert import_probe.returncode == 0, output.decode(errors="replace")
