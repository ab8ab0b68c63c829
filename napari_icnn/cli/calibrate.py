"""``icnn calibrate``: give an existing bundle its reference eye and its probability temperature from a
validation folder, and (with ``--train``) the statistics of its experience."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``calibrate`` parser to the ``icnn`` sub-command parsers, its handler :func:`run`."""
    from napari_icnn.config import DEVICES

    p = sub.add_parser(
        "calibrate",
        help="store the reference eye contributions are measured against and fit the probability temperature",
        description=(
            "Computes the reference eye of a bundle — the mean pooled features of its interpretable filters over "
            "the healthy eyes (ICDR grade 0; without grades, every lesion label absent) of a validation folder — "
            "and fits the temperature that makes its probabilities calibrated on the folder's labelled images; "
            "both are stored in the bundle's metadata (a timestamped backup is kept; the weights are untouched). "
            "With --train, also the model's experience: statistics of its training photographs, with the limit "
            "set on the validation folder, that say when a scan is unlike anything it learned from. "
            "Bundles trained by this version already carry all three."
        ),
    )
    p.add_argument("--model", required=True, metavar="BUNDLE", help="bundle folder to calibrate")
    p.add_argument("--data", required=True, metavar="DIR", help="validation data with grades (any training layout)")
    p.add_argument("--train", metavar="DIR", default=None,
                   help="the model's training data (any layout): also store the statistics of its experience")
    p.add_argument("--format", default="auto", help="data layout (default: auto)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Store the reference eye and, where both classes are labelled, the fitted temperature in the bundle; 0."""
    from napari_icnn.bundle import load_bundle, set_calibration, set_reference
    from napari_icnn.data.layouts import discover
    from napari_icnn.engine.reference import MIN_REFERENCE_EYES, healthy_eyes
    from napari_icnn.engine.train import reference_of
    from napari_icnn.errors import ConfigError

    model = load_bundle(args.model, device=args.device)
    records = list(discover(args.data, args.format).records)
    train = list(discover(args.train, args.format).records) if args.train else []
    if args.train and (len(train) < 8 or len(records) < 8):  # checked before anything is written to the bundle
        raise ConfigError(f"--train {args.train}: the model's experience needs at least 8 training and 8 "
                          f"validation images (got {len(train)} and {len(records)})")
    healthy = healthy_eyes(records)
    if len(healthy) < MIN_REFERENCE_EYES:
        raise ConfigError(
            f"--data {args.data}: {len(healthy)} of {len(records)} images are known healthy (ICDR grade 0, or every "
            f"lesion label absent); at least {MIN_REFERENCE_EYES} are needed for a reference eye"
        )
    entry = reference_of(model.net, healthy, model.size, model.device)
    assert entry is not None  # None only with too few healthy eyes, checked above
    entry["source"] = f"icnn calibrate on {len(records)} images"
    set_reference(args.model, entry)
    print(f"reference eye stored in {args.model}: the mean of {entry['n_images']} healthy validation eyes")
    if args.train:
        _store_experience(args, model, train, records)
    calibration = _temperature(model, records)
    if calibration is None:
        print(f"no temperature fitted: the data have no {model.task} labels of both kinds")
        return 0
    set_calibration(args.model, calibration)
    print(f"temperature {calibration['temperature']:.3g} stored (fitted on {calibration['n_images']} images): "
          f"expected calibration error {calibration['ece_uncalibrated']:.3f} -> {calibration['ece_calibrated']:.3f}")
    return 0


def _store_experience(args: argparse.Namespace, model, train, val) -> None:
    from napari_icnn.bundle import set_experience
    from napari_icnn.engine.train import experience_of
    from napari_icnn.errors import ConfigError

    entry = experience_of(model.net, train, val, model.size, model.device, 16,
                          f"icnn calibrate: {len(train)} training, {len(val)} validation images")
    if entry is None:
        raise ConfigError(f"--train {args.train}: the model's experience needs at least 8 training and 8 "
                          f"validation images (got {len(train)} and {len(val)})")
    set_experience(args.model, entry)
    print(f"experience stored in {args.model}: statistics of {len(train)} training images, limit set so "
          f"{entry['quantile']:.0%} of {len(val)} validation images lie within it")


def _temperature(model, records) -> dict | None:
    """The temperature fitted on the records that carry the model's task labels, or ``None``."""
    from monai.data import DataLoader

    from napari_icnn.data.datasets import make_dataset
    from napari_icnn.data.layouts import task_targets
    from napari_icnn.engine.train import calibration_of
    from napari_icnn.errors import ConfigError

    labelled = []
    for r in records:
        try:
            task_targets(r, model.targets)
        except ConfigError:
            continue
        labelled.append(r)
    if not labelled:
        return None
    ds = make_dataset(labelled, size=model.size, task=model.targets, augment=False, cache="none")
    decision = None if model.decision_index is None else slice(model.decision_index, model.decision_index + 1)
    return calibration_of(model.net, DataLoader(ds, batch_size=16, shuffle=False), model.device,
                          f"icnn calibrate on {len(labelled)} images", decision)
