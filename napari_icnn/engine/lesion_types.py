"""Lesion-type evidence: does each lesion type's filters point at it, cover it, and stay silent without it?

Scored on annotated images (the study's scored test subset), with every threshold fixed on held-out
validation images, and with Grad-CAM of the same model on the same images as the baseline:

- **filters trained for a type**: the filters whose category is that lesion type (named or not). A model
  whose filters all serve the decision class (``--categories decision``, the ordinary CNN) has none.
- **hit rate**: per filter, the share of the images that contain its type on which its peak (the receptive
  field centre of its strongest cell) lies inside a lesion of that type (a silent filter misses); the mean
  over the type's filters. Grad-CAM: the peak of its map for the type's own logit (the decision's logit for
  a model without lesion-type outputs).
- **strongest filter's hit rate** (a diagnostic beside the hit rate, not a replacement for it): per image, the one
  filter of the type whose peak is highest relative to its firing threshold (the type's most confident filter
  there), a hit when that peak lies inside a lesion of the type. One point per image, as Grad-CAM's peak is; the
  hit rate above averages all the type's filters, each with its single peak.
- **coverage**: the share of the type's lesion instances (8-connected components) of which at least half
  the pixels lie inside the union of the type's filter regions (a filter's region: its map, upsampled, at
  or above the filter's firing threshold). Grad-CAM's map is thresholded to the same number of pixels on
  each image, so both cover the same area.
- **intervals** (``hit_rate_difference``, ``coverage_difference``): the filters' figure minus Grad-CAM's with a
  95 % paired bootstrap interval over the images (:func:`paired_intervals`); the per-image figures behind them
  (``per_image``) let a study pool the seeds the same way.
- **silence**: per filter, the share of the images *without* its type on which its peak stays below its
  firing threshold; reported per filter, as the mean, the worst filter and the share of filters at ≥ 0.8.
- **peak AUC** (per filter, and the type's median): how well the filter's peak tells the images with its type
  from those without, over every threshold (the ROC area). Silence reads one point of that curve, the firing
  threshold's; two filters with the same peak AUC can differ in silence by where that threshold falls.
- **output AUC** (per type): the same ROC area for the network's own presence output of that type (its logit), the
  whole network's answer to "does this eye have the type" beside each filter's; NaN without such an output.
- **firing threshold** (per filter, on the validation images): the peak activation that best separates
  the images with its type from those without (Youden's J of "peak ≥ t"), so "fires" means "says its
  lesion is here". Filters without a lesion type use :data:`~napari_icnn.roles.MIN_STRENGTH` of their
  typical strong response.
- **top filter**: on each referable image, the filter contributing most to the decision (against the
  bundle's reference eye); a hit when it is a lesion-type filter whose peak lies in a lesion of its own
  type. Also reported: its peak in a lesion of any type, and how often it is an anatomy or label-free one.
- **decision**: the referable decision's AUC, and its accuracy at the bundle's threshold on its calibrated
  probability (as :func:`napari_icnn.explain.explain` decides).

``gradcam=False`` leaves the Grad-CAM baseline out (its figures are None): one forward pass per image instead
of one backward pass per output as well, for comparing models (``icnn demo``'s before/after) rather than methods.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np

from napari_icnn.parts import ANATOMY_KEYS, FREE_CATEGORY, MASK_LESION_KEYS
from napari_icnn.progress import Message, Progress

__all__ = ["lesion_type_figures_iter", "firing_thresholds", "paired_intervals", "COVERED_FRACTION", "SILENCE_BAR",
           "PER_IMAGE_KEYS"]

COVERED_FRACTION = 0.5
"""An instance is covered when at least this share of its pixels lies inside the region."""
SILENCE_BAR = 0.8
PER_IMAGE_KEYS = ("icnn_hit", "gradcam_hit", "instances", "covered_icnn", "covered_gradcam")
"""A type's figures per image that holds it, in image order: the share of its filters whose peak lies in a lesion
of the type, whether Grad-CAM's does (0 or 1), its lesion instances, and how many of them each covers."""


def paired_intervals(*per_image: dict[str, Any]) -> dict[str, Any]:
    """Paired bootstrap intervals (:mod:`~napari_icnn.engine.intervals`) of the filters' hit rate and coverage minus
    Grad-CAM's, from one ``per_image`` record per seed (images resampled within each seed); None where a seed
    has no image with the type."""
    from napari_icnn.engine.intervals import ratio_difference_interval

    def groups(ours: str, theirs: str, weight: str | None) -> list[Any]:
        return [(p[ours], p[theirs], p[weight] if weight else [1.0] * len(p[ours])) for p in per_image]

    return {"hit_rate_difference": ratio_difference_interval(groups("icnn_hit", "gradcam_hit", None)),
            "coverage_difference": ratio_difference_interval(groups("covered_icnn", "covered_gradcam", "instances"))}


def filter_types(model: Any) -> list[str | None]:
    """The lesion type each filter was trained for (its category when that is a lesion type), else None."""
    return [f.category if f.category in MASK_LESION_KEYS else None for f in model.filters]


def firing_thresholds(scores: np.ndarray, present: np.ndarray, types: list[str | None],
                      act_scale: np.ndarray, min_separation: float = 0.0) -> np.ndarray:
    """Per-filter firing thresholds from validation peaks ``scores`` (N, C) and type presence ``present`` (N, T)
    in :data:`MASK_LESION_KEYS` order (see the module docstring); NaN for a lesion-type filter whose best
    threshold separates eyes with its type from eyes without by less than ``min_separation`` (Youden's J)."""
    from napari_icnn.roles import MIN_STRENGTH

    out = MIN_STRENGTH * np.asarray(act_scale, np.float64)
    for f, t in enumerate(types):
        if t is None:
            continue
        y = present[:, MASK_LESION_KEYS.index(t)]
        if y.all() or not y.any():
            continue
        s = scores[:, f].astype(np.float64)
        cands = np.unique(s)
        # J(t) = TPR - FPR of "peak >= t"; thresholds halfway between neighbouring peaks
        cands = np.concatenate([[cands[0] - 1e-6], (cands[1:] + cands[:-1]) / 2, [cands[-1] + 1e-6]])
        tpr = (s[y][None, :] >= cands[:, None]).mean(axis=1)
        fpr = (s[~y][None, :] >= cands[:, None]).mean(axis=1)
        best = int(np.argmax(tpr - fpr))
        out[f] = max(float(cands[best]), 1e-6) if tpr[best] - fpr[best] >= min_separation else np.nan
    return out


def _forward(model: Any, loader: Any, gradcam_outputs: list[int],
             progress: Any = None) -> dict[str, np.ndarray]:
    """Masked maps, logits, decision contributions, Grad-CAM maps per output, masks and presence labels."""
    import torch

    from napari_icnn.engine.explainers import make_explainer

    net = model.net
    net.eval()
    cams = {k: make_explainer("gradcam", net, class_index=k) for k in gradcam_outputs}
    d = model.decision_index if model.decision_index is not None else 0
    keep: dict[str, list[np.ndarray]] = {k: [] for k in ("maps", "logits", "contrib", "masks", "fov")}
    keep.update({f"cam{k}": [] for k in gradcam_outputs})
    done = 0
    for batch in loader:
        x = batch["image"].to(model.device)
        with torch.no_grad():
            out = net(x)
            keep["maps"].append(out.masked.float().cpu().numpy())
            keep["logits"].append(out.logits.double().cpu().numpy())
            keep["contrib"].append(net.contributions(out.masked, d, model.reference).double().cpu().numpy())
        for k, cam in cams.items():
            keep[f"cam{k}"].append(cam(x).maps[:, 0].float().cpu().numpy())
        keep["masks"].append(batch["masks"].cpu().numpy().astype(bool))
        fov = batch.get("fov")
        keep["fov"].append(fov.reshape(len(x), *fov.shape[-2:]).cpu().numpy().astype(bool) if fov is not None
                           else np.ones((len(x), *batch["masks"].shape[-2:]), bool))
        done += len(x)
        if progress is not None:
            progress(done)
    return {k: np.concatenate(v) for k, v in keep.items()}


def _upsample(maps: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0].numpy()


def _covered(labels: np.ndarray, n: int, region: np.ndarray) -> int:
    """Instances (1..n in ``labels``) with at least COVERED_FRACTION of their pixels inside ``region``."""
    if n == 0:
        return 0
    total = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    inside = np.bincount(labels[region].ravel(), minlength=n + 1)[1:]
    return int((inside >= COVERED_FRACTION * np.maximum(total, 1)).sum())


def _top_area(heat: np.ndarray, area: int) -> np.ndarray:
    """The ``area`` highest pixels of ``heat`` (ties broken by position)."""
    region = np.zeros(heat.size, bool)
    if area > 0:
        region[np.argsort(-heat.ravel(), kind="stable")[:area]] = True
    return region.reshape(heat.shape)


def lesion_type_figures_iter(model_path: str, data: str, select_on: str, *, device: str = "auto",
                             batch: int = 16, out: str | None = None,
                             gradcam: bool = True) -> Generator[Any, None, dict]:
    """Score a bundle's lesion-type evidence on annotated ``data``, thresholds fixed on ``select_on``;
    yields progress, returns (and optionally writes) the figures document. ``gradcam``: also score Grad-CAM
    of the same model as the baseline (else its figures are None)."""
    import json
    import time

    from monai.data import DataLoader
    from scipy import ndimage

    from napari_icnn.bundle import load_bundle
    from napari_icnn.data.datasets import make_dataset
    from napari_icnn.data.layouts import discover
    from napari_icnn.engine.evaluate import _nan_to_none
    from napari_icnn.errors import ConfigError
    from napari_icnn.icnn.cells import cell_centres

    t0 = time.monotonic()
    model = load_bundle(model_path, device=device)
    net = model.net
    types = filter_types(model)
    lesion_outputs = {t: model.class_names.index(t) for t in MASK_LESION_KEYS if t in model.class_names}
    d = model.decision_index if model.decision_index is not None else 0
    cam_outputs = sorted({d, *lesion_outputs.values()}) if gradcam else []
    parts = MASK_LESION_KEYS

    def loader(path: str) -> tuple[Any, list[Any]]:
        spec = discover(path)
        missing = [p for p in parts if p not in spec.mask_parts]
        if missing:
            raise ConfigError(f"{path}: lesion-type figures need masks of {', '.join(missing)}")
        recs = list(spec.records)
        ds = make_dataset(recs, size=model.size, task=None, augment=False, cache="none", with_masks=True,
                          mask_parts=parts)
        return DataLoader(ds, batch_size=batch, shuffle=False), recs

    val_dl, val_recs = loader(select_on)
    yield Message(f"firing thresholds on {len(val_recs)} images of {select_on}")
    val = _forward(model, val_dl, [])
    val_present = np.asarray(val["masks"].reshape(len(val["masks"]), len(parts), -1).any(axis=2))
    act_scale = np.array([f.act_scale for f in model.filters], np.float64)
    thr = firing_thresholds(val["maps"].reshape(*val["maps"].shape[:2], -1).max(axis=2), val_present, types,
                            act_scale)

    test_dl, recs = loader(data)
    total = len(recs)
    yield Progress("lesion-type figures", 0, total)
    events: list[int] = []
    test = _forward(model, test_dl, cam_outputs, progress=events.append)
    yield Progress("lesion-type figures", total, total)

    n, c, h, w = test["maps"].shape
    size = model.size
    centres = cell_centres(h, w, size, getattr(net, "stride", None), getattr(net, "offset", None))
    flat = test["maps"].reshape(n, c, -1)
    scores = flat.max(axis=2)
    peaks = np.clip(np.round(centres[flat.argmax(axis=2)]).astype(int), 0, size - 1)  # (N, C, 2) x, y
    present = np.asarray(test["masks"].reshape(n, len(parts), -1).any(axis=2))
    referable = np.array([r.labels.get("referable", -1) for r in recs])
    top = test["contrib"].argmax(axis=1)

    per_type: dict[str, Any] = {}
    # per type: counters over filters, and the per-image figures the hit, coverage and interval figures add up
    stats: dict[str, dict[str, Any]] = {t: {"hits": np.zeros(c), "with": 0, "silent": np.zeros(c), "without": 0,
                                            "strongest_hits": 0, "area": [],
                                            "per_image": {k: [] for k in PER_IMAGE_KEYS}} for t in parts}
    # each filter's peak in units of its firing threshold (a filter without one, NaN, never counts as strongest)
    confidence = np.where(np.isfinite(thr) & (thr > 0), scores / np.where(thr > 0, thr, 1.0), -np.inf)
    nan = float("nan")
    top_own = top_any = top_context = top_n = 0
    chance_own: list[float] = []
    cam_ref_any = 0
    for i in range(n):
        m = test["masks"][i]
        any_lesion = m.any(axis=0)
        px, py = peaks[i, :, 0], peaks[i, :, 1]
        up = None
        for k, t in enumerate(parts):
            fs = [f for f in range(c) if types[f] == t]
            st = stats[t]
            if not present[i, k]:
                st["without"] += 1
                st["silent"][fs] += scores[i, fs] < thr[fs]
                continue
            st["with"] += 1
            hits = (scores[i, fs] > 0) & m[k, py[fs], px[fs]]
            st["hits"][fs] += hits
            img = st["per_image"]
            img["icnn_hit"].append(float(hits.mean()) if fs else nan)
            if fs:
                best = fs[int(np.argmax(confidence[i, fs]))]
                st["strongest_hits"] += bool(scores[i, best] > 0 and m[k, py[best], px[best]])
            cam = test[f"cam{lesion_outputs.get(t, d)}"][i] if gradcam else None
            if cam is not None:
                cy, cx = np.unravel_index(int(np.argmax(cam)), cam.shape)
            img["gradcam_hit"].append(float(m[k, cy, cx]) if cam is not None else nan)
            labels, n_inst = ndimage.label(m[k], structure=np.ones((3, 3), bool))
            img["instances"].append(n_inst)
            region = np.zeros((size, size), bool)
            if fs:
                if up is None:
                    up = _upsample(test["maps"][i], size)
                region = np.asarray(((up[fs] >= thr[fs, None, None]) & (up[fs] > 0)).any(axis=0))
            area = int(region.sum())
            st["area"].append(area / max(1, int(test["fov"][i].sum())))
            img["covered_icnn"].append(_covered(labels, n_inst, region))
            img["covered_gradcam"].append(_covered(labels, n_inst, _top_area(cam, area)) if cam is not None else nan)
        if referable[i] == 1:
            top_n += 1
            f = int(top[i])
            own = types[f]
            hit_any = bool(any_lesion[py[f], px[f]])
            top_any += hit_any
            if own is not None and present[i, parts.index(own)]:
                top_own += bool(m[parts.index(own), py[f], px[f]])
                chance_own.append(float(m[parts.index(own)].sum()) / max(1, int(test["fov"][i].sum())))
            cat, part = model.filters[f].category, model.filters[f].part
            top_context += cat == FREE_CATEGORY or part in ANATOMY_KEYS
            if gradcam:
                cam = test[f"cam{d}"][i]
                cy, cx = np.unravel_index(int(np.argmax(cam)), cam.shape)
                cam_ref_any += bool(any_lesion[cy, cx])
    from napari_icnn.engine.metrics import roc_auc

    for k, t in enumerate(parts):
        st = stats[t]
        fs = [f for f in range(c) if types[f] == t]
        hit = st["hits"][fs] / st["with"] if st["with"] else np.full(len(fs), nan)
        sil = st["silent"][fs] / st["without"] if st["without"] else np.full(len(fs), nan)
        sep = np.array([roc_auc(scores[:, f], present[:, k]) for f in fs])
        img = st["per_image"]
        inst = int(sum(img["instances"]))
        per_type[t] = {
            "filters": fs,
            "n_filters": len(fs),
            "images_with": st["with"],
            "images_without": st["without"],
            "icnn_hit_rate": float(np.mean(hit)) if fs and st["with"] else nan,
            "icnn_hit_rate_per_filter": [float(v) for v in hit],
            "strongest_filter_hit_rate": st["strongest_hits"] / st["with"] if fs and st["with"] else nan,
            "gradcam_hit_rate": float(sum(img["gradcam_hit"])) / st["with"] if st["with"] and gradcam else nan,
            "instances": inst,
            "coverage_icnn": sum(img["covered_icnn"]) / inst if inst else nan,
            "coverage_gradcam": sum(img["covered_gradcam"]) / inst if inst and gradcam else nan,
            "region_fraction_of_fov": float(np.mean(st["area"])) if st["area"] else nan,
            "silence_per_filter": [float(v) for v in sil],
            "silence_mean": float(np.mean(sil)) if fs and st["without"] else nan,
            "silence_worst": float(np.min(sil)) if fs and st["without"] else nan,
            "silent_filters_share": float(np.mean(sil >= SILENCE_BAR)) if fs and st["without"] else nan,
            "peak_auc_per_filter": [float(v) for v in sep],
            "peak_auc_median": float(np.median(sep)) if fs and st["with"] and st["without"] else nan,
            "output_auc": (roc_auc(test["logits"][:, lesion_outputs[t]], present[:, k].astype(float))
                           if t in lesion_outputs and st["with"] and st["without"] else nan),
            **(paired_intervals(st["per_image"]) if fs and gradcam and st["with"] else
               {"hit_rate_difference": None, "coverage_difference": None}),
            "per_image": st["per_image"],
        }

    dec_auc = dec_acc = nan
    if (referable >= 0).all() and len(np.unique(referable)) == 2:
        dec_auc = roc_auc(test["logits"][:, d], referable.astype(float))
    if (referable >= 0).all() and n:
        # the verdict explain() gives: the calibrated probability against the bundle's threshold
        positive = 1.0 / (1.0 + np.exp(-test["logits"][:, d] / model.temperature)) >= model.threshold
        dec_acc = float(np.mean(positive == (referable == 1)))
    doc = {
        "model": {"path": str(model.path), "name": model.name, "sha256": model.sha256, "targets": model.targets},
        "data": {"path": str(data), "images": n, "referable": int((referable == 1).sum()),
                 "ids": [r.id for r in recs]},
        "selection_data": {"path": str(select_on), "images": len(val_recs)},
        "decision_auc": dec_auc,
        "decision_accuracy": dec_acc,
        "lesion_type_outputs": list(lesion_outputs),
        "types": per_type,
        "top_filter": {
            "referable_images": top_n,
            "own_type_rate": top_own / top_n if top_n else nan,
            "any_lesion_rate": top_any / top_n if top_n else nan,
            "context_rate": top_context / top_n if top_n else nan,
            "own_type_chance": float(np.mean(chance_own)) if chance_own else nan,
        },
        "gradcam_decision_any_lesion_rate": cam_ref_any / top_n if top_n and gradcam else nan,
        "firing_thresholds": [float(v) for v in thr],
        "contribution_basis": model.contribution_basis,
        "seconds": time.monotonic() - t0,
    }
    doc = _nan_to_none(doc)
    if out:
        from napari_icnn.atomic import atomic_write_text

        atomic_write_text(out, json.dumps(doc, indent=2))
    return doc
