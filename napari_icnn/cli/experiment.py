"""``icnn experiment``: the interpretability study (ICNN vs ordinary CNN vs Grad-CAM / occlusion).

Every explainer is scored on the same seeded subset of each seed's test images, filters are chosen on the
validation cohort, and each figure is reported per seed, as the mean of per-seed figures and for the worst seed,
for lesion and anatomy filters apart. The study's code lives in the source checkout (``training/experiments/``);
this command runs it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_icnn.config import DEVICES


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``experiment`` parser to the ``icnn`` sub-command parsers, its handler :func:`run`."""
    p = sub.add_parser("experiment", help="run the interpretability study on synthetic cohorts", description=__doc__)
    p.add_argument("--out", required=True, help="study folder (re-running into it resumes)")
    p.add_argument("--preset", default="cpu", help="cpu (VGG, referable DR, 3 seeds, 256 px, realistic photographs), "
                   "cpu-clean (the same on the clean look), gpu (both backbones and tasks at 512 px) or tiny "
                   "(seconds; for tests)")
    p.add_argument("--seed", type=int, action="append", help="run only this seed (repeat for several)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--free-fraction", type=float, default=None,
                   help="fraction of the ICNN's filters trained label-free (default: the training default)")
    p.set_defaults(func=run)


def _checkout() -> Path:
    from napari_icnn.errors import ConfigError

    root = Path(__file__).resolve().parents[2]
    if not (root / "training" / "experiments" / "driver.py").is_file():
        raise ConfigError("icnn experiment runs from a source checkout of napari-icnn (training/experiments/ is "
                          "not part of the installed package); install it with pip install -e .")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the interpretability study into ``--out`` from the source checkout; 0."""
    _checkout()
    from training.experiments import run_experiment

    doc = run_experiment(args.out, preset=args.preset, seeds=tuple(args.seed or ()), device=args.device,
                         icnn_overrides={} if args.free_fraction is None else {"free_fraction": args.free_fraction})
    print(f"\nresults: {Path(args.out) / 'results.md'} ({doc['total_seconds'] / 60:.1f} min)")
    return 0
