"""``icnn train``: train (or fine-tune, or resume) an interpretable CNN; writes a MONAI bundle."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

from napari_icnn.config import TrainConfig, choices_of


def _flagged() -> list:
    """The TrainConfig fields the command line exposes (those with a ``flag`` in their metadata)."""
    return [f for f in fields(TrainConfig) if f.metadata.get("flag")]


def _kind(f) -> type:
    annotation = str(f.type)  # a string: the module uses postponed annotations
    return int if annotation.startswith("int") else float if annotation.startswith("float") else str


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """Add one option per exposed TrainConfig field, flag, defaults and help taken from TrainConfig itself.

    A field whose default is derived ("auto", ``None``) keeps ``None`` when its option is not given, so the
    configuration can tell a value the user chose from one it may derive.
    """
    for f in _flagged():
        flag = f.metadata["flag"]
        default = f.default if f.default is not MISSING else None
        help_ = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        if isinstance(default, bool):
            # a flag switches a default off when the default is on
            p.add_argument(flag, dest=f.name, action="store_false" if default else "store_true",
                           help=("turn off: " if default else "") + help_)
            continue
        choices = choices_of(f.name)
        extra = {"choices": choices} if choices else {}
        p.add_argument(flag, dest=f.name, type=_kind(f), default=default,
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

    values = {f.name: getattr(args, f.name) for f in _flagged() if hasattr(args, f.name)}
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
