"""The shipped model's evidence on photographs it never saw, beside any other bundles on the same images.

Generates (or reuses) a realistic cohort from ``--seed`` and a validation cohort for the firing thresholds, then
scores each ``--model``: the referable decision on the whole cohort (``icnn evaluate``) and the lesion-type
evidence against Grad-CAM of the same model on a seeded subset (engine.lesion_types, thresholds on the validation
cohort). Writes one JSON per model and prints a table of the figures docs/results.md quotes.

    python docs/scripts/evaluate_shipped_model.py --work DIR --seed 33 --val-seed 32 \
        --model napari_icnn/models/demo [--model OTHER ...] [--n 300] [--scored 120] [--image-size 384]

Every model is scored on the same photographs. ``--image-size`` is the side they are rendered at (384, the
published figures; 768 for cohorts rendered finer); each side has its own cohorts and documents in ``--work``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from napari_icnn.bundle import require_model, shipped_bundle_path
from napari_icnn.errors import BundleError
from napari_icnn.progress import TextProgress, drain

ROWS = (
    ("decision AUC (whole cohort)", lambda c, t: c["auc"]),
    ("decision accuracy", lambda c, t: c["accuracy"]),
    ("top filter of a referable scan in a lesion of its own type", lambda c, t: t["top_filter"]["own_type_rate"]),
    ("… in a lesion of any type", lambda c, t: t["top_filter"]["any_lesion_rate"]),
    ("… an anatomy or label-free filter", lambda c, t: t["top_filter"]["context_rate"]),
)


def main(argv: list[str] | None = None) -> int:
    """Score each model on the cohorts (generated once into ``--work``), print the table; 0."""
    from napari_icnn.data.synth import generate_cohort, is_cohort
    from napari_icnn.engine.evaluate import evaluate_iter
    from napari_icnn.engine.lesion_types import lesion_type_figures_iter
    from training.experiments.driver import scored_subset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="cohorts and metric documents go here")
    ap.add_argument("--seed", type=int, default=33, help="the scored cohort's seed (default 33, the demo recipe's "
                    "test seed)")
    ap.add_argument("--val-seed", type=int, default=32, help="the cohort the firing thresholds are fixed on")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--n-val", type=int, default=200)
    ap.add_argument("--scored", type=int, default=120, help="images the lesion-type figures and Grad-CAM are "
                    "scored on (a seeded subset)")
    ap.add_argument("--model", action="append", help="bundle (repeat; default: the shipped model)")
    ap.add_argument("--image-size", type=int, default=384, choices=(384, 768),
                    help="side the photographs are rendered at (default 384); every model reads them at its own input")
    args = ap.parse_args(argv)
    models = args.model or [str(shipped_bundle_path())]
    for model in models:  # before any cohort is generated
        try:
            require_model(model)
        except BundleError as err:
            ap.error(str(err))
    show = TextProgress()
    cohorts = {}
    for name, seed, n in (("test", args.seed, args.n), ("val", args.val_seed, args.n_val)):
        path = args.work / f"{name}-seed{seed}-{args.image_size}px"
        if not is_cohort(path):
            drain(generate_cohort(path, n, size=args.image_size, seed=seed, look="realistic", overwrite=True), show)
        cohorts[name] = path
    scored = scored_subset(cohorts["test"], args.scored, 1000 * args.seed + 4)
    table: dict[str, list[float | None]] = {label: [] for label, _ in ROWS}
    per_type: dict[str, list[str]] = {}
    for model in models:
        # documents are kept per model: its weights and its metadata (the same weights with other filter labels are
        # another model), so a rebuilt model is never shown another's figures
        digest = hashlib.sha256(b"".join((Path(model) / f).read_bytes() for f in
                                         ("models/model.pt", "configs/metadata.json"))).hexdigest()[:16]
        out = args.work / f"model-{digest}-{args.image_size}px"
        out.mkdir(parents=True, exist_ok=True)
        cls_path, types_path = out / "classification.json", out / "lesion-types.json"
        cls = (json.loads(cls_path.read_text()) if cls_path.is_file() else
               drain(evaluate_iter(model, str(cohorts["test"]), explainer="icnn", device="cpu", out=str(cls_path)),
                     show))
        types = (json.loads(types_path.read_text()) if types_path.is_file() else
                 drain(lesion_type_figures_iter(model, str(scored), str(cohorts["val"]), device="cpu",
                                                out=str(types_path)), show))
        for label, get in ROWS:
            table[label].append(get(cls, types))
        for t, v in types["types"].items():
            per_type.setdefault(t, []).append(
                f"{v['icnn_hit_rate']:.2f} vs {v['gradcam_hit_rate']:.2f}; silent {v['silent_filters_share']:.2f}"
                if v["n_filters"] else "no filters")
    print("\n| figure | " + " | ".join(models) + " |\n|---|" + "---|" * len(models))
    for label, values in table.items():
        print(f"| {label} | " + " | ".join("—" if v is None else f"{v:.3f}" for v in values) + " |")
    for t, cells in per_type.items():
        print(f"| {t}: filters' hit rate vs Grad-CAM; share of filters silent | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
