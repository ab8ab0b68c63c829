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
            "OUT/images/<id>.png, OUT/masks/<part>/<id>.png, OUT/masks/{fov,text,artefact}/<id>.png, "
            "OUT/labels.csv, OUT/cohort.json and, with --dicom, OUT/dicom/<id>.dcm. The realistic look "
            "(default) draws a camera per image: frame size and shape (circle, clipped, rimless, notched), "
            "burned-in text, colour cast, exposure, blur, dust, reflections, JPEG; the clean look gives the "
            "original square artefact-free photographs. --ungradeable-share P makes a share P of the realistic "
            "photographs ungradeable (defocus, underexposed, overexposed or obscured; labels.csv columns "
            "gradable and ungradeable), leaving their grades and masks what was drawn. --camera NAME (repeatable) "
            "draws every photograph's camera from the named profiles only (e.g. a clinic with one handheld "
            "camera: --camera handheld), leaving everything else of each image as it was. --confounder KIND "
            "--confounder-rate P draws a site artefact (stamp: a site's name printed on the field; logo: a boxed "
            "logo; notch: a bite out of the field's rim) on a share P of the referable photographs and 1-P of the "
            "others, to tempt a model into a shortcut (labels.csv columns confounder and confounder_kind, "
            "OUT/masks/confounder; the same seed at P and 1-P gives the same eyes with the correlation reversed). "
            "The same seed gives "
            "the same files; ids are s<seed>_<index>, so cohorts made with different seeds never collide."
        ),
    )
    p.add_argument("out", metavar="OUT", help="cohort folder (new, empty, or a previous cohort to replace)")
    p.add_argument("--n", type=int, default=100, help="number of images (default: %(default)s)")
    p.add_argument(
        "--look",
        default="realistic",
        help="realistic (varied cameras and artefacts) or clean (square, artefact-free) (default: %(default)s)",
    )
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="clean: image side in pixels (default 512); realistic: fixed frame width "
        "(default: drawn per image from --size-range)",
    )
    p.add_argument(
        "--size-range",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=None,
        help="realistic: frame widths drawn log-uniformly (default: 400 1600)",
    )
    p.add_argument(
        "--ungradeable-share",
        type=float,
        default=None,
        metavar="P",
        help="realistic: share of photographs made ungradeable (defocus, underexposed, overexposed, "
        "obscured; chosen by the seed alone, never by the labels), 0-1 (default: 0)",
    )
    p.add_argument(
        "--camera",
        action="append",
        default=None,
        metavar="NAME",
        help="realistic: draw cameras only from this profile (repeatable; desktop-45, desktop-wide, sensor-3:2, "
        "sensor-4:3, widefield, marker-45, handheld; default: all, by their weights)",
    )
    p.add_argument(
        "--confounder",
        default=None,
        metavar="KIND",
        help="realistic: a site artefact correlated with the label: stamp, logo or notch (default: none)",
    )
    p.add_argument(
        "--confounder-rate",
        type=float,
        default=None,
        metavar="P",
        help="with --confounder: share of referable photographs that carry it; the others carry it at 1-P "
        "(0.5: no correlation)",
    )
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
    from napari_icnn.data.synth import LOOKS, SIZE_RANGE, generate_cohort
    from napari_icnn.errors import ConfigError
    from napari_icnn.progress import TextProgress, drain

    if args.look not in LOOKS:
        raise ConfigError(f"--look must be one of {', '.join(LOOKS)}; got {args.look!r}")
    if args.look == "clean" and args.size_range is not None:
        raise ConfigError("--size-range applies to the realistic look only; give --size for --look clean")
    if args.size is not None and args.size_range is not None:
        raise ConfigError("give either --size (a fixed frame width) or --size-range, not both")
    share = 0.0 if args.ungradeable_share is None else args.ungradeable_share
    if args.look == "clean" and args.ungradeable_share is not None:
        raise ConfigError("--ungradeable-share applies to the realistic look only; leave it out for --look clean")
    if not 0.0 <= share <= 1.0:  # also refuses nan
        raise ConfigError(f"--ungradeable-share must be a share from 0 to 1; got {args.ungradeable_share!r}")
    if args.look == "clean" and args.camera is not None:
        raise ConfigError("--camera applies to the realistic look only; leave it out for --look clean")
    size = args.size if args.size is not None or args.look == "realistic" else 512
    summary = drain(
        generate_cohort(
            args.out,
            args.n,
            size=size,
            seed=args.seed,
            dicom=args.dicom,
            workers=args.workers,
            overwrite=args.overwrite,
            look=args.look,
            size_range=tuple(args.size_range) if args.size_range else SIZE_RANGE,
            ungradeable_share=share,
            cameras=None if args.camera is None else tuple(args.camera),
            confounder=args.confounder,
            confounder_rate=args.confounder_rate,
        ),
        TextProgress(),
    )
    print(summary.describe())
    return 0
