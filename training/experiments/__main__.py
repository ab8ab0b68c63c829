"""``python -m training.experiments``: the interpretability study (ICNN vs ordinary CNN vs Grad-CAM / occlusion).

Every explainer is scored on the same seeded subset of each seed's test images, filters are chosen on the
validation cohort, and each figure is reported per seed, as the mean of per-seed figures and for the worst seed,
for lesion and anatomy filters apart. The study is part of the source checkout, not of the installed package:
run it from the root of a clone of the repository, with napari-icnn installed there (``make venv``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

PROG = "python -m training.experiments"


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m training.experiments``."""
    from napari_icnn.config import DEVICES, FILTER_RANKINGS

    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--out", required=True, help="study folder (re-running into it resumes)")
    p.add_argument("--preset", default="cpu", help="cpu (VGG, referable DR, 3 seeds, 256 px and the lesion-type ICNN at 384 px, "
                   "realistic photographs), "
                   "cpu-clean (the same on the clean look), cpu-resnet (the lesion-type study on ResNet, shorter), "
                   "gpu-lesions (cpu's lesion-type study on photographs rendered at 768 px), gpu (both "
                   "backbones and tasks at 512 px) or tiny "
                   "(seconds; for tests)")
    p.add_argument("--seed", type=int, action="append", help="run only this seed (repeat for several)")
    p.add_argument("--base-only", action="store_true",
                   help="only the cohorts and the ordinary CNNs (what validation variants start from): no model "
                        "evaluated, no test image read")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--free-fraction", type=float, default=None,
                   help="fraction of the ICNN's filters trained label-free (default: the training default)")
    p.add_argument("--lesion-mask-weight", type=float, default=None,
                   help="the lesion-type ICNN's lesion-mask loss weight (default: the training default, 1 with the "
                   "cohorts' masks; 0: the paper's image-level supervision)")
    p.add_argument("--match-filters-by", choices=FILTER_RANKINGS, default=None,
                   help="how the lesion-type ICNN's filters are matched to their types (default: the preset's, "
                   "else the training default)")
    return p


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the interpretability study into ``--out``; 0."""
    from training.experiments import run_experiment

    overrides = {k: v for k, v in (("free_fraction", args.free_fraction),
                                   ("lesion_mask_weight", args.lesion_mask_weight),
                                   ("match_filters_by", args.match_filters_by)) if v is not None}
    doc = run_experiment(args.out, preset=args.preset, seeds=tuple(args.seed or ()), device=args.device,
                         icnn_overrides=overrides, base_only=args.base_only)
    if args.base_only:
        print(f"\ncohorts and ordinary CNNs in {args.out} ({doc['total_seconds'] / 60:.1f} min)")
        return 0
    print(f"\nresults: {Path(args.out) / 'results.md'} ({doc['total_seconds'] / 60:.1f} min)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m training.experiments`` with ``argv``; the exit code (2 for a usage error, as ``icnn``'s)."""
    from napari_icnn.cli import run_handler

    args = build_parser().parse_args(argv)
    return run_handler(PROG, run, args)


if __name__ == "__main__":
    sys.exit(main())
