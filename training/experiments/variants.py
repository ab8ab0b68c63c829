"""Method choices for the lesion-type ICNN, made on a validation cohort only.

``python -m training.experiments.variants --study DIR [--preset P] --seed S --out OUT --name NAME [TrainConfig
overrides]`` fine-tunes the study's ordinary CNN of seed S (``DIR/runs/seed<S>/<arch>-referable-ordinary``, the
preset's backbone) as a lesion-type ICNN with the preset's schedule and the given overrides (``free_fraction=0``, ``z_estimate=running``), then
scores its lesion-type evidence (engine.lesion_types) on the seed's **validation** cohort, firing thresholds
fixed on a held-out half of that cohort. The test cohorts are never read. Results: ``OUT/<NAME>-seed<S>.json``.
Any setting may be overridden, the input size (``size=256``: the recipe before round 19) and the training seed
(``seed=1011``: the same recipe trained again on the same cohort, for ``training.experiments.arms``) included.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _interval(figures: dict[str, Any]) -> str:
    iv = figures.get("coverage_difference")
    return "" if not iv else f" (coverage minus Grad-CAM's {iv['difference']:+.3f}, 95 % [{iv['low']:+.3f}, {iv['high']:+.3f}])"


def _halves(cohort: Path, out: Path) -> tuple[Path, Path]:
    """The cohort split into two folders of symlinks (even and odd rows): thresholds on one, figures on the other."""
    import csv

    from training.experiments.driver import link_subset

    with open(cohort / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return tuple(link_subset(cohort, rows[k::2], out / f"{cohort.parent.name}-{cohort.name}-{name}")
                 for k, name in enumerate(("select", "score")))


def main(argv: list[str] | None = None) -> int:
    from napari_icnn.config import TrainConfig
    from napari_icnn.engine.lesion_types import lesion_type_figures_iter
    from napari_icnn.engine.train import train_iter
    from napari_icnn.progress import TextProgress, drain
    from training.experiments.presets import PRESETS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", required=True, type=Path)
    ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="the study's preset (default cpu)")
    ap.add_argument("--seed", required=True, type=int)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("overrides", nargs="*", help="TrainConfig field=value")
    args = ap.parse_args(argv)
    p = PRESETS[args.preset]
    arch = p.archs[0]
    overrides = dict(kv.split("=", 1) for kv in args.overrides)
    data = args.study / "data" / f"seed{args.seed}"
    bundle = args.out / "runs" / f"seed{args.seed}" / args.name
    if not (bundle / "models" / "model.pt").is_file():
        # an override may change anything, the input size included (the ordinary CNN's weights fit any size)
        settings = {"size": p.types_size or p.size, "arch": arch, "seed": args.seed, "epochs": p.finetune_epochs,
                    "warmup_epochs": 0, "lr": p.finetune_lr, "categories": "lesion-types",
                    **p.train, **p.icnn, **{k: _value(v) for k, v in overrides.items()}}
        cfg = TrainConfig(data=str(data / "train"), val=str(data / "val"), out=str(bundle),
                          init=str(args.study / "runs" / f"seed{args.seed}" / f"{arch}-referable-ordinary"),
                          resume=(bundle / "checkpoints" / "last.pt").is_file(), **settings)
        drain(train_iter(cfg), TextProgress())
    select, score = _halves(data / "val", args.out)
    doc = drain(lesion_type_figures_iter(str(bundle), str(score), str(select)), TextProgress())
    doc["variant"] = {"name": args.name, "seed": args.seed, "overrides": overrides,
                      "scored_on": "odd rows of the validation cohort; thresholds on its even rows"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}-seed{args.seed}.json").write_text(json.dumps(doc, indent=2))
    tf = doc["top_filter"]
    print(f"{args.name} seed {args.seed}: top filter own type {tf['own_type_rate']}, any lesion {tf['any_lesion_rate']}; "
          + ", ".join(f"{t} hit {v['icnn_hit_rate']} vs Grad-CAM {v['gradcam_hit_rate']}{_interval(v)}"
                      for t, v in doc["types"].items()))
    return 0


if __name__ == "__main__":
    import sys

    from napari_icnn.errors import IcnnError

    try:
        raise SystemExit(main())
    except IcnnError as err:  # a wrong folder or option: one line, not a traceback
        print(f"variants: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
