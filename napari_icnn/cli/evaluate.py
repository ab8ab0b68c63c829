"""``icnn evaluate``: classification and interpretability metrics of a model on annotated data."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    from napari_icnn.engine.explainers import EXPLAINERS

    p = sub.add_parser("evaluate", help="measure AUC, part interpretability, location instability, pointing game",
                       description=__doc__)
    p.add_argument("--model", default=None, help="model bundle folder (default: the shipped demo model)")
    p.add_argument("--data", required=True, help="data folder or CSV (same layouts as icnn train)")
    p.add_argument("--format", default="auto", help="data layout (default: auto)")
    p.add_argument("--out", default=None, help="write the metrics as JSON to this file")
    p.add_argument("--explainer", default="icnn", choices=EXPLAINERS,
                   help="score the ICNN's filters (icnn) or a baseline heat map (gradcam, occlusion)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch", type=int, default=16)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_icnn.bundle import default_bundle_path
    from napari_icnn.engine.evaluate import evaluate
    from napari_icnn.progress import TextProgress

    doc = evaluate(args.model or str(default_bundle_path()), args.data, on_event=TextProgress(),
                   format=args.format, explainer=args.explainer, device=args.device, batch=args.batch, out=args.out)
    keys = ("auc", "accuracy", "sensitivity_at_90_specificity", "part_interpretability",
            "part_interpretability_iou04", "location_instability", "pointing_hit_rate", "dead_filters")
    print(json.dumps({k: doc.get(k) for k in keys if k in doc}, indent=2))
    if args.out:
        print(f"metrics written to {args.out}")
    return 0
