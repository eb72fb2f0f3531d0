"""The prompt-variant interface and its registry (§3).

A prompt variant answers, for the learner and the CLAP head:

* ``encode_images(images)`` -> x̂ [B, d]: the L2-normalised image embeddings. The frozen backbone for every
  variant whose ``image_tower_frozen`` is true (so a feature cache may replace the call); MaPLe runs the
  prompted image tower with autograd.
* ``text_features(num_seen, image_features)`` -> :class:`PromptText`: the base text features t_c of the
  first ``num_seen`` classes (task blocks in order), either shared [C, d] or per image [B, C, d], plus any
  image-specific term and the variant's own (weighted) losses. ``image_conditioned`` says whether the
  result depends on ``image_features``; when it does not, evaluation computes it once per pass.
* ``trainable_parameters(phase)``: what the optimiser updates in ``train`` (main training of a task) and
  ``consolidate`` (memory consolidation), besides the head's VGA and adapters.
* ``learned_parameter_count()``: parameters the variant ever trains (the runs table's count).

Everything declarative about a variant (whether it learns, keeps the image tower frozen, conditions its
text on the images, uses task tokens, what trains in consolidation, its VGA heads and adapter LayerNorm)
is its :class:`~clapray.model.prompts.catalog.VariantSpec`, attached to the class as ``spec`` when it
registers: code that must not import torch reads the same facts from the catalogue.

The learnable tensors of a variant live in one sub-module, built by :meth:`PromptVariant.make_parameters`
from :class:`~clapray.model.prompts.towers.TowerDims` alone, so their count at any backbone's dims can be
computed without weights (``parameter_count``). Frozen, derived tensors (token embeddings of the prompt
strings, template features) are non-persistent buffers: a checkpoint carries only what is learned.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from clapray.config import PromptConfig
from clapray.errors import UserError
from clapray.model.backbone import Backbone
from clapray.model.prompts.catalog import VARIANTS, VariantSpec
from clapray.model.prompts.towers import TowerDims
from clapray.model.text_features import TemplateFeatures


@dataclass
class PromptText:
    """Base text features of the seen classes for one batch.

    Attributes:
        queries: [C, d] shared by the batch, or [B, C, d] per image (CoCoOp): the t_c that VGA refines into
            h_c and the adapters read.
        per_image: optional [B, C, d] image-specific features added to every class embedding of image b
            (AttriCLIP: w_{b,c} = t_{b,c} + h_c + z_c, §3.4).
        loss: the variant's own losses, already weighted (AttriCLIP); ``None`` when it has none or in eval.
    """

    queries: Tensor
    per_image: Tensor | None = None
    loss: Tensor | None = None


class PromptVariant(nn.Module):
    """Base class of every prompt variant; subclasses register with :func:`register_variant`."""

    name: ClassVar[str] = ""  # the catalogue entry this class implements
    spec: ClassVar[VariantSpec]  # attached by register_variant

    def __init__(self, backbone: Backbone, templates: TemplateFeatures, options: PromptConfig):
        super().__init__()
        # A plain attribute (Backbone is not an nn.Module): the frozen towers are neither registered nor saved.
        self.backbone = backbone
        self.options = options
        self.dims = TowerDims.from_backbone(backbone)
        self.class_names = templates.class_names
        # t_c of the template ensemble, [C_all, d]: the hand-crafted base features (§3.1).
        self.register_buffer("template_text", templates.mean.detach().to(backbone.device), persistent=False)
        self.learned = self.make_parameters(self.dims, options)

    # ---------------------------------------------------------------- what is learned

    @classmethod
    def make_parameters(cls, dims: TowerDims, options: PromptConfig) -> nn.Module:
        """The variant's learnable tensors for towers of ``dims`` (an empty module when it learns none)."""
        return nn.Module()

    @classmethod
    def learned_subset(cls, learned: nn.Module, options: PromptConfig) -> list[nn.Parameter]:
        """The parameters of ``learned`` that training updates (all of them unless a variant says otherwise)."""
        return list(learned.parameters())

    @classmethod
    def parameter_count(cls, dims: TowerDims, options: PromptConfig) -> int:
        """Parameters this variant trains on towers of ``dims``, computed without any weights."""
        return sum(p.numel() for p in cls.learned_subset(cls.make_parameters(dims, options), options))

    def learned_parameter_count(self) -> int:
        return sum(p.numel() for p in self.learned_subset(self.learned, self.options))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates when a phase trains the prompts (:mod:`clapray.phases` decides
        when), besides VGA and adapters."""
        return self.learned_subset(self.learned, self.options)

    # ---------------------------------------------------------------- forward

    def encode_images(self, images: Tensor) -> Tensor:
        """Preprocessed images [B, 3, S, S] -> L2-normalised embeddings [B, d] (frozen tower, no autograd)."""
        return self.backbone.encode_images(images)

    def text_features(self, num_seen: int, image_features: Tensor | None = None) -> PromptText:
        """Base text features of the first ``num_seen`` classes (see :class:`PromptText`)."""
        raise NotImplementedError


PROMPT_REGISTRY: dict[str, type[PromptVariant]] = {}


def register_variant(cls: type[PromptVariant]) -> type[PromptVariant]:
    """Class decorator: make ``cls`` the implementation of the catalogue entry ``cls.name``.

    The entry's ``module`` must be the module defining ``cls``, so that :func:`variant_class` finds it.
    """
    if cls.name not in VARIANTS:
        raise ValueError(f"{cls.__name__}: {cls.name!r} is not in the prompt-variant catalogue")
    spec = VARIANTS[cls.name]
    if cls.__module__ != f"{__package__}.{spec.module}":
        raise ValueError(f"{cls.__name__} is defined in {cls.__module__}, but the catalogue says variant "
                         f"{cls.name!r} lives in {__package__}.{spec.module}")
    if cls.name in PROMPT_REGISTRY and PROMPT_REGISTRY[cls.name] is not cls:
        raise ValueError(f"prompt variant {cls.name!r} is registered twice")
    cls.spec = spec
    PROMPT_REGISTRY[cls.name] = cls
    return cls


def variant_class(name: str) -> type[PromptVariant]:
    """The implementation of catalogue entry ``name`` (its module is imported on first use)."""
    if name not in VARIANTS:
        raise UserError(f"method.variant: expected one of {', '.join(VARIANTS)}, got {name!r}")
    if name not in PROMPT_REGISTRY:
        importlib.import_module(f"{__package__}.{VARIANTS[name].module}")
    return PROMPT_REGISTRY[name]


def build_prompt_variant(name: str, backbone: Backbone, templates: TemplateFeatures,
                         options: PromptConfig) -> PromptVariant:
    """The registered variant ``name`` for ``backbone`` and the scenario's classes, on the backbone's device.

    Learnable tensors are drawn from torch's global RNG: seed it first (the learner does, per run).
    """
    variant = variant_class(name)(backbone, templates, options)
    return variant.to(backbone.device)


def init_normal_(tensor: Tensor, std: float = 0.02) -> Tensor:
    """N(0, std^2), the official init of every learnable prompt vector and attribute key (§3.2 - §3.4)."""
    with torch.no_grad():
        return tensor.normal_(0.0, std)
