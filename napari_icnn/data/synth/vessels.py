"""The retinal vessel tree: trunks leaving the disc, temporal arcades around the macula, branches.

Geometry is laid out in retinal coordinates (disc diameters, fovea at the origin, ``a`` towards
the disc, ``b`` superior), so the tree follows the disc and fovea wherever they are. Widths
shrink at every bifurcation by Murray's law (``r³ = r₁³ + r₂³``), veins are wider and more
tortuous than arteries, and no vessel enters the foveal avascular zone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from napari_icnn.data.synth.geometry import Geometry

__all__ = ["Vessel", "grow_tree", "rasterise_tree"]

SUPERSAMPLE = 2  # vessels are drawn at twice the resolution and box-averaged: anti-aliased edges
FAZ_RADIUS = 0.3  # DD; capillary-free zone around the fovea
STEP = 0.06  # DD; polyline resolution of grown branches
MIN_WIDTH = 0.011  # DD; thinner branches are not drawn


@dataclass(frozen=True)
class Vessel:
    """One vessel segment: a polyline with a width per point, in image pixels."""

    kind: str
    """``"artery"`` or ``"vein"``."""
    points: np.ndarray
    """``(N, 2)`` float ``x, y``."""
    widths: np.ndarray
    """``(N,)`` float, pixels."""
    order: int
    """0 for trunks leaving the disc, +1 per bifurcation."""


def _catmull_rom(pts: np.ndarray, step: float) -> np.ndarray:
    """Uniform Catmull-Rom spline through the way-points ``pts``, sampled about every ``step``."""
    p = np.vstack([2 * pts[0] - pts[1], pts, 2 * pts[-1] - pts[-2]])
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        n = max(int(np.linalg.norm(p2 - p1) / step), 1)
        t = np.linspace(0.0, 1.0, n, endpoint=False)[:, None]
        out.append(
            0.5
            * (
                2 * p1
                + (-p0 + p2) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
            )
        )
    out.append(p[-2][None])
    return np.vstack(out)


def _wiggle(rng: np.random.Generator, ab: np.ndarray, amplitude: float) -> np.ndarray:
    """Add tortuosity: a sum of two sinusoids across the curve, faded in over the first 0.5 DD."""
    d = np.diff(ab, axis=0, prepend=ab[:1])
    s = np.cumsum(np.hypot(d[:, 0], d[:, 1]))
    tangent = np.gradient(ab, axis=0)
    tangent /= np.maximum(np.hypot(tangent[:, 0], tangent[:, 1]), 1e-9)[:, None]
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    off = np.zeros(len(ab))
    for _ in range(2):
        wl = rng.uniform(0.5, 1.6)
        off += amplitude * rng.uniform(0.5, 1.0) * np.sin(2 * math.pi * s / wl + rng.uniform(0, 2 * math.pi))
    off *= np.clip(s / 0.5, 0.0, 1.0)
    return ab + normal * off[:, None]


class _Grower:
    """Grows branches from a trunk in retinal coordinates and collects :class:`Vessel` objects."""

    def __init__(self, rng: np.random.Generator, geo: Geometry, density: float):
        self.rng = rng
        self.geo = geo
        self.density = density
        self.vessels: list[tuple[str, np.ndarray, np.ndarray, int]] = []
        # FOV in retinal coordinates: centre and radius in DD
        fa, fb = geo.to_retina(np.array([geo.fov_x, geo.fov_y]))
        self.fov_ab = (float(fa), float(fb))
        self.fov_r = geo.fov_radius / geo.dd
        self.disc_a = math.hypot(geo.disc_x - geo.fovea_x, geo.disc_y - geo.fovea_y) / geo.dd

    def add(self, kind: str, ab: np.ndarray, w0: float, order: int, taper: float) -> None:
        """Register a vessel along ``ab`` (DD) starting at width ``w0`` (DD); spawn its branches."""
        rng = self.rng
        seg = np.hypot(*np.diff(ab, axis=0).T)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        widths = w0 * np.clip(1.0 - taper * s, 0.35, 1.0)
        if order > 0:
            # Branches fade out over their last stretch instead of ending bluntly.
            widths *= np.clip((s[-1] - s) / 0.6, 0.45, 1.0)
        # Cut where it leaves the field (plus a margin so the rim is crossed) or nears the fovea.
        out = np.hypot(ab[:, 0] - self.fov_ab[0], ab[:, 1] - self.fov_ab[1]) >= self.fov_r + 0.15
        out |= np.hypot(ab[:, 0], ab[:, 1]) < FAZ_RADIUS
        bad = np.flatnonzero(out)
        keep = int(bad[0]) if len(bad) else len(ab)
        ab, widths, s = ab[:keep], widths[:keep], s[:keep]
        if len(ab) < 2:
            return
        if order < 3:
            spacing = (0.45, 0.95) if order == 0 else (0.55, 1.2)
            pos = rng.uniform(0.7, 1.0) if order == 0 else rng.uniform(0.3, 0.7)
            side = 1.0 if rng.random() < 0.5 else -1.0
            while pos < s[-1] - 0.2:
                i = int(np.searchsorted(s, pos))
                w = widths[i]
                if rng.random() < self.density:
                    k = rng.uniform(0.5, 0.85)
                    wc = w * k
                    if wc >= MIN_WIDTH:
                        self._branch(kind, ab, i, wc, order + 1, side)
                        # Murray's law: the parent keeps (r³ - r₂³)^(1/3) after the split.
                        widths[i:] *= (1.0 - k**3) ** (1.0 / 3.0)
                side = -side if rng.random() < 0.8 else side
                pos += rng.uniform(*spacing)
        self.vessels.append((kind, ab, widths, order))

    def _branch(self, kind: str, ab: np.ndarray, i: int, w: float, order: int, side: float) -> None:
        rng = self.rng
        j = min(i + 1, len(ab) - 1)
        t = ab[j] - ab[max(i - 1, 0)]
        heading = math.atan2(t[1], t[0]) + side * math.radians(rng.uniform(35, 75))
        a, b = float(ab[i, 0]), float(ab[i, 1])
        # A branch on the macular side of an arcade heads for the fovea and stops at the FAZ;
        # the others run outwards, roughly radially from the posterior pole.
        towards_fovea = (
            math.hypot(a + 0.3 * math.cos(heading), b + 0.3 * math.sin(heading)) < math.hypot(a, b) - 0.1
        )
        length = rng.uniform(0.7, 2.2) if towards_fovea else rng.uniform(1.2, 4.0) / (1 + 0.5 * (order - 1))
        # Smooth tortuosity: the curvature itself is a slowly varying random process.
        sigma = 0.035 if kind == "vein" else 0.025
        n = int(length / STEP)
        kicks = rng.normal(0.0, sigma, n).tolist()
        stop_r = FAZ_RADIUS + rng.uniform(0.05, 0.3)
        fa, fb = self.fov_ab
        limit = self.fov_r + 0.15
        curv = 0.0
        pts = [(a, b)]
        for kick in kicks:
            if towards_fovea:
                goal, pull = math.atan2(-b, -a), 0.08
            else:
                ca = self.disc_a if a > 0.75 * self.disc_a else 0.0
                goal, pull = math.atan2(b, a - ca), 0.03
            diff = (goal - heading + math.pi) % (2 * math.pi) - math.pi
            curv = 0.85 * curv + kick
            heading += pull * diff + curv
            a += STEP * math.cos(heading)
            b += STEP * math.sin(heading)
            pts.append((a, b))
            if math.hypot(a - fa, b - fb) >= limit or math.hypot(a, b) < stop_r:
                break
        if len(pts) > 3:
            self.add(kind, np.asarray(pts), w, order, taper=0.08)


def _trunk_plans(
    rng: np.random.Generator, disc_a: float
) -> list[tuple[str, list[tuple[float, float]], float]]:
    """Way-points (DD, superior side; mirrored for the inferior side) and starting widths (DD)."""
    plans = []
    for sgn in (1.0, -1.0):
        arc = rng.uniform(2.0, 2.45)  # arcade height above/below the fovea
        for kind, w0, start_b in (
            ("vein", rng.uniform(0.085, 0.1), 0.45),
            ("artery", rng.uniform(0.062, 0.074), 0.6),
        ):
            j = rng.normal(0.0, 0.12, 8)
            h = arc + rng.uniform(-0.15, 0.15)
            arcade = [
                (disc_a + 0.04, 0.05),
                (disc_a - 0.02 + 0.05 * j[0], start_b),
                (disc_a - 0.35 + j[1], 1.2 + 0.1 * j[2]),
                (disc_a - 1.05 + j[2], 0.82 * h + j[3]),
                (0.55 + j[3], h + 0.05),
                (-0.7 + j[4], h + 0.12 + j[5] * 0.5),
                (-2.0 + j[5], h + 0.05),
                (-3.3 + j[6], h - 0.25 + j[7]),
                (-4.6, h - 0.6),
                (-5.8, h - 1.0),
            ]
            plans.append((kind, [(a, sgn * b) for a, b in arcade], w0))
            nasal_a = rng.uniform(0.3, 0.5)
            nasal = [
                (disc_a + 0.06, 0.08),
                (disc_a + nasal_a * 0.8, 0.65 + 0.1 * j[0]),
                (disc_a + nasal_a * 1.8 + j[1], 1.5),
                (disc_a + nasal_a * 2.7 + j[2], 2.5),
                (disc_a + nasal_a * 3.5 + j[3], 3.6),
            ]
            plans.append((kind, [(a, sgn * b) for a, b in nasal], w0 * rng.uniform(0.6, 0.75)))
            if rng.random() < 0.8:
                hz = [
                    (disc_a + 0.1, 0.0),
                    (disc_a + 0.9, sgn * rng.uniform(0.05, 0.35)),
                    (disc_a + 2.0, sgn * rng.uniform(0.1, 0.6)),
                    (disc_a + 3.3, sgn * rng.uniform(0.1, 0.9)),
                ]
                plans.append((kind, hz, w0 * rng.uniform(0.35, 0.5)))
            if rng.random() < 0.35:
                mac = [
                    (disc_a - 0.45, sgn * 0.25),
                    (disc_a - 1.0, sgn * rng.uniform(0.35, 0.6)),
                    (1.0, sgn * rng.uniform(0.4, 0.8)),
                    (0.5, sgn * rng.uniform(0.3, 0.6)),
                ]
                plans.append((kind, mac, w0 * rng.uniform(0.25, 0.4)))
    return plans


def grow_tree(rng: np.random.Generator, geo: Geometry) -> list[Vessel]:
    """The vessel tree of one eye, in image pixels."""
    disc_a = math.hypot(geo.disc_x - geo.fovea_x, geo.disc_y - geo.fovea_y) / geo.dd
    grower = _Grower(rng, geo, density=rng.uniform(0.8, 1.0))
    for kind, way, w0 in _trunk_plans(rng, disc_a):
        ab = _catmull_rom(np.asarray(way), 0.04)
        ab = _wiggle(rng, ab, 0.045 if kind == "vein" else 0.025)
        grower.add(kind, ab, w0, order=0, taper=0.03)
    out = []
    for kind, ab, widths, order in grower.vessels:
        xy = geo.to_px(ab[:, 0], ab[:, 1])
        out.append(Vessel(kind, xy, widths * geo.dd, order))
    return out


def rasterise_tree(vessels: list[Vessel], size: int) -> dict[str, np.ndarray]:
    """Coverage of each vessel kind, ``(size, size)`` float32 in [0, 1].

    Veins get a darker core (blood column) and arteries a paler centre line (the light reflex);
    both are encoded as lower coverage where the vessel shows less blood.
    """
    ss = SUPERSAMPLE
    layers = {}
    for kind in ("artery", "vein"):
        img = Image.new("L", (size * ss, size * ss), 0)
        draw = ImageDraw.Draw(img)
        strokes = [v for v in vessels if v.kind == kind]
        # Wide vessels first so the thin ones crossing them are not hidden under their edges.
        strokes.sort(key=lambda v: -float(v.widths.max()))
        for v in strokes:
            _stroke(draw, v, ss, 200 if kind == "vein" else 255, 1.0)
        for v in strokes:
            if kind == "vein":
                _stroke(draw, v, ss, 255, 0.55, min_px=3.0)
            else:
                _stroke(draw, v, ss, 150, 0.22, min_px=4.0)
        small = img.reduce(ss)
        layers[kind] = np.asarray(small, dtype=np.float32) * (1.0 / 255.0)
    return layers


def _stroke(
    draw: ImageDraw.ImageDraw, v: Vessel, ss: int, value: int, frac: float, min_px: float = 0.0
) -> None:
    """Draw ``v`` at ``frac`` of its width (runs of equal integer width), skipping parts narrower than ``min_px``."""
    w = np.maximum(np.round(v.widths * ss * frac), 1).astype(int)
    if min_px:
        w = np.where(v.widths >= min_px, w, 0)
    pts = v.points * ss
    start = 0
    n = len(w)
    while start < n - 1:
        end = start + 1
        while end < n - 1 and w[end] == w[start]:
            end += 1
        width = int(w[start])
        if width > 0:
            xy = pts[start : end + 1].ravel().tolist()
            # The polylines bend by a few degrees per point, so plain joints leave no visible seams.
            draw.line(xy, fill=value, width=width)
            if width > 2:
                r = width / 2
                x, y = xy[0], xy[1]
                draw.ellipse((x - r, y - r, x + r, y + r), fill=value)
        start = end
