"""Whether a fundus photograph can be graded: exposure, focus and artefact coverage of its field of view.

Screening programmes grade a photograph only when it shows the retina well enough; an ungradeable photograph
is re-taken, not given a verdict. :func:`assess_quality` measures what makes a photograph ungradeable and
:class:`Quality` says it in words ("out of focus", "underexposed") with the measures behind it. Every measure
works on the field of view (:mod:`napari_icnn.data.fov`) shrunk to one working size, so it reads alike on a
500-pixel and a 4000-pixel photograph; a smaller photograph is measured as it is.

The limits below were set on the generator's realistic photographs (every one of their blurs, casts and
exposures is gradable) against photographs it degraded until the retina cannot be read, and checked on a real
photograph; ``docs/quality.md`` has the measured pass and decline rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = ["Quality", "LIMITS", "assess_quality"]

_WORK_DIAMETER = 512
"""The field of view's diameter, in pixels, at which everything is measured (smaller photographs as they are)."""

LIMITS: dict[str, float] = {
    "min_brightness": 0.25,
    "max_dark_fraction": 0.60,
    "max_bright_fraction": 0.40,
    "min_sharpness": 0.020,
    "max_coverage": 0.65,
}
"""Where a measure makes a photograph ungradeable (see :class:`Quality` for each measure)."""

# a pixel (max of R, G, B in [0, 1]) this dark shows no retina; this bright (every channel) is clipped
_DARK = 0.08
_CLIPPED = 0.96
# a region whose local detail stays under this share of the field's strong detail shows no retina
_FEATURELESS = 0.3


@dataclass(frozen=True)
class Quality:
    """Image quality of one photograph: the measures and, when it cannot be graded, why."""

    brightness: float
    """Median brightness (max of R, G, B, 0–1) inside the field of view."""
    dark_fraction: float
    """Share of the field of view too dark to show retina."""
    bright_fraction: float
    """Share of the field of view clipped white in every channel."""
    sharpness: float
    """Vessel-scale detail of the green channel relative to the local brightness (90th percentile inside the
    field): 0.04–0.10 on a sharp photograph, under 0.02 when focus is lost."""
    coverage: float
    """Share of the field of view that shows no retinal detail: too dark, clipped white, burned-in text, or
    featureless (an eyelid shadow, media haze, a veil of light)."""
    reasons: tuple[str, ...] = ()
    """Why the photograph cannot be graded, in words; empty when it can."""

    @property
    def gradable(self) -> bool:
        return not self.reasons

    @property
    def verdict(self) -> str:
        """``"gradable"`` or ``"ungradeable: out of focus (...)"``."""
        return "gradable" if self.gradable else "ungradeable: " + "; ".join(self.reasons)

    def measures(self) -> dict[str, float]:
        return {k: round(float(getattr(self, k)), 4) for k in
                ("brightness", "dark_fraction", "bright_fraction", "sharpness", "coverage")}

    def to_json(self) -> dict[str, Any]:
        return {"gradable": self.gradable, "verdict": self.verdict, "reasons": list(self.reasons),
                "measures": self.measures(), "limits": dict(LIMITS)}


def assess_quality(rgb: np.ndarray, fov: Any = None, text: np.ndarray | None = None,
                   limits: dict[str, float] | None = None) -> Quality:
    """Measure exposure, focus and artefact coverage of a photograph's field of view.

    Parameters
    ----------
    rgb
        ``(H, W, 3)`` uint8 photograph.
    fov
        Its field of view (:func:`~napari_icnn.data.fov.find_fov`; found here when not given).
    text
        ``(H, W)`` bool mask of burned-in text (:func:`~napari_icnn.data.burned_in.find_burned_in`; found here
        when not given).
    limits
        Overrides of :data:`LIMITS`.
    """
    from napari_icnn.data.burned_in import find_burned_in
    from napari_icnn.data.fov import find_fov

    lim = {**LIMITS, **(limits or {})}
    if fov is None:
        fov = find_fov(rgb)
    if text is None:
        text = find_burned_in(rgb)
    img, field, txt = _working_copy(rgb, fov, text)
    # a field smaller than the working size is measured as it is, with every scale shrunk alike
    unit = min(1.0, 2.0 * float(fov.radius) / _WORK_DIAMETER)
    v = img.max(axis=2)
    inside = field & ~txt
    if inside.sum() < 64:
        return Quality(0.0, 1.0, 0.0, 0.0, 1.0, ("no field of view to grade",))
    brightness = float(np.median(v[inside]))
    dark = v < _DARK
    clipped = img.min(axis=2) > _CLIPPED
    dark_fraction = float(dark[field].mean())
    bright_fraction = float(clipped[field].mean())
    sharpness, featureless = _detail(img[..., 1], inside & ~dark & ~clipped, unit)
    coverage = float((dark | clipped | txt | featureless)[field].mean())

    reasons = []
    if brightness < lim["min_brightness"] or dark_fraction > lim["max_dark_fraction"]:
        reasons.append(f"underexposed (median brightness {brightness:.2f}, {dark_fraction:.0%} of the field dark)")
    if bright_fraction > lim["max_bright_fraction"]:
        reasons.append(f"overexposed ({bright_fraction:.0%} of the field clipped white)")
    exposed = bool(reasons)  # a dark or clipped field has no detail to judge focus or cover by
    if not exposed and sharpness < lim["min_sharpness"]:
        reasons.append(f"out of focus (sharpness {sharpness:.3f}, gradable from {lim['min_sharpness']:.3f})")
    if not exposed and coverage > lim["max_coverage"]:
        reasons.append(f"{coverage:.0%} of the field of view shows no retinal detail (shadow, haze, glare or "
                       f"text; gradable up to {lim['max_coverage']:.0%})")
    return Quality(brightness, dark_fraction, bright_fraction, sharpness, coverage, tuple(reasons))


def _working_copy(rgb: np.ndarray, fov: Any, text: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The field's bounding box, shrunk so the field's diameter is at most :data:`_WORK_DIAMETER`, in [0, 1]; with
    the field and text masks on the same grid. A smaller photograph is not enlarged: interpolation would blur it
    and call a sharp low-resolution photograph out of focus."""
    h, w = rgb.shape[:2]
    mask = fov.mask((h, w))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    zoom = min(1.0, _WORK_DIAMETER / (2.0 * max(fov.radius, 1.0)))
    img = rgb[box]
    m, t = mask[box], text[box]
    if zoom < 0.98:
        # block means first (cheap, and they keep JPEG and sensor noise from posing as detail), then the rest
        k = max(1, int(1.0 / zoom))
        if k > 1:
            hh, ww = (img.shape[0] // k) * k, (img.shape[1] // k) * k
            img = img[:hh, :ww].reshape(hh // k, k, ww // k, k, 3).mean(axis=(1, 3), dtype=np.float32)
            m = m[:hh, :ww].reshape(hh // k, k, ww // k, k).mean(axis=(1, 3)) > 0.5
            t = np.asarray(t[:hh, :ww].reshape(hh // k, k, ww // k, k).any(axis=(1, 3)))
        rest = zoom * k
        img = img.astype(np.float32) / 255.0
        if rest < 0.98:
            img = ndi.zoom(img, (rest, rest, 1), order=1)
            m = ndi.zoom(m.astype(np.float32), rest, order=1) > 0.5
            t = ndi.zoom(t.astype(np.float32), rest, order=1) > 0.25
            shape = (min(img.shape[0], m.shape[0], t.shape[0]), min(img.shape[1], m.shape[1], t.shape[1]))
            img, m, t = img[: shape[0], : shape[1]], m[: shape[0], : shape[1]], t[: shape[0], : shape[1]]
    else:
        img = img.astype(np.float32) / 255.0
    # the rim's step edge is no retinal detail
    m = ndi.binary_erosion(m, iterations=max(2, int(round(8 * min(1.0, zoom * 2.0 * fov.radius / _WORK_DIAMETER)))))
    return img, m, t


def _detail(green: np.ndarray, where: np.ndarray, unit: float = 1.0) -> tuple[float, np.ndarray]:
    """Sharpness (vessel-scale detail relative to local brightness, 90th percentile over ``where``) and where the
    field is featureless (local detail under :data:`_FEATURELESS` of the field's strong detail)."""
    if where.sum() < 64:
        return 0.0, np.ones_like(where)
    # band 2-5 px at the working size: vessel walls and small lesions, above sensor noise and JPEG blocks
    fine, coarse, wide = (max(0.6, s * unit) for s in (2.0, 5.0, 12.0))
    band = np.abs(ndi.gaussian_filter(green, fine) - ndi.gaussian_filter(green, coarse))
    rel = band / np.maximum(ndi.gaussian_filter(green, wide), 0.02)
    sharpness = float(np.percentile(rel[where], 90))
    local = ndi.gaussian_filter(rel, wide)
    featureless = local < _FEATURELESS * float(np.percentile(local[where], 90))
    return sharpness, featureless
