"""Contrastive pretraining of the mini-CLIP, a small stand-in for pretrained CLIP, on shapes captions.

Without real CLIP weights, a randomly initialised tiny backbone maps all images to nearly the same
direction, so a continual learner built on it cannot show that it learns and zero-shot is at chance.
:func:`pretrain` trains :data:`MODEL_NAME` (a small ResNet image tower) with the CLIP objective on the
generated image-caption pool (:mod:`clapray.shapes.pool`), on CPU, in a few minutes, deterministically:
the same :class:`PretrainSettings` and thread count give bit-identical weights.
:mod:`clapray.shapes.mini_clip` caches the result.

The recipe reproduces the relation real CLIP has to a downstream benchmark such as CIFAR-100: image
features good enough for a linear probe far above zero-shot (about 95% against 63% on ``shapes_cl``),
so a method that learns on top of the frozen model has room to show its gain. Two settings make it so.
An attribute loss (``attribute_weight``) trains the image tower to tell every pretraining image's shape
and colour apart, as supervised pretraining does for many CLIP-style image towers (LiT); and most
captions under-describe the image (``shape_mention_rate``: 3% name the shape, the rest say "a red
object"), as web captions do, so the text tower knows the shape words only loosely and zero-shot
prompts like "a photo of the red triangle." match the images less well than the features allow.
Without them (contrastive loss alone, every caption naming the shape) the tower barely separates shapes
and the probe stays within 2 points of zero-shot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clapray.errors import ConfigError, UserError
from clapray.model.backbone import embed_dim_of, image_size_of, register_model_configs
from clapray.model.catalog import MINI_CLIP_MODEL
from clapray.shapes.attributes import COLOURS, GENERATOR_VERSION, SHAPES
from clapray.shapes.benchmark import CONTINUAL_CLASSES
from clapray.shapes.pool import pretrain_classes, render_pool

# Bump whenever the recipe changes what a given set of settings trains (captions, loss, schedule,
# augmentation): it is part of the cache key, so a stale checkpoint is never reused.
PRETRAIN_VERSION = 2

MODEL_NAME = MINI_CLIP_MODEL
"""The bundled open_clip config that is pretrained."""


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
        model_name: the open_clip config to train (:data:`~clapray.model.catalog.MINI_CLIP_MODELS`).
        attribute_weight: weight of a supervised attribute loss on the image tower, beside the contrastive
            loss: cosine classifiers of the pretraining images' shape and colour on the image feature,
            discarded after pretraining (as a supervised-pretrained image tower under CLIP-style
            alignment, e.g. LiT). 0 trains with the contrastive loss alone.
        shape_mention_rate: fraction of captions that name the shape; the others say "object", "figure"
            or "thing" instead (web captions under-describe what images show).
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
    attribute_weight: float = 3.0
    shape_mention_rate: float = 0.03

    def validate(self) -> PretrainSettings:
        """Check ranges; a bad value raises :class:`~clapray.errors.ConfigError`."""
        ints = {"seed": 0, "steps": 1, "batch_size": 2, "warmup_steps": 0, "images_per_class": 1,
                "render_size": 8}
        for name, lo in ints.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < lo:
                raise ConfigError("pretrain", name, f"an integer >= {lo}", value)
        for name in ("lr", "weight_decay", "attribute_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise ConfigError("pretrain", name, "a number >= 0", value)
        rate = self.shape_mention_rate
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate <= 1:
            raise ConfigError("pretrain", "shape_mention_rate", "a number in [0, 1]", rate)
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


class AttributeHeads(nn.Module):
    """Cosine classifiers of an image's shape and colour on its normalised CLIP image feature.

    Trained beside the contrastive loss and thrown away afterwards: they make the image tower encode
    what the pretraining images show, however seldom the captions say it. The scale is fixed at about
    the contrastive logit scale reached after pretraining, so both losses see similar logits.
    """

    SCALE = 20.0

    def __init__(self, embed_dim: int):
        super().__init__()
        self.shape = nn.Parameter(torch.randn(len(SHAPES), embed_dim) * embed_dim**-0.5)  # [S, d]
        self.colour = nn.Parameter(torch.randn(len(COLOURS), embed_dim) * embed_dim**-0.5)  # [K, d]

    def loss(self, image_features: Tensor, shape_ids: Tensor, colour_ids: Tensor) -> Tensor:
        """Mean cross-entropy of both classifiers for ``image_features [B, d]`` (unit rows)."""
        shape_logits = self.SCALE * image_features @ F.normalize(self.shape, dim=-1).T  # [B, S]
        colour_logits = self.SCALE * image_features @ F.normalize(self.colour, dim=-1).T  # [B, K]
        return 0.5 * (F.cross_entropy(shape_logits, shape_ids) + F.cross_entropy(colour_logits, colour_ids))


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
        image_size = image_size_of(model)
        pool = render_pool(settings, image_size, tokenizer)
        say(f"pretrain: {len(pool)} image-caption pairs of {len(pretrain_classes(settings.patterned))} "
            f"classes rendered in {time.perf_counter() - start:.1f}s")
        mean = torch.tensor(preprocess_cfg["mean"]).view(1, 3, 1, 1) * 255
        std = torch.tensor(preprocess_cfg["std"]).view(1, 3, 1, 1) * 255

        heads = AttributeHeads(embed_dim_of(model)) if settings.attribute_weight > 0 else None
        groups = _param_groups(model, settings.weight_decay)
        if heads is not None:
            groups.append({"params": list(heads.parameters()), "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups, lr=settings.lr, betas=(0.9, 0.98), eps=1e-6)
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
            if heads is not None:
                loss = loss + settings.attribute_weight * heads.loss(
                    image_features, pool.shape_ids[idx], pool.colour_ids[idx])
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


