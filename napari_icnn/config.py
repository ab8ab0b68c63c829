"""Training configuration: the one place where training defaults live.

The command line (``icnn train``), the napari Train widget and the MONAI bundle config
(``training/configs/train.json``) all build a :class:`TrainConfig`; none of them repeats a default.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any

from napari_icnn.errors import ConfigError

__all__ = ["TrainConfig", "TASKS", "ARCHS", "DEVICES", "config_help"]

TASKS = ("referable", "lesions")
ARCHS = ("vgg", "resnet")
DEVICES = ("auto", "cpu", "cuda")
LOSS_MODES = ("paper", "mi")


def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Everything that defines a training run. Written next to the model so any run can be repeated."""

    data: str = _opt("", "training data: a folder (synth, IDRiD or DICOM+CSV layout) or a CSV file")
    out: str = _opt("", "output bundle folder")
    format: str = _opt("auto", "data layout: auto, synth, idrid-seg, idrid-grading, csv, dicom")
    val: str | None = _opt(None, "separate validation data (same forms as --data)")
    val_fraction: float = _opt(0.2, "fraction of --data held out for validation when --val is not given")
    task: str = _opt("referable", "referable (binary referable DR) or lesions (multi-label MA, HE, EX, SE)")
    arch: str = _opt("vgg", "backbone: vgg (plain VGG-style stack) or resnet (MONAI ResNet)")
    size: int = _opt(256, "model input side in pixels (the FOV is cropped and resized to it)")
    epochs: int = _opt(16, "total epochs, warm-up included")
    warmup_epochs: int = _opt(8, "epochs trained ordinarily (no mask, no filter loss) before the ICNN epochs")
    lam: float = _opt(
        0.3,
        "filter-loss weight lambda0, relative: at the first interpretable epoch the filter loss's gradient on the "
        "maps is lambda0 times the classification loss's; epoch t after warm-up uses lambda0 / (t - warmup)",
    )
    batch: int = _opt(16, "batch size (per process under torchrun)")
    lr: float = _opt(1e-3, "peak learning rate (AdamW, one-cycle schedule)")
    weight_decay: float = _opt(1e-4, "AdamW weight decay")
    device: str = _opt("auto", "auto (CUDA when present), cpu or cuda")
    seed: int = _opt(0, "random seed (CPU runs are reproducible for a seed)")
    ordinary: bool = _opt(False, "train the same network without masks and filter loss (the baseline)")
    init: str | None = _opt(None, "fine-tune from this bundle (retraining on local data)")
    resume: bool = _opt(False, "continue the interrupted run in --out from its last checkpoint")
    n_filters: int = _opt(64, "interpretable filters in the top layer")
    width: int = _opt(32, "base channel width of the backbone")
    free_fraction: float = _opt(
        0.25, "fraction of filters trained label-free (they settle on always-present anatomy such as the disc)"
    )
    free_weight: float = _opt(
        1.0, "filter-loss weight of the label-free (anatomy) filters relative to the category filters (stronger "
        "pulls were tried on fundus and made fewer anatomy filters, not more; see docs/results.md)"
    )
    free_template_only: bool = _opt(
        True, "during the interpretable epochs the label-free filters learn from the template loss alone (their "
        "maps reach the classifier without its gradient), so the classification loss cannot turn them into lesion "
        "detectors"
    )
    loss_mode: str = _opt("paper", "filter loss: paper (label-aware -MI) or mi (exact label-free -MI)")
    normalise: bool = _opt(True, "scale maps by a detached per-filter factor inside the filter loss")
    beta: float = _opt(
        12.0, "template slope beta: the positive part of a template reaches n/beta cells from its centre. The "
        "paper's 4 suits object parts a quarter of the image wide; fundus parts are smaller (the disc is 7 % of the "
        "field), so 12 at n = 32 gives a disc-sized template (the official code also adapts beta, from the "
        "activation spread)"
    )
    dropout: float = _opt(0.3, "dropout before the classifier")
    augment: bool = _opt(True, "random flips, rotations, scaling and colour jitter while training")
    cache: str = _opt("memory", "dataset cache: memory, disk or none")
    workers: int = _opt(0, "data-loader worker processes")
    amp: bool = _opt(True, "mixed precision (bf16) on CUDA")
    max_train_images: int | None = _opt(None, "use at most this many training images (quick runs)")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid option."""
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"--{name.replace('_', '-')}: {why} (got {getattr(self, name)!r})")

        if self.task not in TASKS:
            raise bad("task", f"must be one of {', '.join(TASKS)}")
        if self.arch not in ARCHS:
            raise bad("arch", f"must be one of {', '.join(ARCHS)}")
        if self.device not in DEVICES:
            raise bad("device", f"must be one of {', '.join(DEVICES)}")
        if self.loss_mode not in LOSS_MODES:
            raise bad("loss_mode", f"must be one of {', '.join(LOSS_MODES)}")
        if self.cache not in ("memory", "disk", "none"):
            raise bad("cache", "must be memory, disk or none")
        if self.size < 64 or self.size % 16:
            raise bad("size", "must be a multiple of 16 and at least 64")
        if self.epochs < 1:
            raise bad("epochs", "must be at least 1")
        if not 0 <= self.warmup_epochs < self.epochs and not self.ordinary:
            raise bad("warmup_epochs", f"must be between 0 and epochs-1 ({self.epochs - 1})")
        if self.lam < 0:
            raise bad("lam", "must be non-negative")
        if self.batch < 2:
            raise bad("batch", "must be at least 2 (the filter loss normalises over the batch)")
        if not 0 < self.val_fraction < 1:
            raise bad("val_fraction", "must be between 0 and 1")
        if not 0 <= self.free_fraction <= 1:
            raise bad("free_fraction", "must be between 0 and 1")
        if self.free_weight < 0:
            raise bad("free_weight", "must be non-negative")
        if self.n_filters < 1:
            raise bad("n_filters", "must be positive")

    @property
    def interpretable(self) -> bool:
        return not self.ordinary

    def lambda_at(self, epoch: int) -> float:
        """Filter-loss weight of 1-based ``epoch`` (0 during warm-up and for the ordinary CNN)."""
        if self.ordinary or epoch <= self.warmup_epochs:
            return 0.0
        return self.lam / (epoch - self.warmup_epochs)

    def mask_on(self, epoch: int) -> bool:
        return not self.ordinary and epoch > self.warmup_epochs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def config_help(name: str) -> str:
    """The help text of a :class:`TrainConfig` field (for CLI and GUI tooltips)."""
    for f in fields(TrainConfig):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    raise KeyError(name)
