"""How far a photograph lies from what the model was trained on, measured on the features its filters read.

A model answers every input, also one unlike anything it saw in training (another camera, a wide field, an
unfamiliar artefact); its probability then means little. At training time the bundle stores statistics of the
backbone's summary of each training photograph (every channel's spatial mean and spread,
:meth:`~napari_icnn.icnn.networks.ICNN.summary`): their mean, their principal directions and variances.
The interpretable layer's own pooled features were tried first and rejected: trained to stay silent where their
part is absent, they put a cat photograph and a defocused fundus inside the model's experience. A scan's distance from them is a
Mahalanobis distance in that model (probabilistic PCA: the principal directions, plus one variance for the rest),
and its **score** is that distance over the distance that 99 % of the validation photographs stay within: 1 is
the edge of the model's experience, above 1 outside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Experience", "fit_experience", "EXPERIENCE_QUANTILE", "MAX_COMPONENTS"]

EXPERIENCE_QUANTILE = 0.99
"""Share of the validation photographs whose distance the limit (score 1) is set to."""
MAX_COMPONENTS = 32
"""Principal directions kept; the variance of the rest is pooled into one."""
_VARIANCE_KEPT = 0.99


@dataclass(frozen=True)
class Experience:
    """Feature statistics of a model's training photographs and the limit calibrated on its validation cohort.

    Valid once built: finite statistics of matching sizes and a positive limit.
    """

    mean: np.ndarray
    """``(D,)`` mean features of the training photographs."""
    scale: np.ndarray
    """``(D,)`` their standard deviations (features are standardised before the rest)."""
    components: np.ndarray
    """``(k, D)`` principal directions of the standardised features."""
    variances: np.ndarray
    """``(k,)`` variance along each."""
    residual_variance: float
    """Variance per dimension left outside the ``k`` directions."""
    limit: float
    """Distance that :data:`EXPERIENCE_QUANTILE` of the validation photographs stay within."""
    n_train: int = 0
    n_val: int = 0
    source: str = ""

    def __post_init__(self) -> None:
        d = self.mean.shape[0]
        if (self.mean.ndim != 1 or self.scale.shape != (d,) or self.components.ndim != 2
                or self.components.shape[1] != d or self.variances.shape != (self.components.shape[0],)):
            raise ValueError("experience statistics of inconsistent sizes")
        arrays = (self.mean, self.scale, self.components, self.variances)
        if not all(np.isfinite(a).all() for a in arrays) or (self.scale <= 0).any() or (self.variances <= 0).any():
            raise ValueError("experience statistics must be finite, with positive scales and variances")
        if not (np.isfinite(self.limit) and self.limit > 0 and self.residual_variance > 0):
            raise ValueError("the experience limit and residual variance must be positive")

    @property
    def dims(self) -> int:
        return int(self.mean.shape[0])

    def distance(self, features: np.ndarray) -> np.ndarray:
        """``(N,)`` Mahalanobis distance of ``(N, D)`` features, per dimension (RMS)."""
        z = (np.atleast_2d(np.asarray(features, np.float64)) - self.mean) / self.scale
        proj = z @ self.components.T
        inside = (proj ** 2 / self.variances).sum(axis=1)
        rest = np.maximum((z ** 2).sum(axis=1) - (proj ** 2).sum(axis=1), 0.0) / self.residual_variance
        return np.sqrt((inside + rest) / self.dims)

    def score(self, features: np.ndarray) -> np.ndarray:
        """``(N,)`` distance over the limit: above 1 is outside the model's experience."""
        return self.distance(features) / self.limit

    def to_entry(self) -> dict[str, Any]:
        """The bundle metadata entry (``icnn.experience``)."""
        return {
            "features": "backbone summary: every channel's spatial mean, then its spatial standard deviation",
            "mean": _rounded(self.mean),
            "scale": _rounded(self.scale),
            "components": [_rounded(c) for c in self.components],
            "variances": _rounded(self.variances),
            "residual_variance": float(f"{self.residual_variance:.7g}"),
            "limit": float(f"{self.limit:.7g}"),
            "quantile": EXPERIENCE_QUANTILE,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "source": self.source,
        }

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> Experience:
        """Read a metadata entry; raises ``ValueError`` (or ``KeyError``/``TypeError``) when it is not one."""
        return cls(mean=np.asarray(entry["mean"], np.float64), scale=np.asarray(entry["scale"], np.float64),
                   components=np.asarray(entry["components"], np.float64).reshape(len(entry["components"]), -1),
                   variances=np.asarray(entry["variances"], np.float64),
                   residual_variance=float(entry["residual_variance"]), limit=float(entry["limit"]),
                   n_train=int(entry.get("n_train", 0)), n_val=int(entry.get("n_val", 0)),
                   source=str(entry.get("source", "")))


def fit_experience(train: np.ndarray, val: np.ndarray, source: str = "") -> Experience:
    """Fit the statistics on ``(N, D)`` training features and set the limit on ``(M, D)`` validation features.

    Raises
    ------
    ValueError
        Fewer than 8 training or validation photographs, or features that are not finite.
    """
    train = np.asarray(train, np.float64)
    val = np.asarray(val, np.float64)
    if train.ndim != 2 or len(train) < 8 or val.ndim != 2 or len(val) < 8 or val.shape[1] != train.shape[1]:
        raise ValueError(f"experience statistics need at least 8 training and 8 validation photographs with the "
                         f"same features; got {train.shape} and {val.shape}")
    if not (np.isfinite(train).all() and np.isfinite(val).all()):
        raise ValueError("experience statistics need finite features")
    mean = train.mean(axis=0)
    # features that never vary (a filter silent on every training eye) keep a floor: any activity there is new
    scale = np.maximum(train.std(axis=0), 1e-3 * max(float(train.std(axis=0).max()), 1e-6))
    z = (train - mean) / scale
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    var = s ** 2 / max(len(z) - 1, 1)
    total = float(var.sum())
    k = int(np.searchsorted(np.cumsum(var) / max(total, 1e-12), _VARIANCE_KEPT) + 1)
    k = max(1, min(k, MAX_COMPONENTS, len(var) - 1 if len(var) > 1 else 1))
    rest = var[k:]
    floor = 1e-3 * float(var[0]) if len(var) else 1.0
    residual = max(float(rest.mean()) if len(rest) else floor, floor)
    comps, variances = vt[:k], np.maximum(var[:k], floor)
    probe = Experience(mean, scale, comps, variances, residual, 1.0)
    limit = float(np.quantile(probe.distance(val), EXPERIENCE_QUANTILE))
    return Experience(mean, scale, comps, variances, residual, max(limit, 1e-6), len(train), len(val), source)


def _rounded(a: np.ndarray) -> list[float]:
    return [float(f"{v:.7g}") for v in np.asarray(a, np.float64).ravel()]
