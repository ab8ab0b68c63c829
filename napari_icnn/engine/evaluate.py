"""``icnn evaluate``: classification and interpretability metrics of a bundle on a data set.

The same code scores the ICNN's filters and the baselines (Grad-CAM, occlusion), so the numbers compare.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from napari_icnn.progress import Message, Progress

__all__ = ["evaluate_iter", "evaluate", "summarise"]


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    if isinstance(x, np.floating):
        return _nan_to_none(float(x))
    if isinstance(x, np.integer):
        return int(x)
    return x


def summarise(col: Any, *, class_names: list[str], filter_parts: list[str | None] | None,
              filter_names: list[str] | None, has_labels: bool, explainer: str) -> dict[str, Any]:
    """Turn collected arrays into the metrics document (see the module docstring of engine.metrics)."""
    from napari_icnn.engine.metrics import (
        classification_metrics,
        instability,
        match_parts,
        part_scores,
        pointing_game,
    )

    out: dict[str, Any] = {"explainer": explainer, "n_images": len(col.ids)}
    if has_labels:
        out.update(classification_metrics(col.probs, col.targets, class_names))
    else:
        out.update({"auc": float("nan"), "accuracy": float("nan")})
    n_units = col.maps.shape[1]
    inst, inst_per = instability(col.peaks_xy, col.scores, col.landmarks, col.size)
    out["location_instability"] = inst
    for k, name in enumerate(("optic_disc", "fovea")):
        out[f"location_instability_{name}"] = instability(col.peaks_xy, col.scores, col.landmarks[:, k : k + 1],
                                                          col.size)[0]
    lm_valid = np.isfinite(col.landmarks).all(axis=2)
    out["landmarks"] = {"optic_disc": int(lm_valid[:, 0].sum()), "fovea": int(lm_valid[:, 1].sum())}
    has_parts = bool(col.present.any())
    active = col.scores > 0
    if has_parts:
        ps = part_scores(col.iou, col.present, col.parts)
        ps_inst = part_scores(col.iou_instance, col.present, col.parts)
        # names follow the lesion-aware IoU: a filter outlining one haemorrhage among forty is a haemorrhage filter
        matched, match_score = match_parts(ps_inst)
        parts = list(filter_parts) if filter_parts is not None else matched
        idx = [None if p is None or p not in col.parts else col.parts.index(p) for p in parts]
        hits = pointing_game(col.peak_in_part, col.present, active, idx)
        hits_tol = pointing_game(col.peak_in_part_tol, col.present, active, idx)
        out["part_interpretability"] = float(ps.interpretability.mean())
        out["part_interpretability_iou04"] = float(ps.interpretability_loose.mean())
        out["part_interpretability_instance"] = float(ps_inst.interpretability.mean())
        named = np.isfinite(hits)
        out["pointing_hit_rate"] = float(hits[named].mean()) if named.any() else float("nan")
        out["pointing_hit_rate_tolerance"] = float(hits_tol[named].mean()) if named.any() else float("nan")
        per_part: dict[str, Any] = {}
        for k, part in enumerate(col.parts):
            n_img = int(ps.n_images[k])
            if n_img == 0:
                continue
            units = [f for f in range(n_units) if idx[f] == k]
            # any unit's peak inside this part (for a single-map baseline: its peak hit rate for the part)
            sel = col.present[:, k]
            peak_rate = col.peak_in_part[sel][:, :, k].mean(axis=0)
            chance = float(col.chance[sel, k].mean())
            per_part[part] = {
                "images": n_img,
                "chance": chance,
                "filters": units,
                "hit_rate_iou02_max": float(ps.hit_rate[:, k].max()),
                "hit_rate_instance_iou02_max": float(ps_inst.hit_rate[:, k].max()),
                "mean_iou_max": float(ps.mean_iou[:, k].max()),
                "pointing_matched_mean": float(np.nanmean(hits[units])) if units else float("nan"),
                "pointing_matched_best": float(np.nanmax(hits[units])) if units and np.isfinite(hits[units]).any() else float("nan"),
                "peak_hit_rate_best_unit": float(peak_rate.max()),
                "peak_hit_rate_mean_unit": float(peak_rate.mean()),
                # the filter a reader sees first: the most contributing one of each image
                "top_filter_hit_rate": float(col.peak_in_part[sel, col.top[sel], k].mean())
                if col.top is not None and sel.any() else None,
            }
        out["per_part"] = per_part
        per_filter = []
        for f in range(n_units):
            per_filter.append({
                "id": f,
                "name": filter_names[f] if filter_names else f"unit {f}",
                "part": parts[f],
                "matched_on_this_data": matched[f],
                "match_iou": float(match_score[f]),
                "interpretability": float(ps.interpretability[f]),
                "interpretability_iou04": float(ps.interpretability_loose[f]),
                "interpretability_instance": float(ps_inst.interpretability[f]),
                "pointing_hit_rate": float(hits[f]),
                "location_instability": float(inst_per[f]),
                "active_fraction": float(active[:, f].mean()),
                "per_part_mean_iou": {p: float(ps_inst.mean_iou[f, k]) for k, p in enumerate(col.parts) if ps.n_images[k]},
            })
        out["per_filter"] = per_filter
    else:
        out["part_interpretability"] = float("nan")
        out["pointing_hit_rate"] = float("nan")
        out["per_filter"] = [{"id": f, "location_instability": float(inst_per[f])} for f in range(n_units)]
    out["dead_filters"] = int((~active).all(axis=0).sum())
    return out


def evaluate_iter(model_path: str, data: str, *, format: str = "auto", explainer: str = "icnn",
                  device: str = "auto", batch: int = 16, out: str | None = None) -> Generator[Any, None, dict]:
    """Evaluate a bundle on data; yields progress, returns (and optionally writes) the metrics document."""
    import torch
    from monai.data import DataLoader

    from napari_icnn.bundle import load_bundle
    from napari_icnn.data.datasets import make_dataset
    from napari_icnn.data.layouts import discover, task_targets
    from napari_icnn.engine.collect import collect
    from napari_icnn.engine.explainers import make_explainer
    from napari_icnn.errors import ConfigError

    t0 = time.monotonic()
    model = load_bundle(model_path, device=device)
    spec = discover(data, format)
    records = list(spec.records)
    has_labels = True
    try:
        for r in records:
            task_targets(r, model.task)
    except ConfigError as err:
        has_labels = False
        yield Message(f"no {model.task} labels ({err}); classification metrics skipped")
    ds = make_dataset(records, size=model.size, task=model.task if has_labels else None, augment=False,
                      cache="none", with_masks=spec.has_masks)
    dl = DataLoader(ds, batch_size=batch, shuffle=False)
    net = model.net
    run = make_explainer(explainer, net, reference=model.reference)
    total = len(records)
    yield Progress("evaluate", 0, total)
    events: list[int] = []
    col = collect(run, dl, size=model.size, device=model.device,
                  stride=net.stride if explainer == "icnn" else None,
                  offset=net.offset if explainer == "icnn" else None,
                  parts=tuple(ds.mask_parts) if spec.has_masks else (), progress=events.append)
    yield Progress("evaluate", total, total)
    filter_parts = [f.part for f in model.filters] if explainer == "icnn" else None
    filter_names = [f.display_name for f in model.filters] if explainer == "icnn" else None
    metrics = summarise(col, class_names=model.class_names, filter_parts=filter_parts, filter_names=filter_names,
                        has_labels=has_labels, explainer=explainer)
    if has_labels and col.logits is not None and len(col.logits):
        metrics.update(calibration_metrics(col.logits, col.targets, model.temperature))
    metrics["model"] = {"path": str(model.path), "name": model.name, "version": model.version, "sha256": model.sha256}
    metrics["data"] = {"path": str(data), "format": spec.format, "images": len(records)}
    metrics["seconds"] = time.monotonic() - t0
    doc = _nan_to_none(metrics)
    if out:
        from napari_icnn.atomic import atomic_write_text

        atomic_write_text(out, json.dumps(doc, indent=2))
    del torch
    return doc


def calibration_metrics(logits: np.ndarray, targets: np.ndarray, temperature: float) -> dict[str, Any]:
    """``ece`` before and after the bundle's temperature, and the reliability diagrams behind them."""
    from napari_icnn.engine.calibration import expected_calibration_error, reliability

    z = np.asarray(logits, dtype=np.float64)
    raw, calibrated = 1.0 / (1.0 + np.exp(-z)), 1.0 / (1.0 + np.exp(-z / temperature))
    return {
        "ece": {"uncalibrated": expected_calibration_error(raw, targets),
                "calibrated": expected_calibration_error(calibrated, targets), "temperature": float(temperature)},
        "reliability": {"uncalibrated": reliability(raw, targets), "calibrated": reliability(calibrated, targets)},
    }


def evaluate(model_path: str, data: str, on_event: Callable[[Any], None] | None = None, **kw: Any) -> dict:
    from napari_icnn.progress import drain

    return drain(evaluate_iter(model_path, data, **kw), on_event)
