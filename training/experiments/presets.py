"""Experiment presets: what is trained and evaluated, at which size, on how many images."""

from __future__ import annotations

from dataclasses import dataclass, fields
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
    explainers: tuple[str, ...] = ("gradcam", "occlusion")
    baseline_images: int = 120  # test images the (slow) baselines are scored on
    # The ICNN arm fine-tunes the trained ordinary CNN (the recipe's finetune_epochs; 0: train it from scratch
    # with epochs/warmup like the ordinary one). Warm-starting is what the paper did (from ImageNet weights) and
    # what the feasibility study found necessary on fundus.
    # Also train the lesion-type ICNN (``--categories lesion-types``, TrainConfig's lesion-type recipe) beside the
    # single-category one, and score both ICNNs' lesion-type evidence against Grad-CAM of the same model.
    lesion_types: bool = True
    # Also train the single-category ICNN (``--categories decision``); the lesion-type study can leave it out.
    single_category: bool = True


def _of(recipe: str, **study: Any) -> Preset:
    return Preset(**{**{f.name: getattr(RECIPES[recipe], f.name) for f in fields(Recipe)}, **study})


PRESETS: dict[str, Preset] = {
    # 2-core CPU, a few hours: VGG-style backbone, referable DR, 3 seeds, 256 px (the lesion-type ICNN 384 px since
    # round 19 of docs/results.md), on the realistic photographs (cameras, text, casts, blur, mild disease) that are
    # the generator's default.
    "cpu": _of("cpu", look="realistic"),
    # The same on the clean look (generator version 1): the study as first published, where every model's test
    # AUC is 1.000; every model at 256 px, as published.
    "cpu-clean": _of("cpu", name="cpu-clean", types_size=None),
    # 2-core CPU, the same cohorts and seeds as "cpu" on MONAI's ResNet (a step costs about 5x VGG's here):
    # 6 ordinary + 4 interpretable epochs instead of 16 + 8, the lesion-type ICNN only, Grad-CAM the only baseline
    # (occlusion's forward pass per patch would double a seed's time); about 1.5 h for three seeds side by side.
    # It measured the paper's image-level supervision (no lesion-mask loss) at 256 px, as published in
    # docs/results.md.
    "cpu-resnet": _of("cpu", name="cpu-resnet", look="realistic", archs=("resnet",), epochs=6, warmup=3,
                      finetune_epochs=4, single_category=False, explainers=("gradcam",), types_size=None,
                      icnn={"lesion_mask_weight": 0.0}),
    # The "cpu" study's lesion-type arm on photographs rendered at 768 px instead of 384 and read at the same input
    # sides (256 px, the lesion-type ICNN 384 px): the same seeds, microaneurysms 3.2-6.7 px across instead of
    # 1.6-3.4 (docs/results.md, "How visible microaneurysms are", round 21). A new study, not a recipe change: its
    # test photographs are other renderings (most eyes the same; a lesion may fit differently when finer). About
    # 3 h on the 2-core CPU (round 21 timed its base and lesion-type arm for two seeds); benchmarks/gpu_study.sh
    # runs it on one GPU. Its lesion-type filters are matched to their types by where they peak (lesion-hits):
    # round 22 of docs/results.md adopted that on this rendering's validation cohorts, after a late swap of the
    # selectivity matching cost the first 768-px test study a silent filter (that study: --match-filters-by
    # selectivity).
    "gpu-lesions": _of("cpu", name="gpu-lesions", image_size=768, look="realistic", single_category=False,
                       icnn={"match_filters_by": "lesion-hits"}),
    # A GPU: both backbones, both tasks, 512 px (a few sittings on a shared GPU).
    "gpu": _of("gpu", archs=("vgg", "resnet"), tasks=("referable", "lesions"), look="realistic"),
    # The test suite's configuration: seconds, exercising every step.
    "tiny": _of("tiny", seeds=(0,), baseline_images=8),
}
