"""A small stand-in for pretrained CLIP: contrastive pretraining of a tiny open_clip model on ``shapes``.

Without real CLIP weights, a randomly initialised tiny backbone maps all images to nearly the same
direction, so a continual learner built on it cannot show that it learns and zero-shot is at chance.
This module trains ``clapray-mini-vit`` (a few million parameters) with the CLIP objective on generated
image-caption pairs, on CPU, in a few minutes, and caches the result as an ordinary open_clip state-dict
file that :func:`clapray.model.load_backbone` loads as ``pretrained=<path>``.

The class split keeps the evaluation honest. The 144 plain colour x shape combinations are divided
into :data:`CONTINUAL_CLASSES` (60 classes, never named in any pretraining caption and never drawn in
any pretraining image) and :data:`PRETRAIN_CLASSES` (the other 84). Every colour and every shape still
occurs in pretraining, through other combinations, so zero-shot accuracy on the continual classes
measures compositional transfer ("red" and "triangle" were seen, "red triangle" was not).

Captions are composed from each image's attributes (size, drawing style, background, position, fill
pattern) in several phrasings; the class phrase ("red triangle") always appears.

Command line::

    python -m clapray.pretrain [--seed N] [--steps N] [--cache-dir DIR] [--force] [--no-eval]

prints the checkpoint path (training it first if it is not cached) and an evaluation on the continual
classes. From Python, :func:`ensure_mini_clip` returns the path, pretraining on first use.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from clapray.data.shapes import (
    GENERATOR_VERSION,
    ShapeAttributes,
    all_shape_classes,
    build_shapes,
    render_shape,
    sample_attributes,
    shape_class,
)
from clapray.data.shapes_cl import CONTINUAL_CLASSES, PRETRAIN_CLASSES
from clapray.errors import ConfigError, UserError, exit_on_user_error
from clapray.fileio import directory_lock, write_bytes_atomic
from clapray.model.backbone import Backbone, load_backbone, register_model_configs
from clapray.model.catalog import MINI_CLIP_MODEL
from clapray.model.text_features import template_text_features

# Bump whenever the recipe changes what a given set of settings trains (captions, loss, schedule,
# augmentation): it is part of the cache key, so a stale checkpoint is never reused.
PRETRAIN_VERSION = 1

MODEL_NAME = MINI_CLIP_MODEL
"""The bundled open_clip config that is pretrained."""

CHECKPOINT_NAME = "model.pt"
INFO_NAME = "info.json"
CACHE_ENV = "CLAPRAY_CACHE"

# --------------------------------------------------------------------------------------------------
# The class split (CONTINUAL_CLASSES / PRETRAIN_CLASSES come from clapray.data.shapes_cl)


# Patterned variants ("striped red triangle") of the pretraining combinations only: a patterned
# variant of a held-out combination would put its class phrase into the captions.
def _patterned_variants(plain: Sequence[str]) -> tuple[str, ...]:
    wanted = set(plain)
    return tuple(name for name in all_shape_classes()
                 if (c := shape_class(name)).pattern != "plain" and f"{c.colour} {c.shape}" in wanted)


PATTERNED_PRETRAIN_CLASSES: tuple[str, ...] = _patterned_variants(PRETRAIN_CLASSES)


def continual_classes() -> tuple[str, ...]:
    """The held-out continual-learning classes (:data:`CONTINUAL_CLASSES`)."""
    return CONTINUAL_CLASSES


def pretrain_classes(patterned: bool = False) -> tuple[str, ...]:
    """The pretraining classes; with ``patterned``, their striped/dotted/checkered variants follow."""
    return PRETRAIN_CLASSES + (PATTERNED_PRETRAIN_CLASSES if patterned else ())


# --------------------------------------------------------------------------------------------------
# Captions


_PREFIXES: tuple[str, ...] = (
    "a photo of", "an image of", "a picture of", "a drawing of", "a rendering of", "a simple drawing of",
    "a small picture of", "a picture showing",
)
_STYLE_ADJECTIVES: Mapping[str, tuple[str, ...]] = {
    "filled": ("filled", "solid"),
    "outline": ("outlined", "hollow"),
    "shaded": ("shaded", "gradient-shaded"),
    "bordered": ("bordered",),
    "borderless": ("borderless",),
}
_STYLE_PHRASES: Mapping[str, tuple[str, ...]] = {
    "filled": ("filled in", "drawn solid"),
    "outline": ("drawn as an outline", "drawn in outline"),
    "shaded": ("with shading", "shaded from light to dark"),
    "bordered": ("with a border",),
    "borderless": ("without a border",),
}
_BACKGROUND_ADJECTIVES: Mapping[str, tuple[str, ...]] = {
    "plain": ("plain", "flat"),
    "gradient": ("fading", "gradient"),
    "noisy": ("noisy", "speckled"),
}

# Each form is one phrasing; slots are filled from the image's attributes. ``{cls}`` is the class
# phrase and must appear in every form, so the text tower always sees the colour and shape words.
_FORMS: tuple[str, ...] = (
    "{prefix} {a_cls}.",
    "{prefix} the {cls}.",
    "the {cls} shape.",
    "{a_size} {cls} {style_phrase} on {a_bg} background.",
    "{a_cls} on {a_bg_adj} {bg} background",
    "{prefix} {a_size} {style} {cls}",
    "{a_style} {cls} {where}.",
    "{size} {cls}, {style}, {bg} background",
    "{prefix} {a_cls} on {bg}.",
    "there is {a_size} {cls} {where} of the picture.",
)


def _article(phrase: str) -> str:
    """``phrase`` with "a" or "an" in front ("an orange circle", "a red circle")."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _position(attrs: ShapeAttributes) -> str:
    """Where the shape sits, in words, from its centre (fractions of the image side, y down)."""
    x, y = attrs.center
    vertical = "top" if y < 0.4 else "bottom" if y > 0.6 else ""
    horizontal = "left" if x < 0.4 else "right" if x > 0.6 else ""
    if vertical and horizontal:
        return f"in the {vertical} {horizontal}"
    if horizontal:
        return f"on the {horizontal}"
    return f"at the {vertical}" if vertical else "in the middle"


def compose_caption(attrs: ShapeAttributes, variant: int) -> str:
    """A caption of one image from its attributes; ``variant`` (any int) picks the phrasing.

    The class phrase (``attrs.class_name``, e.g. "red triangle" or "striped red triangle") always
    appears verbatim. ``variant`` is decomposed into choices of form, prefix and synonyms, so different
    variants give different phrasings of the same image.
    """
    v = int(variant)

    def pick(options: Sequence[str]) -> str:
        nonlocal v
        v, i = divmod(v, len(options))
        return options[i]

    form = pick(_FORMS)
    cls = attrs.class_name
    style = pick(_STYLE_ADJECTIVES[attrs.style])
    bg_adj = pick(_BACKGROUND_ADJECTIVES[attrs.background])
    bg = attrs.background_colour
    slots = {
        "prefix": pick(_PREFIXES),
        "cls": cls,
        "a_cls": _article(cls),
        "size": attrs.size,
        "a_size": _article(attrs.size),
        "style": style,
        "a_style": _article(style),
        "style_phrase": pick(_STYLE_PHRASES[attrs.style]),
        "bg": bg,
        "a_bg": _article(bg),
        "a_bg_adj": _article(bg_adj),
        "where": _position(attrs),
    }
    return form.format(**slots)


def caption_variant(seed: int, class_name: str, index: int) -> int:
    """The phrasing variant of image ``index`` of a class: deterministic, uniform over phrasings."""
    digest = hashlib.sha256(f"clapray-caption|{seed}|{class_name}|{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


# --------------------------------------------------------------------------------------------------
# Settings and cache key


@dataclasses.dataclass(frozen=True)
class PretrainSettings:
    """Everything that determines the pretrained weights (all of it goes into the cache key).

    Attributes:
        seed: seeds the initialisation, the batch order and the flips, and offsets the image seed.
        steps: optimiser steps.
        batch_size: image-caption pairs per step (the contrastive batch).
        lr: peak AdamW learning rate, reached after ``warmup_steps`` and annealed to 0 by a cosine.
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW decay of weight matrices (gains, biases and the logit scale are not decayed).
        images_per_class: size of the pre-rendered pool, per pretraining class.
        render_size: side at which images are rendered before resizing to the model's input (the
            ``shapes`` benchmark's default 64, so pretraining sees what continual runs see).
        patterned: also pretrain on the striped/dotted/checkered variants of the pretraining combos.
        model_name: the open_clip config to train.
    """

    seed: int = 0
    steps: int = 800
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.1
    images_per_class: int = 200
    render_size: int = 64
    patterned: bool = False
    model_name: str = MODEL_NAME

    def validate(self) -> PretrainSettings:
        """Check ranges; a bad value raises :class:`~clapray.errors.ConfigError`."""
        ints = {"seed": 0, "steps": 1, "batch_size": 2, "warmup_steps": 0, "images_per_class": 1,
                "render_size": 8}
        for name, lo in ints.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < lo:
                raise ConfigError("pretrain", name, f"an integer >= {lo}", value)
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise ConfigError("pretrain", name, "a number >= 0", value)
        if not isinstance(self.patterned, bool):
            raise ConfigError("pretrain", "patterned", "true or false", self.patterned)
        register_model_configs()
        if not isinstance(self.model_name, str) or open_clip.get_model_config(self.model_name) is None:
            raise ConfigError("pretrain", "model_name", "a bundled or open_clip model config name",
                              self.model_name)
        return self

    def fingerprint(self) -> dict[str, Any]:
        """The settings plus what else shapes the result: recipe and generator versions, model config."""
        return {
            "settings": dataclasses.asdict(self),
            "pretrain_version": PRETRAIN_VERSION,
            "generator_version": GENERATOR_VERSION,
            "model_config": open_clip.get_model_config(self.model_name),
            "continual_classes": list(CONTINUAL_CLASSES),
        }

    def key(self) -> str:
        """Short stable hash (16 hex chars) of :meth:`fingerprint`: the cache directory name."""
        blob = json.dumps(self.fingerprint(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_settings(**overrides: Any) -> PretrainSettings:
    """Default :class:`PretrainSettings` with ``overrides`` applied and validated."""
    names = {f.name for f in dataclasses.fields(PretrainSettings)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UserError(f"pretrain: unknown setting(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(names))}")
    return PretrainSettings(**overrides).validate()


def default_cache_dir() -> Path:
    """``$CLAPRAY_CACHE/mini-clip`` if the variable is set, else ``~/.cache/clapray/mini-clip``."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "clapray"
    return base / "mini-clip"


def checkpoint_path(settings: PretrainSettings, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the checkpoint of ``settings`` lives: ``<cache_dir>/<key>/model.pt``."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root.absolute() / settings.key() / CHECKPOINT_NAME


# --------------------------------------------------------------------------------------------------
# Data


# Pretraining images use their own generator seed, so even if someone builds a benchmark from the
# pretraining classes, its images (seed 0, 1, ...) are not the ones pretrained on.
_IMAGE_SEED_OFFSET = 1_000_003


@dataclasses.dataclass(frozen=True, eq=False)
class Pool:
    """Pre-rendered pretraining pairs: images as model input, captions as token ids.

    Attributes:
        images: uint8 ``[N, 3, S, S]`` at the model's input size.
        tokens: int64 ``[N, L]``, cut after the longest caption's end token (see :func:`encode_text`).
        captions: the N caption strings.
        class_names: the class of each pair.
    """

    images: Tensor
    tokens: Tensor
    captions: tuple[str, ...]
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.captions)


def render_pool(
    settings: PretrainSettings, image_size: int, tokenizer: Callable[[list[str]], Tensor]
) -> Pool:
    """Render every pretraining image once, compose its caption and tokenize it."""
    classes = pretrain_classes(settings.patterned)
    image_seed = _IMAGE_SEED_OFFSET + settings.seed
    n = len(classes) * settings.images_per_class
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    captions: list[str] = []
    names: list[str] = []
    i = 0
    for name in classes:
        for k in range(settings.images_per_class):
            attrs = sample_attributes(image_seed, "train", name, k)
            image = render_shape(attrs, settings.render_size)
            if settings.render_size != image_size:
                # The same resampling as open_clip's eval transform (bicubic, PIL), so pretraining
                # inputs match what a continual run feeds the frozen tower.
                image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
            images[i] = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
            captions.append(compose_caption(attrs, caption_variant(image_seed, name, k)))
            names.append(name)
            i += 1
    tokens = tokenizer(captions)
    # Text positions after the end token cannot influence it (causal mask): drop the all-padding tail.
    length = int(tokens.argmax(dim=-1).max()) + 1
    return Pool(images=images, tokens=tokens[:, :length].contiguous(), captions=tuple(captions),
                class_names=tuple(names))


def encode_text(model: nn.Module, tokens: Tensor) -> Tensor:
    """``model.encode_text`` for token rows of any length up to the context length (unnormalised).

    open_clip always runs the full context; with its causal mask the end-token feature only depends on
    the positions before it, so running the first L positions gives the same feature at a fraction of
    the cost. Training uses this; inference uses open_clip's own ``encode_text``.
    """
    length = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)  # [B, L, w]
    x = x + model.positional_embedding[:length].to(cast_dtype)
    mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
    x = model.transformer(x, attn_mask=mask)
    x = model.ln_final(x)
    x = open_clip.transformer.text_global_pool(x, tokens, model.text_pool_type,
                                               eos_token_id=getattr(model, "text_eos_id", None))
    if isinstance(model.text_projection, nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection


# --------------------------------------------------------------------------------------------------
# Training


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a pretraining run produced: the weights and a short record of the run.

    ``losses`` holds the contrastive loss of every step, ``final_loss`` the last one.
    """

    state_dict: dict[str, Tensor]
    losses: tuple[float, ...]
    final_loss: float
    logit_scale: float
    wall_s: float
    pool_size: int


@contextlib.contextmanager
def _deterministic_cpu(seed: int, threads: int | None) -> Iterator[None]:
    """Seeded global RNG, deterministic kernels and a fixed thread count, all restored on exit.

    open_clip initialises from torch's global RNG, so it is seeded here; ``fork_rng`` gives the caller
    back their own RNG state afterwards.
    """
    before_threads = torch.get_num_threads()
    before_det = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(before_det)
            torch.set_num_threads(before_threads)


class _Epochs:
    """Index batches that walk through the pool in reshuffled epochs (no repeats within an epoch)."""

    def __init__(self, size: int, batch_size: int, generator: torch.Generator):
        self._size, self._batch, self._generator = size, min(batch_size, size), generator
        self._order = torch.randperm(size, generator=generator)
        self._cursor = 0

    def next(self) -> Tensor:
        """The indices of the next batch."""
        if self._cursor + self._batch > self._size:
            self._order, self._cursor = torch.randperm(self._size, generator=self._generator), 0
        idx = self._order[self._cursor : self._cursor + self._batch]
        self._cursor += self._batch
        return idx


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    """Silence logging up to WARNING for the duration, then restore the previous threshold."""
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(before)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay weight matrices only: gains, biases and the logit scale keep their scale (as open_clip)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "ln" in name or "bias" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _lr_at(step: int, settings: PretrainSettings) -> float:
    """Linear warm-up to ``lr``, then a cosine down to 0 at ``steps``."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    span = max(1, settings.steps - settings.warmup_steps)
    return 0.5 * settings.lr * (1 + math.cos(math.pi * (step - settings.warmup_steps) / span))


def pretrain(
    settings: PretrainSettings,
    *,
    threads: int | None = 2,
    log: Callable[[str], None] | None = print,
    log_every: int = 50,
) -> TrainResult:
    """Train ``settings.model_name`` from scratch with the CLIP loss; return its state dict.

    Deterministic on a given machine for a given ``threads`` (intra-op thread count; ``None`` keeps
    the current one): the same settings give bit-identical weights.
    """
    settings.validate()
    say = log or (lambda _msg: None)
    start = time.perf_counter()
    with _deterministic_cpu(settings.seed, threads):
        with _quiet_warnings():
            # open_clip warns that the model is randomly initialised: here that is the point.
            model = open_clip.create_model(settings.model_name, pretrained=None, device="cpu")
        model.train()
        tokenizer = open_clip.get_tokenizer(settings.model_name)
        preprocess_cfg = model.visual.preprocess_cfg
        image_size = int(model.visual.image_size[0])
        pool = render_pool(settings, image_size, tokenizer)
        say(f"pretrain: {len(pool)} image-caption pairs of {len(pretrain_classes(settings.patterned))} "
            f"classes rendered in {time.perf_counter() - start:.1f}s")
        mean = torch.tensor(preprocess_cfg["mean"]).view(1, 3, 1, 1) * 255
        std = torch.tensor(preprocess_cfg["std"]).view(1, 3, 1, 1) * 255

        optimizer = torch.optim.AdamW(_param_groups(model, settings.weight_decay), lr=settings.lr,
                                      betas=(0.9, 0.98), eps=1e-6)
        # The batch order and flips come from their own generator, independent of the model's init.
        generator = torch.Generator().manual_seed(settings.seed + 1)
        batches = _Epochs(len(pool), settings.batch_size, generator)
        labels = torch.arange(min(settings.batch_size, len(pool)))
        losses: list[float] = []
        running = 0.0
        for step in range(settings.steps):
            idx = batches.next()
            batch = len(idx)
            images = pool.images[idx].float()
            # Horizontal flips only: a mirrored shape is still that shape, while upside-down hearts or
            # arrows never occur in the benchmark.
            flip = torch.rand(batch, generator=generator) < 0.5
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
            images = (images - mean) / std

            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, settings)
            image_features = F.normalize(model.encode_image(images), dim=-1)
            text_features = F.normalize(encode_text(model, pool.tokens[idx]), dim=-1)
            logits = model.logit_scale.exp() * image_features @ text_features.T  # [B, B]
            loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                # As in open_clip: a temperature below 1/100 makes the loss unstable.
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            running += losses[-1]
            if log_every and ((step + 1) % log_every == 0 or step + 1 == settings.steps):
                done = (step + 1) % log_every or log_every
                say(f"pretrain: step {step + 1}/{settings.steps} loss {running / done:.3f} "
                    f"scale {model.logit_scale.exp().item():.1f} ({time.perf_counter() - start:.0f}s)")
                running = 0.0
        model.eval()
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        scale = model.logit_scale.exp().item()
    return TrainResult(state_dict=state, losses=tuple(losses), final_loss=losses[-1], logit_scale=scale,
                       wall_s=time.perf_counter() - start, pool_size=len(pool))


# --------------------------------------------------------------------------------------------------
# Cache


def state_dict_bytes(state_dict: Mapping[str, Tensor]) -> bytes:
    """The serialised checkpoint. Saved through a buffer: ``torch.save`` names the archive's records
    after the file, which would make the bytes depend on the (temporary) file name."""
    buffer = io.BytesIO()
    torch.save(dict(state_dict), buffer)
    return buffer.getvalue()


def _usable(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def ensure_mini_clip(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    threads: int | None = 2,
    log: Callable[[str], None] | None = None,
    **overrides: Any,
) -> Path:
    """Path of the pretrained ``clapray-mini-vit`` checkpoint, pretraining it first if it is missing.

    Args:
        cache_dir: directory holding ``<key>/model.pt``; ``None`` uses :func:`default_cache_dir`.
        force: retrain and replace the checkpoint even if it exists.
        threads: intra-op threads while training (part of what makes the bytes reproducible).
        log: receives progress lines; ``None`` is silent.
        **overrides: fields of :class:`PretrainSettings` (``seed``, ``steps``, ...).

    Returns:
        The absolute checkpoint path, loadable with ``load_backbone(MODEL_NAME, pretrained=str(path))``.

    Concurrent callers (threads or processes) serialise on a lock file next to the checkpoint; the
    file is written under a unique temporary name and renamed, so it is never seen half-written.
    """
    settings = make_settings(**overrides)
    path = checkpoint_path(settings, cache_dir)
    if _usable(path) and not force:
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"pretrain: cannot create the cache directory {path.parent}: {err}; "
                        f"choose another with --cache-dir or ${CACHE_ENV}") from None
    with directory_lock(path.parent):
        # Another process may have finished the same checkpoint while this one waited for the lock.
        if _usable(path) and not force:
            return path
        if log is not None:
            log(f"pretrain: the mini-CLIP ({settings.model_name}, {settings.steps} steps on generated shapes "
                f"captions) is not cached yet; training it once (a few minutes on CPU) -> {path}")
        result = pretrain(settings, threads=threads, log=log)
        try:
            write_bytes_atomic(path, state_dict_bytes(result.state_dict))
            info = {
                "model_name": settings.model_name,
                "key": settings.key(),
                "fingerprint": settings.fingerprint(),
                "final_loss": result.final_loss,
                "logit_scale": result.logit_scale,
                "pool_size": result.pool_size,
                "train_wall_s": round(result.wall_s, 1),
                "torch": torch.__version__,
                "open_clip": open_clip.__version__,
            }
            write_bytes_atomic(path.with_name(INFO_NAME), (json.dumps(info, indent=2) + "\n").encode())
        except OSError as err:
            raise UserError(f"pretrain: cannot write the checkpoint {path}: {err}; free some space or "
                            f"choose another cache directory") from None
    return path


def load_mini_clip(path: str | os.PathLike[str], *, model_name: str = MODEL_NAME,
                   device: str | torch.device = "cpu") -> Backbone:
    """The frozen backbone of a pretrained checkpoint (thin wrapper over :func:`load_backbone`)."""
    return load_backbone(model_name, pretrained=str(path), device=device)


# --------------------------------------------------------------------------------------------------
# Evaluation


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Feature quality of a backbone on the continual classes' ``shapes`` images.

    Attributes:
        num_classes: classes evaluated (chance is ``1 / num_classes``).
        zero_shot_acc: top-1 accuracy (%) of test images against the mean template text features.
        mean_cosine: mean cosine similarity between image features of different classes.
        ncm_acc: top-1 accuracy (%) of test images against the (normalised) mean train image feature
            of each class: how separable the frozen image features are.
    """

    num_classes: int
    zero_shot_acc: float
    mean_cosine: float
    ncm_acc: float

    def summary(self) -> str:
        """One line for humans."""
        return (f"{self.num_classes} classes (chance {100 / self.num_classes:.1f}%): zero-shot "
                f"{self.zero_shot_acc:.1f}%, nearest-class-mean {self.ncm_acc:.1f}%, mean cosine "
                f"between classes {self.mean_cosine:.3f}")


def _encode_split(backbone: Backbone, split: Any) -> tuple[Tensor, Tensor]:
    images = torch.stack([backbone.preprocess(split[i][0]) for i in range(len(split))])
    return backbone.encode_images(images, batch_size=512), torch.as_tensor(split.targets)


def evaluate(
    backbone: Backbone,
    classes: Sequence[str] = CONTINUAL_CLASSES,
    *,
    train_per_class: int = 20,
    test_per_class: int = 20,
    image_size: int = 64,
    seed: int = 0,
) -> Evaluation:
    """Zero-shot, nearest-class-mean and inter-class cosine on a ``shapes`` benchmark of ``classes``.

    The benchmark is built exactly as a continual run builds it (same templates, same images for the
    same seed and size) and fed through the backbone's own eval preprocessing.
    """
    bench = build_shapes(Path("."), classes=list(classes), train_per_class=train_per_class,
                         test_per_class=test_per_class, image_size=image_size, seed=seed)
    test_x, test_y = _encode_split(backbone, bench.test)  # [N, d], [N]
    train_x, train_y = _encode_split(backbone, bench.train)
    text = template_text_features(backbone, bench.class_names, bench.templates).mean  # [C, d]
    zero_shot = (test_x @ text.T).argmax(dim=1).eq(test_y).float().mean().item()

    num_classes = len(bench.class_names)
    means = F.normalize(torch.zeros(num_classes, train_x.shape[1]).index_add_(0, train_y, train_x), dim=-1)
    ncm = (test_x @ means.T).argmax(dim=1).eq(test_y).float().mean().item()

    sims = test_x @ test_x.T  # [N, N]
    other = test_y.view(-1, 1) != test_y.view(1, -1)
    mean_cosine = sims[other].mean().item()
    return Evaluation(num_classes=num_classes, zero_shot_acc=100 * zero_shot, mean_cosine=mean_cosine,
                      ncm_acc=100 * ncm)


# --------------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    defaults = PretrainSettings()
    parser = argparse.ArgumentParser(
        prog="python -m clapray.pretrain",
        description=f"Pretrain (or reuse) the small CLIP stand-in {MODEL_NAME} on the shapes pretraining "
                    "classes, print its checkpoint path and evaluate it on the held-out continual classes.",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="pretraining seed (default %(default)s)")
    parser.add_argument("--steps", type=int, default=defaults.steps,
                        help="optimiser steps (default %(default)s)")
    parser.add_argument("--cache-dir", default=None,
                        help=f"directory of cached checkpoints (default ${CACHE_ENV}/mini-clip or "
                             "~/.cache/clapray/mini-clip)")
    parser.add_argument("--force", action="store_true", help="retrain even if the checkpoint is cached")
    parser.add_argument("--threads", type=int, default=2,
                        help="intra-op threads while training (default %(default)s; the checkpoint's bytes "
                             "are reproducible for a fixed value)")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation on the continual classes")
    return parser


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m clapray.pretrain``."""
    args = _parser().parse_args(argv)
    if args.threads < 1:
        raise UserError(f"--threads: expected an integer >= 1, got {args.threads}")
    settings = make_settings(seed=args.seed, steps=args.steps)
    path = checkpoint_path(settings, args.cache_dir)
    cached = _usable(path) and not args.force
    if cached:
        print(f"pretrain: reusing {path} (use --force to retrain)")
    else:
        print(f"pretrain: training {settings.model_name} ({settings.steps} steps, "
              f"batch {settings.batch_size}) on {len(pretrain_classes(settings.patterned))} classes")
    start = time.perf_counter()
    path = ensure_mini_clip(args.cache_dir, force=args.force, threads=args.threads, log=print,
                            seed=args.seed, steps=args.steps)
    if not cached:
        print(f"pretrain: done in {time.perf_counter() - start:.0f}s")
    print(path)
    if not args.no_eval:
        backbone = load_mini_clip(path, model_name=settings.model_name)
        print(f"eval: continual classes, {evaluate(backbone).summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
