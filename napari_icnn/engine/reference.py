"""The reference eye that contributions are measured against: the mean pooled features of the
interpretable layer over healthy validation eyes, stored in the bundle.

A filter's contribution is logit(scan) − logit(scan with its pooled features at the reference
values) (:meth:`napari_icnn.icnn.networks.ICNN.contributions`). Against a healthy eye, an anatomy
filter that fires alike on every eye contributes about nothing, and a lesion filter contributes
what its lesion adds. Healthy means ICDR grade 0 (not "non-referable", which would cancel the
evidence of microaneurysms); for lesion-labelled data without grades, an eye with every lesion
label known and absent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from napari_icnn.data.layouts import Record

__all__ = ["LESION_LABELS", "MIN_REFERENCE_EYES", "healthy_eyes", "pooled_features", "summary_features",
           "reference_features",
           "reference_entry"]

LESION_LABELS = ("MA", "HE", "EX", "SE")
MIN_REFERENCE_EYES = 2
"""Fewer healthy eyes make no reference: one eye's noise would pose as every filter's baseline."""


def healthy_eyes(records: Iterable[Record]) -> list[Record]:
    """The records known to show a healthy eye: grade 0, or (without a grade) every lesion label 0."""
    out = []
    for r in records:
        grade = r.labels.get("grade")
        if grade is not None:
            if int(grade) == 0:
                out.append(r)
        elif all(k in r.labels for k in LESION_LABELS) and not any(int(r.labels[k]) for k in LESION_LABELS):
            out.append(r)
    return out


def pooled_features(net: Any, loader: Iterable[dict[str, Any]], device: Any) -> np.ndarray:
    """``(N, 2C)`` pooled features of the interpretable layer (:meth:`~napari_icnn.icnn.networks.ICNN.pooled`
    layout) of every image in ``loader``."""
    return _collect(net, loader, device, lambda out: net.pooled(out.masked.float()))


def summary_features(net: Any, loader: Iterable[dict[str, Any]], device: Any) -> np.ndarray:
    """``(N, 2W)`` backbone summaries (:meth:`~napari_icnn.icnn.networks.ICNN.summary`) of every image in
    ``loader``: what the model's experience is measured on."""
    return _collect(net, loader, device, lambda out: net.summary(out.features.float()))


def _collect(net: Any, loader: Iterable[dict[str, Any]], device: Any, pick: Any) -> np.ndarray:
    import torch

    net.eval()
    out = []
    with torch.no_grad():
        for batch in loader:
            out.append(pick(net(batch["image"].to(device))).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def reference_features(net: Any, loader: Iterable[dict[str, Any]], device: Any) -> tuple[np.ndarray, int]:
    """Mean pooled features ``(2C,)`` of the interpretable layer over ``loader``'s images, and their count."""
    feats = pooled_features(net, loader, device)
    if len(feats) == 0:
        raise ValueError("no images to compute the reference eye from")
    return feats.mean(axis=0), len(feats)


def reference_entry(features: Iterable[float], n_images: int, source: str) -> dict[str, Any]:
    """The bundle metadata entry (``icnn.reference``) of a reference eye."""
    return {
        "pooled": [round(float(v), 7) for v in features],
        "layout": "max of each filter's map, then mean of each filter's map",
        "n_images": int(n_images),
        "cohort": f"{int(n_images)} healthy (ICDR grade 0) validation eyes",
        "source": source,
    }
