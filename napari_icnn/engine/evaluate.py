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

__all__ = ["evaluate_iter", "evaluate", "summarise", "GROUPS"]

GROUPS = ("lesion", "anatomy")
"""Every interpretability figure is reported for each group of filters separately (see ``_groups``)."""


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


def _groups(n_units: int, categories: list[str | None] | None, parts: list[str | None]) -> dict[str, list[int]]:
    """Filters scored as lesion and as anatomy filters.

    An ICNN's anatomy filters are its label-free ones and those whose part is an anatomy landmark; every other
    filter counts as a lesion filter, named or not, so an unnamed category filter lowers the lesion figures
    instead of dropping out of them. A model without categories (the ordinary CNN) has no such split: all its
    filters stand in both groups, each scored against that group's parts only.
    """
    from napari_icnn.parts import ANATOMY_KEYS, FREE_CATEGORY

    if categories is None or all(c is None for c in categories):
        return {g: list(range(n_units)) for g in GROUPS}
    anatomy = [f for f in range(n_units) if categories[f] == FREE_CATEGORY or parts[f] in ANATOMY_KEYS]
    return {"lesion": [f for f in range(n_units) if f not in anatomy], "anatomy": anatomy}


def _chosen(values: np.ndarray, valid: np.ndarray | None = None) -> int | None:
    """Index of the highest finite value (the first on ties); None when there is none."""
    v = np.where(np.isfinite(values) & (True if valid is None else valid), values, -np.inf)
    return int(v.argmax()) if np.isfinite(v).any() else None


def _peak_rates(col: Any) -> np.ndarray:
    """(C, P) fraction of the images containing each part on which each unit's peak lies inside it."""
    n_img = col.present.sum(axis=0)
    hits = (col.peak_in_part & col.present[:, None, :]).sum(axis=0)
    return np.where(n_img[None, :] > 0, hits / np.maximum(n_img, 1)[None, :], np.nan)


def _group_figures(col: Any, ps: Any, inst_per: np.ndarray, active: np.ndarray, units: list[int],
                   group_parts: list[int]) -> dict[str, Any]:
    """Part interpretability, location instability and pointing of ``units`` against ``group_parts`` only.

    Pointing here asks whether a filter's peak lies on any part of the group (a lesion of any kind; the disc,
    fovea or a vessel): it needs no choice of part per filter, so an ordinary CNN's filters, the ICNN's and a
    single heat map are scored by the same rule. Whether a filter finds the kind it is named after is in
    ``per_part``.
    """
    out: dict[str, Any] = {"filters": units, "n_filters": len(units),
                           "parts": [col.parts[k] for k in group_parts]}
    valid = [k for k in group_parts if ps.n_images[k] > 0]
    nan = float("nan")
    if not units or not valid:
        out.update(part_interpretability=nan, part_interpretability_iou04=nan, location_instability=nan,
                   pointing_hit_rate=nan, pointing_chance=nan)
        return out
    out["part_interpretability"] = float(ps.hit_rate[np.ix_(units, valid)].max(axis=1).mean())
    out["part_interpretability_iou04"] = float(ps.hit_rate_loose[np.ix_(units, valid)].max(axis=1).mean())
    li = inst_per[units]
    out["location_instability"] = float(li[np.isfinite(li)].mean()) if np.isfinite(li).any() else nan
    any_part = col.present[:, valid].any(axis=1)
    on_any = (col.peak_in_part[:, :, valid] & col.present[:, None, valid]).any(axis=2)
    rates = []
    for f in units:
        sel = any_part & active[:, f]
        if sel.any():
            rates.append(float(on_any[sel, f].mean()))
    out["pointing_hit_rate"] = float(np.mean(rates)) if rates else nan
    out["pointing_chance"] = float(col.chance[any_part][:, valid].sum(axis=1).mean()) if any_part.any() else nan
    return out


def summarise(col: Any, *, class_names: list[str], filter_parts: list[str | None] | None,
              filter_names: list[str] | None, has_labels: bool, explainer: str,
              filter_categories: list[str | None] | None = None, select: Any = None) -> dict[str, Any]:
    """Turn collected arrays into the metrics document (see the module docstring of engine.metrics).

    ``select``: what was collected on the validation cohort with the same model and explainer. Whatever picks a
    filter (the part an ordinary CNN's filter is paired with, the best filter for a part) is decided there and
    only scored on ``col``. Without it a single-map explainer needs no choice, and the figures that would need
    one are left out (None) rather than chosen on the data they are reported on.
    """
    from napari_icnn.engine.metrics import (
        classification_metrics,
        instability,
        match_parts,
        part_scores,
        pointing_game,
    )
    from napari_icnn.parts import ANATOMY_KEYS, LESION_KEYS

    out: dict[str, Any] = {"explainer": explainer, "n_images": len(col.ids)}
    if has_labels:
        out.update(classification_metrics(col.probs, col.targets, class_names))
    else:
        out.update({"auc": float("nan"), "accuracy": float("nan")})
    n_units = col.maps.shape[1]
    if select is not None and tuple(select.parts) != tuple(col.parts):
        raise ValueError(f"selection data has parts {select.parts}, evaluated data {col.parts}")
    single = n_units == 1
    out["selection"] = ("validation" if select is not None else
                        "none needed (one map)" if single else "not available: best-filter figures left out")
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
        sel_col = select if select is not None else col
        sel_inst = part_scores(sel_col.iou_instance, sel_col.present, sel_col.parts)
        sel_ps = part_scores(sel_col.iou, sel_col.present, sel_col.parts)
        # names follow the lesion-aware IoU: a filter outlining one haemorrhage among forty is a haemorrhage filter
        matched, match_score = match_parts(sel_inst)
        parts = list(filter_parts) if filter_parts is not None else matched
        idx = [None if p is None or p not in col.parts else col.parts.index(p) for p in parts]
        hits = pointing_game(col.peak_in_part, col.present, active, idx)
        hits_tol = pointing_game(col.peak_in_part_tol, col.present, active, idx)
        sel_active = sel_col.scores > 0
        sel_hits = pointing_game(sel_col.peak_in_part, sel_col.present, sel_active, idx)
        peak_rates, sel_peak_rates = _peak_rates(col), _peak_rates(sel_col)
        out["part_interpretability"] = float(ps.interpretability.mean())
        out["part_interpretability_iou04"] = float(ps.interpretability_loose.mean())
        out["part_interpretability_instance"] = float(ps_inst.interpretability.mean())
        named = np.isfinite(hits)
        out["pointing_hit_rate"] = float(hits[named].mean()) if named.any() else float("nan")
        out["pointing_hit_rate_tolerance"] = float(hits_tol[named].mean()) if named.any() else float("nan")
        groups = _groups(n_units, filter_categories, parts)
        out["groups"] = {
            g: _group_figures(col, ps, inst_per, active, units,
                              [k for k, p in enumerate(col.parts) if p in (LESION_KEYS if g == "lesion" else ANATOMY_KEYS)])
            for g, units in groups.items()
        }
        can_choose = select is not None or single

        def best(units: list[int], sel_values: np.ndarray, values: np.ndarray) -> dict[str, Any] | None:
            if not can_choose or not units:
                return None
            u = _chosen(sel_values[units])
            if u is None:
                return None
            f = units[u]
            return {"filter": f, "validation": float(sel_values[f]), "test": float(values[f])}

        per_part: dict[str, Any] = {}
        for k, part in enumerate(col.parts):
            n_img = int(ps.n_images[k])
            if n_img == 0:
                continue
            units = [f for f in range(n_units) if idx[f] == k]
            sel = col.present[:, k]
            chance = float(col.chance[sel, k].mean())
            everyone = list(range(n_units))
            per_part[part] = {
                "images": n_img,
                "chance": chance,
                "filters": units,
                "pointing_matched_mean": float(np.nanmean(hits[units])) if units and np.isfinite(hits[units]).any()
                else float("nan"),
                "peak_hit_rate_mean_unit": float(np.nanmean(peak_rates[:, k])),
                # one filter per part, picked on the selection data, scored here
                "pointing_matched_best": best(units, sel_hits, hits),
                "peak_hit_rate_best_unit": best(everyone, sel_peak_rates[:, k], peak_rates[:, k]),
                "hit_rate_iou02_best": best(everyone, sel_ps.hit_rate[:, k], ps.hit_rate[:, k]),
                "hit_rate_instance_iou02_best": best(everyone, sel_inst.hit_rate[:, k], ps_inst.hit_rate[:, k]),
                "mean_iou_best": best(everyone, sel_ps.mean_iou[:, k], ps.mean_iou[:, k]),
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
                "category": filter_categories[f] if filter_categories else None,
                "part": parts[f],
                "matched_on_selection_data": matched[f],
                "match_iou": float(match_score[f]),
                "interpretability": float(ps.interpretability[f]),
                "interpretability_iou04": float(ps.interpretability_loose[f]),
                "interpretability_instance": float(ps_inst.interpretability[f]),
                "pointing_hit_rate": float(hits[f]),
                "location_instability": float(inst_per[f]),
                "active_fraction": float(active[:, f].mean()),
                "per_part_mean_iou": {p: float(ps_inst.mean_iou[f, k]) for k, p in enumerate(col.parts) if ps.n_images[k]},
                "per_part_peak_hit_rate": {p: float(peak_rates[f, k]) for k, p in enumerate(col.parts)
                                           if ps.n_images[k]},
            })
        out["per_filter"] = per_filter
    else:
        out["part_interpretability"] = float("nan")
        out["pointing_hit_rate"] = float("nan")
        out["per_filter"] = [{"id": f, "location_instability": float(inst_per[f])} for f in range(n_units)]
    out["dead_filters"] = int((~active).all(axis=0).sum())
    return out


def evaluate_iter(model_path: str, data: str, *, format: str = "auto", explainer: str = "icnn",
                  device: str = "auto", batch: int = 16, out: str | None = None,
                  select_on: str | None = None) -> Generator[Any, None, dict]:
    """Evaluate a bundle on data; yields progress, returns (and optionally writes) the metrics document.

    ``select_on``: annotated data held out from ``data`` (the validation cohort) on which every choice of a
    filter is made; see ``summarise``. A single heat map needs no choice, so it is not read for one.
    """
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
            task_targets(r, model.targets)
    except ConfigError as err:
        has_labels = False
        yield Message(f"no {model.task} labels ({err}); classification metrics skipped")
    ds = make_dataset(records, size=model.size, task=model.targets if has_labels else None, augment=False,
                      cache="none", with_masks=spec.has_masks)
    dl = DataLoader(ds, batch_size=batch, shuffle=False)
    net = model.net
    run = make_explainer(explainer, net, reference=model.reference, decision=model.decision_index)
    total = len(records)
    yield Progress("evaluate", 0, total)
    events: list[int] = []
    col = collect(run, dl, size=model.size, device=model.device,
                  stride=net.stride if explainer == "icnn" else None,
                  offset=net.offset if explainer == "icnn" else None,
                  parts=tuple(ds.mask_parts) if spec.has_masks else (), progress=events.append)
    yield Progress("evaluate", total, total)
    selection = None
    if select_on and spec.has_masks and col.maps.shape[1] > 1:
        sel_spec = discover(select_on, format)
        if not sel_spec.has_masks:
            raise ConfigError(f"{select_on}: filters can only be chosen on data with part masks")
        sel_ds = make_dataset(list(sel_spec.records), size=model.size, task=None, augment=False, cache="none",
                              with_masks=True, mask_parts=tuple(ds.mask_parts))
        yield Message(f"choosing filters on {len(sel_ds)} images of {select_on}")
        selection = collect(run, DataLoader(sel_ds, batch_size=batch, shuffle=False), size=model.size,
                            device=model.device, stride=net.stride if explainer == "icnn" else None,
                            offset=net.offset if explainer == "icnn" else None, parts=tuple(sel_ds.mask_parts))
    filter_parts = [f.part for f in model.filters] if explainer == "icnn" else None
    filter_names = [f.display_name for f in model.filters] if explainer == "icnn" else None
    filter_categories = [f.category for f in model.filters] if explainer == "icnn" else None
    metrics = summarise(col, class_names=model.class_names, filter_parts=filter_parts, filter_names=filter_names,
                        has_labels=has_labels, explainer=explainer, filter_categories=filter_categories,
                        select=selection)
    d = model.decision_index
    if has_labels and d is not None and len(model.class_names) > 1:
        # the decision is the model's output; the lesion types' presence is reported beside it
        decision = metrics["per_class"][model.class_names[d]]
        metrics["lesion_types_auc"] = float(np.nanmean([v["auc"] for k, v in metrics["per_class"].items()
                                                        if k != model.class_names[d]]))
        for key in ("auc", "accuracy", "sensitivity_at_90_specificity"):
            metrics[key] = decision[key]
    if has_labels and col.logits is not None and len(col.logits):
        cols = slice(None) if model.decision_index is None else slice(model.decision_index, model.decision_index + 1)
        metrics.update(calibration_metrics(col.logits[:, cols], col.targets[:, cols], model.temperature))
    metrics["model"] = {"path": str(model.path), "name": model.name, "version": model.version, "sha256": model.sha256}
    metrics["data"] = {"path": str(data), "format": spec.format, "images": len(records),
                       "ids": [r.id for r in records] if all(hasattr(r, "id") for r in records) else None}
    if selection is not None:
        metrics["selection_data"] = {"path": str(select_on), "images": len(selection.ids)}
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
    """Run :func:`evaluate_iter` to the end, passing its events to ``on_event``; returns the metrics document."""
    from napari_icnn.progress import drain

    return drain(evaluate_iter(model_path, data, **kw), on_event)
