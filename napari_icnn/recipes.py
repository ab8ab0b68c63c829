"""The training recipes in one table: cohort sizes and the two-stage schedule (an ordinary CNN, then the
interpretable fine-tuning that starts from it), and the retraining of the shipped model on local data.

``demo`` builds the shipped model (``make demo-bundle``) and is what ``icnn demo --full`` trains; ``quick`` is
``icnn demo --full --quick``; ``cpu``, ``gpu`` and ``tiny`` are the interpretability study's presets
(``python -m training.experiments --preset`` in the source checkout), which add what is compared and on which
seeds. Everything not named here
is :class:`~napari_icnn.config.TrainConfig`'s default, the lesion-type recipe included.

:data:`RETRAINING` holds what ``icnn demo`` (``demo``) and ``icnn demo --quick`` (``quick``) retrain the shipped
model on: a clinic's own cohort, photographed with a camera the shipped model rarely saw.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Recipe", "RECIPES", "Retraining", "RETRAINING"]


@dataclass(frozen=True)
class Recipe:
    """Cohort sizes and schedule of one recipe."""

    name: str
    n_train: int
    n_val: int
    n_test: int
    image_size: int
    """Side of the generated photographs."""
    size: int
    """Model input side."""
    epochs: int
    """The ordinary CNN's epochs."""
    warmup: int
    """Of which warm-up (the ordinary CNN has no masks either way; the study's from-scratch ICNN arm uses it)."""
    finetune_epochs: int
    """Interpretable epochs fine-tuned from the ordinary CNN (0: the ICNN trains from scratch instead)."""
    finetune_lr: float = 5e-4
    train: Mapping[str, Any] = field(default_factory=dict)
    """Further :class:`~napari_icnn.config.TrainConfig` settings of both stages."""
    icnn: Mapping[str, Any] = field(default_factory=dict)
    """Further :class:`~napari_icnn.config.TrainConfig` settings of the interpretable stage only (over ``train``)."""
    types_size: int | None = None
    """The lesion-type ICNN's input side (None: ``size``); it is fine-tuned from the ordinary CNN trained at ``size``
    (a convolutional network's weights fit any input side)."""
    look: str = "clean"
    """Look of the generated photographs (``clean`` or ``realistic``, see
    :func:`~napari_icnn.data.synth.generate_cohort`): ``icnn demo --full`` and ``make demo-bundle`` train on
    ``realistic`` photographs (cameras, text, casts, blur), the study presets still on ``clean``."""


# demo: smaller cohorts or inputs gave badly calibrated models (accuracy 0.82 at AUC 1.0) that called the real
# photograph referable; these sizes train in minutes on a 2-core CPU.
RECIPES: dict[str, Recipe] = {
    "demo": Recipe("demo", n_train=1000, n_val=200, n_test=120, image_size=384, size=256, epochs=16, warmup=8,
                   finetune_epochs=8, types_size=384, look="realistic"),
    "quick": Recipe("quick", n_train=96, n_val=32, n_test=16, image_size=256, size=128, epochs=2, warmup=1,
                    finetune_epochs=1),
    "cpu": Recipe("cpu", n_train=1000, n_val=200, n_test=300, image_size=384, size=256, epochs=16, warmup=8,
                  finetune_epochs=8, types_size=384),
    "gpu": Recipe("gpu", n_train=3000, n_val=400, n_test=600, image_size=768, size=512, epochs=24, warmup=12,
                  finetune_epochs=12, train={"batch": 32, "workers": 8}),
    "tiny": Recipe("tiny", n_train=32, n_val=16, n_test=16, image_size=128, size=64, epochs=2, warmup=1,
                   finetune_epochs=1, train={"batch": 8, "n_filters": 8, "width": 8}),
}


@dataclass(frozen=True)
class Retraining:
    """Retraining the shipped model on a local cohort: a fine-tuning (``TrainConfig(init=<shipped bundle>)``) on
    ``n_train`` photographs with ``n_val`` for validation, compared before and after on ``n_test`` held-out ones
    of the same clinic. Input size and network are the shipped model's."""

    name: str
    cameras: tuple[str, ...]
    """Camera profiles of the clinic (:data:`napari_icnn.data.synth.camera.PROFILES` names)."""
    n_train: int
    n_val: int
    n_test: int
    image_size: int
    """Width of the generated photographs."""
    epochs: int
    lr: float
    """Learning rate of the fine-tuning (the classifier's is ``HEAD_LR_FACTOR`` times it, as for any ``init``)."""


# The shipped model saw the handheld camera on 8 % of its training photographs (the profile of least weight).
# demo: sized for the whole of icnn demo to take about 3 minutes on an idle 2-core CPU (5.4 CPU-minutes measured,
# two thirds of them the fine-tuning); quick: a smoke run of the same steps.
RETRAINING: dict[str, Retraining] = {
    "demo": Retraining("demo", cameras=("handheld",), n_train=160, n_val=48, n_test=60, image_size=384, epochs=3,
                       lr=2e-4),
    "quick": Retraining("quick", cameras=("handheld",), n_train=24, n_val=16, n_test=16, image_size=256, epochs=1,
                        lr=2e-4),
}
