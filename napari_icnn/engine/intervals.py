"""Confidence intervals for paired comparisons of two explainers on the same images.

The per-type comparisons of lesion-type filters against Grad-CAM (hit rate, coverage of lesion instances) score
both on the same images, and a rare lesion type is present on 15–25 validation images of a seed: one or two eyes
can decide a comparison. A paired bootstrap over images says how far the difference moves with the images: each
resample draws images with replacement (within each seed, so every seed keeps its weight in a mean over seeds) and
scores both explainers on the same draw.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["PairedImages", "ratio_difference_interval", "LEVEL", "RESAMPLES"]

LEVEL = 0.95
RESAMPLES = 2000

PairedImages = tuple[Sequence[float], Sequence[float], Sequence[float]]
"""Per image of one seed: the first explainer's count, the second's, and the denominator (1 per image for a
rate over images, the image's lesion instances for coverage)."""


def _ratio_difference(ours: np.ndarray, theirs: np.ndarray, weight: np.ndarray) -> np.ndarray:
    total = weight.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (ours.sum(axis=-1) - theirs.sum(axis=-1)) / total, np.nan)


def ratio_difference_interval(groups: Sequence[PairedImages], *, level: float = LEVEL,
                              resamples: int = RESAMPLES, seed: int = 0) -> dict[str, float] | None:
    """The mean over ``groups`` (one per seed) of ``Σ ours / Σ weight − Σ theirs / Σ weight`` and its
    percentile interval at ``level`` from ``resamples`` paired bootstrap draws of each group's images.

    Returns ``{"difference", "low", "high", "level", "resamples"}``, or None when a group has no image, no weight
    or a missing figure (None or NaN: the difference is undefined there). ``seed`` fixes the draws, so a document is reproducible."""
    if not groups or not 0.0 < level < 1.0 or resamples < 1:
        raise ValueError(f"need at least one group, 0 < level < 1 and resamples ≥ 1 (got {len(groups)} groups, "
                         f"level {level}, resamples {resamples})")
    rng = np.random.default_rng(seed)
    point = []
    draws = np.zeros(resamples)
    for g in groups:
        ours, theirs, weight = (np.array([np.nan if v is None else v for v in a], np.float64) for a in g)
        if not (ours.shape == theirs.shape == weight.shape and ours.ndim == 1):
            raise ValueError(f"per-image arrays of one group differ in shape: {ours.shape}, {theirs.shape}, "
                             f"{weight.shape}")
        if ours.size == 0 or weight.sum() <= 0 or not np.isfinite(np.stack([ours, theirs, weight])).all():
            return None
        point.append(float(_ratio_difference(ours, theirs, weight)))
        idx = rng.integers(0, ours.size, (resamples, ours.size))
        draws += _ratio_difference(ours[idx], theirs[idx], weight[idx])
    draws /= len(groups)
    tail = (1.0 - level) / 2.0
    low, high = np.nanquantile(draws, [tail, 1.0 - tail])
    return {"difference": float(np.mean(point)), "low": float(low), "high": float(high), "level": level,
            "resamples": resamples}
