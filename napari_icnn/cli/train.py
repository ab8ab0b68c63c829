"""``icnn train``: train (or fine-tune, or resume) an interpretable CNN; writes a MONAI bundle."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

from napari_icnn.config import ARCHS, DEVICES, TASKS, TrainConfig

# CLI flag -> TrainConfig field, for the options the command line exposes.
_FLAGS = {
    "data": "--data", "out": "--out", "format": "--format", "val": "--val", "val_fraction": "--val-fraction",
    "task": "--task", "arch": "--arch", "size": "--size", "epochs": "--epochs", "warmup_epochs": "--warmup-epochs",
    "lam": "--lambda", "batch": "--batch", "lr": "--lr", "device": "--device", "seed": "--seed",
    "ordinary": "--ordinary", "init": "--init", "resume": "--resume", "n_filters": "--filters",
    "free_fraction": "--free-fraction", "free_weight": "--free-weight", "beta": "--beta",
    "free_template_only": "--free-with-classifier-gradient", "loss_mode": "--loss-mode", "workers": "--workers", "cache": "--cache",
    "max_train_images": "--max-train-images",
}
_CHOICES = {"task": TASKS, "arch": ARCHS, "device": DEVICES, "loss_mode": ("paper", "mi"),
            "cache": ("memory", "disk", "none"),
            "format": ("auto", "synth", "idrid-seg", "idrid-grading", "csv", "dicom")}


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """Add one option per exposed TrainConfig field, defaults and help taken from TrainConfig itself."""
    for f in fields(TrainConfig):
        flag = _FLAGS.get(f.name)
        if flag is None:
            continue
        default = f.default if f.default is not MISSING else None
        help_ = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        if isinstance(default, bool):
            # a flag switches a default off when the default is on
            p.add_argument(flag, dest=f.name, action="store_false" if default else "store_true",
                           help=("turn off: " if default else "") + help_)
            continue
        kind = {"int": int, "float": float}.get(type(default).__name__, str)
        if f.name == "max_train_images":
            kind = int
        extra = {"choices": _CHOICES[f.name]} if f.name in _CHOICES else {}
        p.add_argument(flag, dest=f.name, type=kind, default=default,
                       help=f"{help_} (default: {default})" if default not in (None, "") else help_, **extra)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an interpretable (or ordinary) CNN on fundus photographs",
                       description=__doc__)
    add_config_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_icnn.engine.train import train
    from napari_icnn.errors import ConfigError
    from napari_icnn.progress import TextProgress

    values = {name: getattr(args, name) for name in _FLAGS if hasattr(args, name)}
    if not args.resume:
        if not values.get("data"):
            raise ConfigError("--data: give a training folder or CSV file")
    if not values.get("out"):
        raise ConfigError("--out: give the folder the model bundle is written to")
    cfg = TrainConfig(**values) if not args.resume else TrainConfig(out=args.out, resume=True, data=args.data or "")
    result = train(cfg, on_event=TextProgress())
    if result.stopped:
        print(f"stopped after epoch {result.epochs_done}; bundle from epoch {result.best_epoch} in {result.bundle}")
        return 130
    return 0
