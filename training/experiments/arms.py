"""Two recipes compared on validation, several trainings each: every figure per training, the mean and the worst.

``python -m training.experiments.arms --base A1.json A2.json --new B1.json B2.json [--names default 384px]``
reads documents of :func:`napari_icnn.engine.lesion_types.lesion_type_figures_iter` (as
``training.experiments.variants`` writes them), one per training of one recipe on the **same** validation images,
and prints a Markdown table. One training of each recipe is not enough: two trainings of the default recipe that
differ only in the training seed moved the mean hit rate by 0.08 on the same images (docs/results.md), so a
difference between recipes means something only beside that spread, which this table shows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from napari_icnn.engine.lesion_types import SILENCE_BAR
from training.experiments.report import summary_over_seeds

__all__ = ["FIGURES", "validation_figures", "compare_arms", "main"]

LESION_TYPES = ("MA", "HE", "EX", "SE")

FIGURES: dict[str, str] = {
    "top_own": "top filter of a referable scan in a lesion of its own type",
    "hit_mean": "filters' hit rate, mean of the four types",
    **{f"hit_{t}": f"{t} filters' hit rate" for t in LESION_TYPES},
    **{f"gradcam_{t}": f"Grad-CAM of the {t} logit, hit rate" for t in LESION_TYPES},
    "silent_share": f"share of filters silent on >= {SILENCE_BAR:.0%} of eyes without their type",
    "silence_mean": "mean silence of all filters on eyes without their type",
    "silent_share_MA": "share of MA filters silent",
    "peak_auc_MA": "MA filters' median peak AUC",
    "output_auc_MA": "the network's MA output, AUC",
    "auc": "decision AUC",
}
"""Figure key -> words; every figure is better when higher."""


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def validation_figures(doc: dict[str, Any]) -> dict[str, float]:
    """The figures of one scored training (a lesion-type figures document), keyed as :data:`FIGURES`."""
    absent = [k for k in ("types", "top_filter", "decision_auc") if k not in doc]
    if absent:
        raise ValueError(f"no {', '.join(absent)} entry")
    types = doc["types"]
    missing = [t for t in LESION_TYPES if t not in types]
    if missing:
        raise ValueError(f"the document has no figures for {', '.join(missing)}")
    out = {"top_own": _number(doc["top_filter"]["own_type_rate"]), "auc": _number(doc["decision_auc"])}
    for t in LESION_TYPES:
        out[f"hit_{t}"] = _number(types[t]["icnn_hit_rate"])
        out[f"gradcam_{t}"] = _number(types[t]["gradcam_hit_rate"])
    out["hit_mean"] = float(np.mean([out[f"hit_{t}"] for t in LESION_TYPES]))
    silence = [s for t in LESION_TYPES for s in types[t]["silence_per_filter"]]
    out["silent_share"] = float(np.mean(np.asarray(silence) >= SILENCE_BAR)) if silence else float("nan")
    out["silence_mean"] = float(np.mean(silence)) if silence else float("nan")
    out["silent_share_MA"] = _number(types["MA"]["silent_filters_share"])
    out["peak_auc_MA"] = _number(types["MA"].get("peak_auc_median"))
    out["output_auc_MA"] = _number(types["MA"].get("output_auc"))  # documents before it have none: NaN
    return out


def compare_arms(base: list[dict[str, Any]], new: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per figure and arm: the value of each training, their mean and the worst (the lowest)."""
    if not base or not new:
        raise ValueError("each recipe needs at least one scored training")
    arms = {"base": [validation_figures(d) for d in base], "new": [validation_figures(d) for d in new]}
    out: dict[str, dict[str, Any]] = {}
    for key in FIGURES:
        row: dict[str, Any] = {}
        for arm, figs in arms.items():
            values = [f[key] for f in figs]
            summary = summary_over_seeds(dict(enumerate(values)))
            row[arm] = {"values": values, "mean": summary["mean"], "worst": summary["worst"]}
        out[key] = row
    return out


def _cell(arm: dict[str, Any]) -> str:
    values = " · ".join("—" if not np.isfinite(v) else f"{v:.3f}" for v in arm["values"])
    if len(arm["values"]) == 1:
        return values
    return f"{values} (mean {arm['mean']:.3f}, worst {arm['worst']:.3f})"


def table_markdown(comparison: dict[str, dict[str, Any]], names: tuple[str, str] = ("base", "new")) -> str:
    """The comparison as a Markdown table, one row per figure."""
    lines = [f"| figure | {names[0]} | {names[1]} |", "|---|---|---|"]
    for key, words in FIGURES.items():
        lines.append(f"| {words} | {_cell(comparison[key]['base'])} | {_cell(comparison[key]['new'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", nargs="+", required=True, type=Path, help="one document per training of the base recipe")
    ap.add_argument("--new", nargs="+", required=True, type=Path, help="one document per training of the new recipe")
    ap.add_argument("--names", nargs=2, default=("base", "new"), metavar=("BASE", "NEW"))
    args = ap.parse_args(argv)
    docs: dict[str, list[dict[str, Any]]] = {"base": [], "new": []}
    for arm in docs:
        for path in getattr(args, arm):
            try:
                doc = json.loads(path.read_text())
                validation_figures(doc)
            except OSError as err:
                ap.error(f"{path}: cannot be read ({err.strerror or err})")
            except (ValueError, KeyError, TypeError) as err:
                ap.error(f"{path}: not a lesion-type figures document ({err})")
            docs[arm].append(doc)
    print(table_markdown(compare_arms(docs["base"], docs["new"]), tuple(args.names)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
