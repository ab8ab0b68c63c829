"""``icnn evaluate``: classification and interpretability metrics of a model on annotated data."""

from __future__ import annotations

import argparse
import json

from napari_icnn.config import DEVICES


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` parser to the ``icnn`` sub-command parsers, its handler :func:`run`."""
    from napari_icnn.engine.explainers import EXPLAINERS

    p = sub.add_parser("evaluate", help="measure AUC, part interpretability, location instability, pointing game",
                       description=__doc__)
    p.add_argument("--model", default=None, help="model bundle folder (default: the shipped demo model)")
    p.add_argument("--data", required=True, help="data folder or CSV (same layouts as icnn train)")
    p.add_argument("--format", default="auto", help="data layout (default: auto)")
    p.add_argument("--out", default=None, help="write the metrics as JSON to this file")
    p.add_argument("--explainer", default="icnn", choices=EXPLAINERS,
                   help="score the ICNN's filters (icnn) or a baseline heat map (gradcam, occlusion)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--select-on", default=None, metavar="DATA",
                   help="annotated data held out from --data (the validation cohort): every choice of a filter "
                        "(best filter per part, the parts an ordinary CNN's filters are paired with) is made on it; "
                        "without it those figures are left out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate the model on ``--data``, print the headline metrics as JSON (and write them to ``--out``); 0."""
    from napari_icnn.bundle import default_bundle_path
    from napari_icnn.engine.evaluate import evaluate
    from napari_icnn.progress import TextProgress

    doc = evaluate(args.model or str(default_bundle_path()), args.data, on_event=TextProgress(),
                   format=args.format, explainer=args.explainer, device=args.device, batch=args.batch, out=args.out,
                   select_on=args.select_on)
    keys = ("auc", "accuracy", "sensitivity_at_90_specificity", "part_interpretability",
            "part_interpretability_iou04", "location_instability", "pointing_hit_rate", "dead_filters")
    shown = {k: doc.get(k) for k in keys if k in doc}
    for group, g in (doc.get("groups") or {}).items():
        shown[group] = {k: g.get(k) for k in ("n_filters", "part_interpretability", "location_instability",
                                              "pointing_hit_rate")}
    print(json.dumps(shown, indent=2))
    if args.out:
        print(f"metrics written to {args.out}")
    return 0
