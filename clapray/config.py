"""Typed, frozen configuration of one run, loaded from YAML with field-precise errors.

Defaults are the official CLAP4CLIP code's reference configuration (method reference §12.3b): hand-crafted
prompts, ViT-B/16 (OpenAI), VGA with 1 layer and 1 head, task-specific probabilistic adapters, M = 20
Monte-Carlo samples, KD weight 15, KL weight 0.001, 2000 exemplars on CIFAR-100 chosen first-k,
consolidation for 2 epochs at lr/10, 5 epochs of SGD with batch 32, lr 1e-3 x B/20, 30 % linear warmup
then cosine, class order and init seeded from run index 10. Where the paper states another choice, a
field selects it (``optim.lr_rule``, ``optim.warmup``, ...); the field's docstring names both.

Every dataclass validates itself on construction (types, ranges, cross-field rules), so a config built
in Python is as safe as one loaded from a file. Loading reports the first problem as one line::

    quickstart.yaml: memory.size: expected an integer >= 0 or null, got -5

Overrides use dotted paths, ``--set memory.size=500``; values are parsed as YAML scalars and validated
the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml

from clapray.errors import ConfigError, UserError
from clapray.model.prompts.catalog import DEFAULT_VARIANT, VARIANT_NAMES, VARIANTS, variant_spec
from clapray.typed_config import (
    TypedConfig,
    apply_overrides,
    config_field,
    from_mapping,
    load_yaml_mapping,
    parse_override,
    require,
)

# Prompt variants the method knows (§3, §14, §19): the torch-free catalogue of clapray.model.prompts.
PROMPT_VARIANTS = VARIANT_NAMES
EXEMPLAR_SELECTORS = ("first_k", "random", "herding", "entropy", "energy", "variance")

# Upper bounds of sizes and seeds: far above any sensible run, low enough that a typo (an extra zero or
# three) is refused at load instead of asking for hundreds of gigabytes hours later.
MAX_SEED = 2**31 - 1
"""Largest seed: NumPy's legacy RandomState (the official class order) takes seeds below 2**32, torch below
2**64; one bound that every seed of a run and a sweep obeys."""
MAX_NAME_BYTES = 200
"""Longest run name in UTF-8 bytes: ``<name>-<12-hex hash>`` must stay a valid file name (255 bytes)."""
MAX_MC_SAMPLES = 1000
MAX_BATCH = 65_536
MAX_EPOCHS = 10_000
MAX_IMAGES_PER_CLASS = 1_000_000


def is_valid_name(name: str) -> bool:
    """A run name usable as (the start of) one file name on every platform clapray runs on."""
    return (bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name
            and name.isprintable() and len(name.encode()) <= MAX_NAME_BYTES)


def leaf_fields(cls: type, prefix: str = "") -> list[str]:
    """Dotted names of every leaf field of a config dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    out: list[str] = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.extend(leaf_fields(hints[f.name], f"{prefix}{f.name}."))
        else:
            out.append(f"{prefix}{f.name}")
    return out


# --------------------------------------------------------------------------------------------------
# The sections of a run.


@dataclass(frozen=True)
class BackboneConfig(TypedConfig):
    """The frozen CLIP model (§2, §19)."""

    model: str = config_field("ViT-B-16", doc="open_clip model name, e.g. ViT-B-16, ViT-L-14, clapray-tiny-vit")
    pretrained: str | None = config_field(
        "openai", doc="open_clip pretrained tag (openai, laion2b_...), a local checkpoint path, clapray-shapes (the "
        "mini-CLIP pretrained on shapes captions, trained on first use) or null = random init")
    cache_dir: str | None = config_field(None, doc="where downloaded weights are cached; null = open_clip's default")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = config_field(
        "auto", doc="precision: auto = the towers in bf16 autocast on GPU and fp32 on CPU, trainable modules "
        "fp32; fp32 = everything fp32; bf16 = bf16 autocast towers, fp32 trainable modules; fp16 = the official "
        "code's all-half model: towers cast to half AND the trainable modules (VGA, adapters, task tokens, "
        "prompts) half parameters trained by plain SGD in fp16, no loss scaling (GPU only; fragile: the sigma "
        "init underflows, §2/P5)")


@dataclass(frozen=True)
class ShapesConfig(TypedConfig):
    """Options of the generated ``shapes`` and ``shapes_cl`` datasets (ignored by other datasets)."""

    num_classes: int = config_field(50, doc="number of colour-shape classes (shapes at most 144, shapes_cl 60)",
                                    ge=2, le=144)
    train_per_class: int = config_field(100, doc="training images per class", ge=1, le=MAX_IMAGES_PER_CLASS)
    test_per_class: int = config_field(20, doc="test images per class", ge=1, le=MAX_IMAGES_PER_CLASS)
    image_size: int = config_field(64, doc="rendered image side in pixels", ge=8, le=1024)
    seed: int = config_field(0, doc="generator seed: the same seed renders the same images", ge=0, le=MAX_SEED)
    cache: bool = config_field(False, doc="render once into an array under data.root instead of on the fly")


@dataclass(frozen=True)
class DataConfig(TypedConfig):
    """Benchmark, class-incremental split and loading (§12.3, §12.4)."""

    dataset: str = config_field("cifar100", doc="registered benchmark: cifar100, imagenet100, imagenet_r, cub200, "
                          "vtab, cdcl, shapes, shapes_cl (shapes classes held out from the mini-CLIP's pretraining)")
    root: str = config_field("data", doc="directory holding the datasets (and the shapes cache)")
    download: bool = config_field(False, doc="download the dataset when missing (CIFAR-100 only; needs network)")
    num_tasks: int | None = config_field(None, doc="number of tasks; null = the benchmark's (10, VTAB 5)", ge=1)
    classes_per_task: int | None = config_field(None, doc="classes per task; null = classes / num_tasks", ge=1)
    initial_classes: int | None = config_field(None, doc="classes of the first task (B50-style); null = like the "
                                         "others", ge=1)
    sequence: tuple[str, ...] = config_field(
        factory=tuple, doc="cross-dataset sequence for dataset=cdcl, e.g. [imagenet100, cifar100]; "
        "empty = the benchmark's default order")
    val_fraction: float = config_field(0.0, doc="fraction of each class's training images held out for "
                                 "validation (the paper tuned on 10% of CIFAR-100 train)", ge=0.0, lt=1.0)
    num_workers: int = config_field(2, doc="DataLoader worker processes", ge=0, le=256)
    shapes: ShapesConfig = config_field(factory=ShapesConfig, doc="options of the shapes dataset")
    feature_cache: bool = config_field(
        True, doc="train and evaluate on image embeddings computed once (both flip views) when the variant "
        "keeps the image tower frozen (all but MaPLe); false = encode images every step. Same batches and "
        "flips either way, so the metrics agree up to float rounding")

    def check(self) -> None:
        require(self, bool(self.root.strip()) and "\0" not in self.root, "root", "a directory path (not empty)")


@dataclass(frozen=True)
class VGAConfig(TypedConfig):
    """Visual-guided attention: a transformer decoder, text queries over image memory (§4)."""

    enabled: bool = config_field(True, doc="use VGA (off: h_c = t_c)")
    depth: int = config_field(1, doc="decoder layers L (official: 1, hard-coded)", ge=1, le=64)
    heads: int | None = config_field(None, doc="attention heads H; null = the variant's official value "
                               "(hand-crafted 1, CoOp/MaPLe/w/o VI d/64, AttriCLIP 8)", ge=1, le=256)
    ff_dim: int = config_field(2048, doc="feed-forward width (PyTorch default 2048)", ge=1, le=65_536)
    dropout: float = config_field(0.1, doc="dropout inside the decoder, active in main training only", ge=0.0, lt=1.0)
    context: Literal["batch", "image"] = config_field(
        "batch", doc="what an image's text queries attend to: batch = every image of the batch (official; "
        "predictions depend on batch composition, P1), image = the image itself only (task-agnostic)")


@dataclass(frozen=True)
class ConsolidationConfig(TypedConfig):
    """Class-balanced finetuning on the memory after every task but the first (§11)."""

    enabled: bool = config_field(True, doc="run memory consolidation (off in replay-free mode regardless)")
    epochs: int = config_field(2, doc="consolidation epochs (README 2, scripts 1)", ge=1, le=MAX_EPOCHS)
    lr_factor: float = config_field(0.1, doc="consolidation lr = main lr x factor (code lr/10; paper 1e-4 absolute)",
                              gt=0.0, le=100.0)


@dataclass(frozen=True)
class PromptConfig(TypedConfig):
    """Options of the learnable prompt variants (§3); each variant reads only its own fields."""

    n_ctx: int = config_field(12, doc="CoOp / CoCoOp: learnable context tokens before the class name (official "
                        "CoOp 12, init N(0, 0.02^2), class token at the end)", ge=1, le=1000)
    maple_depth: int = config_field(9, doc="MaPLe: prompt depth J, i.e. layers of both towers that get prompts (layer "
                              "0 the shallow ones, 1..J-1 the deep ones; capped at the towers' layer count)",
                              ge=1, le=64)
    maple_length: int = config_field(
        2, doc="MaPLe: prompt tokens per layer (initialised from 'a photo of a' when <= 4)", ge=1, le=1000)
    maple_official_untrained: bool = config_field(
        False, doc="MaPLe: true = the released code's behaviour, the deep prompts and all coupling layers stay "
        "at their random init (only the shallow text context learns, §3.3, P14); false = train them as MaPLe "
        "intends")
    maple_unnormalised_eval_text: bool = config_field(
        False, doc="MaPLe: true = the released code's test path, which feeds the prompted text features to VGA "
        "and the adapters without L2-normalising them (evaluation and exemplar selection); false = normalised "
        "in training and evaluation alike")
    coop_raw_class_names: bool = config_field(
        False, doc="CoOp (and CoCoOp): true = the released code's prompts, class names with their underscores "
        "('X X .. X sea_lion.'); false = underscores as spaces, as every other prompt of the method")
    attriclip_bank_size: int = config_field(10, doc="AttriCLIP: attributes in the bank (keys + prompts, --num_prompt)",
                                      ge=1, le=10_000)
    attriclip_prompt_length: int = config_field(12, doc="AttriCLIP: tokens of one attribute prompt", ge=1, le=1000)
    attriclip_top_k: int = config_field(3, doc="AttriCLIP: attributes selected per image (--text_prompt)", ge=1)
    attriclip_ortho_weight: float = config_field(0.3, doc="AttriCLIP: weight of the attribute orthogonality loss "
                                           "(--ortho-loss)", ge=0.0, le=1e6)
    attriclip_match_weight: float = config_field(
        0.7, doc="AttriCLIP: weight of the key-matching loss (--matching-loss)", ge=0.0, le=1e6)
    cocoop_reduction: int = config_field(16, doc="CoCoOp: the meta-net's bottleneck divides the embedding dim by this",
                                   ge=1, le=4096)

    def check(self) -> None:
        require(self, self.attriclip_top_k <= self.attriclip_bank_size, "attriclip_top_k",
                 f"an integer <= attriclip_bank_size ({self.attriclip_bank_size})")


@dataclass(frozen=True)
class MethodConfig(TypedConfig):
    """The CLAP knobs (§4 - §11, §14)."""

    variant: str = config_field(DEFAULT_VARIANT, doc="prompt variant (§3): " + "; ".join(
        f"{spec.name} = {spec.summary}" for spec in VARIANTS.values()), choices=PROMPT_VARIANTS)
    prompt: PromptConfig = config_field(factory=PromptConfig, doc="options of the learnable prompt variants")
    deterministic: bool = config_field(False, doc="the 'w/o VI' variant: mean heads only, no sampling or KL (§14)")
    vga: VGAConfig = config_field(factory=VGAConfig, doc="visual-guided attention")
    mc_samples_train: int = config_field(20, doc="Monte-Carlo samples M in training (official 20 = eval)", ge=1,
                                         le=MAX_MC_SAMPLES)
    mc_samples_eval: int = config_field(20, doc="Monte-Carlo samples M at evaluation", ge=1, le=MAX_MC_SAMPLES)
    kl_weight: float = config_field(0.001, doc="weight of KL(q || prior) (hard-coded 0.001 officially)", ge=0.0,
                                    le=1e6)
    prior: Literal["standard", "data_driven", "language_aware"] = config_field(
        "standard", doc="prior of the adapters' posteriors: N(0, I), data-driven (--use-np-prior) or "
        "language-aware (--frozen-prior) (§6)")
    prior_context: Literal["random", "task"] = config_field(
        "random", doc="context images of the data-driven prior: random = a random share (prior_context_size) "
        "of the batch, what the official code passes for every task; task = the batch's images of the task's "
        "classes (a random share when that is the whole batch, N(0, I) when there are none), the rule of the "
        "official context helper that its callers never reach (§6)")
    prior_context_size: float = config_field(0.67, doc="batch fraction used as context by the data-driven prior",
                                       gt=0.0, le=1.0)
    kd_weight: float = config_field(15.0, doc="language-aware KD weight gamma (--beta; 0 disables) (§7)", ge=0.0,
                                    le=1e6)
    language_init: bool = config_field(True, doc="language-aware init of each new adapter from template "
                                 "statistics (§8)")
    task_specific_adapters: bool = config_field(True, doc="one (mu, sigma) pair per task; false = one shared pair")
    reinit_shared_adapter: bool = config_field(
        False, doc="with task_specific_adapters false: true = re-run the language-aware init of the shared pair "
        "at the start of every task, wiping what it learned (the official code, P15); false = initialise it once")
    consolidation: ConsolidationConfig = config_field(factory=ConsolidationConfig, doc="memory consolidation")

    def unused_fields(self) -> frozenset[str]:
        """Fields of this section (relative names, ``vga.depth``) that the method never reads as configured.

        A variant that learns nothing (zero-shot) reads only ``variant``; any other reads the
        ``prompt`` options its catalogue entry declares (``VariantSpec.prompt_options``). The deterministic
        head ("w/o VI") draws no samples and has no KL, hence no prior; the standard and language-aware
        priors use no context batch; a disabled VGA or consolidation reads none of its settings.
        """
        spec = variant_spec(self.variant)
        if not spec.learns:
            return frozenset(name for name in leaf_fields(MethodConfig) if name != "variant")
        unused = {f"prompt.{name}" for name in leaf_fields(PromptConfig) if name not in spec.prompt_options}
        if self.deterministic:
            unused |= VARIATIONAL_ONLY
        elif self.prior != "data_driven":
            unused |= {"prior_context", "prior_context_size"}
        if not self.vga.enabled:
            unused |= {f"vga.{name}" for name in leaf_fields(VGAConfig) if name != "enabled"}
        if not self.consolidation.enabled:
            unused |= {f"consolidation.{name}" for name in leaf_fields(ConsolidationConfig) if name != "enabled"}
        return frozenset(unused)


# Method fields only the variational head reads (method reference §5, §6, §14).
VARIATIONAL_ONLY = frozenset({"mc_samples_train", "mc_samples_eval", "kl_weight", "prior", "prior_context",
                              "prior_context_size"})


@dataclass(frozen=True)
class MemoryConfig(TypedConfig):
    """Exemplar memory for experience replay (§10)."""

    policy: Literal["auto", "total", "per_class"] = config_field(
        "auto", doc="auto = the official choice per dataset (CIFAR-100: 2000 in total, others 20 per "
        "class); total = size split evenly over seen classes; per_class = size per class")
    size: int | None = config_field(None, doc="exemplars in total or per class (per policy); null with auto", ge=0,
                                    le=100_000_000)
    selector: str = config_field(
        "first_k", doc="exemplar selector (§10): first_k (the official 'random'), random (a true seeded choice), "
        "herding (iCaRL), entropy (highest predictive entropy, the paper's), energy (highest energy = lowest "
        "MC-mean logsumexp), variance (lowest summed variance of the MC softmax)", choices=EXEMPLAR_SELECTORS)
    selection: Literal["official", "clapray"] = config_field(
        "official", doc="how the model-based selectors (herding, entropy, energy, variance) run: official = over "
        "the old memory plus the new task's data, old classes re-selected from their exemplars under the current "
        "model, herding on the L2-normalised MC-mean logits; clapray = new classes only (old classes keep a "
        "prefix), herding on the image embeddings. first_k and random are the same under both")
    selection_views: Literal["test", "train"] = config_field(
        "test", doc="the view of the candidate images the model-based selectors see: test = the evaluation view "
        "(no flip); train = a seeded random horizontal flip per image, the official code's accident (its "
        "selection loaders read the training transform)")
    official_mc_reshape: bool = config_field(
        False, doc="energy and variance: true = reproduce the official code's reshape of the MC predictions, "
        "which interleaves the sample and batch axes so a candidate's 'samples' mix images of its batch (a bug, "
        "P8); false = each candidate's own M samples")

    def check(self) -> None:
        require(self, self.policy == "auto" or self.size is not None, "size",
                 f"an integer >= 0 when policy is {self.policy}")


@dataclass(frozen=True)
class BudgetConfig(TypedConfig):
    """Resource-constrained settings (§12.6)."""

    replay_free: bool = config_field(False, doc="no exemplar memory and no consolidation")
    max_steps_per_task: int | None = config_field(
        None, doc="compute budget: cap on the optimiser steps of each phase of a task (main training, and "
        "consolidation); null = no cap", ge=1, le=10**9)


@dataclass(frozen=True)
class OptimConfig(TypedConfig):
    """SGD and its schedule (§12.1). A fresh optimiser per task and per consolidation phase."""

    epochs: int = config_field(5, doc="epochs per task", ge=1, le=MAX_EPOCHS)
    batch_size: int = config_field(32, doc="training batch (code 32, paper 64)", ge=1, le=MAX_BATCH)
    lr: float = config_field(1e-3, doc="base learning rate (at most 100: torch's optimisers keep it as a float32 "
                             "multiplier)", gt=0.0, le=100.0)
    lr_rule: Literal["batch_scaled", "fixed"] = config_field(
        "batch_scaled", doc="batch_scaled = lr x batch/20 (code), fixed = lr as given (paper; MaPLe code)")
    warmup: Literal["fraction", "epoch", "none"] = config_field(
        "fraction", doc="linear warmup: fraction of the task's steps (code, 30%), one epoch (paper), none")
    warmup_fraction: float = config_field(0.3, doc="warmup share of steps when warmup = fraction", ge=0.0, lt=1.0)
    min_lr_factor: float = config_field(1e-3, doc="cosine decays to lr x this factor", ge=0.0, le=1.0)
    momentum: float = config_field(0.0, doc="SGD momentum (official 0)", ge=0.0, lt=1.0)
    weight_decay: float = config_field(0.0, doc="SGD weight decay (official 0)", ge=0.0, le=100.0)


@dataclass(frozen=True)
class EvalConfig(TypedConfig):
    """Evaluation protocol and metrics (§13)."""

    batch_size: int | None = config_field(None, doc="test batch; null = the training batch (official)", ge=1,
                                          le=MAX_BATCH)
    protocol: Literal["per_task", "mixed"] = config_field(
        "per_task", doc="per_task = one loader per task's test set (official: VGA context holds one task); "
        "mixed = batches drawn across all seen tasks (a robustness check, P1)")
    order: Literal["shuffled", "sorted"] = config_field(
        "shuffled", doc="order of the evaluation images before batching: shuffled = a seeded random order "
        "fixed per run (from seeds.class_order; official: each task's test indices shuffled once, so a batch "
        "mixes that task's classes; the future tasks' images for novelty detection as one shuffled stream); "
        "sorted = dataset order (one or two classes per batch on class-sorted data)")
    split: Literal["test", "val"] = config_field("test", doc="evaluate on the test set or the validation split")
    ece_bins: int = config_field(15, doc="confidence bins of ECE", ge=1, le=10_000)
    phndd: bool = config_field(True, doc="post-hoc novel data detection (energy score) at every step but the last")


@dataclass(frozen=True)
class SeedConfig(TypedConfig):
    """Separate seeds: the class order (with the data split) and everything random in training."""

    class_order: int = config_field(10, doc="class order = NumPy permutation seeded 1993 + this (official "
                              "--num-run; README 10); also seeds the validation split", ge=0, le=MAX_SEED)
    init: int = config_field(10, doc="seeds module init, MC sampling, shuffling, flips and exemplar choice", ge=0,
                             le=MAX_SEED)


@dataclass(frozen=True)
class RunConfig(TypedConfig):
    """Everything that defines one continual-learning run."""

    name: str = config_field("clap4clip", doc="run name; the output directory is output_dir/name-<config hash>")
    output_dir: str = config_field("runs", doc="where runs write their directory")
    device: Literal["auto", "cpu", "cuda"] = config_field("auto", doc="auto = cuda when available")
    backbone: BackboneConfig = config_field(factory=BackboneConfig, doc="frozen CLIP")
    data: DataConfig = config_field(factory=DataConfig, doc="benchmark and scenario")
    method: MethodConfig = config_field(factory=MethodConfig, doc="CLAP method")
    memory: MemoryConfig = config_field(factory=MemoryConfig, doc="exemplar memory")
    budget: BudgetConfig = config_field(factory=BudgetConfig, doc="resource constraints")
    optim: OptimConfig = config_field(factory=OptimConfig, doc="optimisation")
    eval: EvalConfig = config_field(factory=EvalConfig, doc="evaluation")
    seeds: SeedConfig = config_field(factory=SeedConfig, doc="seeds")

    def check(self) -> None:
        require(self, is_valid_name(self.name), "name",
                f"a non-empty name without '/' or control characters, at most {MAX_NAME_BYTES} bytes")
        require(self, bool(self.output_dir.strip()) and "\0" not in self.output_dir, "output_dir",
                "a directory path (not empty)")

        if self.eval.split == "val" and self.data.val_fraction == 0.0:
            raise ConfigError("RunConfig", "eval.split", "test unless data.val_fraction > 0", self.eval.split)
        if self.backbone.precision == "fp16" and self.device == "cpu":
            raise ConfigError("RunConfig", "backbone.precision", "fp32, bf16 or auto on device cpu", "fp16")

    @property
    def uses_memory(self) -> bool:
        return not self.budget.replay_free and variant_spec(self.method.variant).learns

    def unused_fields(self) -> frozenset[str]:
        """Dotted fields this run never reads, given its variant, head and setting.

        The results store keeps them as null in the run's row (``config_yaml`` keeps every value), so a
        query over, say, the KD weight never counts a run that had none. A variant that learns nothing
        reads no method option but its name (:meth:`MethodConfig.unused_fields`), keeps no memory, and
        trains nothing (no budget, no optimiser: ``optim.batch_size`` still sets the evaluation batch when
        ``eval.batch_size`` is null); a replay-free run keeps no memory and never consolidates; the warmup
        fraction means something only with ``optim.warmup: fraction``.
        """
        unused = {f"method.{name}" for name in self.method.unused_fields()}
        if not variant_spec(self.method.variant).learns:
            unused |= set(leaf_fields(MemoryConfig, "memory.")) | set(leaf_fields(BudgetConfig, "budget."))
            unused |= {name for name in leaf_fields(OptimConfig, "optim.")
                       if not (name == "optim.batch_size" and self.eval.batch_size is None)}
            return frozenset(unused)
        if not self.uses_memory:
            unused |= set(leaf_fields(MemoryConfig, "memory."))
            unused |= set(leaf_fields(ConsolidationConfig, "method.consolidation."))
        if self.optim.warmup != "fraction":
            unused.add("optim.warmup_fraction")
        return frozenset(unused)

    def config_hash(self) -> str:
        """A stable 12-hex-digit hash of every field except the name and where outputs go."""
        payload = self.to_dict()
        payload.pop("name"), payload.pop("output_dir")
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def run_id(self) -> str:
        """The run's name in its store: ``<name>-<config hash>`` (its directory under ``output_dir``)."""
        return f"{self.name}-{self.config_hash()}"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------------------------
# Loading a run config.


DEFAULT_CONFIG = "shapes_cl"
"""The shipped config ``python -m clapray.run`` runs without one: CLAP4CLIP on ``shapes_cl`` with the
mini-CLIP (pretrained on first use, then cached), a run whose accuracies mean something on a CPU."""

TINY_CONFIG = "tiny"
"""The shipped smoke-run config: a tiny random-weight backbone, seconds on a CPU, no pretraining."""


def shipped_config_paths() -> dict[str, Path]:
    """Run configs shipped with the package, by name (``shapes_cl``, ``tiny``, ``cifar100``, ...)."""
    folder = Path(str(resources.files("clapray") / "configs"))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def shipped_config_path(name: str) -> Path:
    """The path of the shipped config ``name`` (:func:`shipped_config_paths`)."""
    return Path(str(resources.files("clapray") / "configs" / f"{name}.yaml"))


def default_config_path() -> Path:
    """The config ``python -m clapray.run`` runs without one (:data:`DEFAULT_CONFIG`)."""
    return shipped_config_path(DEFAULT_CONFIG)


def resolve_config_argument(value: str | None) -> Path:
    """A path, or the name of a shipped config (``cifar100``)."""
    if value is None:
        return default_config_path()
    path = Path(value)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    shipped = shipped_config_paths()
    if value in shipped:
        return shipped[value]
    raise UserError(f"{value}: no such config file, and no shipped config of that name "
                    f"(shipped: {', '.join(shipped)})")


def load_run_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a run YAML (``None`` = all defaults) and apply ``--set`` overrides."""
    data = load_yaml_mapping(path) if path is not None else {}
    source = str(path) if path is not None else "<defaults>"
    # Check the file on its own first, so its errors name the file rather than --set.
    config = from_mapping(RunConfig, data, source)
    if not overrides:
        return config
    merged = apply_overrides(data, overrides, RunConfig)
    try:
        return from_mapping(RunConfig, merged, source)
    except ConfigError as err:
        # The file alone was valid, so an override caused this: name --set when the failing field is one
        # that was overridden, else the combination (a cross-field rule broken by the override).
        overridden = [parse_override(text)[0] for text in overrides]
        hit = any(err.field == ".".join(p) or err.field.startswith(".".join(p) + ".") for p in overridden)
        raise err.relocated("--set" if hit else f"{source} with --set", "") from None


