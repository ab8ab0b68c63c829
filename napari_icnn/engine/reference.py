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

__all__ = ["LESION_LABELS", "MIN_REFERENCE_EYES", "healthy_eyes", "reference_features", "reference_entry"]

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


def reference_features(net: Any, loader: Iterable[dict[str, Any]], device: Any) -> tuple[np.ndarray, int]:
    """Mean pooled features ``(2C,)`` of the interpretable layer over ``loader``'s images, and their count."""
    import torch

    net.eval()
    total, n = None, 0
    with torch.no_grad():
        for batch in loader:
            x = batch["image"].to(device)
            feats = net.pooled(net(x).masked.float()).double().sum(dim=0)
            total = feats if total is None else total + feats
            n += len(x)
    if total is None or n == 0:
        raise ValueError("no images to compute the reference eye from")
    return (total / n).cpu().numpy(), n


def reference_entry(features: Iterable[float], n_images: int, source: str) -> dict[str, Any]:
    """The bundle metadata entry (``icnn.reference``) of a reference eye."""
    return {
        "pooled": [round(float(v), 7) for v in features],
        "layout": "max of each filter's map, then mean of each filter's map",
        "n_images": int(n_images),
        "cohort": f"{int(n_images)} healthy (ICDR grade 0) validation eyes",
        "source": source,
    }
