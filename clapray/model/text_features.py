"""Hand-crafted prompt text features (§3.1) and their template statistics (§8).

For C class names and K templates, every string ``template_k.format(name_c)`` (underscores in the
name replaced by spaces) is encoded once by the frozen text tower:

* ``per_template``  P[c, k] = normalize(f_t(template_k(name_c)))        [C, K, d]
* ``template_mean_unnormalised``  M[c] = mean_k P[c, k]                  [C, d]
* ``mean``          t_c = normalize(M[c])   (the base text feature)      [C, d]
* ``template_variance``  V[c] = unbiased per-dim variance over k of P    [C, d]

M and V feed the language-aware init of new adapters (§8: W_mu = MᵀM/d, W_sigma = VᵀV/d).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from clapray.model.backbone import Backbone


@dataclasses.dataclass(frozen=True, eq=False)
class TemplateFeatures:
    """Frozen text features of C classes under K templates (all fp32, on the backbone's device).

    Attributes:
        class_names: the C class names as given (before ``_`` -> space).
        templates: the K distinct templates, in first-occurrence order.
        per_template: ``[C, K, d]``, each vector L2-normalised.
        mean: ``[C, d]``, ``normalize(mean_k per_template)``: the base text feature t_c.
        template_mean_unnormalised: ``[C, d]``, ``mean_k per_template`` (norm < 1).
        template_variance: ``[C, d]``, per-dimension unbiased variance over templates
            (denominator K - 1); zeros when K == 1.
    """

    class_names: tuple[str, ...]
    templates: tuple[str, ...]
    per_template: Tensor
    mean: Tensor
    template_mean_unnormalised: Tensor
    template_variance: Tensor

    @property
    def num_classes(self) -> int:
        """C."""
        return len(self.class_names)

    @property
    def num_templates(self) -> int:
        """K (after de-duplication)."""
        return len(self.templates)


def dedupe_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """Drop repeated templates, keeping first-occurrence order.

    The official code de-duplicates through a Python set, whose iteration order varies between
    processes; mean and variance do not depend on the order, but per_template (and any cache of it)
    should be reproducible, so the order of first occurrence is kept.
    """
    if isinstance(templates, str):
        raise TypeError("expected a sequence of templates, got a single str; wrap it in a list")
    return tuple(dict.fromkeys(templates))


def class_prompt(template: str, class_name: str) -> str:
    """``template.format(class_name with '_' -> ' ')``, e.g. ``"a photo of a {}."`` + ``"sea_lion"``."""
    return template.format(class_name.replace("_", " "))


def format_prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """All C*K prompts, class-major: index ``c * K + k`` holds class c under template k."""
    return [class_prompt(t, name) for name in class_names for t in templates]


def template_text_features(
    backbone: Backbone,
    class_names: Sequence[str],
    templates: Sequence[str],
    *,
    batch_size: int = 256,
) -> TemplateFeatures:
    """Encode every (class, template) prompt in one batched pass and reduce over templates.

    Args:
        backbone: the frozen backbone whose text tower encodes the prompts.
        class_names: C class names; ``_`` is replaced by a space before formatting.
        templates: K templates with one ``{}`` placeholder; duplicates are dropped (order kept).
        batch_size: text encoder chunk size (memory bound only; results do not depend on it beyond
            float rounding).

    Returns:
        The :class:`TemplateFeatures` of the C classes.
    """
    if isinstance(class_names, str):
        raise TypeError("expected a sequence of class names, got a single str; wrap it in a list")
    names = tuple(class_names)
    temps = dedupe_templates(templates)
    if not names:
        raise ValueError("class_names is empty")
    if not temps:
        raise ValueError("templates is empty")
    for template in temps:
        if "{}" not in template:
            # Without a placeholder every class would get the same prompt and the same feature.
            raise ValueError(f"template {template!r} has no '{{}}' placeholder for the class name")

    num_classes, num_templates = len(names), len(temps)
    flat = backbone.encode_texts(format_prompts(names, temps), batch_size=batch_size)  # [C*K, d]
    per_template = flat.reshape(num_classes, num_templates, -1)  # [C, K, d], class-major as built
    mean_unnormalised = per_template.mean(dim=1)  # [C, d]
    mean = F.normalize(mean_unnormalised, dim=-1)  # [C, d]
    if num_templates > 1:
        variance = per_template.var(dim=1, correction=1)  # [C, d], unbiased over templates
    else:
        # The unbiased estimator divides by K - 1 = 0 and gives NaN (the failure a community port
        # hit in the §8 init). One template carries no information about spread, so report zero
        # variance: the sigma head's init weight VᵀV/d becomes 0, which is what the ~1e-9 entries
        # amount to with several templates anyway.
        variance = torch.zeros_like(mean_unnormalised)
    return TemplateFeatures(
        class_names=names,
        templates=temps,
        per_template=per_template,
        mean=mean,
        template_mean_unnormalised=mean_unnormalised,
        template_variance=variance,
    )
