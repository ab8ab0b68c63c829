"""Training configuration: the one place where training defaults live.

The command line (``icnn train``), the napari Train widget and the MONAI bundle config
(``training/configs/train.json``) all build a :class:`TrainConfig`; none of them repeats a default.

A setting whose sensible default depends on another one (warm-up on the epochs, the batch on the data)
defaults to ``None``, "auto", and :meth:`TrainConfig.resolved` fixes it once what it depends on is known, so a
default never contradicts a value the user gave. The engine saves the resolved configuration (every value
explicit, plus a note of what was derived and why) next to the model, so a run can be repeated exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any

from napari_icnn.errors import ConfigError
from napari_icnn.parts import MASK_LESION_KEYS

__all__ = [
    "TrainConfig",
    "TASKS",
    "FORMATS",
    "TARGET_SETS",
    "CATEGORIES",
    "Z_ESTIMATES",
    "LESION_MASK_TARGETS",
    "LESION_MASK_INSTANCES",
    "LESION_MASK_LOCATIONS",
    "FILTER_MATCHINGS",
    "FILTER_RANKINGS",
    "DECISION_FILTERS",
    "ARCHS",
    "TOP_STRIDES",
    "DEVICES",
    "LOSS_MODES",
    "CACHE_MODES",
    "DEFAULT_EPOCHS",
    "DEFAULT_SIZE",
    "LESION_TYPES_SIZE",
    "DEFAULT_BATCH",
    "DEFAULT_VAL_FRACTION",
    "MIN_BATCH",
    "MIN_VAL_IMAGES",
    "Setting",
    "setting",
    "settings",
    "config_help",
    "choices_of",
    "flag_of",
    "field_of_flag",
    "validation_size",
    "available_cores",
]

TASKS = ("referable", "lesions")
FORMATS: tuple[str, ...] = ("synth", "idrid-seg", "idrid-grading", "csv", "dicom")
"""The training data layouts ``--format`` names (``auto`` detects them)."""
TARGET_SETS: dict[str, tuple[str, ...]] = {
    "referable": ("referable",),
    "lesions": MASK_LESION_KEYS,
    "referable+lesion-types": ("referable", *MASK_LESION_KEYS),
}
"""Each target set, in order: the label names :func:`napari_icnn.data.layouts.task_targets` reads.
``referable+lesion-types`` is the referable decision with the lesion types' presence beside it (the lesion-type
recipe of ``--task referable``)."""
ARCHS = ("vgg", "resnet")
TOP_STRIDES = {"vgg": (8, 4), "resnet": (16, 8)}
"""Input pixels per top-map cell each backbone can be built with: its default, then the finer map."""
DEVICES = ("auto", "cpu", "cuda")
LOSS_MODES = ("paper", "mi")
CACHE_MODES = ("memory", "disk", "none")
CATEGORIES = ("auto", "lesion-types", "decision")
Z_ESTIMATES = ("batch", "running")
LESION_MASK_TARGETS = ("near", "centre")
LESION_MASK_INSTANCES = ("any", "distinct")
LESION_MASK_LOCATIONS = ("first", "every")
FILTER_MATCHINGS = ("epoch", "fixed")
FILTER_RANKINGS = ("selectivity", "lesion-hits", "hits-and-selectivity")
"""What lesion-type filters are matched to their types by: how selectively they fire on eyes with the type, or how
often their peak lands in a lesion of the type (training lesion masks), or the product of the two."""
DECISION_FILTERS = ("referable-lesions", "all")

DEFAULT_EPOCHS = 16
DEFAULT_SIZE = 256
"""The input side when nothing asks for more: the decision alone, or the filters of an ordinary CNN."""
LESION_TYPES_SIZE = 384
"""The input side for lesion-type filters: a microaneurysm, 0.035-0.075 disc diameters, is one or two pixels at
256 px; read at 384 px (the study cohorts' own width) every type's filters pointed into their lesions more often, on
two trainings per seed (round 19 of docs/results.md), at about 3x the training time."""
# The lesion-mask loss's weight when training data carry masks: the one value tried on validation (round 8 of
# docs/results.md), then confirmed on the test seeds.
DEFAULT_LESION_MASK_WEIGHT = 1.0
DEFAULT_BATCH = 16
DEFAULT_VAL_FRACTION = 0.2
MIN_BATCH = 2
"""The filter loss normalises over the batch; a batch of one has nothing to normalise against."""
MIN_VAL_IMAGES = 2
"""Fewer validation images give no validation AUC to pick the best epoch by."""
MAX_AUTO_WORKERS = 8


def _opt(
    default: Any,
    help: str,
    flag: str,
    *,
    label: str | None = None,
    placeholder: str = "",
    bounds: tuple[float, float] | None = None,
    step: float | None = None,
    derived: bool = False,
) -> Any:
    """A field and how it is presented: ``flag`` is its ``icnn train`` option, ``label`` its name in the Train
    widget's form, ``placeholder`` the grey text of an empty path field, ``bounds`` (and ``step``) the limits of
    its spin box. The bounds only keep a box usable; what is *valid* is :meth:`TrainConfig.validate`'s to say.
    A field whose default is ``None`` reads ``None`` at the lowest bound ("auto" or "all")."""
    return field(default=default, metadata={"help": help, "flag": flag, "label": label, "placeholder": placeholder,
                                            "bounds": bounds, "step": step, "derived": derived})


def _auto(help: str, flag: str, **kw: Any) -> Any:
    """A field whose default is derived by :meth:`TrainConfig.resolved`."""
    return _opt(None, help, flag, derived=True, **kw)


@dataclass
class TrainConfig:
    """Everything that defines a training run. Written next to the model so any run can be repeated."""

    data: str = _opt(
        "", "training data: a folder (synth, IDRiD or DICOM+CSV layout) or a CSV file", "--data",
        label="Training data", placeholder="a folder (synth, IDRiD, DICOM + CSV) or a CSV file",
    )
    out: str = _opt(
        "", "output bundle folder", "--out", label="Output folder", placeholder="a new folder for the model bundle"
    )
    format: str = _opt(
        "auto", "data layout: auto, synth, idrid-seg, idrid-grading, csv, dicom", "--format", label="Layout"
    )
    val: str | None = _opt(
        None, "separate validation data (same forms as --data)", "--val",
        label="Validation data", placeholder="optional: a held-out part of the training data is used",
    )
    val_fraction: float | None = _auto(
        f"fraction of --data held out for validation when --val is not given; auto: {DEFAULT_VAL_FRACTION:g}, "
        f"raised on small data sets so that {MIN_VAL_IMAGES} images are held out",
        "--val-fraction", label="Validation fraction", bounds=(0.0, 0.99),
    )
    task: str = _opt(
        "referable", "referable (binary referable DR) or lesions (multi-label MA, HE, EX, SE)", "--task", label="Task"
    )
    categories: str = _opt(
        "auto",
        "what each interpretable filter is trained for: lesion-types (one lesion type per filter, silent on eyes "
        "without it; the referable decision is computed from the same filters and the lesion types' presence is "
        "predicted beside it; needs MA/HE/EX/SE presence labels) or decision (every filter serves the decision "
        "class: grade-only data). auto: lesion-types when every training and validation image has the four "
        "presence labels, else decision. --task lesions always uses lesion types",
        "--categories", label="Filter categories",
    )
    decision_filters: str = _opt(
        "referable-lesions",
        "with lesion-type categories, which filters the referable decision is computed from: referable-lesions (the "
        "filters of haemorrhages, hard exudates and cotton-wool spots, the lesions that make an eye referable; "
        "microaneurysm and label-free filters keep a zero weight in the decision) or all",
        "--decision-filters", label="Decision computed from",
    )
    decision_min_selectivity: float = _opt(
        0.2,
        "with --decision-filters referable-lesions, a filter also keeps a zero weight in the decision while its "
        "selectivity for its lesion type is below this, (mean peak on eyes with the type - on eyes without) / "
        "their sum, from the running averages at the start of each epoch: a filter that fires alike on every eye "
        "(it learnt the optic disc) is anatomy, not evidence. 0: off",
        "--decision-min-selectivity", label="Decision: least filter selectivity", bounds=(0.0, 0.99),
    )
    arch: str = _opt("vgg", "backbone: vgg (plain VGG-style stack) or resnet (MONAI ResNet)", "--arch", label="Backbone")
    top_stride: int | None = _auto(
        "input pixels per cell of the interpretable layer's map: VGG 8, or 4 for a map twice as fine (lesion-sized "
        "cells, about 2.7x the training step); ResNet 16, or 8 (layer4 unstrided, about 1.4x the step); "
        "auto: the finer one for lesion-type filters (the recipe chosen on validation, docs/results.md), else the "
        "coarser", "--top-stride",
        label="Top-layer stride", bounds=(3, 16),
    )
    size: int | None = _auto(
        "model input side in pixels (the FOV is cropped and resized to it); auto: the --init bundle's when it "
        f"already has lesion-type filters (retraining it), else {LESION_TYPES_SIZE} for lesion-type filters (fine "
        f"enough for microaneurysms; chosen on validation, docs/results.md) and {DEFAULT_SIZE} otherwise",
        "--size", label="Input size", bounds=(48, 4096), step=16,
    )
    epochs: int | None = _auto(
        f"total epochs, warm-up included; auto: {DEFAULT_EPOCHS}, or twice --warmup-epochs when that is more",
        "--epochs", label="Epochs", bounds=(0, 10_000),
    )
    warmup_epochs: int | None = _auto(
        "epochs trained ordinarily (no mask, no filter loss) before the ICNN epochs; auto: half of --epochs, "
        "rounded down (16 -> 8, 4 -> 2, 1 -> 0)",
        "--warmup-epochs", label="Warm-up epochs", bounds=(-1, 10_000),
    )
    lam: float = _opt(
        0.3,
        "filter-loss weight lambda0, relative: at the first interpretable epoch the filter loss's gradient on the "
        "maps is lambda0 times the classification loss's; epoch t after warm-up uses lambda0 / (t - warmup)",
        "--lambda", label="Filter-loss weight λ",
    )
    lesion_mask_weight: float | None = _auto(
        "with lesion-type filters and lesion masks in the training data (synthetic cohorts, IDRiD's segmentation "
        "layout): weight of a localisation loss that puts each filter's peak inside a lesion of its own type on the "
        "training eyes that have one (minus the log of the filter's softmax mass on the cells holding such a "
        f"lesion). 0: off, the paper's image-level supervision, no masks needed; auto: "
        f"{DEFAULT_LESION_MASK_WEIGHT:g} when the filters are lesion types and some training photograph has a "
        "lesion mask (chosen on validation, docs/results.md), else 0",
        "--lesion-mask-weight", label="Lesion-mask weight", bounds=(-1.0, 100.0), step=1.0,
    )
    lesion_mask_target: str = _opt(
        "centre",
        "which top-map cells the lesion-mask loss counts as on a lesion: centre (the cell's centre pixel lies in "
        "the lesion, the point where a filter's peak is drawn and scored; an eye whose lesions of a type hold no "
        "cell centre falls back to near) or near (a lesion pixel within half a cell of the centre, the earlier "
        "recipe); chosen on validation, docs/results.md",
        "--lesion-mask-target", label="Lesion-mask target",
    )
    lesion_mask_instances: str = _opt(
        "any",
        "which lesion each filter's peak is asked to land on by the lesion-mask loss: any (some lesion of its "
        "type, the one-part-per-filter design) or distinct (the filters of a type, taken in order, each on a "
        "lesion that no earlier filter of the type peaks on, while the eye has one left; several filters per type "
        "then spread over an eye's many lesions instead of all landing on the most conspicuous one)",
        "--lesion-mask-instances", label="Lesion-mask instances",
    )
    distinct_types: str = _opt(
        "",
        "the lesion types whose filters --lesion-mask-instances distinct applies to, comma-separated keys "
        f"({', '.join(MASK_LESION_KEYS)}); empty: every lesion type",
        "--distinct-types", label="Distinct types", placeholder="every lesion type",
    )
    separation_weight: float = _opt(
        0.0,
        "weight of a ranking loss that asks each category filter to respond more strongly on every training image "
        "with its category than on any without it (logistic loss of the difference of their highest responses, "
        "over the pairs in a batch); unlike the silence loss it does not push the responses on images with the "
        "category down. It can also teach a filter to fire on another lesion type that comes with its own "
        "(docs/results.md, round 12). 0: off",
        "--separation-weight", label="Separation weight", bounds=(0.0, 100.0), step=0.5,
    )
    filter_matching: str = _opt(
        "epoch",
        "when each filter's category is chosen by how selectively it fires: epoch (matched again at the start of "
        "every epoch) or fixed (matched at the start of the first two interpretable epochs, then kept, so that "
        "the lesion masks train each filter for one type throughout)",
        "--filter-matching", label="Filter matching",
    )
    match_filters_by: str = _opt(
        "selectivity",
        "what each lesion-type filter is matched to its type by: selectivity (how much more strongly it fires on "
        "eyes with the type than without it), lesion-hits (how often its peak lies in a lesion of the type, on "
        "training eyes with one; needs the lesion-mask loss) or hits-and-selectivity (their product). Types that "
        "come together in the same eyes (haemorrhages, microaneurysms, cotton-wool spots) look alike to the first; "
        "the second gives a type a filter that lands on its lesions even where it fires as strongly on eyes "
        "without them",
        "--match-filters-by", label="Match filters by",
    )
    separation_types: str = _opt(
        "",
        "the lesion types whose filters the separation loss applies to, comma-separated keys "
        f"({', '.join(MASK_LESION_KEYS)}); empty: every category filter",
        "--separation-types", label="Separation types", placeholder="every category filter",
    )
    silence_weight: float = _opt(
        0.0,
        "weight of a loss that asks each category filter to stay silent on training images without its category "
        "(softplus of its highest response before the ReLU, so that it ends below zero everywhere); image-level "
        "labels suffice. The paper's negative template asks the same through the template loss. 0: off",
        "--silence-weight", label="Silence weight", bounds=(0.0, 100.0),
    )
    batch: int | None = _auto(
        f"batch size (per process under torchrun), at least {MIN_BATCH}; auto: {DEFAULT_BATCH}, or the number of "
        "training images (per process) when there are fewer",
        "--batch", label="Batch size", bounds=(1, 4096),
    )
    lr: float = _opt(
        1e-3, "peak learning rate (AdamW, one-cycle schedule)", "--lr", label="Learning rate", bounds=(1e-8, 10.0)
    )
    weight_decay: float = _opt(1e-4, "AdamW weight decay", "--weight-decay", label="Weight decay", bounds=(0.0, 10.0))
    device: str = _opt("auto", "auto (CUDA when present), cpu or cuda", "--device", label="Device")
    seed: int = _opt(0, "random seed (CPU runs are reproducible for a seed)", "--seed", bounds=(0, 2**31 - 1))
    ordinary: bool = _opt(
        False, "train the same network without masks and filter loss (the baseline)", "--ordinary",
        label="Ordinary CNN (the baseline)",
    )
    init: str | None = _opt(
        None, "fine-tune from this bundle (retraining on local data)", "--init",
        label="Start from", placeholder="optional: train from scratch",
    )
    resume: bool = _opt(False, "continue the interrupted run in --out from its last checkpoint", "--resume")
    n_filters: int = _opt(
        64, "interpretable filters in the top layer", "--filters", label="Interpretable filters", bounds=(1, 4096)
    )
    template_peaks: int = _opt(
        1,
        "part locations per interpretable filter and image: 1 is the paper's one part at one place; more keep, "
        "and fit to one template, further peaks that lie outside the earlier ones' template diamonds and reach "
        "--peak-ratio of the map's maximum, so one filter can stand for several lesions of its type in an eye "
        "(argmax peak location only; docs/results.md)",
        "--template-peaks", label="Part locations per filter", bounds=(1, 16),
    )
    peak_ratio: float = _opt(
        0.5, "with --template-peaks above 1: the share of a map's maximum a further part location must reach",
        "--peak-ratio", label="Further-peak ratio", bounds=(0.05, 1.0), step=0.05,
    )
    lesion_mask_locations: str = _opt(
        "first",
        "with --template-peaks above 1 and the lesion-mask loss: which part locations it supervises: first (the "
        "filter's peak only; further locations go wherever the map reaches --peak-ratio of its maximum) or every "
        "(each further location too, within its own template diamond: onto a lesion of the filter's type where "
        "the diamond holds one, else below the ratio, so that it is dropped)",
        "--lesion-mask-locations", label="Lesion-mask locations",
    )
    width: int = _opt(
        32, "base channel width of the backbone", "--width", label="Backbone width", bounds=(4, 1024), step=4
    )
    free_fraction: float = _opt(
        0.25, "fraction of filters trained label-free (they settle on always-present anatomy such as the disc)",
        "--free-fraction", label="Label-free filters", bounds=(0.0, 1.0),
    )
    free_weight: float = _opt(
        1.0, "filter-loss weight of the label-free (anatomy) filters relative to the category filters (stronger "
        "pulls were tried on fundus and made fewer anatomy filters, not more; see docs/results.md)",
        "--free-weight", label="Label-free filter-loss weight",
    )
    free_template_only: bool = _opt(
        True, "during the interpretable epochs the label-free filters learn from the template loss alone (their "
        "maps reach the classifier without its gradient), so the classification loss cannot turn them into lesion "
        "detectors",
        "--free-with-classifier-gradient", label="Label-free filters learn from the template loss alone",
    )
    loss_mode: str = _opt(
        "paper", "filter loss: paper (label-aware -MI) or mi (exact label-free -MI)", "--loss-mode", label="Filter loss"
    )
    normalise: bool = _opt(
        True, "scale maps by a detached per-filter factor inside the filter loss", "--no-normalise",
        label="Normalise maps in the filter loss",
    )
    z_estimate: str = _opt(
        "running",
        "the filter loss's partition function Z_T: running (the paper's constant, a moving average updated "
        "gradually) or batch (summed over the batch and differentiated through); compared on validation in "
        "docs/results.md, where the two tied",
        "--z-estimate", label="Partition function Z",
    )
    beta: float = _opt(
        12.0, "template slope beta: the positive part of a template reaches n/beta cells from its centre. The "
        "paper's 4 suits object parts a quarter of the image wide; fundus parts are smaller (the disc is 7 % of the "
        "field), so 12 at n = 32 gives a disc-sized template (the official code also adapts beta, from the "
        "activation spread)",
        "--beta", label="Template slope β",
    )
    dropout: float = _opt(0.3, "dropout before the classifier", "--dropout", bounds=(0.0, 0.95))
    augment: bool = _opt(
        True, "random flips, rotations, scaling and colour jitter while training", "--no-augment",
        label="Augment while training",
    )
    cache: str = _opt("memory", "dataset cache: memory, disk or none", "--cache", label="Data cache")
    workers: int | None = _auto(
        "data-loader worker processes; auto: 0 on the CPU (the training step already uses every core), on CUDA "
        f"one per core but the one that drives the GPU, at most {MAX_AUTO_WORKERS} (per process under torchrun)",
        "--workers", label="Loader workers", bounds=(-1, 256),
    )
    amp: bool = _opt(True, "mixed precision (bf16) on CUDA", "--no-amp", label="Mixed precision on CUDA")
    max_train_images: int | None = _opt(
        None, "use at most this many training images (quick runs)", "--max-train-images",
        label="At most … training images", bounds=(0, 10**8),
    )

    def __post_init__(self) -> None:
        self._derived: dict[str, str] = {}
        self.validate()

    def _bad(self, name: str, why: str) -> ConfigError:
        return ConfigError(f"{flag_of(name)}: {why} (got {getattr(self, name)!r})", field=name)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid option (by its ``icnn train`` flag)."""
        bad = self._bad
        if self.task not in TASKS:
            raise bad("task", f"must be one of {', '.join(TASKS)}")
        if self.arch not in ARCHS:
            raise bad("arch", f"must be one of {', '.join(ARCHS)}")
        if self.device not in DEVICES:
            raise bad("device", f"must be one of {', '.join(DEVICES)}")
        if self.categories not in CATEGORIES:
            raise bad("categories", f"must be one of {', '.join(CATEGORIES)}")
        if self.task == "lesions" and self.categories == "decision":
            raise bad("categories", "--task lesions has no decision class: its categories are the lesion types")
        if self.loss_mode not in LOSS_MODES:
            raise bad("loss_mode", f"must be one of {', '.join(LOSS_MODES)}")
        if self.decision_filters not in DECISION_FILTERS:
            raise bad("decision_filters", f"must be one of {', '.join(DECISION_FILTERS)}")
        if not 0.0 <= self.decision_min_selectivity < 1.0:
            raise bad("decision_min_selectivity", "must be in [0, 1)")
        if self.z_estimate not in Z_ESTIMATES:
            raise bad("z_estimate", f"must be one of {', '.join(Z_ESTIMATES)}")
        if self.cache not in CACHE_MODES:
            raise bad("cache", f"must be one of {', '.join(CACHE_MODES)}")
        if self.lesion_mask_target not in LESION_MASK_TARGETS:
            raise bad("lesion_mask_target", f"must be one of {', '.join(LESION_MASK_TARGETS)}")
        if self.lesion_mask_instances not in LESION_MASK_INSTANCES:
            raise bad("lesion_mask_instances", f"must be one of {', '.join(LESION_MASK_INSTANCES)}")
        if isinstance(self.template_peaks, bool) or not isinstance(self.template_peaks, int) \
                or not 1 <= self.template_peaks <= 16:
            raise bad("template_peaks", "must be an integer from 1 to 16")
        if not 0.0 < self.peak_ratio <= 1.0:
            raise bad("peak_ratio", "must be in (0, 1]")
        if self.lesion_mask_locations not in LESION_MASK_LOCATIONS:
            raise bad("lesion_mask_locations", f"must be one of {', '.join(LESION_MASK_LOCATIONS)}")
        if self.lesion_mask_locations == "every" and self.template_peaks == 1:
            raise bad("lesion_mask_locations", f"every needs {flag_of('template_peaks')} above 1")
        if not 0.0 <= self.separation_weight <= 100.0:
            raise bad("separation_weight", "must be between 0 and 100")
        if self.filter_matching not in FILTER_MATCHINGS:
            raise bad("filter_matching", f"must be one of {', '.join(FILTER_MATCHINGS)}")
        if self.match_filters_by not in FILTER_RANKINGS:
            raise bad("match_filters_by", f"must be one of {', '.join(FILTER_RANKINGS)}")
        for name in ("separation_types", "distinct_types"):
            unknown = [t for t in _type_keys(getattr(self, name)) if t not in MASK_LESION_KEYS]
            if unknown:
                raise bad(name, f"{unknown[0]} is not a lesion type; use {', '.join(MASK_LESION_KEYS)}")
        if not 0.0 <= self.silence_weight <= 100.0:
            raise bad("silence_weight", "must be between 0 and 100")
        if self.lesion_mask_weight is not None and not 0.0 <= self.lesion_mask_weight <= 100.0:
            raise bad("lesion_mask_weight", "must be between 0 and 100")
        if self.top_stride is not None and self.top_stride not in TOP_STRIDES.get(self.arch, (self.top_stride,)):
            raise bad("top_stride", "must be 8 or 4 with --arch vgg, 16 or 8 with --arch resnet")
        if self.size is not None and (self.size < 64 or self.size % 16):
            raise bad("size", "must be a multiple of 16 and at least 64")
        if self.epochs is not None and self.epochs < 1:
            raise bad("epochs", "must be at least 1")
        if self.warmup_epochs is not None:
            if self.warmup_epochs < 0:
                raise bad("warmup_epochs", "must not be negative")
            if self.epochs is not None and self.warmup_epochs >= self.epochs and not self.ordinary:
                # Both were given: neither can be derived from the other, so say which flags disagree.
                raise ConfigError(
                    f"{flag_of('warmup_epochs')} {self.warmup_epochs}: must be less than {flag_of('epochs')} "
                    f"({self.epochs}), which leaves no interpretable epoch; give fewer warm-up epochs, or leave "
                    f"{flag_of('warmup_epochs')} out for half of the epochs",
                    field="warmup_epochs",
                )
        if self.lam < 0:
            raise bad("lam", "must be non-negative")
        if self.batch is not None and self.batch < MIN_BATCH:
            raise bad("batch", f"must be at least {MIN_BATCH} (the filter loss normalises over the batch)")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise bad("val_fraction", "must be between 0 and 1")
        if not 0 <= self.free_fraction <= 1:
            raise bad("free_fraction", "must be between 0 and 1")
        if self.free_weight < 0:
            raise bad("free_weight", "must be non-negative")
        if self.n_filters < 1:
            raise bad("n_filters", "must be positive")
        if self.width < 1:
            raise bad("width", "must be positive")
        if not self.lr > 0:
            raise bad("lr", "must be positive")
        if self.weight_decay < 0:
            raise bad("weight_decay", "must be non-negative")
        if not 0 <= self.dropout < 1:
            raise bad("dropout", "must be in [0, 1)")
        if not self.beta > 0:
            raise bad("beta", "must be positive")
        if self.workers is not None and self.workers < 0:
            raise bad("workers", "must not be negative")
        if self.max_train_images and self.max_train_images < MIN_BATCH:
            raise bad("max_train_images", f"must be at least {MIN_BATCH} (one batch)")

    @property
    def derived(self) -> dict[str, str]:
        """Fields :meth:`resolved` derived, each with how (empty for a configuration that was not resolved)."""
        return dict(self._derived)

    def resolved(
        self,
        n_data: int | None = None,
        n_val: int | None = None,
        *,
        world_size: int = 1,
        device_type: str | None = None,
        cores: int | None = None,
        lesion_labels: bool | None = None,
        lesion_masks: bool | None = None,
        init_size: int | None = None,
    ) -> TrainConfig:
        """A copy with the "auto" (``None``) settings fixed; explicit values are kept and checked.

        The schedule (epochs, warm-up) is always fixed. The validation fraction and the batch are fixed when
        ``n_data`` (images in ``data``) is given, with ``n_val`` the images in ``val`` when there is one;
        the loader workers when ``device_type`` (``"cpu"`` or ``"cuda"``) is; the categories when
        ``lesion_labels`` (every image has MA/HE/EX/SE presence labels) is, and with them the lesion-mask weight when
        ``lesion_masks`` (some training image has a lesion mask) is; the input size with the categories, or from
        ``init_size`` (the ``--init`` bundle's input size, given when it has lesion-type filters). Raises
        :class:`ConfigError` naming the flags involved when explicit values cannot work with the data.
        """
        values: dict[str, Any] = {}
        why: dict[str, str] = {}
        epochs, warmup = self.epochs, self.warmup_epochs
        if epochs is None:
            epochs = max(DEFAULT_EPOCHS, 2 * (warmup or 0))
            values["epochs"] = epochs
            why["epochs"] = "the default" if epochs == DEFAULT_EPOCHS else f"twice {flag_of('warmup_epochs')}"
        if warmup is None:
            values["warmup_epochs"] = epochs // 2
            why["warmup_epochs"] = f"half of {epochs} epoch{'s' if epochs != 1 else ''}, rounded down"
        if n_data is not None:
            values.update(self._resolve_data(n_data, n_val, world_size, why))
        if device_type is not None and self.workers is None:
            per_process = max(1, (cores or available_cores()) // max(1, world_size))
            if device_type == "cuda":
                values["workers"] = max(0, min(MAX_AUTO_WORKERS, per_process - 1))
                why["workers"] = f"{per_process} cores less the one that drives the GPU, at most {MAX_AUTO_WORKERS}"
            else:
                values["workers"] = 0
                why["workers"] = "on the CPU the training step already uses every core"
        if lesion_labels is not None:
            if self.task == "lesions" and self.categories == "auto":
                values["categories"] = "lesion-types"
                why["categories"] = "--task lesions"
            elif self.categories == "auto":
                values["categories"] = "lesion-types" if lesion_labels else "decision"
                why["categories"] = ("every image has MA/HE/EX/SE presence labels" if lesion_labels else
                                     "some images lack MA/HE/EX/SE presence labels, so lesion-type filters cannot "
                                     "be trained; every filter serves the decision class")
            elif self.categories == "lesion-types" and not lesion_labels:
                raise ConfigError(
                    f"{flag_of('categories')} lesion-types: some images of {flag_of('data')} {self.data} (or "
                    f"{flag_of('val')}) lack MA/HE/EX/SE presence labels; add them (README, training data layouts) or give "
                    f"{flag_of('categories')} decision",
                    field="categories",
                )
        categories = values.get("categories", self.categories)
        lesion_types = categories == "lesion-types" and not self.ordinary  # what the settings below follow
        if self.top_stride is None and categories != "auto":
            coarse, finer = TOP_STRIDES[self.arch]  # the arch was checked on construction
            values["top_stride"] = finer if lesion_types else coarse
            why["top_stride"] = (f"lesion-type filters: {finer}-px cells, the finer map (chosen on validation for VGG, "
                                 "docs/results.md)" if lesion_types else f"{coarse}-px cells")
        if self.size is None and init_size is not None:
            values["size"] = init_size
            why["size"] = "the --init bundle's input size (retraining its lesion-type filters)"
        elif self.size is None and categories != "auto":
            values["size"] = LESION_TYPES_SIZE if lesion_types else DEFAULT_SIZE
            why["size"] = ("lesion-type filters: fine enough for microaneurysms (docs/results.md)" if lesion_types
                           else "the default")
        if self.lesion_mask_weight is None and categories != "auto" and lesion_masks is not None:
            values["lesion_mask_weight"] = DEFAULT_LESION_MASK_WEIGHT if lesion_types and lesion_masks else 0.0
            why["lesion_mask_weight"] = (
                "lesion-type filters and lesion masks: each filter's peak is pulled into a lesion of its type "
                "(chosen on validation, docs/results.md)" if lesion_types and lesion_masks else
                "no lesion masks in the training data: image-level labels only" if lesion_types else
                "no lesion-type filters")
        new = dataclasses.replace(self, **values)
        new._derived = {**self._derived, **why}
        return new

    def _resolve_data(self, n_data: int, n_val: int | None, world_size: int, why: dict[str, str]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        data = f"{flag_of('data')} {self.data}".rstrip()
        if self.val:
            if n_val is not None and n_val < MIN_VAL_IMAGES:
                raise ConfigError(f"{flag_of('val')} {self.val}: {n_val} validation image(s); at least "
                                  f"{MIN_VAL_IMAGES} are needed", field="val")
            n_train = n_data
        else:
            if n_data < MIN_VAL_IMAGES + MIN_BATCH:
                raise ConfigError(
                    f"{data}: {n_data} image(s) are too few to hold out {MIN_VAL_IMAGES} for validation and train "
                    f"on {MIN_BATCH}; give {flag_of('val')} or more images",
                    field="data",
                )
            fraction = self.val_fraction
            if fraction is None:
                fraction = DEFAULT_VAL_FRACTION
                why["val_fraction"] = "the default"
                if validation_size(n_data, fraction) < MIN_VAL_IMAGES:
                    fraction = MIN_VAL_IMAGES / n_data
                    why["val_fraction"] = f"holds out {MIN_VAL_IMAGES} of the {n_data} images"
                values["val_fraction"] = fraction
            held = validation_size(n_data, fraction)
            if held < MIN_VAL_IMAGES or n_data - held < MIN_BATCH:
                raise ConfigError(
                    f"{flag_of('val_fraction')} {fraction:g}: holds out {held} of the {n_data} images of {data}, "
                    f"leaving {n_data - held} to train on; validation needs at least {MIN_VAL_IMAGES} and training "
                    f"{MIN_BATCH}: leave {flag_of('val_fraction')} out to hold out just enough, or give "
                    f"{flag_of('val')}",
                    field="val_fraction",
                )
            n_train = n_data - held
        if self.max_train_images:
            n_train = min(n_train, self.max_train_images)
        # DistributedSampler(drop_last=True) gives each process an equal share, the remainder dropped.
        per_process = n_train // max(1, world_size)
        where = f" per process ({world_size} processes)" if world_size > 1 else ""
        given = [data]
        if self.val_fraction is not None and not self.val:
            given.append(f"{flag_of('val_fraction')} {self.val_fraction:g}")
        if self.max_train_images:
            given.append(f"{flag_of('max_train_images')} {self.max_train_images}")
        if self.batch is None:
            batch = min(DEFAULT_BATCH, per_process)
            if batch < MIN_BATCH:
                raise ConfigError(f"{', '.join(given)}: {per_process} training image(s){where}, too few for a "
                                  f"batch of {MIN_BATCH}", field="data")
            values["batch"] = batch
            why["batch"] = ("the default" if batch == DEFAULT_BATCH else
                            f"all {per_process} training images{where}: fewer than {DEFAULT_BATCH}")
        elif self.batch > per_process:
            raise ConfigError(
                f"{flag_of('batch')} {self.batch}: more than the {per_process} training images{where} of "
                f"{', '.join(given)}; give {flag_of('batch')} {per_process} or less, or leave {flag_of('batch')} "
                "out to fit the data",
                field="batch",
            )
        return values

    @property
    def interpretable(self) -> bool:
        return not self.ordinary

    @property
    def target_set(self) -> str:
        """The labels the network predicts (a :data:`TARGET_SETS` key), on a configuration whose
        categories are resolved."""
        if self.task == "lesions":
            return "lesions"
        if self.categories == "auto":
            raise ConfigError("the categories are not resolved yet (TrainConfig.resolved(lesion_labels=...))")
        return "referable+lesion-types" if self.categories == "lesion-types" else "referable"

    @property
    def decision_categories(self) -> tuple[int, ...] | None:
        """Indices into :attr:`category_columns` of the categories whose filters may carry the decision (the rest,
        label-free filters included, keep a zero weight in the decision's row of the head); ``None``: every filter."""
        from napari_icnn.parts import REFERABLE_LESION_KEYS

        if self.ordinary or self.target_set != "referable+lesion-types" or self.decision_filters == "all":
            return None
        names = TARGET_SETS[self.target_set]
        return tuple(i for i, col in enumerate(self.category_columns) if names[col] in REFERABLE_LESION_KEYS)

    @property
    def separation_type_keys(self) -> tuple[str, ...]:
        """:attr:`separation_types` as lesion-type keys (empty: every category filter)."""
        return _type_keys(self.separation_types)

    @property
    def distinct_type_keys(self) -> tuple[str, ...]:
        """:attr:`distinct_types` as lesion-type keys (empty: every lesion type)."""
        return _type_keys(self.distinct_types)

    @property
    def separated_categories(self) -> tuple[bool, ...]:
        """Per :attr:`category_columns` entry, whether its filters take part in the separation loss."""
        names = TARGET_SETS[self.target_set]
        keys = self.separation_type_keys
        return tuple(not keys or names[col] in keys for col in self.category_columns)

    @property
    def category_columns(self) -> tuple[int, ...]:
        """The target columns that are filter categories: the lesion types after the decision, or every column."""
        n = len(TARGET_SETS[self.target_set])
        return tuple(range(1, n)) if self.target_set == "referable+lesion-types" else tuple(range(n))

    def lambda_at(self, epoch: int) -> float:
        """Filter-loss weight of 1-based ``epoch`` (0 during warm-up and for the ordinary CNN); on a resolved
        configuration."""
        if self.ordinary:
            return 0.0
        assert self.warmup_epochs is not None, "lambda_at needs a resolved configuration"
        if epoch <= self.warmup_epochs:
            return 0.0
        return self.lam / (epoch - self.warmup_epochs)

    def mask_on(self, epoch: int) -> bool:
        if self.ordinary:
            return False
        assert self.warmup_epochs is not None, "mask_on needs a resolved configuration"
        return epoch > self.warmup_epochs

    def to_dict(self) -> dict[str, Any]:
        """The fields, and under ``"derived"`` the fields :meth:`resolved` derived and how."""
        return {**dataclasses.asdict(self), "derived": dict(self._derived)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        derived = d.pop("derived", None) or {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
        cfg = cls(**d)
        cfg._derived = {str(k): str(v) for k, v in dict(derived).items()}
        return cfg

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def validation_size(n: int, fraction: float) -> int:
    """Images a split of ``n`` holds out for ``fraction`` (at least one on each side when ``n >= 2``)."""
    if n == 0 or fraction == 0:
        return 0
    held = int(round(n * fraction))
    return min(max(held, 1), n - 1) if n >= 2 else held


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Setting:
    """One :class:`TrainConfig` field as the command line and the Train widget present it (see :func:`_opt`)."""

    name: str
    default: Any
    kind: type
    """``bool``, ``int``, ``float`` or ``str``: the type of a value other than ``None``."""
    optional: bool
    """``None`` is a value: derived ("auto") when :attr:`derived`, else "not given" ("all", "none")."""
    derived: bool
    help: str
    flag: str
    label: str
    placeholder: str
    bounds: tuple[float, float] | None
    step: float | None
    choices: tuple[str, ...] | None

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` (read back from JSON, say) is of this setting's type; an int is no bool."""
        if value is None:
            return self.optional
        if self.kind is bool or isinstance(value, bool):
            return self.kind is bool and isinstance(value, bool)
        if self.kind is float:
            return isinstance(value, (int, float))
        return isinstance(value, self.kind)


def _kind(annotation: Any) -> type:
    first = str(annotation).split(" | ")[0]  # the annotations are strings: postponed evaluation
    return {"bool": bool, "int": int, "float": float}.get(first, str)


@functools.cache
def settings() -> tuple[Setting, ...]:
    """Every :class:`TrainConfig` field as a :class:`Setting`, in field order: what ``icnn train``'s options and
    the Train widget's form are made from."""
    out = []
    for f in fields(TrainConfig):
        m = f.metadata
        out.append(Setting(
            name=f.name, default=f.default, kind=_kind(f.type), optional=f.default is None,
            derived=bool(m["derived"]), help=m["help"], flag=m["flag"],
            label=m["label"] or f.name.replace("_", " ").capitalize(), placeholder=m["placeholder"],
            bounds=m["bounds"], step=m["step"], choices=choices_of(f.name),
        ))
    return tuple(out)


def setting(name: str) -> Setting:
    """The :class:`Setting` of field ``name`` (``KeyError`` for an unknown one)."""
    for s in settings():
        if s.name == name:
            return s
    raise KeyError(name)


def _type_keys(text: str) -> tuple[str, ...]:
    """A comma-separated list of lesion-type keys as a tuple (blanks dropped)."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


def choices_of(name: str) -> tuple[str, ...] | None:
    """The allowed values of a :class:`TrainConfig` field with a fixed set of them, ``None`` otherwise: the one
    list the command line's ``choices`` and the Train widget's drop-down menus are made from."""
    if name == "format":
        return ("auto", *FORMATS)
    return {"task": TASKS, "categories": CATEGORIES, "decision_filters": DECISION_FILTERS, "arch": ARCHS,
            "device": DEVICES, "loss_mode": LOSS_MODES, "z_estimate": Z_ESTIMATES, "cache": CACHE_MODES,
            "lesion_mask_target": LESION_MASK_TARGETS, "lesion_mask_instances": LESION_MASK_INSTANCES,
            "lesion_mask_locations": LESION_MASK_LOCATIONS, "filter_matching": FILTER_MATCHINGS,
            "match_filters_by": FILTER_RANKINGS}.get(name)


def config_help(name: str) -> str:
    """The help text of a :class:`TrainConfig` field (for CLI and GUI tooltips)."""
    return _metadata(name)["help"]


def flag_of(name: str) -> str:
    """The ``icnn train`` option of a field (``lam`` -> ``--lambda``); every field has one."""
    return _metadata(name)["flag"]


def field_of_flag(flag: str) -> str | None:
    """The field an ``icnn train`` option sets (``--lambda`` -> ``lam``); ``None`` when there is none."""
    return next((f.name for f in fields(TrainConfig) if f.metadata["flag"] == flag), None)


def _metadata(name: str) -> Any:
    for f in fields(TrainConfig):
        if f.name == name:
            return f.metadata
    raise KeyError(name)
