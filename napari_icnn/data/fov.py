"""The field of view (FOV) of a fundus photograph: the bright disc of retina on a dark surround.

:func:`find_fov` locates the circle on any colour fundus photograph (dark surround that is
JPEG noise rather than exact zeros, a notch on the rim, vignetting, circles clipped by a wide
sensor, retina filling the whole frame); :func:`check_fundus` also refuses images that are
not colour fundus photographs at all.

Coordinates are scan pixels with pixel centres at integers: ``x`` = column, ``y`` = row.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_icnn.errors import DeclinedInput

__all__ = ["FOV", "find_fov", "check_fundus"]

# The coarse pass works on a copy about this many pixels across.
_WORK_SIDE = 256
# A pixel darker than this (max over R, G, B) can belong to the dark surround.
_DARK_LEVEL = 40
# Fewer surround pixels than this share of the frame: the retina fills the frame.
_MIN_DARK_SHARE = 0.03
# Rays cast from the coarse centre to place the rim with sub-pixel precision.
_N_RAYS = 360


@dataclass(frozen=True)
class FOV:
    """A circular field of view in scan pixels.

    Valid once built: finite centre, positive finite radius.
    """

    cx: float
    """Centre column (pixel centres at integers)."""
    cy: float
    """Centre row."""
    radius: float
    """Radius in pixels."""
    clipped: bool
    """The circle is cut by the image border (wide-sensor cameras such as IDRiD's clip it top and
    bottom)."""

    def __post_init__(self) -> None:
        for name in ("cx", "cy", "radius"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise ValueError(f"FOV.{name} must be finite; got {value!r}")
            object.__setattr__(self, name, value)
        if self.radius <= 0:
            raise ValueError(f"FOV.radius must be positive; got {self.radius!r}")
        object.__setattr__(self, "clipped", bool(self.clipped))

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """``(H, W)`` bool mask of the pixels whose centres lie inside the circle."""
        h, w = int(shape[0]), int(shape[1])
        dy2 = (np.arange(h, dtype=np.float64) - self.cy) ** 2
        dx2 = (np.arange(w, dtype=np.float64) - self.cx) ** 2
        return dy2[:, None] + dx2[None, :] <= self.radius**2

    def to_dict(self) -> dict:
        return {"cx": self.cx, "cy": self.cy, "radius": self.radius, "clipped": self.clipped}

    @classmethod
    def from_dict(cls, d: dict) -> FOV:
        return cls(float(d["cx"]), float(d["cy"]), float(d["radius"]), bool(d["clipped"]))


@dataclass(frozen=True)
class _Analysis:
    """What the FOV search saw, for :func:`check_fundus` to judge."""

    fov: FOV
    full_frame: bool
    fit_iou: float  # agreement of the thresholded bright region with the fitted circle
    small: np.ndarray  # the working copy (h, w, 3) float32
    step: int  # its stride on the scan


def find_fov(rgb: np.ndarray) -> FOV:
    """Locate the circular field of view of a colour fundus photograph.

    Parameters
    ----------
    rgb
        ``(H, W, 3)`` uint8 RGB photograph.

    Returns
    -------
    FOV
        The circle in scan pixels. When the retina fills the whole frame (no dark surround),
        the circle inscribed in the frame. Never refuses a colour image: use
        :func:`check_fundus` to also judge whether it is a fundus photograph at all.

    Raises
    ------
    DeclinedInput
        ``rgb`` is not an ``(H, W, 3)`` uint8 array of at least 8x8 pixels.
    """
    return _analyse(_check_array(rgb, None)).fov


def check_fundus(rgb: np.ndarray, path: str | os.PathLike[str] | None = None) -> FOV:
    """Return the FOV of a colour fundus photograph, or refuse an image that is not one.

    Parameters
    ----------
    rgb
        ``(H, W, 3)`` uint8 RGB image.
    path
        The file it came from, named in the error.

    Returns
    -------
    FOV
        As :func:`find_fov`.

    Raises
    ------
    DeclinedInput
        The image is not a colour fundus photograph: greyscale (CT slices, red-free
        photographs, scanned pages), implausible colour (not red-orange dominant), noise-like,
        or no circular bright field on a dark surround while not a full-frame retina either.
    """
    rgb = _check_array(rgb, path)
    h, w = rgb.shape[:2]
    if min(h, w) < 64:
        raise DeclinedInput(path, f"image of {w}x{h} pixels is too small to be a fundus photograph")
    a = _analyse(rgb)
    fov = a.fov
    inside = _small_mask(fov, a.small.shape[:2], a.step)
    if inside.sum() < 64:
        raise DeclinedInput(path, "no field of view found: the image is almost entirely dark")
    px = a.small[inside]
    mean = px.mean(axis=0)
    chroma = float(np.mean(px.max(axis=1) - px.min(axis=1)))
    r, g, b = (float(v) for v in mean)
    if chroma < 6.0:
        raise DeclinedInput(
            path,
            "greyscale image (red, green and blue are equal): not a colour fundus photograph "
            "(red-free photographs, CT/MR slices and scans of documents are not supported)",
        )
    if r < 25.0:
        raise DeclinedInput(path, f"field of view too dark to read (mean red level {r:.0f} of 255)")
    if not (r >= g and r >= 1.15 * b and (r - min(g, b)) >= 0.12 * r):
        raise DeclinedInput(
            path,
            f"implausible colour for a fundus photograph: mean RGB inside the field of view is "
            f"({r:.0f}, {g:.0f}, {b:.0f}); a colour fundus photograph is red-orange dominant",
        )
    roughness = _roughness(a.small, inside)
    if roughness > 0.75:
        raise DeclinedInput(
            path,
            f"no image structure: neighbouring pixels vary like noise (roughness {roughness:.2f}, "
            "a photograph is below 0.75)",
        )
    if not a.full_frame:
        if a.fit_iou < 0.85:
            raise DeclinedInput(
                path,
                f"no circular field of view: the bright region matches a circle at IoU {a.fit_iou:.2f} "
                "(a fundus photograph is a bright disc on a dark surround)",
            )
        if fov.radius < max(24.0, 0.15 * min(h, w)):
            raise DeclinedInput(
                path, f"field of view too small: radius {fov.radius:.0f} px in a {w}x{h} image"
            )
    return fov


# ---------------------------------------------------------------------------------------------
# the search


def _check_array(rgb: np.ndarray, path) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise DeclinedInput(
            path, f"expected an (H, W, 3) uint8 RGB image; got shape {arr.shape} dtype {arr.dtype}"
        )
    if arr.shape[0] < 8 or arr.shape[1] < 8:
        raise DeclinedInput(path, f"image of {arr.shape[1]}x{arr.shape[0]} pixels is too small")
    return arr


def _analyse(rgb: np.ndarray) -> _Analysis:
    h, w = rgb.shape[:2]
    step = max(1, int(round(max(h, w) / _WORK_SIDE)))
    # A strided copy is much cheaper than block averaging; the 3x3 box below removes the JPEG
    # noise that striding keeps.
    small = np.ascontiguousarray(rgb[::step, ::step]).astype(np.float32)
    v = ndi.uniform_filter(small.max(axis=2), 3, mode="nearest")
    inscribed = FOV((w - 1) / 2, (h - 1) / 2, min(h, w) / 2, False)

    threshold = _threshold(v)
    if threshold is None:
        return _Analysis(inscribed, True, 1.0, small, step)
    bright = _main_region(v > threshold)
    if bright.mean() > 1 - _MIN_DARK_SHARE:
        return _Analysis(inscribed, True, 1.0, small, step)

    pts = _edge_points(bright)
    if len(pts) < 12:
        return _Analysis(inscribed, True, 1.0, small, step)
    coarse = _fit_circle_robust(pts * step)
    if coarse is None:
        return _Analysis(inscribed, True, 1.0, small, step)
    cx, cy, r = coarse
    if not (-0.5 <= cx <= w - 0.5 and -0.5 <= cy <= h - 0.5) or r < 4 * step or r > 2 * max(h, w):
        return _Analysis(inscribed, False, 0.0, small, step)

    refined = _refine(rgb, cx, cy, r, step, threshold)
    if refined is not None:
        cx, cy, r = refined
    tol = 1.0
    clipped = cx - r < -0.5 - tol or cy - r < -0.5 - tol or cx + r > w - 0.5 + tol or cy + r > h - 0.5 + tol
    fov = FOV(cx, cy, r, clipped)
    circle = _small_mask(fov, bright.shape, step)
    union = np.logical_or(circle, bright).sum()
    iou = float(np.logical_and(circle, bright).sum() / union) if union else 0.0
    return _Analysis(fov, False, iou, small, step)


def _threshold(v: np.ndarray) -> float | None:
    """Level between the dark surround and the retina, or None when there is no dark surround."""
    dark = float(np.percentile(v, 1.0))
    if dark > _DARK_LEVEL:
        return None
    top = float(np.percentile(v, 99.0))
    if top - dark < 10:
        return None
    # The retina's typical level: median of what is clearly brighter than the surround.
    upper = v[v > dark + 0.5 * (top - dark)]
    level = float(np.median(upper)) if upper.size else top
    # A quarter of the way up keeps vignetted, dim rims inside and JPEG noise outside.
    return dark + max(6.0, 0.25 * (level - dark))


def _main_region(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return ndi.binary_fill_holes(mask)


def _edge_points(mask: np.ndarray) -> np.ndarray:
    """Rim points (x, y) of a filled region from row and column scans, leaving out any that lie
    on the image border (where a clipped circle is cut)."""
    h, w = mask.shape
    pts = []
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size:
        sub = mask[rows]
        left = np.argmax(sub, axis=1)
        right = w - 1 - np.argmax(sub[:, ::-1], axis=1)
        keep = left > 0
        pts.append(np.stack([left[keep] - 0.5, rows[keep]], axis=1))
        keep = right < w - 1
        pts.append(np.stack([right[keep] + 0.5, rows[keep]], axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size:
        sub = mask[:, cols]
        top = np.argmax(sub, axis=0)
        bottom = h - 1 - np.argmax(sub[::-1], axis=0)
        keep = top > 0
        pts.append(np.stack([cols[keep], top[keep] - 0.5], axis=1))
        keep = bottom < h - 1
        pts.append(np.stack([cols[keep], bottom[keep] + 0.5], axis=1))
    return np.concatenate(pts).astype(np.float64) if pts else np.zeros((0, 2))


def _fit_circle(pts: np.ndarray) -> tuple[float, float, float] | None:
    """Algebraic (Kasa) least-squares circle."""
    x, y = pts[:, 0], pts[:, 1]
    a = np.stack([x, y, np.ones_like(x)], axis=1)
    bvec = x * x + y * y
    try:
        sol, *_ = np.linalg.lstsq(a, bvec, rcond=None)
    except np.linalg.LinAlgError:
        return None
    cx, cy = sol[0] / 2, sol[1] / 2
    r2 = sol[2] + cx * cx + cy * cy
    if not np.isfinite(r2) or r2 <= 0:
        return None
    return float(cx), float(cy), float(math.sqrt(r2))


def _fit_circle_robust(pts: np.ndarray, rounds: int = 4) -> tuple[float, float, float] | None:
    """Circle fit that drops outliers (a rim notch, eyelashes, a label burnt into the corner)."""
    fit = _fit_circle(pts)
    for _ in range(rounds):
        if fit is None or len(pts) < 8:
            return fit
        cx, cy, r = fit
        res = np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - r
        mad = float(np.median(np.abs(res - np.median(res))))
        keep = np.abs(res - np.median(res)) <= max(3.0 * 1.4826 * mad, 0.75)
        if keep.all() or keep.sum() < 8:
            return fit
        pts = pts[keep]
        fit = _fit_circle(pts)
    return fit


def _refine(
    rgb: np.ndarray, cx: float, cy: float, r: float, step: int, threshold: float
) -> tuple[float, float, float] | None:
    """Place the rim to sub-pixel precision along rays at full resolution."""
    h, w = rgb.shape[:2]
    band = max(3.0 * step, 0.03 * r)
    radii = np.arange(r - band, r + band, 0.5)
    theta = np.linspace(0, 2 * np.pi, _N_RAYS, endpoint=False)
    xs = cx + np.cos(theta)[:, None] * radii[None, :]
    ys = cy + np.sin(theta)[:, None] * radii[None, :]
    inside = (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1)
    # A ray that leaves the image before its band ends cannot see the rim: the circle is clipped there.
    usable = inside.all(axis=1)
    if usable.sum() < 12:
        return None
    xs, ys = xs[usable], ys[usable]
    coords = np.stack([ys.ravel(), xs.ravel()])
    prof = np.max(
        [ndi.map_coordinates(rgb[..., c], coords, order=1, output=np.float32) for c in range(3)], axis=0
    ).reshape(xs.shape)
    prof = ndi.uniform_filter1d(prof, 3, axis=1, mode="nearest")
    # Search inwards from the outside so dark vessels near the rim do not stop the search.
    above = prof > threshold
    has = above.any(axis=1) & ~above[:, -1]
    last = above.shape[1] - 1 - np.argmax(above[:, ::-1], axis=1)
    ok = has & (last < above.shape[1] - 1)
    if ok.sum() < 12:
        return None
    rows = np.flatnonzero(ok)
    i = last[ok]
    p0, p1 = prof[rows, i], prof[rows, i + 1]
    frac = np.clip((p0 - threshold) / np.maximum(p0 - p1, 1e-6), 0.0, 1.0)
    rr = radii[i] + 0.5 * frac
    ang = theta[usable][rows]
    pts = np.stack([cx + np.cos(ang) * rr, cy + np.sin(ang) * rr], axis=1)
    return _fit_circle_robust(pts)


def _small_mask(fov: FOV, shape: tuple[int, int], step: int) -> np.ndarray:
    """The circle on the strided working grid (pixel i sits at scan pixel i * step)."""
    h, w = shape
    dy2 = (np.arange(h) * step - fov.cy) ** 2
    dx2 = (np.arange(w) * step - fov.cx) ** 2
    return dy2[:, None] + dx2[None, :] <= fov.radius**2


def _roughness(small: np.ndarray, inside: np.ndarray) -> float:
    """Mean absolute difference of horizontal neighbours over the standard deviation, inside the
    FOV: about 1.1 for white noise, well below that for any photograph."""
    v = small.mean(axis=2)
    both = inside[:, 1:] & inside[:, :-1]
    if both.sum() < 16:
        return 0.0
    diff = np.abs(v[:, 1:] - v[:, :-1])[both]
    sd = float(v[inside].std())
    if sd < 1e-6:
        return 0.0
    return float(diff.mean() / sd)
