"""``icnn train``: train (or fine-tune, or resume) an interpretable CNN; writes a MONAI bundle."""

from __future__ import annotations

import argparse
from typing import Any

from napari_icnn.config import TrainConfig, settings


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """Add one option per TrainConfig field, its flag, default, choices and help taken from TrainConfig itself
    (:func:`~napari_icnn.config.settings`).

    A field whose default is derived ("auto", ``None``) keeps ``None`` when its option is not given, so the
    configuration can tell a value the user chose from one it may derive.
    """
    for s in settings():
        help_ = s.help.replace("%", "%%")  # argparse formats help with %
        if s.kind is bool:
            # a flag switches a default off when the default is on
            p.add_argument(s.flag, dest=s.name, action="store_false" if s.default else "store_true",
                           help=("turn off: " if s.default else "") + help_)
            continue
        extra: dict[str, Any] = {"choices": s.choices} if s.choices else {}
        p.add_argument(s.flag, dest=s.name, type=s.kind, default=s.default,
                       help=f"{help_} (default: {s.default})" if s.default not in (None, "") else help_, **extra)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` parser to the ``icnn`` sub-command parsers, its handler :func:`run`."""
    p = sub.add_parser("train", help="train an interpretable (or ordinary) CNN on fundus photographs",
                       description=__doc__)
    add_config_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train (or resume) as the options say; 130 when stopped early, else 0."""
    from napari_icnn.engine.preflight import check_training
    from napari_icnn.engine.run_folder import missing_output
    from napari_icnn.engine.train import train
    from napari_icnn.progress import TextProgress

    if args.resume:
        if not args.out:
            raise missing_output()
        cfg = TrainConfig(out=args.out, resume=True, data=args.data or "")
    else:
        # The Train widget's checks, so both refuse the same inputs with the same words.
        cfg = check_training({s.name: getattr(args, s.name) for s in settings()}).raise_first()
    result = train(cfg, on_event=TextProgress())
    if result.stopped:
        print(f"stopped after epoch {result.epochs_done}; bundle from epoch {result.best_epoch} in {result.bundle}")
        return 130
    return 0
