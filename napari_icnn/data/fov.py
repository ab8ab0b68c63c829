"""The field of view (FOV) of a fundus photograph: the part of the frame that shows retina.

:func:`find_fov` finds it on any colour fundus photograph and says its :data:`SHAPES` kind: a
circle on a dark surround (JPEG noise rather than exact zeros, vignetting, dark fundi, burned-in
text in the surround), a circle clipped by a wide sensor, a circle with a rim marker (notch), or
retina filling the whole frame (rimless). :meth:`FOV.mask` gives its pixels for any shape and
:meth:`FOV.rim_coordinate` how near a point lies to its boundary on one scale for all shapes.
:func:`check_fundus` also refuses images that are not colour fundus photographs at all.

Coordinates are scan pixels with pixel centres at integers: ``x`` = column, ``y`` = row.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage as ndi

from napari_icnn.errors import DeclinedInput

__all__ = ["FOV", "SHAPES", "find_fov", "check_fundus"]

# The coarse pass works on a copy about this many pixels across.
_WORK_SIDE = 256
# A pixel darker than this (max over R, G, B) can belong to the dark surround.
_DARK_LEVEL = 40
# Fewer surround pixels than this share of the frame: the retina fills the frame.
_MIN_DARK_SHARE = 0.03
# Rays cast from the coarse centre to place the rim with sub-pixel precision.
_N_RAYS = 360


SHAPES: tuple[str, ...] = ("circle", "clipped", "rimless", "notched")
"""The kinds of field of view real cameras produce: a whole circle on a dark surround, a circle cut by
the frame (wide sensors), retina filling the frame (no dark surround: the field is a rectangle), a
circle with a small rectangular marker on its rim."""


@dataclass(frozen=True)
class FOV:
    """The field of view of one photograph, in scan pixels.

    The field is the circle (with its rim marker, if any) within :attr:`frame`, or for a ``rimless``
    photograph the :attr:`frame` rectangle itself. Valid once built: finite centre, positive finite
    radius, a known shape, a non-empty frame.
    """

    cx: float
    """Centre column of the circle (pixel centres at integers). For a rimless field, the centre of its
    rectangle."""
    cy: float
    """Centre row."""
    radius: float
    """Radius in pixels. For a rimless field, half the short side of its rectangle (the inscribed circle)."""
    clipped: bool
    """The circle is cut by the image border (wide-sensor cameras such as IDRiD's clip it top and
    bottom)."""
    shape: str = ""
    """One of :data:`SHAPES`; derived from ``clipped`` (``"clipped"`` or ``"circle"``) when not given."""
    frame: tuple[int, int, int, int] | None = None
    """``(x0, y0, x1, y1)``: the field lies within columns ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1`` (the
    photograph's frame, or for a rimless photograph with dark bands the retina's rectangle). ``None``
    (records written before shapes existed): the circle alone, confined only by the raster it is drawn on."""
    notch: tuple[float, float, float, float, float] | None = None
    """The rim marker, a rectangle ``(cx, cy, half_u, half_v, angle)``: centre, half-sizes along and across
    the direction ``angle`` (radians, image axes); part of the field. ``None``: no marker."""

    def __post_init__(self) -> None:
        for name in ("cx", "cy", "radius"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise ValueError(f"FOV.{name} must be finite; got {value!r}")
            object.__setattr__(self, name, value)
        if self.radius <= 0:
            raise ValueError(f"FOV.radius must be positive; got {self.radius!r}")
        object.__setattr__(self, "clipped", bool(self.clipped))
        shape = str(self.shape) or ("clipped" if self.clipped else "circle")
        if shape not in SHAPES:
            raise ValueError(f"FOV.shape must be one of {SHAPES}; got {shape!r}")
        if (shape == "clipped") != self.clipped:
            raise ValueError(f"FOV.shape {shape!r} contradicts clipped={self.clipped}")
        object.__setattr__(self, "shape", shape)
        if self.frame is not None:
            try:
                x0, y0, x1, y1 = (int(v) for v in self.frame)
            except (TypeError, ValueError):
                raise ValueError(f"FOV.frame must be (x0, y0, x1, y1); got {self.frame!r}") from None
            if x1 <= x0 or y1 <= y0:
                raise ValueError(f"FOV.frame must be a non-empty rectangle; got {(x0, y0, x1, y1)}")
            object.__setattr__(self, "frame", (x0, y0, x1, y1))
        elif shape == "rimless":
            raise ValueError("a rimless FOV needs its frame rectangle")
        if self.notch is not None:
            try:
                notch = tuple(float(v) for v in self.notch)
            except (TypeError, ValueError):
                raise ValueError(f"FOV.notch must be (cx, cy, half_u, half_v, angle); got {self.notch!r}") from None
            if len(notch) != 5 or not all(math.isfinite(v) for v in notch) or min(notch[2:4]) <= 0:
                raise ValueError(f"FOV.notch must be (cx, cy, half_u > 0, half_v > 0, angle); got {self.notch!r}")
            object.__setattr__(self, "notch", notch)
        elif shape == "notched":
            raise ValueError("a notched FOV needs its notch")

    # -- membership and distances -------------------------------------------------------------

    def contains(self, x, y, marker: bool = True) -> np.ndarray:
        """Bool array (broadcast of ``x`` and ``y``): the points lie in the field (pixel centres at integers);
        without the rim marker when not ``marker`` (it shows no retina)."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        inside = self._in_frame(x, y)
        if self.shape == "rimless":
            return np.broadcast_to(inside, np.broadcast_shapes(x.shape, y.shape)).copy()
        field = (x - self.cx) ** 2 + (y - self.cy) ** 2 <= self.radius**2
        if marker and self.notch is not None:
            field = field | self._in_notch(x, y)
        return field & inside

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """``(H, W)`` bool mask of the pixels whose centres lie in the field."""
        h, w = int(shape[0]), int(shape[1])
        return self.contains(np.arange(w, dtype=np.float64)[None, :], np.arange(h, dtype=np.float64)[:, None])

    def edge_distance(self, x, y) -> np.ndarray:
        """Signed distance in pixels from the field's boundary (its rim; the frame's edge where the frame
        cuts the field or the retina fills it): positive inside, negative outside, 0 on a rim marker."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        d_frame = self._frame_distance(x, y)
        if self.shape == "rimless":
            return np.asarray(d_frame, dtype=np.float64)
        d = np.minimum(self.radius - np.hypot(x - self.cx, y - self.cy), d_frame)
        if self.notch is not None:
            # The marker is field but no retina: its pixels count as on the rim.
            d = np.where(self._in_notch(x, y) & (d_frame >= 0), np.maximum(d, 0.0), d)
        return np.asarray(d, dtype=np.float64)

    @cached_property
    def inscribed_radius(self) -> float:
        """Radius of the largest disc within the field: the unit of :meth:`rim_coordinate`."""
        if self.shape == "rimless":
            x0, y0, x1, y1 = self.frame  # type: ignore[misc]  # rimless FOVs always have a frame
            return min(x1 - x0, y1 - y0) / 2
        if not self.clipped or self.frame is None:
            return self.radius
        return _max_concave(self._core_distance, self._bbox())

    def rim_coordinate(self, x, y) -> np.ndarray:
        """Where points lie between the field's innermost point (0) and its boundary (1), in units of
        :attr:`inscribed_radius`; above 1 outside the field. On a whole circle, the distance from the
        centre in radii; the same scale for every shape, so one rim band (e.g. 0.9) fits all."""
        return 1.0 - self.edge_distance(x, y) / self.inscribed_radius

    def bounding_square(self) -> tuple[float, float, float]:
        """``(x0, y0, side)`` in edge coordinates (pixel ``j`` covers ``[j, j + 1)``): the square the model
        sees. A circle's bounding square (also where the frame clips it), or for a rimless field its
        rectangle's centred bounding square."""
        if self.shape == "rimless":
            x0, y0, x1, y1 = self.frame  # type: ignore[misc]  # rimless FOVs always have a frame
            side = float(max(x1 - x0, y1 - y0))
            return (x0 + x1) / 2 - side / 2, (y0 + y1) / 2 - side / 2, side
        return self.cx + 0.5 - self.radius, self.cy + 0.5 - self.radius, 2 * self.radius

    def _in_frame(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.frame is None:
            return np.ones(np.broadcast_shapes(x.shape, y.shape), bool)
        x0, y0, x1, y1 = self.frame
        return ((x >= x0 - 0.5) & (x < x1 - 0.5)) & ((y >= y0 - 0.5) & (y < y1 - 0.5))

    def _frame_distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.frame is None:
            return np.full(np.broadcast_shapes(x.shape, y.shape), np.inf)
        x0, y0, x1, y1 = self.frame
        return np.minimum(np.minimum(x - (x0 - 0.5), (x1 - 0.5) - x), np.minimum(y - (y0 - 0.5), (y1 - 0.5) - y))

    def _core_distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Distance to the boundary of circle ∩ frame: concave, so its maximum is easy to find."""
        return np.minimum(self.radius - np.hypot(x - self.cx, y - self.cy), self._frame_distance(x, y))

    def _bbox(self) -> tuple[float, float, float, float]:
        x0, y0 = self.cx - self.radius, self.cy - self.radius
        x1, y1 = self.cx + self.radius, self.cy + self.radius
        if self.frame is not None:
            fx0, fy0, fx1, fy1 = self.frame
            x0, y0 = max(x0, fx0 - 0.5), max(y0, fy0 - 0.5)
            x1, y1 = min(x1, fx1 - 0.5), min(y1, fy1 - 0.5)
        return x0, y0, max(x1, x0), max(y1, y0)

    def _in_notch(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        ncx, ncy, hu, hv, ang = self.notch  # type: ignore[misc]  # only called when there is one
        dx, dy = x - ncx, y - ncy
        c, s = math.cos(ang), math.sin(ang)
        return (np.abs(dx * c + dy * s) <= hu) & (np.abs(dy * c - dx * s) <= hv)

    # -- serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "cx": self.cx,
            "cy": self.cy,
            "radius": self.radius,
            "clipped": self.clipped,
            "shape": self.shape,
            "frame": None if self.frame is None else list(self.frame),
            "notch": None if self.notch is None else list(self.notch),
        }

    @classmethod
    def from_dict(cls, d: dict) -> FOV:
        """Read :meth:`to_dict`'s form; records without ``shape``, ``frame`` or ``notch`` (written before
        field shapes existed) read as the circle they described."""
        frame = d.get("frame")
        notch = d.get("notch")
        return cls(
            float(d["cx"]),
            float(d["cy"]),
            float(d["radius"]),
            bool(d["clipped"]),
            str(d.get("shape") or ""),
            None if frame is None else tuple(int(v) for v in frame),  # type: ignore[arg-type]  # checked in __post_init__
            None if notch is None else tuple(float(v) for v in notch),  # type: ignore[arg-type]  # checked in __post_init__
        )


def _max_concave(f, box: tuple[float, float, float, float], rounds: int = 4) -> float:
    """Maximum of a concave function of (x, y) over a box by shrinking grid search."""
    x0, y0, x1, y1 = box
    best = -np.inf
    for _ in range(rounds):
        xs = np.linspace(x0, x1, 17)
        ys = np.linspace(y0, y1, 17)
        vals = f(xs[None, :], ys[:, None])
        i, j = np.unravel_index(int(np.argmax(vals)), vals.shape)
        best = max(best, float(vals[i, j]))
        hx, hy = (x1 - x0) / 8, (y1 - y0) / 8
        x0, x1 = xs[j] - hx, xs[j] + hx
        y0, y1 = ys[i] - hy, ys[i] + hy
    return max(best, 0.5)


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
        The field in scan pixels, with its ``shape``. When the retina fills the whole frame (no
        dark surround), a ``rimless`` field: the frame's rectangle (less dark bands along its
        edges), with the circle inscribed in it as ``cx``, ``cy``, ``radius``. Never refuses a colour image: use
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
    # a fundus photograph too dark or washed out is an ungradeable photograph, not another kind of image: say so
    # before its lost colour makes it look grey
    if r < 25.0 and r >= 1.15 * b:
        raise DeclinedInput(path, f"ungradeable: underexposed — the field of view is too dark to read (mean red "
                                  f"level {r:.0f} of 255)")
    clipped = px.min(axis=1) > 245
    if clipped.mean() > 0.4 and (~clipped).sum() >= 16:
        rest = px[~clipped].mean(axis=0)
        if rest[0] >= rest[1] and rest[0] >= 1.1 * rest[2] and rest[0] - rest[2] >= 6:
            raise DeclinedInput(path, f"ungradeable: overexposed — {clipped.mean():.0%} of the field of view is "
                                      "clipped white")
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
                "(a fundus photograph is a bright disc on a dark surround; one partly covered by an eyelid, "
                "eyelashes or a shadow is ungradeable)",
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
    frame = (0, 0, w, h)
    inscribed = FOV((w - 1) / 2, (h - 1) / 2, min(h, w) / 2, False, "rimless", frame)

    threshold = _threshold(v)
    if threshold is None:
        return _Analysis(inscribed, True, 1.0, small, step)
    bright = _main_region(v > threshold)
    rect = _rimless_rect(rgb, bright, step, threshold)
    if rect is not None:
        x0, y0, x1, y1 = rect
        fov = FOV((x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, min(x1 - x0, y1 - y0) / 2, False, "rimless", rect)
        return _Analysis(fov, True, 1.0, small, step)

    pts = _edge_points(bright)
    if len(pts) < 12:
        return _Analysis(inscribed, True, 1.0, small, step)
    coarse = _fit_circle_robust(pts * step)
    if coarse is None:
        return _Analysis(inscribed, True, 1.0, small, step)
    cx, cy, r = coarse
    if not (-0.5 <= cx <= w - 0.5 and -0.5 <= cy <= h - 0.5) or r < 4 * step or r > 2 * max(h, w):
        return _Analysis(FOV((w - 1) / 2, (h - 1) / 2, min(h, w) / 2, False, "circle", frame), False, 0.0, small, step)

    refined = _refine(rgb, cx, cy, r, step, threshold)
    if refined is not None:
        cx, cy, r = refined
    # A circle that grazes the frame (by up to 5 % of its radius, as 45-degree cameras framing the field
    # tightly do) is still a circle: the frame's edge enters its rim distance all the same.
    tol = max(1.0, 0.05 * r)
    clipped = cx - r < -0.5 - tol or cy - r < -0.5 - tol or cx + r > w - 0.5 + tol or cy + r > h - 0.5 + tol
    circle = FOV(cx, cy, r, clipped, frame=frame)
    notch = _find_notch(rgb, small, bright, circle, step, threshold)
    fov = circle if notch is None else FOV(cx, cy, r, clipped, "clipped" if clipped else "notched", frame, notch)
    field = _small_mask(fov, bright.shape, step)
    union = np.logical_or(field, bright).sum()
    iou = float(np.logical_and(field, bright).sum() / union) if union else 0.0
    return _Analysis(fov, False, iou, small, step)


def _rimless_rect(
    rgb: np.ndarray, bright: np.ndarray, step: int, threshold: float
) -> tuple[int, int, int, int] | None:
    """The retina's rectangle when it fills the frame (or the frame less dark bands along its edges,
    where some cameras print their text), in scan pixels ``(x0, y0, x1, y1)``; None for a round field."""
    sh, sw = bright.shape
    rows = np.flatnonzero(bright.mean(axis=1) >= 0.5)
    cols = np.flatnonzero(bright.mean(axis=0) >= 0.5)
    if rows.size == 0 or cols.size == 0:
        return None
    top, bottom, left, right = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    if bottom - top + 1 < 0.5 * sh or right - left + 1 < 0.5 * sw:
        return None
    # Bands run along one pair of opposite edges at most: retina reaching no edge is a bright shape on
    # a dark surround, not a frame-filling photograph.
    if not ((top == 0 and bottom == sh - 1) or (left == 0 and right == sw - 1)):
        return None
    core = bright[top : bottom + 1, left : right + 1]
    # A round field leaves its corners dark in any rectangle cut around it; a rimless one fills it.
    if core.mean() < 0.97:
        return None
    h, w = rgb.shape[:2]
    x0, x1 = _band_edge(rgb, threshold, left, right, step, w, axis=1)
    y0, y1 = _band_edge(rgb, threshold, top, bottom, step, h, axis=0)
    return x0, y0, x1, y1


def _band_edge(rgb: np.ndarray, threshold: float, lo: int, hi: int, step: int, n: int, axis: int) -> tuple[int, int]:
    """Full-resolution ``[start, stop)`` of a rimless field along one axis, from the working grid's
    first and last bright line ``lo``/``hi``: exact frame edges stay exact, band edges are found again
    on the scan lines near them."""

    def line_level(i: int) -> float:
        line = rgb[i, ::step] if axis == 0 else rgb[::step, i]
        return float(np.mean(line.max(axis=1) > threshold))

    start = 0
    if lo > 0:
        start = min((lo + 1) * step, n - 1)
        while start > max((lo - 2) * step, 0) and line_level(start - 1) >= 0.5:
            start -= 1
    stop = n
    if hi * step < n - step:
        stop = max(hi * step, start + 1)
        while stop < min((hi + 2) * step, n) and line_level(stop) >= 0.5:
            stop += 1
    return start, max(stop, start + 1)


def _find_notch(
    rgb: np.ndarray, small: np.ndarray, bright: np.ndarray, circle: FOV, step: int, threshold: float
) -> tuple[float, float, float, float, float] | None:
    """A camera's rim marker: a compact, retina-coloured bright patch just outside the fitted circle.

    Burned-in text next to the rim is not one: it is white, yellow, green or cyan, not red-dominant."""
    sh, sw = bright.shape
    grown = FOV(circle.cx, circle.cy, circle.radius + 1.5 * step, circle.clipped)
    outside = bright & ~_small_mask(grown, (sh, sw), step)
    labels, n = ndi.label(outside)
    if n == 0:
        return None
    area_circle = math.pi * (circle.radius / step) ** 2
    sizes = np.bincount(labels.ravel())[1:]
    slices = ndi.find_objects(labels)
    best = None
    for k in np.argsort(sizes)[::-1][:4]:
        area = int(sizes[k])
        if area < max(4, 0.0002 * area_circle) or area > 0.02 * area_circle:
            continue
        sl = slices[k]
        comp = labels[sl] == k + 1
        if comp.sum() / comp.size < 0.35:  # a marker is a solid block, not scattered strokes
            continue
        r_, g_, b_ = (float(c) for c in small[sl][comp].mean(axis=0))
        if not (r_ > 1.2 * g_ and r_ > 1.2 * b_):
            continue
        best = sl
        break
    if best is None:
        return None
    # The marker at full resolution: bright pixels of its box beyond the circle.
    h, w = rgb.shape[:2]
    y0, y1 = max(0, (best[0].start - 2) * step), min(h, (best[0].stop + 2) * step)
    x0, x1 = max(0, (best[1].start - 2) * step), min(w, (best[1].stop + 2) * step)
    crop = ndi.uniform_filter(rgb[y0:y1, x0:x1].max(axis=2).astype(np.float32), 3, mode="nearest")
    ys, xs = np.mgrid[y0:y1, x0:x1]
    beyond = (crop > threshold) & (np.hypot(xs - circle.cx, ys - circle.cy) > circle.radius + 1.0)
    labels, n = ndi.label(beyond)
    if n == 0:
        return None
    biggest = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    px, py = xs[biggest].astype(np.float64), ys[biggest].astype(np.float64)
    if px.size < 4:
        return None
    # An axis-aligned marker or one set radially (as on the real photograph): the tighter box wins.
    radial = math.atan2(float(py.mean()) - circle.cy, float(px.mean()) - circle.cx)
    boxes = []
    for ang in (0.0, radial):
        c, s = math.cos(ang), math.sin(ang)
        u, vv = px * c + py * s, py * c - px * s
        box = (float(u.min()) - 0.5, float(u.max()) + 0.5, float(vv.min()) - 0.5, float(vv.max()) + 0.5)
        boxes.append(((box[1] - box[0]) * (box[3] - box[2]), ang, box))
    _, ang, (u0, u1, v0, v1) = min(boxes)
    c, s = math.cos(ang), math.sin(ang)
    uc, vc = (u0 + u1) / 2, (v0 + v1) / 2
    return uc * c - vc * s, uc * s + vc * c, (u1 - u0) / 2, (v1 - v0) / 2, ang


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
    """The field on the strided working grid (pixel i sits at scan pixel i * step)."""
    h, w = shape
    return fov.contains((np.arange(w) * step)[None, :], (np.arange(h) * step)[:, None])


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
