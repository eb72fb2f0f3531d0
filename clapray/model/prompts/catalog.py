"""The prompt-variant catalogue: everything clapray knows about a variant without importing torch (§3, §14).

Each :class:`VariantSpec` declares one ``method.variant``: its report label, whether it learns at all,
whether it leaves the image tower frozen (so the frozen-feature cache may stand in for it), whether its
text features depend on the image batch, its VGA head count, whether its adapter heads hold a
LayerNorm, and which parameters train in memory consolidation (read by :mod:`clapray.phases`). The
configuration (name validation, whether a run keeps a memory), the results store, the report and the
benchmarks read these facts from here; the learner and the CLAP head read them through the implementation
class, whose module ``clapray.model.prompts.<module>`` registers it
(:func:`clapray.model.prompts.base.register_variant`).

Adding a variant is one implementation file plus its entry in :data:`VARIANTS`; the tests parametrised
over the catalogue then cover it. This module imports only the standard library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class VariantSpec:
    """The declarative facts of one prompt variant.

    Attributes:
        name: the ``method.variant`` value.
        label: how tables and figures name it (e.g. ``CoOp``).
        summary: one line: what it trains.
        module: the module under :mod:`clapray.model.prompts` that implements and registers it.
        learns: false for the zero-shot reference row (no head, no training, no memory).
        image_tower_frozen: the image embeddings do not depend on anything learned (false for MaPLe, whose
            prompts enter the image tower); only such variants may use the frozen-feature cache.
        image_conditioned: the text features depend on the batch's images (AttriCLIP, CoCoOp), so evaluation
            cannot compute them once per pass.
        per_image_queries: the VGA queries are per image, [B, C, d] (CoCoOp).
        uses_task_tokens: one learnable token per task joins the VGA queries (AttriCLIP, §3.4).
        trains_in_consolidation: the variant's own prompt parameters train in memory consolidation (§11).
        vga_trains_in_consolidation: VGA stays trainable (and in train mode) in consolidation (AttriCLIP).
        task_tokens_train_in_consolidation: every task's token trains in consolidation (AttriCLIP: the
            official code unfreezes them all, as it does the adapters); in main training only the current
            task's token trains.
        vga_heads: official VGA head count of the VI head; ``None`` = d / 64 (§4).
        vga_heads_deterministic: the same for the deterministic "w/o VI" head.
        adapter_layer_norm: each adapter head (mean and standard deviation) is LayerNorm(d) -> Linear, two
            LayerNorms per pair (CoOp, MaPLe, CoCoOp; the deterministic head, mean only, always has one,
            §3.2, §14).
        prompt_options: the ``method.prompt`` fields the variant reads; the others mean nothing to it (the
            results store keeps them as null in its runs, :meth:`clapray.config.RunConfig.unused_fields`).
    """

    name: str
    label: str
    summary: str
    module: str
    learns: bool = True
    image_tower_frozen: bool = True
    image_conditioned: bool = False
    per_image_queries: bool = False
    uses_task_tokens: bool = False
    trains_in_consolidation: bool = False
    vga_trains_in_consolidation: bool = False
    task_tokens_train_in_consolidation: bool = False
    vga_heads: int | None = None
    vga_heads_deterministic: int | None = None
    adapter_layer_norm: bool = False
    prompt_options: tuple[str, ...] = ()

    def default_vga_heads(self, dim: int, deterministic: bool) -> int:
        """The official head count at embedding width ``dim`` (d / 64 where the declared count does not
        divide ``dim``, as the tiny test models need)."""
        heads = self.vga_heads_deterministic if deterministic else self.vga_heads
        if heads is not None and dim % heads == 0:
            return heads
        return max(1, dim // 64)

    def uses_adapter_layer_norm(self, deterministic: bool) -> bool:
        """Whether the adapter heads of this variant (VI or w/o VI) start with a LayerNorm."""
        return deterministic or self.adapter_layer_norm


def _catalogue(*specs: VariantSpec) -> Mapping[str, VariantSpec]:
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"prompt variants declared twice: {names}")
    return MappingProxyType({s.name: s for s in specs})


# The order is the order of tables, benchmarks and registry-parametrised tests (the zero-shot reference row,
# which learns nothing, is listed first by reports regardless).
VARIANTS: Mapping[str, VariantSpec] = _catalogue(
    VariantSpec(
        name="handcrafted", label="Hand-crafted", module="handcrafted",
        summary="no prompt parameters: template-ensemble text features; VGA + adapters learn",
        vga_heads=1),
    VariantSpec(
        name="coop", label="CoOp", module="coop",
        summary="shared context of n_ctx text tokens, through the frozen text tower; + VGA + adapters",
        trains_in_consolidation=True, adapter_layer_norm=True, prompt_options=("n_ctx", "coop_raw_class_names")),
    VariantSpec(
        name="maple", label="MaPLe", module="maple",
        summary="shallow + deep text prompts coupled into the image tower (both towers prompted); + VGA + adapters",
        image_tower_frozen=False, trains_in_consolidation=True, adapter_layer_norm=True,
        prompt_options=("maple_depth", "maple_length", "maple_official_untrained", "maple_unnormalised_eval_text")),
    VariantSpec(
        name="attriclip", label="AttriCLIP", module="attriclip",
        summary="attribute bank (keys + prompts) chosen top-k per image, task tokens in VGA; + adapters",
        image_conditioned=True, uses_task_tokens=True, trains_in_consolidation=True,
        vga_trains_in_consolidation=True, task_tokens_train_in_consolidation=True, vga_heads=8,
        vga_heads_deterministic=8,
        prompt_options=("attriclip_bank_size", "attriclip_prompt_length", "attriclip_top_k",
                        "attriclip_ortho_weight", "attriclip_match_weight")),
    VariantSpec(
        name="cocoop", label="CoCoOp", module="cocoop",
        summary="CoOp context + meta-net conditioning it on each image; per-image VGA queries; + adapters",
        image_conditioned=True, per_image_queries=True, trains_in_consolidation=True, adapter_layer_norm=True,
        prompt_options=("n_ctx", "cocoop_reduction", "coop_raw_class_names")),
    VariantSpec(
        name="zeroshot", label="Continual-CLIP (zero-shot)", module="zeroshot",
        summary="nothing: frozen CLIP with template-ensemble text features (Continual-CLIP)",
        learns=False),
)

VARIANT_NAMES: tuple[str, ...] = tuple(VARIANTS)
# The official code's base CLAP (README command): the default of ``method.variant``.
DEFAULT_VARIANT = "handcrafted"


def variant_spec(name: str) -> VariantSpec:
    """The spec of ``method.variant`` ``name``; ``KeyError`` naming the known variants otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown prompt variant {name!r} (known: {', '.join(VARIANTS)})") from None


def report_order(name: str) -> tuple[int, int]:
    """Sort key of a variant in tables: the reference rows (variants that learn nothing) first, then the
    catalogue's order; unknown names last."""
    spec = VARIANTS.get(name)
    if spec is None:
        return (2, 0)
    return (0 if not spec.learns else 1, VARIANT_NAMES.index(name))
