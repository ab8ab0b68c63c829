"""``icnn calibrate``: give an existing bundle its reference eye from a validation folder."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from napari_icnn.config import DEVICES

    p = sub.add_parser(
        "calibrate",
        help="store the reference eye that contributions are measured against (from healthy validation eyes)",
        description=(
            "Computes the reference eye of a bundle — the mean pooled features of its interpretable filters over "
            "the healthy eyes (ICDR grade 0; without grades, every lesion label absent) of a validation folder — "
            "and stores it in the bundle's metadata (a timestamped backup is kept; the weights are untouched). "
            "Bundles trained by this version already carry one."
        ),
    )
    p.add_argument("--model", required=True, metavar="BUNDLE", help="bundle folder to calibrate")
    p.add_argument("--data", required=True, metavar="DIR", help="validation data with grades (any training layout)")
    p.add_argument("--format", default="auto", help="data layout (default: auto)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_icnn.bundle import load_bundle, set_reference
    from napari_icnn.data.layouts import discover
    from napari_icnn.engine.reference import MIN_REFERENCE_EYES, healthy_eyes
    from napari_icnn.engine.train import reference_of
    from napari_icnn.errors import ConfigError

    model = load_bundle(args.model, device=args.device)
    records = list(discover(args.data, args.format).records)
    healthy = healthy_eyes(records)
    if len(healthy) < MIN_REFERENCE_EYES:
        raise ConfigError(
            f"--data {args.data}: {len(healthy)} of {len(records)} images are known healthy (ICDR grade 0, or every "
            f"lesion label absent); at least {MIN_REFERENCE_EYES} are needed for a reference eye"
        )
    entry = reference_of(model.net, healthy, model.size, model.device)
    entry["source"] = f"icnn calibrate on {len(records)} images"
    set_reference(args.model, entry)
    print(f"reference eye stored in {args.model}: the mean of {entry['n_images']} healthy validation eyes")
    return 0
