"""Whether a fundus photograph can be graded: exposure, focus and artefact coverage of its field of view.

Screening programmes grade a photograph only when it shows the retina well enough; an ungradeable photograph
is re-taken, not given a verdict. :func:`assess_quality` measures what makes a photograph ungradeable and
:class:`Quality` says it in words ("out of focus", "underexposed") with the measures behind it. Every measure
works on the field of view (:mod:`napari_icnn.data.fov`) resampled to one working size, so it reads alike on a
400-pixel and a 4000-pixel photograph.

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
"""The field of view's diameter, in pixels, at which everything is measured."""

LIMITS: dict[str, float] = {
    "min_brightness": 0.10,
    "max_dark_fraction": 0.60,
    "max_bright_fraction": 0.40,
    "min_contrast": 0.025,
    "min_sharpness": 0.35,
    "max_coverage": 0.45,
}
"""Where a measure makes a photograph ungradeable (see :class:`Quality` for each measure)."""

# a pixel (max of R, G, B in [0, 1]) this dark shows no retina; this bright (every channel) is clipped
_DARK = 0.08
_CLIPPED = 0.96


@dataclass(frozen=True)
class Quality:
    """Image quality of one photograph: the measures and, when it cannot be graded, why."""

    brightness: float
    """Median brightness (max of R, G, B, 0–1) inside the field of view."""
    dark_fraction: float
    """Share of the field of view too dark to show retina."""
    bright_fraction: float
    """Share of the field of view clipped white in every channel."""
    contrast: float
    """Spread of the green channel's local detail (vessels, lesions) inside the field, 0–1 scale."""
    sharpness: float
    """Fine detail relative to coarse detail of the green channel (vessel edges against shading); about 1 on a
    sharp photograph, falling towards 0 as focus is lost."""
    coverage: float
    """Share of the field of view covered by something other than readable retina: too dark, clipped white or
    burned-in text."""
    reasons: tuple[str, ...] = ()
    """Why the photograph cannot be graded, in words; empty when it can."""

    @property
    def gradable(self) -> bool:
        return not self.reasons

    @property
    def verdict(self) -> str:
        """``"gradable"`` or ``"ungradeable: out of focus; underexposed"``."""
        return "gradable" if self.gradable else "ungradeable: " + "; ".join(self.reasons)

    def measures(self) -> dict[str, float]:
        return {k: round(float(getattr(self, k)), 4) for k in
                ("brightness", "dark_fraction", "bright_fraction", "contrast", "sharpness", "coverage")}

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
    v = img.max(axis=2)
    inside = field & ~txt
    if inside.sum() < 64:
        return Quality(0.0, 1.0, 0.0, 0.0, 0.0, 1.0, ("no field of view to grade",))
    brightness = float(np.median(v[inside]))
    dark = v < _DARK
    clipped = img.min(axis=2) > _CLIPPED
    dark_fraction = float(dark[field].mean())
    bright_fraction = float(clipped[field].mean())
    coverage = float((dark | clipped | txt)[field].mean())
    readable = inside & ~dark & ~clipped
    contrast, sharpness = _detail(img[..., 1], readable)

    reasons = []
    if brightness < lim["min_brightness"] or dark_fraction > lim["max_dark_fraction"]:
        reasons.append(f"underexposed (median brightness {brightness:.2f}, {dark_fraction:.0%} of the field dark)")
    if bright_fraction > lim["max_bright_fraction"]:
        reasons.append(f"overexposed ({bright_fraction:.0%} of the field clipped white)")
    if not reasons and contrast < lim["min_contrast"]:
        reasons.append(f"no readable detail (contrast {contrast:.3f}, gradable from {lim['min_contrast']:.3f})")
    if not reasons and sharpness < lim["min_sharpness"]:
        reasons.append(f"out of focus (sharpness {sharpness:.2f}, gradable from {lim['min_sharpness']:.2f})")
    if not reasons and coverage > lim["max_coverage"]:
        reasons.append(f"artefacts cover {coverage:.0%} of the field of view")
    return Quality(brightness, dark_fraction, bright_fraction, contrast, sharpness, coverage, tuple(reasons))


def _working_copy(rgb: np.ndarray, fov: Any, text: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The field's bounding box resampled so the field's diameter is :data:`_WORK_DIAMETER`, in [0, 1]; with the
    field and text masks on the same grid."""
    h, w = rgb.shape[:2]
    mask = fov.mask((h, w))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    zoom = _WORK_DIAMETER / (2.0 * max(fov.radius, 1.0))
    img = rgb[box].astype(np.float32) / 255.0
    if abs(zoom - 1.0) > 0.02:
        # area-averaging when shrinking keeps JPEG and sensor noise from posing as detail
        if zoom < 1.0:
            img = ndi.gaussian_filter(img, sigma=(0.5 / zoom, 0.5 / zoom, 0))
        img = ndi.zoom(img, (zoom, zoom, 1), order=1)
        m = ndi.zoom(mask[box].astype(np.float32), zoom, order=1) > 0.5
        t = ndi.zoom(text[box].astype(np.float32), zoom, order=1) > 0.25
        shape = (min(img.shape[0], m.shape[0], t.shape[0]), min(img.shape[1], m.shape[1], t.shape[1]))
        img, m, t = img[: shape[0], : shape[1]], m[: shape[0], : shape[1]], t[: shape[0], : shape[1]]
    else:
        m, t = mask[box], text[box]
    # the rim's step edge is no retinal detail
    m = ndi.binary_erosion(m, iterations=8)
    return img, m, t


def _detail(green: np.ndarray, where: np.ndarray) -> tuple[float, float]:
    """Contrast (spread of vessel-scale detail) and sharpness (its fine part against its coarse part)."""
    if where.sum() < 64:
        return 0.0, 0.0
    g1 = ndi.gaussian_filter(green, 1.0)
    g3 = ndi.gaussian_filter(green, 3.0)
    g8 = ndi.gaussian_filter(green, 8.0)
    fine = (g1 - g3)[where]
    coarse = (g3 - g8)[where]
    # robust spreads: a few bright reflections or lesions must not set the scale
    fine_s = float(np.percentile(np.abs(fine - np.median(fine)), 90))
    coarse_s = float(np.percentile(np.abs(coarse - np.median(coarse)), 90))
    contrast = coarse_s + fine_s
    sharpness = fine_s / coarse_s if coarse_s > 1e-6 else 0.0
    return contrast, sharpness
