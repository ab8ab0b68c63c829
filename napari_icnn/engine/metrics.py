"""Classification and interpretability metrics on plain arrays (no model, no I/O).

Interpretability metrics follow the paper and the official code (see the method reference, §6):

* part interpretability — per filter, a threshold T_f with p(x > T_f) = 0.005 over all positions of all its
  maps; the region above it, upsampled (bilinear) to the model input, is compared per image with each part
  mask; IoU > 0.2 counts; P_f = max over parts of the hit rate over images that contain the part; mean over
  filters.
* location instability — per filter, its top-100 images by activation; the distance between the filter's
  inferred location (receptive-field centre of its peak cell) and each landmark (disc centre, fovea), divided
  by the image diagonal; standard deviation (N-1); mean over landmarks, then over filters.
* pointing game (fundus adaptation: lesions are small and many) — does the filter's peak fall inside a part
  of its matched kind, over the images that contain that part.

How ``icnn evaluate`` reports them (``engine.evaluate.summarise``): each figure also for lesion filters and for
anatomy filters apart (``groups``), each group scored against its own parts, since a landmark filter's easy
overlap with the optic disc says nothing about lesion evidence; an ordinary CNN has no categories, so all its
filters stand in both groups. Whatever picks one filter among several (the best filter for a part, the part an
ordinary CNN's filter is named after) is decided on held-out validation data and only scored on the evaluated
data: a maximum over filters taken on the data it is reported on is biased upwards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np

__all__ = [
    "roc_auc",
    "classification_metrics",
    "activation_thresholds",
    "instability",
    "PartScores",
    "part_scores",
    "match_parts",
    "pointing_game",
    "LANDMARK_MIN_HIT",
    "MIN_LIFT",
    "reliable_parts",
]


def roc_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney with ties averaged); NaN when one class is absent."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    targets = np.asarray(targets).ravel() > 0.5
    n_pos, n_neg = int(targets.sum()), int((~targets).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    _, start, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = start + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[targets].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _sens_at_spec(scores: np.ndarray, targets: np.ndarray, spec: float = 0.9) -> float:
    targets = targets > 0.5
    if targets.all() or (~targets).all():
        return float("nan")
    neg = np.sort(scores[~targets])
    # the threshold that keeps at least `spec` of the negatives below it
    k = int(np.ceil(spec * len(neg))) - 1
    thr = neg[min(max(k, 0), len(neg) - 1)]
    return float((scores[targets] > thr).mean())


class ClassificationMetrics(TypedDict):
    """What :func:`classification_metrics` returns: macro means over classes, and each class's own figures."""

    auc: float
    accuracy: float
    sensitivity_at_90_specificity: float
    per_class: dict[str, dict[str, float]]


def classification_metrics(
    probs: np.ndarray, targets: np.ndarray, class_names: Sequence[str], threshold: float = 0.5
) -> ClassificationMetrics:
    """AUC (macro over classes), accuracy, sensitivity at 90 % specificity, per class too."""
    probs = np.asarray(probs, dtype=np.float64).reshape(len(probs), -1)
    targets = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    per: dict[str, dict[str, float]] = {}
    for k, name in enumerate(class_names):
        p, t = probs[:, k], targets[:, k]
        per[name] = {
            "auc": roc_auc(p, t),
            "accuracy": float(((p >= threshold) == (t > 0.5)).mean()) if len(p) else float("nan"),
            "sensitivity_at_90_specificity": _sens_at_spec(p, t, 0.9),
            "prevalence": float((t > 0.5).mean()) if len(t) else float("nan"),
        }
    def mean(key: str) -> float:
        vals = [v[key] for v in per.values() if not np.isnan(v[key])]
        return float(np.mean(vals)) if vals else float("nan")
    return {
        "auc": mean("auc"),
        "accuracy": mean("accuracy"),
        "sensitivity_at_90_specificity": mean("sensitivity_at_90_specificity"),
        "per_class": per,
    }


def activation_thresholds(maps: np.ndarray, quantile: float = 0.995) -> np.ndarray:
    """Per-filter T_f with p(x > T_f) = 1 - quantile over all positions of all maps; ``maps`` (N, C, n, n)."""
    n, c = maps.shape[:2]
    flat = np.moveaxis(np.asarray(maps, dtype=np.float32), 1, 0).reshape(c, -1)
    return np.quantile(flat, quantile, axis=1).astype(np.float32)


def instability(
    peaks_xy: np.ndarray,
    scores: np.ndarray,
    landmarks: np.ndarray,
    image_size: float,
    top: int = 100,
) -> tuple[float, np.ndarray]:
    """Location instability.

    Parameters
    ----------
    peaks_xy
        (N, C, 2) inferred location of each filter on each image (model pixels, x, y).
    scores
        (N, C) the filter's activation on each image (images are ranked by it).
    landmarks
        (N, L, 2) landmark positions (model pixels); NaN where a landmark is not annotated.
    image_size
        side of the (square) model input; distances are divided by its diagonal.

    Returns
    -------
    (mean over filters, per-filter values (C,) with NaN for dropped filters)
    """
    n, c = scores.shape
    diag = float(np.hypot(image_size, image_size))
    per = np.full(c, np.nan)
    for f in range(c):
        order = np.argsort(-scores[:, f], kind="stable")
        devs: list[float] = []
        for k in range(landmarks.shape[1]):
            valid = order[np.isfinite(landmarks[order, k]).all(axis=1)][:top]
            if len(valid) < 2:
                devs = []
                break
            d = np.linalg.norm(landmarks[valid, k] - peaks_xy[valid, f], axis=1) / diag
            devs.append(float(np.std(d, ddof=1)))
        if devs:
            per[f] = float(np.mean(devs))
    finite = per[np.isfinite(per)]
    return (float(finite.mean()) if len(finite) else float("nan")), per


@dataclass(frozen=True)
class PartScores:
    """Per-image IoU statistics of each filter with each part."""

    parts: tuple[str, ...]
    mean_iou: np.ndarray  # (C, P) mean per-image IoU over images that contain the part
    hit_rate: np.ndarray  # (C, P) fraction of those images with IoU > iou_threshold
    hit_rate_loose: np.ndarray  # (C, P) same with IoU > 0.04 (Network Dissection's threshold)
    n_images: np.ndarray  # (P,) images that contain each part
    iou_threshold: float
    mean_iou_all: np.ndarray | None = None  # (C, P) mean per-image IoU over all images (0 where the part is absent)

    @property
    def interpretability(self) -> np.ndarray:
        """P_f = max over parts of the hit rate, per filter (C,)."""
        valid = self.n_images > 0
        if not valid.any():
            return np.zeros(self.hit_rate.shape[0])
        return self.hit_rate[:, valid].max(axis=1)

    @property
    def interpretability_loose(self) -> np.ndarray:
        valid = self.n_images > 0
        if not valid.any():
            return np.zeros(self.hit_rate.shape[0])
        return self.hit_rate_loose[:, valid].max(axis=1)


def part_scores(
    iou: np.ndarray, present: np.ndarray, parts: Sequence[str], iou_threshold: float = 0.2
) -> PartScores:
    """Aggregate per-image IoU (N, C, P) over the images where each part is present (N, P)."""
    present = np.asarray(present, dtype=bool)
    n_img = present.sum(axis=0)
    w = present.astype(np.float64)[:, None, :]  # (N, 1, P)
    denom = np.maximum(n_img, 1)[None, :]
    mean_iou = (iou * w).sum(axis=0) / denom
    hit = ((iou > iou_threshold) * w).sum(axis=0) / denom
    hit_loose = ((iou > 0.04) * w).sum(axis=0) / denom
    mean_all = (iou * w).sum(axis=0) / max(len(present), 1)
    return PartScores(tuple(parts), mean_iou, hit, hit_loose, n_img, iou_threshold, mean_all)


def match_parts(
    scores: PartScores, point_hits: np.ndarray | None = None, chance: np.ndarray | None = None
) -> tuple[list[str | None], np.ndarray]:
    """The part each filter matches best: the part with the highest per-image IoU, averaged over all images
    (an image without the part counts 0, so a filter that outlines the most frequent lesion in most images
    is named after it, not after a rarer part it happens to overlap in the few images that have it).

    Returns (part key or None per filter, the matching score per filter). A filter whose best mean IoU is 0
    (it never overlaps any annotated part) matches nothing.
    """
    valid = scores.n_images > 0
    table = scores.mean_iou_all if scores.mean_iou_all is not None else scores.mean_iou
    mi = np.where(valid[None, :], table, -1.0)
    best = mi.argmax(axis=1)
    best_score = mi[np.arange(len(best)), best]
    names: list[str | None] = [scores.parts[b] if s > 0 else None for b, s in zip(best, best_score)]
    return names, np.maximum(best_score, 0.0)


def pointing_game(
    peak_in_part: np.ndarray, present: np.ndarray, active: np.ndarray, part_index: Sequence[int | None]
) -> np.ndarray:
    """Per filter: fraction of images containing its matched part (and where it is active) whose peak lies
    inside that part. ``peak_in_part`` (N, C, P) bool, ``present`` (N, P), ``active`` (N, C) bool."""
    out = np.full(len(part_index), np.nan)
    for f, k in enumerate(part_index):
        if k is None:
            continue
        sel = present[:, k] & active[:, f]
        if sel.any():
            out[f] = float(peak_in_part[sel, f, k].mean())
    return out


LANDMARK_MIN_HIT = 0.85
"""A filter is named after a landmark (optic disc, fovea) only if its peak lies inside it on at least this
fraction of the naming images: every fundus has both, so a filter that misses them often is not a detector
of them, however well it overlaps them on average."""

MIN_LIFT = 2.0
"""A filter is named after any other part (vessels, a lesion type) only if its peak lies inside that part at
least this many times more often than a random point of the field of view would (its area fraction)."""

LANDMARK_KEYS = ("optic_disc", "fovea")


def reliable_parts(
    parts: Sequence[str | None], hit_rate: np.ndarray, chance: Mapping[str, float]
) -> list[str | None]:
    """Keep a filter's matched part only where its pointing-game hit rate backs the name (see
    ``LANDMARK_MIN_HIT`` and ``MIN_LIFT``); other filters stay unnamed rather than carry a misleading name."""
    out: list[str | None] = []
    for part, hit in zip(parts, hit_rate):
        ok = part is not None and np.isfinite(hit)
        if ok and part in LANDMARK_KEYS:
            ok = hit >= LANDMARK_MIN_HIT
        elif ok and part is not None:  # ok implies a part; restated for the type checker
            c = chance.get(part, float("nan"))
            ok = bool(np.isfinite(c) and c > 0 and hit >= MIN_LIFT * c)
        out.append(part if ok else None)
    return out
