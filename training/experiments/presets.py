"""Experiment presets: what is trained and evaluated, at which size, on how many images."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from napari_icnn.recipes import RECIPES, Recipe

__all__ = ["Preset", "PRESETS"]


@dataclass(frozen=True)
class Preset(Recipe):
    """A study preset: a recipe of :data:`napari_icnn.recipes.RECIPES` (cohorts, schedule) and what is compared on
    which seeds."""

    archs: tuple[str, ...] = ("vgg",)
    tasks: tuple[str, ...] = ("referable",)
    seeds: tuple[int, ...] = (0, 1, 2)
    icnn: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides for the ICNN only
    explainers: tuple[str, ...] = ("gradcam", "occlusion")
    baseline_images: int = 120  # test images the (slow) baselines are scored on
    # The ICNN arm fine-tunes the trained ordinary CNN (the recipe's finetune_epochs; 0: train it from scratch
    # with epochs/warmup like the ordinary one). Warm-starting is what the paper did (from ImageNet weights) and
    # what the feasibility study found necessary on fundus.
    # Also train the lesion-type ICNN (``--categories lesion-types``, TrainConfig's lesion-type recipe) beside the
    # single-category one, and score both ICNNs' lesion-type evidence against Grad-CAM of the same model.
    lesion_types: bool = True


def _of(name: str, **study: Any) -> Preset:
    return Preset(**{f.name: getattr(RECIPES[name], f.name) for f in fields(Recipe)}, **study)


PRESETS: dict[str, Preset] = {
    # 2-core CPU, about an hour: VGG-style backbone, referable DR, 3 seeds, 256 px.
    "cpu": _of("cpu"),
    # A GPU: both backbones, both tasks, 512 px (a few sittings on a shared GPU).
    "gpu": _of("gpu", archs=("vgg", "resnet"), tasks=("referable", "lesions")),
    # The test suite's configuration: seconds, exercising every step.
    "tiny": _of("tiny", seeds=(0,), baseline_images=8),
}
