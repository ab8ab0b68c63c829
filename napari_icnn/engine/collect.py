"""Run a model (or a baseline explainer) over a data set and gather what the metrics need.

Two passes keep memory flat in the number of pixels: the first stores the low-resolution maps, the
predictions and the part masks (bit-packed); the second thresholds the upsampled maps per filter
(thresholds need every map first) and measures per-image IoU and pointing hits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from napari_icnn.engine.metrics import activation_thresholds
from napari_icnn.icnn.cells import cell_centres
from napari_icnn.parts import LESION_KEYS, PART_KEYS

if TYPE_CHECKING:
    from napari_icnn.icnn.networks import ICNN

__all__ = ["MapBatch", "Collected", "collect", "icnn_explainer"]

LANDMARKS = ("optic_disc", "fovea")


@dataclass
class MapBatch:
    """What an explainer returns for a batch: logits (B, K) and non-negative maps (B, C, h, w)."""

    logits: torch.Tensor
    maps: torch.Tensor
    top: torch.Tensor | None = None
    """(B,) the filter contributing most to the predicted class (the first one a reader looks at); None for
    explainers with a single heat map."""


@dataclass
class Collected:
    """Everything :func:`collect` gathers over a data set, per image and filter, for the metrics to score."""

    ids: list[str]
    probs: np.ndarray  # (N, K) sigmoid of the logits (uncalibrated)
    targets: np.ndarray  # (N, K)
    maps: np.ndarray  # (N, C, h, w) float32
    size: int  # model input side
    peaks_xy: np.ndarray  # (N, C, 2) model pixels
    scores: np.ndarray  # (N, C) max of each map
    landmarks: np.ndarray  # (N, 2, 2) disc and fovea centres in model pixels (NaN if unknown)
    parts: tuple[str, ...]
    present: np.ndarray  # (N, P) bool
    iou: np.ndarray  # (N, C, P)
    iou_instance: np.ndarray  # (N, C, P) lesion parts: IoU with the lesions the region touches (= iou for anatomy)
    peak_in_part: np.ndarray  # (N, C, P) bool (strict)
    peak_in_part_tol: np.ndarray  # (N, C, P) bool (within a tolerance of `tolerance` px)
    chance: np.ndarray  # (N, P) part area / FOV area (the pointing game's chance level)
    thresholds: np.ndarray  # (C,)
    tolerance: int
    top: np.ndarray | None = None  # (N,) the most contributing filter per image (see MapBatch.top)
    logits: np.ndarray | None = None  # (N, K) float64


def icnn_explainer(net: ICNN, masked: bool = True, reference: torch.Tensor | None = None,
                   decision: int | None = None) -> Callable[[torch.Tensor], MapBatch]:
    """The ICNN's own maps: the masked maps of the interpretable filters (the plain maps for ordinary nets),
    and each image's most contributing filter to the ``decision`` output (the most probable output when
    ``None``), against ``reference`` when given."""

    @torch.no_grad()
    def run(x: torch.Tensor) -> MapBatch:
        out = net(x)
        maps = out.masked if masked else out.maps
        if decision is not None:
            target = decision
        else:
            target = out.logits.argmax(dim=1) if out.logits.shape[1] > 1 else 0
        top = net.contributions(out.masked, target, reference).argmax(dim=1)
        return MapBatch(out.logits, maps, top)

    return run


def upsampled_thresholds(maps: np.ndarray, size: int, quantile: float = 0.995, chunk: int = 32) -> np.ndarray:
    """Per-filter T_f with p(x > T_f) = 1 - quantile over the pixels of the maps upsampled (bilinear) to
    ``size`` — the resolution the regions are compared at. Estimated on a regular sub-grid of pixels
    (every ``size/32``-th row and column) so memory stays small; thresholds taken on the low-resolution
    maps would exceed what bilinear upsampling reaches for single-cell peaks."""
    n, c = maps.shape[:2]
    step = max(1, size // 32)
    samples = []
    for i in range(0, n, chunk):
        up = F.interpolate(torch.from_numpy(maps[i : i + chunk]), size=(size, size), mode="bilinear",
                           align_corners=False)
        samples.append(up[:, :, step // 2 :: step, step // 2 :: step].permute(1, 0, 2, 3).reshape(c, -1))
    flat = torch.cat(samples, dim=1)
    return torch.quantile(flat, quantile, dim=1).numpy().astype(np.float32) if flat.shape[1] <= 16_000_000 \
        else activation_thresholds(maps, quantile)


def _instance_iou(regions: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per region (C, S, S): IoU with the union of the mask's connected components it touches.

    Lesions are many and small: a filter that outlines one haemorrhage exactly has a tiny IoU with the
    mask of all forty, so lesion parts are scored instance by instance (the fundus adaptation of the
    paper's part IoU; anatomy parts keep the plain IoU).
    """
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    out = np.zeros(len(regions), np.float32)
    if n == 0:
        return out
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    for c, r in enumerate(regions):
        area_r = int(r.sum())
        if area_r == 0:
            continue
        under = labels[r]
        inter = int((under > 0).sum())
        if inter == 0:
            continue
        touched = np.unique(under[under > 0])
        area_m = int(areas[touched].sum())
        out[c] = inter / (area_r + area_m - inter)
    return out


def _dilate(mask: torch.Tensor, px: int) -> torch.Tensor:
    if px <= 0:
        return mask
    k = 2 * px + 1
    return F.max_pool2d(mask.float(), k, stride=1, padding=px) > 0


def collect(
    explainer: Callable[[torch.Tensor], MapBatch],
    batches: Iterable[dict],
    *,
    size: int,
    device: torch.device,
    parts: tuple[str, ...] = PART_KEYS,
    stride: float | None = None,
    offset: float | None = None,
    tolerance: int = 4,
    progress: Callable[[int], None] | None = None,
) -> Collected:
    """Gather predictions, maps and per-image part statistics over ``batches`` (dicts from make_dataset)."""
    ids: list[str] = []
    probs, targets, maps_l, lm_l, packed, fov_l, shapes, top_l = [], [], [], [], [], [], None, []
    logits_l: list[np.ndarray] = []
    has_masks = True
    done = 0
    for batch in batches:
        x = batch["image"].to(device)
        mb = explainer(x)
        probs.append(torch.sigmoid(mb.logits.float()).cpu().numpy())
        logits_l.append(mb.logits.double().cpu().numpy())
        targets.append(batch["target"].float().cpu().numpy().reshape(len(x), -1))
        maps_l.append(mb.maps.float().clamp_min(0).cpu().numpy())
        if mb.top is not None:
            top_l.append(mb.top.cpu().numpy())
        ids.extend([str(i) for i in batch["id"]])
        lm = batch.get("landmarks")
        lm_l.append(_landmark_array(lm, len(x)))
        fov = batch.get("fov")
        fov_l.append(fov.reshape(len(x), -1).float().sum(1).cpu().numpy() if fov is not None
                     else np.full(len(x), float(size * size)))
        masks = batch.get("masks")
        if masks is None:
            has_masks = False
        else:
            m = masks.cpu().numpy().astype(bool)
            shapes = m.shape[1:]
            packed.append(np.packbits(m.reshape(len(x), -1), axis=1))
        done += len(x)
        if progress:
            progress(done)
    maps = np.concatenate(maps_l) if maps_l else np.zeros((0, 0, 1, 1), np.float32)
    n, c, h, w = maps.shape
    centres = cell_centres(h, w, size, stride, offset)
    flat = maps.reshape(n, c, -1)
    peak_idx = flat.argmax(axis=2)
    peaks_xy = centres[peak_idx]
    scores = flat.max(axis=2)
    thresholds = upsampled_thresholds(maps, size) if n else np.zeros(c, np.float32)
    p = len(parts)
    iou = np.zeros((n, c, p), np.float32)
    iou_inst = np.zeros((n, c, p), np.float32)
    lesion_k = [k for k, part in enumerate(parts) if part in LESION_KEYS]
    hit = np.zeros((n, c, p), bool)
    hit_tol = np.zeros((n, c, p), bool)
    present = np.zeros((n, p), bool)
    chance = np.zeros((n, p), np.float32)
    if has_masks and packed and p and shapes is not None:  # shapes is set with the first packed masks
        bits = np.concatenate(packed)
        fov_area = np.concatenate(fov_l)
        thr = torch.from_numpy(thresholds).view(1, c, 1, 1)
        for i in range(n):
            m = np.unpackbits(bits[i], count=int(np.prod(shapes))).reshape(shapes).astype(bool)
            mt = torch.from_numpy(m[:p])
            present[i] = m[:p].reshape(p, -1).any(axis=1)
            chance[i] = m[:p].reshape(p, -1).sum(axis=1) / max(1.0, float(fov_area[i]))
            up = F.interpolate(torch.from_numpy(maps[i : i + 1]), size=(size, size), mode="bilinear", align_corners=False)
            # thresholds of 0 (a filter silent on >99.5 % of positions) fall back to "any activation"
            region = (up >= thr) & (up > 0)
            r = region[0].reshape(c, -1).float()
            mf = mt.reshape(p, -1).float()
            inter = r @ mf.T
            union = r.sum(1, keepdim=True) + mf.sum(1)[None, :] - inter
            iou[i] = (inter / union.clamp_min(1)).numpy()
            iou_inst[i] = iou[i]
            for k in lesion_k:
                if present[i, k]:
                    iou_inst[i, :, k] = _instance_iou(region[0].numpy(), m[k])
            px = np.clip(np.round(peaks_xy[i]).astype(int), 0, size - 1)
            hit[i] = m[:p, px[:, 1], px[:, 0]].T
            md = _dilate(mt[None], tolerance)[0].numpy()
            hit_tol[i] = md[:, px[:, 1], px[:, 0]].T
    return Collected(
        ids=ids,
        probs=np.concatenate(probs) if probs else np.zeros((0, 1)),
        logits=np.concatenate(logits_l) if logits_l else np.zeros((0, 1)),
        targets=np.concatenate(targets) if targets else np.zeros((0, 1)),
        maps=maps,
        size=size,
        peaks_xy=peaks_xy,
        scores=scores,
        landmarks=np.concatenate(lm_l) if lm_l else np.zeros((0, 2, 2)),
        parts=tuple(parts),
        present=present,
        iou=iou,
        iou_instance=iou_inst,
        peak_in_part=hit,
        peak_in_part_tol=hit_tol,
        chance=chance,
        thresholds=thresholds,
        tolerance=tolerance,
        top=np.concatenate(top_l) if top_l and len(top_l) == len(maps_l) else None,
    )


def _landmark_array(lm: object, b: int) -> np.ndarray:
    """Landmarks from a collated batch -> (B, 2, 2) model-pixel (x, y) of disc and fovea; NaN if unknown."""
    out = np.full((b, len(LANDMARKS), 2), np.nan, np.float32)
    if lm is None:
        return out
    if isinstance(lm, torch.Tensor):
        arr = lm.float().cpu().numpy().reshape(b, -1, 2)
        out[:, : arr.shape[1]] = arr[:, : len(LANDMARKS)]
        return out
    if isinstance(lm, dict):
        for k, name in enumerate(LANDMARKS):
            v = lm.get(name)
            if v is None:
                continue
            if isinstance(v, (list, tuple)) and len(v) == 2:
                xs, ys = (torch.as_tensor(t).float().cpu().numpy() for t in v)
                out[:, k, 0], out[:, k, 1] = xs, ys
            else:
                out[:, k] = torch.as_tensor(v).float().cpu().numpy().reshape(b, 2)
    return out
