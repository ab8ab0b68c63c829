"""``icnn synth``: write a synthetic fundus cohort with part masks and ICDR labels."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synth`` parser to the ``icnn`` sub-command parsers, its handler :func:`run`."""
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic fundus cohort (photographs, part masks, ICDR labels, optional DICOM)",
        description=(
            "Write N procedural fundus photographs with exact masks of every part (optic disc, fovea, "
            "vessels, MA, HE, EX, SE, NV) and labels derived from the drawn lesions by the ICDR rules: "
            "OUT/images/<id>.png, OUT/masks/<part>/<id>.png, OUT/labels.csv, OUT/cohort.json and, with "
            "--dicom, OUT/dicom/<id>.dcm. The same seed gives the same files; ids are s<seed>_<index>, "
            "so cohorts made with different seeds never collide."
        ),
    )
    p.add_argument("out", metavar="OUT", help="cohort folder (new, empty, or a previous cohort to replace)")
    p.add_argument("--n", type=int, default=100, help="number of images (default: %(default)s)")
    p.add_argument("--size", type=int, default=512, help="image side in pixels (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed (default: %(default)s)")
    p.add_argument(
        "--dicom", action="store_true", help="also write each image as Ophthalmic Photography DICOM"
    )
    p.add_argument(
        "--workers", type=int, default=1, help="parallel processes; files do not depend on it (default: 1)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty folder that is not a cohort (only the cohort's own file names are touched)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the synthetic cohort to ``--out`` and print its summary; 0."""
    from napari_icnn.data.synth import generate_cohort
    from napari_icnn.progress import TextProgress, drain

    summary = drain(
        generate_cohort(
            args.out,
            args.n,
            size=args.size,
            seed=args.seed,
            dicom=args.dicom,
            workers=args.workers,
            overwrite=args.overwrite,
        ),
        TextProgress(),
    )
    print(summary.describe())
    return 0
