"""Experiment presets: what is trained and evaluated, at which size, on how many images."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Preset", "PRESETS"]


@dataclass(frozen=True)
class Preset:
    name: str
    archs: tuple[str, ...]
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    image_size: int  # size of the generated photographs
    size: int  # model input
    n_train: int
    n_val: int
    n_test: int
    epochs: int
    warmup: int
    train: dict[str, Any] = field(default_factory=dict)  # further TrainConfig overrides (both models)
    icnn: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides for the ICNN only
    explainers: tuple[str, ...] = ("gradcam", "occlusion")
    baseline_images: int = 120  # test images the (slow) baselines are scored on
    # The ICNN arm fine-tunes the trained ordinary CNN for this many interpretable epochs (0: train it from
    # scratch with `epochs`/`warmup` like the ordinary one). Warm-starting is what the paper did (from
    # ImageNet weights) and what the feasibility study found necessary on fundus.
    finetune_epochs: int = 8
    finetune_lr: float = 5e-4
    # Also train the lesion-type ICNN (``--categories lesion-types``) beside the single-category one, and score
    # both ICNNs' lesion-type evidence against Grad-CAM of the same model (engine.lesion_types).
    lesion_types: bool = True
    # TrainConfig overrides for the lesion-type ICNN only: the recipe chosen on seed 10's validation cohort
    # (docs/results.md, round 7): a top map of 4-px cells, and lesion-type filters that fire alike on eyes with
    # and without their type kept out of the decision.
    types: dict[str, Any] = field(default_factory=lambda: {"top_stride": 4, "decision_min_selectivity": 0.2})


PRESETS: dict[str, Preset] = {
    # 2-core CPU, about an hour: VGG-style backbone, referable DR, 3 seeds, 256 px.
    "cpu": Preset("cpu", archs=("vgg",), tasks=("referable",), seeds=(0, 1, 2), image_size=384, size=256,
                  n_train=1000, n_val=200, n_test=300, epochs=16, warmup=8),
    # A GPU: both backbones, both tasks, 512 px (a few sittings on a shared GPU).
    "gpu": Preset("gpu", archs=("vgg", "resnet"), tasks=("referable", "lesions"), seeds=(0, 1, 2), image_size=768,
                  size=512, n_train=3000, n_val=400, n_test=600, epochs=24, warmup=12,
                  train={"batch": 32, "workers": 8}, finetune_epochs=12),
    # The test suite's configuration: seconds, exercising every step.
    "tiny": Preset("tiny", archs=("vgg",), tasks=("referable",), seeds=(0,), image_size=128, size=64,
                   n_train=32, n_val=16, n_test=16, epochs=2, warmup=1,
                   train={"batch": 8, "n_filters": 8, "width": 8}, baseline_images=8, finetune_epochs=1),
}
