"""Diabetic-retinopathy lesions, drawn into the image and into their part masks in one step.

Each lesion *instance* is a single 8-connected region of its mask, at least one empty pixel away
from every other lesion, so counting connected regions of a mask gives back exactly the number
of instances drawn. Sizes are in disc diameters (DD) and scale with the image; colours are
fractions of the image's background colour, so contrast follows the fundus pigmentation.

| part | size | appearance | where |
|---|---|---|---|
| MA | 0.035–0.075 DD | dark red dot, green 25–35 % darker | near / temporal to the fovea |
| HE | dot 0.07–0.2 DD, blot 0.12–0.45 DD; flame 0.3–0.9 DD long, 3–5:1 | dark red; flame brighter, feathered | anywhere; flames near the disc, along the nerve fibres |
| HE (pre-retinal) | 0.7–1.6 DD, flat top (fluid level) | dark red, opaque | posterior pole (grade 4) |
| EX | dots 0.03–0.09 DD, plaques to ≈0.3 DD | yellow, sharp | clusters and circinate rings near the macula |
| SE | 0.2–0.48 DD long, oval | whitish, fluffy edges | along the arcades, within ≈3.5 DD of the disc |
| NV | loops 0.25–0.6 DD | fine tortuous red loops | at the disc (NVD) or on an arcade vein (NVE) |
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from napari_icnn.data.synth._raster import crop_box, crop_grid, dilate1, single_component, star_blob
from napari_icnn.data.synth.geometry import Geometry
from napari_icnn.data.synth.vessels import Vessel
from napari_icnn.parts import LESION_KEYS

__all__ = ["LesionInstance", "LesionPainter", "draw_lesions", "draw_distractors", "draw_laser_scars", "QUADRANT_MARGIN"]

MILD_SHARE = 0.5
"""Realistic look: share of target-grade-2 eyes drawn as mild moderate NPDR (1-3 faint dot haemorrhages)."""
QUADRANT_MARGIN = 0.75  # px; haemorrhage centroids stay this far from the quadrant lines
MAX_TRIES = 40

# Colours as fractions of the background RGB (dark lesions) or targets (bright lesions).
MA_RATIO = (0.86, 0.68, 0.76)
HE_RATIO = (0.74, 0.40, 0.45)
NV_RATIO = (0.84, 0.52, 0.62)
EX_GAIN = (1.12, 2.25, 1.55)
SE_GAIN = (1.06, 1.95, 2.1)


@dataclass(frozen=True)
class LesionInstance:
    """One drawn lesion: its part key, form and the centroid and area of its mask."""

    kind: str
    subtype: str
    """``dot``, ``blot``, ``flame``, ``preretinal`` (HE); ``dot``/``plaque`` (EX); ``NVD``/``NVE``; else the kind."""
    x: float
    y: float
    area: int


@dataclass(frozen=True, eq=False)
class Look:
    """How a lesion changes the pixels under it."""

    colour: np.ndarray
    """RGB: a fraction of the underlying pixel for ``"darken"``, an absolute colour for ``"blend"``."""
    mode: str
    soft: float = 0.3
    """Width of the fading edge, relative to the lesion's radius."""
    irregular: float = 0.0
    """Amplitude of the outline's low harmonics (0 = ellipse)."""
    peak: float = 1.0
    """Opacity at the centre."""


class LesionPainter:
    """Stamps lesions on the canvas while keeping their masks exact and their instances separate."""

    def __init__(
        self,
        rng: np.random.Generator,
        img: np.ndarray,
        geo: Geometry,
        r: np.ndarray,
        disc_mask: np.ndarray,
        vessels: list[Vessel],
        base: np.ndarray,
        *,
        blocked: np.ndarray | None = None,
        style: np.random.Generator | None = None,
    ):
        self.rng = rng
        self.blocked = blocked
        """``(S, S)`` bool: where nothing may be drawn (outside the photograph's frame, under
        burned-in text, dust or reflections); ``None`` for the clean look."""
        self.style = style
        """Draws of the realistic lesion look (contrast, tone); ``None`` for the clean look, whose
        lesions keep their original appearance and random draws."""
        self.extras: dict[str, int] = {"drusen": 0, "pigment": 0, "laser": 0}
        self.faint = False
        """Realistic look, mild moderate NPDR: haemorrhages drawn fainter (see :func:`draw_lesions`)."""
        self.img = img
        self.geo = geo
        self.r = r
        self.base = base
        self.vessels = vessels
        s = geo.size
        self.masks = {k: np.zeros((s, s), dtype=bool) for k in LESION_KEYS}
        self.occupied = np.zeros((s, s), dtype=bool) if blocked is None else blocked.copy()
        """Pixels no new instance may touch (nor come within one pixel of): drawn lesions and
        non-DR findings, and the blocked pixels."""
        self.keep_out = dilate1(dilate1(disc_mask))
        self.instances: list[LesionInstance] = []

    # -- placement ---------------------------------------------------------------------------
    def stamp(
        self,
        kind: str,
        subtype: str,
        box: tuple[int, int, int, int],
        alpha: np.ndarray,
        mask: np.ndarray,
        colour: np.ndarray,
        mode: str,
        *,
        on_disc: bool = False,
    ) -> bool:
        """Draw one instance if it is valid; return whether it was drawn.

        ``mode`` ``"darken"`` multiplies by ``1 - alpha (1 - colour)`` (``colour`` a ratio);
        ``"blend"`` moves towards the absolute ``colour`` by ``alpha``.
        """
        x0, y0, x1, y1 = box
        if not single_component(mask):
            return False
        if (self.r[y0:y1, x0:x1][mask] > 0.95).any():
            return False
        grown = dilate1(np.pad(mask, 1))
        occ = np.pad(self.occupied[y0:y1, x0:x1], 1, constant_values=True)
        # The crop must contain the dilated instance: pixels on its border would be unchecked.
        if (grown & occ).any():
            return False
        if not on_disc and (self.keep_out[y0:y1, x0:x1] & mask).any():
            return False
        yy, xx = np.nonzero(mask)
        cx, cy = float(xx.mean() + x0), float(yy.mean() + y0)
        # Haemorrhage quadrants must not hinge on rounding: keep centroids off the quadrant lines.
        if (
            kind == "HE"
            and subtype != "preretinal"
            and (abs(cx - self.geo.fovea_x) < QUADRANT_MARGIN or abs(cy - self.geo.fovea_y) < QUADRANT_MARGIN)
        ):
            return False
        crop = self.img[:, y0:y1, x0:x1]
        a = alpha[None]
        c = np.asarray(colour, dtype=np.float32)[:, None, None]
        if mode == "darken":
            crop *= 1.0 - a * (1.0 - c)
        else:
            crop += a * (c - crop)
        self.masks[kind][y0:y1, x0:x1] |= mask
        self.occupied[y0:y1, x0:x1] |= mask
        self.instances.append(LesionInstance(kind, subtype, cx, cy, int(mask.sum())))
        return True

    def blob(
        self, kind: str, subtype: str, xy: np.ndarray, rx: float, ry: float, angle: float, look: Look
    ) -> bool:
        """A star-shaped blob lesion with semi-axes ``rx`` (along ``angle``) and ``ry``, in pixels."""
        rng = self.rng
        irr, soft = look.irregular, look.soft
        harm = (
            [(irr * rng.uniform(0.2, 1.0) / k, rng.uniform(0, 2 * math.pi)) for k in range(2, 5)]
            if irr
            else ()
        )
        reach = max(rx, ry) * (1.0 + 1.2 * irr) * (1.0 + soft) + 2
        box = crop_box(xy[0], xy[1], reach, self.geo.size)
        xs, ys = crop_grid(box)
        alpha, mask = star_blob(xs, ys, float(xy[0]), float(xy[1]), rx, ry, angle, harm, soft)
        return self.stamp(kind, subtype, box, alpha * look.peak, mask, look.colour, look.mode)

    def distractor(
        self,
        kind: str,
        box: tuple[int, int, int, int],
        alpha: np.ndarray,
        mask: np.ndarray,
        colour: np.ndarray,
        mode: str,
    ) -> bool:
        """Paint a finding that is not diabetic retinopathy (``drusen``, ``pigment``, ``laser``).

        ``colour`` is an RGB triple or, for ``"blend"``, a ``(3, h, w)`` colour per pixel of the crop.

        It enters no part mask and no lesion count, but it occupies its pixels (and a one-pixel
        margin) so that no lesion is drawn over it: lesion masks stay exact.
        """
        x0, y0, x1, y1 = box
        if not mask.any() or (self.r[y0:y1, x0:x1][mask] > 0.95).any():
            return False
        grown = dilate1(np.pad(mask, 1))
        occ = np.pad(self.occupied[y0:y1, x0:x1], 1, constant_values=True)
        if (grown & occ).any() or (self.keep_out[y0:y1, x0:x1] & mask).any():
            return False
        crop = self.img[:, y0:y1, x0:x1]
        a = alpha[None]
        c = np.asarray(colour, dtype=np.float32)
        if c.ndim == 1:
            c = c[:, None, None]
        if mode == "darken":
            crop *= 1.0 - a * (1.0 - c)
        else:
            crop += a * (c - crop)
        self.occupied[y0:y1, x0:x1] |= mask
        self.extras[kind] += 1
        return True

    # -- where -------------------------------------------------------------------------------
    def around_fovea(self, d: tuple[float, float], temporal_bias: float = 0.0) -> np.ndarray:
        """A random point ``d`` DD from the fovea; ``temporal_bias`` in [0, 1] favours the temporal side."""
        rng = self.rng
        dist = rng.uniform(*d)
        if rng.random() < temporal_bias:
            ang = math.pi + rng.normal(0.0, 1.0)
        else:
            ang = rng.uniform(0, 2 * math.pi)
        return self.geo.to_px(dist * math.cos(ang), dist * math.sin(ang))

    def in_fov(self, quadrant: tuple[int, int] | None = None) -> np.ndarray:
        """A uniform point inside 0.92 of the FOV (optionally in one quadrant around the fovea:
        ``(sx, sy)`` signs of ``x - fovea_x`` and ``y - fovea_y``)."""
        g, rng = self.geo, self.rng
        for _ in range(200):
            rad = 0.92 * g.fov_radius * math.sqrt(rng.random())
            ang = rng.uniform(0, 2 * math.pi)
            x, y = g.fov_x + rad * math.cos(ang), g.fov_y + rad * math.sin(ang)
            if quadrant is None or (
                math.copysign(1, x - g.fovea_x) == quadrant[0]
                and math.copysign(1, y - g.fovea_y) == quadrant[1]
            ):
                return np.array([x, y])
        assert quadrant is not None  # without a quadrant the first draw is returned
        return np.array([g.fovea_x + quadrant[0] * g.dd, g.fovea_y + quadrant[1] * g.dd])

    def on_trunk(self, from_disc: tuple[float, float]) -> tuple[np.ndarray, float]:
        """A random point on a main vessel ``from_disc`` DD from the disc centre, and the vessel's direction."""
        g, rng = self.geo, self.rng
        trunks = [v for v in self.vessels if v.order == 0 and len(v.points) > 4]
        for _ in range(50):
            v = trunks[rng.integers(len(trunks))]
            d = np.hypot(v.points[:, 0] - g.disc_x, v.points[:, 1] - g.disc_y) / g.dd
            idx = np.flatnonzero((d > from_disc[0]) & (d < from_disc[1]))
            if len(idx):
                i = int(idx[rng.integers(len(idx))])
                t = v.points[min(i + 1, len(v.points) - 1)] - v.points[max(i - 1, 0)]
                return v.points[i].copy(), math.atan2(t[1], t[0])
        return self.around_fovea((1.5, 2.5)), rng.uniform(0, math.pi)

    # -- lesion kinds ------------------------------------------------------------------------
    def microaneurysm(self, xy: np.ndarray) -> bool:
        rng, dd = self.rng, self.geo.dd
        r = max(rng.uniform(0.018, 0.037) * dd, 0.8)
        ratio = np.asarray(MA_RATIO, dtype=np.float32) * rng.uniform(0.97, 1.03)
        if self.style is not None:
            # Realistic look: many microaneurysms are faint, near the detection limit (green
            # only 8-15 % darker than the background), a few are crisp and dark.
            contrast = self.style.uniform(0.3, 0.55) if self.style.random() < 0.45 else self.style.uniform(0.8, 1.25)
            ratio = np.clip(1.0 - (1.0 - ratio) * np.float32(contrast), 0.4, 1.0)
        look = Look(ratio, "darken", soft=0.45)
        return self.blob("MA", "MA", xy, r, r * rng.uniform(0.9, 1.1), 0.0, look)

    def haemorrhage(self, xy: np.ndarray, subtype: str, small: bool = False) -> bool:
        rng, dd = self.rng, self.geo.dd
        colour = self.base * np.asarray(HE_RATIO, dtype=np.float32) * rng.uniform(0.9, 1.12)
        peak = rng.uniform(0.6, 0.9)
        if self.style is not None:
            # Realistic look: deeper, browner blots and some fainter, older ones.
            colour = colour * np.asarray((1.0, 0.9, 0.85), dtype=np.float32) * np.float32(self.style.uniform(0.8, 1.1))
            peak = min(peak * self.style.uniform(0.85, 1.15), 0.97)
            if self.faint:
                peak *= self.style.uniform(0.45, 0.7)
        if subtype == "flame":
            # Superficial, so brighter red, feathered, and aligned with the nerve fibres (radial to the disc).
            half = rng.uniform(0.15, 0.45) * dd
            width = max(half / rng.uniform(3, 5), 0.9)
            ang = math.atan2(xy[1] - self.geo.disc_y, xy[0] - self.geo.disc_x)
            look = Look(colour * np.float32(1.12), "blend", soft=0.7, irregular=0.15, peak=peak)
            return self.blob("HE", "flame", xy, half, width, ang, look)
        # Sizes are log-uniform: many small haemorrhages, few large ones.
        if subtype == "dot":
            r = max(math.exp(rng.uniform(math.log(0.035), math.log(0.08 if small else 0.1))) * dd, 1.0)
            ry, ang = r * rng.uniform(0.85, 1.15), rng.uniform(0, math.pi)
            return self.blob(
                "HE", "dot", xy, r, ry, ang, Look(colour, "blend", soft=0.45, irregular=0.08, peak=peak)
            )
        r = max(math.exp(rng.uniform(math.log(0.06), math.log(0.13 if small else 0.22))) * dd, 1.2)
        ry, ang = r * rng.uniform(0.55, 1.0), rng.uniform(0, math.pi)
        return self.blob(
            "HE", "blot", xy, r, ry, ang, Look(colour, "blend", soft=0.45, irregular=0.35, peak=peak)
        )

    def preretinal(self, xy: np.ndarray) -> bool:
        """A boat-shaped pre-retinal haemorrhage: blood settles, so the top edge is a flat level."""
        rng, dd = self.rng, self.geo.dd
        r = rng.uniform(0.35, 0.8) * dd
        box = crop_box(xy[0], xy[1], r * 1.3 + 2, self.geo.size)
        xs, ys = crop_grid(box)
        alpha, mask = star_blob(
            xs,
            ys,
            float(xy[0]),
            float(xy[1]),
            r,
            r * rng.uniform(0.8, 1.0),
            0.0,
            [(0.05, rng.uniform(0, 6.3))],
            0.12,
        )
        level = xy[1] - r * rng.uniform(0.1, 0.5)
        lv = np.clip((ys - level) / 1.5 + 0.5, 0.0, 1.0)
        # Denser blood below the fluid level.
        alpha = np.minimum(alpha, lv) * np.clip(0.8 + 0.2 * (ys - level) / r, 0.8, 1.0)
        mask &= ys >= level
        colour = self.base * np.asarray(HE_RATIO, dtype=np.float32) * rng.uniform(0.75, 0.9)
        return self.stamp("HE", "preretinal", box, alpha * 0.96, mask, colour, "blend")

    def exudate(self, xy: np.ndarray, plaque: bool = False) -> bool:
        rng, dd = self.rng, self.geo.dd
        colour = np.minimum(
            self.base * np.asarray(EX_GAIN, dtype=np.float32) * rng.uniform(0.95, 1.05), 255.0
        )
        peak = rng.uniform(0.75, 0.95)
        if self.style is not None:
            # Realistic look: waxy yellow, from faint cream to bright saturated plaques.
            tone = np.asarray((1.15, 2.4, 1.9), dtype=np.float32) * np.float32(self.style.uniform(0.92, 1.08))
            colour = np.minimum(self.base * tone, 255.0)
            peak = peak * self.style.uniform(0.7, 1.05)
        if not plaque:
            r = max(rng.uniform(0.015, 0.045) * dd, 0.8)
            ry, ang = r * rng.uniform(0.75, 1.0), rng.uniform(0, math.pi)
            return self.blob(
                "EX", "dot", xy, r, ry, ang, Look(colour, "blend", soft=0.2, irregular=0.15, peak=peak)
            )
        # A plaque: overlapping dots merged into one irregular, sharp-edged instance.
        r = max(rng.uniform(0.025, 0.05) * dd, 0.9)
        n = int(rng.integers(3, 7))
        centres = xy + np.cumsum(rng.normal(0.0, 0.9 * r, (n, 2)), axis=0)
        box = crop_box(
            float(centres[:, 0].mean()),
            float(centres[:, 1].mean()),
            float(np.abs(centres - centres.mean(0)).max()) + 1.6 * r + 2,
            self.geo.size,
        )
        xs, ys = crop_grid(box)
        alpha = np.zeros((box[3] - box[1], box[2] - box[0]), dtype=np.float32)
        mask = np.zeros(alpha.shape, dtype=bool)
        for c in centres:
            rr = r * rng.uniform(0.7, 1.3)
            a, m = star_blob(
                xs,
                ys,
                float(c[0]),
                float(c[1]),
                rr,
                rr * rng.uniform(0.7, 1.0),
                rng.uniform(0, math.pi),
                (),
                0.2,
            )
            alpha = np.maximum(alpha, a)
            mask |= m
        return self.stamp("EX", "plaque", box, alpha * peak, mask, colour, "blend")

    def cotton_wool(self, xy: np.ndarray, angle: float) -> bool:
        rng, dd = self.rng, self.geo.dd
        rx = max(rng.uniform(0.1, 0.24) * dd, 1.5)
        colour = np.minimum(
            self.base * np.asarray(SE_GAIN, dtype=np.float32) * rng.uniform(0.95, 1.05), 255.0
        )
        ry, peak = rx / rng.uniform(1.2, 2.0), rng.uniform(0.5, 0.75)
        return self.blob(
            "SE", "SE", xy, rx, ry, angle, Look(colour, "blend", soft=0.9, irregular=0.3, peak=peak)
        )

    def neovascularisation(self, root: np.ndarray, subtype: str) -> bool:
        """A fan of fine tortuous loops that all start and end at ``root`` (so the mask is one region)."""
        rng, dd = self.rng, self.geo.dd
        reach = rng.uniform(0.25, 0.6) * dd
        box = crop_box(root[0], root[1], reach * 1.3 + 3, self.geo.size)
        x0, y0, x1, y1 = box
        w, h = x1 - x0, y1 - y0
        ss = 3
        fine = Image.new("L", (w * ss, h * ss), 0)
        coarse = Image.new("L", (w, h), 0)
        df, dc = ImageDraw.Draw(fine), ImageDraw.Draw(coarse)
        width = max(rng.uniform(0.018, 0.032) * dd, 0.7)
        centre = rng.uniform(0, 2 * math.pi)
        for _ in range(int(rng.integers(3, 8))):
            phi = centre + rng.normal(0.0, 1.0)
            spread = rng.uniform(0.3, 0.9)
            length = reach * rng.uniform(0.5, 1.0)
            t = np.linspace(0.0, 1.0, 40)
            rad = length * np.sin(np.pi * t) ** 0.8
            psi = phi + spread * (t - 0.5) + np.cumsum(rng.normal(0.0, 0.08, t.size))
            wig = 0.06 * length * np.sin(2 * math.pi * rng.uniform(2, 4) * t + rng.uniform(0, 6.3))
            px = root[0] - x0 + 0.5 + rad * np.cos(psi) - wig * np.sin(psi)
            py = root[1] - y0 + 0.5 + rad * np.sin(psi) + wig * np.cos(psi)
            pts = list(zip(px.tolist(), py.tolist(), strict=True))
            df.line(
                [(x * ss, y * ss) for x, y in pts],
                fill=255,
                width=max(int(round(width * ss)), 1),
                joint="curve",
            )
            dc.line([(x - 0.5, y - 0.5) for x, y in pts], fill=255, width=1)
        alpha = np.asarray(fine.reduce(ss), dtype=np.float32) / 255.0
        mask = np.asarray(coarse) > 0
        alpha = np.maximum(alpha, 0.5 * mask)
        colour = np.asarray(NV_RATIO, dtype=np.float32)
        return self.stamp(
            "NV", subtype, box, alpha * rng.uniform(0.75, 0.95), mask, colour, "darken", on_disc=True
        )


def _attempt(fn, tries: int = MAX_TRIES) -> bool:
    for _ in range(tries):
        if fn():
            return True
    return False


def draw_lesions(rng: np.random.Generator, painter: LesionPainter, target: int) -> None:
    """Draw a lesion set typical of ICDR grade ``target`` (the grade itself is derived afterwards
    from what was drawn: a placement that does not fit is simply not drawn)."""
    p = painter
    g = p.geo
    if target == 0:
        return
    if target == 4:
        # Proliferative eyes carry the non-proliferative lesions too.
        base = 3 if rng.random() < 0.4 else 2
        n_nv = int(rng.integers(1, 3)) if rng.random() < 0.8 else 0
        if rng.random() < 0.3 or n_nv == 0:
            _attempt(lambda: p.preretinal(p.around_fovea((1.3, 2.6))))
        for _ in range(n_nv):
            if rng.random() < 0.6:
                disc = np.array([g.disc_x, g.disc_y])
                _attempt(lambda d=disc: p.neovascularisation(d + rng.normal(0, 0.12 * g.dd, 2), "NVD"))
            else:
                _attempt(lambda: p.neovascularisation(p.on_trunk((1.5, 3.5))[0], "NVE"))
        target = base
    if target == 1:
        for _ in range(int(rng.integers(1, 9))):
            _attempt(lambda: p.microaneurysm(p.around_fovea((0.4, 2.6), 0.75)))
        return
    n_ma = int(rng.integers(0, 16)) if target == 2 else int(rng.integers(4, 26))
    for _ in range(n_ma):
        _attempt(lambda: p.microaneurysm(p.around_fovea((0.4, 2.8), 0.7)))
    if target == 2 and p.style is not None and p.style.random() < MILD_SHARE:
        # Realistic look: much moderate NPDR in screening is a few faint dot haemorrhages beside the
        # microaneurysms, the hardest referable eyes to tell from grade 1.
        p.faint = True
        for _ in range(int(p.style.integers(1, 4))):
            _attempt(lambda: p.haemorrhage(p.around_fovea((0.4, 3.2)), "dot", small=True))
        p.faint = False
        return
    if target == 2:
        drew = 0
        for _ in range(int(rng.integers(0, 11))):
            sub = "dot" if rng.random() < 0.5 else "blot"
            drew += _attempt(lambda s=sub: p.haemorrhage(p.around_fovea((0.4, 3.2)), s))
        for _ in range(int(rng.integers(0, 4)) if rng.random() < 0.4 else 0):
            drew += _attempt(lambda: p.haemorrhage(_near_disc(rng, g), "flame"))
        drew += _exudates(rng, p, n_clusters=int(rng.integers(1, 3)) if rng.random() < 0.5 else 0)
        drew += _cotton_wool(rng, p, int(rng.integers(1, 4)) if rng.random() < 0.4 else 0)
        if not drew:
            for _ in range(int(rng.integers(1, 5))):
                _attempt(lambda: p.haemorrhage(p.around_fovea((0.4, 3.2)), "dot"))
        return
    # Severe NPDR by the 4-2-1 rule's haemorrhage arm: > 20 haemorrhages in each quadrant.
    for _ in range(int(rng.integers(0, 5))):
        _attempt(lambda: p.haemorrhage(_near_disc(rng, g), "flame"))
    for sx in (-1, 1):
        for sy in (-1, 1):
            want = int(rng.integers(21, 28))
            tries = 0
            while _quadrant_count(p, sx, sy) < want and tries < 400:
                tries += 1
                sub = "dot" if rng.random() < 0.65 else "blot"
                p.haemorrhage(p.in_fov((sx, sy)), sub, small=True)
    _exudates(rng, p, n_clusters=int(rng.integers(1, 3)) if rng.random() < 0.6 else 0)
    _cotton_wool(rng, p, int(rng.integers(1, 6)) if rng.random() < 0.7 else 0)


def _quadrant_count(p: LesionPainter, sx: int, sy: int) -> int:
    g = p.geo
    return sum(
        1
        for les in p.instances
        if les.kind == "HE"
        and les.subtype != "preretinal"
        and math.copysign(1, les.x - g.fovea_x) == sx
        and math.copysign(1, les.y - g.fovea_y) == sy
    )


def _near_disc(rng: np.random.Generator, g: Geometry) -> np.ndarray:
    d = rng.uniform(0.7, 2.0) * g.dd
    ang = rng.uniform(0, 2 * math.pi)
    return np.array([g.disc_x + d * math.cos(ang), g.disc_y + d * math.sin(ang)])


def _exudates(rng: np.random.Generator, p: LesionPainter, n_clusters: int) -> int:
    """Hard exudates in clusters near the macula, sometimes as a circinate ring; returns how many."""
    drew = 0
    dd = p.geo.dd
    for _ in range(n_clusters):
        if rng.random() < 0.3:
            centre = p.around_fovea((0.6, 2.0), 0.6)
            rad = rng.uniform(0.5, 1.1) * dd
            start, arc = rng.uniform(0, 2 * math.pi), rng.uniform(3.5, 5.8)
            n = int(arc * rad / (0.12 * dd))
            for k in range(n):
                t = start + arc * k / max(n - 1, 1)
                xy = centre + (rad + rng.normal(0, 0.06 * dd)) * np.array([math.cos(t), math.sin(t)])
                drew += p.exudate(xy, plaque=rng.random() < 0.2)
        else:
            centre = p.around_fovea((0.3, 2.2), 0.6)
            spread = rng.uniform(0.12, 0.35) * dd
            for _ in range(int(rng.integers(3, 16))):
                drew += _attempt(
                    lambda c=centre, w=spread: p.exudate(c + rng.normal(0, w, 2), plaque=rng.random() < 0.25),
                    6,
                )
    return drew


def _cotton_wool(rng: np.random.Generator, p: LesionPainter, n: int) -> int:
    drew = 0
    for _ in range(n):

        def one() -> bool:
            xy, ang = p.on_trunk((1.0, 3.5))
            off = rng.uniform(-0.45, 0.45) * p.geo.dd
            xy = xy + off * np.array([-math.sin(ang), math.cos(ang)])
            return p.cotton_wool(xy, ang)

        drew += _attempt(one)
    return drew


# -- findings that are not diabetic retinopathy (realistic look) ------------------------------------

DRUSEN_GAIN = (1.1, 1.75, 1.3)
PIGMENT_RATIO = (0.42, 0.36, 0.42)
DRUSEN_PROBABILITY = 0.25
PIGMENT_PROBABILITY = 0.18
LASER_PROBABILITY = 0.5  # of the eyes whose target grade is 4


def draw_distractors(rng: np.random.Generator, p: LesionPainter) -> None:
    """Drusen (yellow, soft, macular) and pigment clumps (dark, irregular): not diabetic
    retinopathy, in no part mask, and whatever the grade (so they never predict it).

    Every draw comes from ``rng`` alone; drawn before the lesions, which keep off them.
    """
    g, dd = p.geo, p.geo.dd
    n_drusen = int(rng.integers(3, 30)) if rng.random() < DRUSEN_PROBABILITY else 0
    n_pigment = int(rng.integers(1, 5)) if rng.random() < PIGMENT_PROBABILITY else 0
    spread = rng.uniform(0.6, 1.6)
    for _ in range(n_drusen):
        d, ang = abs(rng.normal(0.0, spread)), rng.uniform(0, 2 * math.pi)
        xy = g.to_px(d * math.cos(ang), d * math.sin(ang))
        r = max(math.exp(rng.uniform(math.log(0.02), math.log(0.07))) * dd, 0.9)
        box = crop_box(xy[0], xy[1], r * 1.8 + 2, g.size)
        xs, ys = crop_grid(box)
        alpha, mask = star_blob(xs, ys, float(xy[0]), float(xy[1]), r, r * rng.uniform(0.8, 1.0), 0.0, (), 0.9)
        colour = np.minimum(p.base * np.asarray(DRUSEN_GAIN, dtype=np.float32) * rng.uniform(0.95, 1.05), 255.0)
        p.distractor("drusen", box, alpha * rng.uniform(0.35, 0.65), mask, colour, "blend")
    for _ in range(n_pigment):
        rad = 0.9 * g.fov_radius * math.sqrt(rng.random())
        ang = rng.uniform(0, 2 * math.pi)
        xy = np.array([g.fov_x + rad * math.cos(ang), g.fov_y + rad * math.sin(ang)])
        rx = max(rng.uniform(0.04, 0.14) * dd, 1.0)
        harm = [(0.35 * rng.uniform(0.2, 1.0) / k, rng.uniform(0, 2 * math.pi)) for k in range(2, 5)]
        box = crop_box(xy[0], xy[1], rx * 1.8 + 2, g.size)
        xs, ys = crop_grid(box)
        alpha, mask = star_blob(
            xs, ys, float(xy[0]), float(xy[1]), rx, rx * rng.uniform(0.5, 1.0), rng.uniform(0, math.pi), harm, 0.3
        )
        colour = np.asarray(PIGMENT_RATIO, dtype=np.float32) * rng.uniform(0.85, 1.15)
        p.distractor("pigment", box, alpha * rng.uniform(0.6, 0.9), mask, colour, "darken")


def draw_laser_scars(rng: np.random.Generator, p: LesionPainter, target: int) -> None:
    """Pan-retinal photocoagulation scars on some eyes whose target grade is 4 (treated
    proliferative disease): rows of round scars with a pale centre and a pigmented rim in the
    mid-periphery, sparing the macula (> 2.8 DD from the fovea) and the disc.

    Nothing is drawn (and nothing drawn from ``rng``) for other targets.
    """
    if target != 4 or rng.random() >= LASER_PROBABILITY:
        return
    g, dd = p.geo, p.geo.dd
    n = int(rng.integers(60, 220))
    r0 = rng.uniform(0.09, 0.16) * dd
    pale = np.minimum(p.base * np.asarray((1.12, 2.2, 2.2), dtype=np.float32) * rng.uniform(0.9, 1.05), 255.0)
    for _ in range(n):
        rad = g.fov_radius * math.sqrt(rng.uniform(0.3, 0.86))
        ang = rng.uniform(0, 2 * math.pi)
        xy = np.array([g.fov_x + rad * math.cos(ang), g.fov_y + rad * math.sin(ang)])
        if math.hypot(xy[0] - g.fovea_x, xy[1] - g.fovea_y) < 2.8 * dd:
            continue
        if math.hypot(xy[0] - g.disc_x, xy[1] - g.disc_y) < 1.3 * dd:
            continue
        r = max(r0 * rng.uniform(0.75, 1.25), 1.2)
        box = crop_box(xy[0], xy[1], r * 1.6 + 2, g.size)
        xs, ys = crop_grid(box)
        harm = [(0.12 * rng.uniform(0.3, 1.0), rng.uniform(0, 6.3)), (0.06, rng.uniform(0, 6.3))]
        alpha, mask = star_blob(xs, ys, float(xy[0]), float(xy[1]), r, r * rng.uniform(0.8, 1.0), 0.0, harm, 0.35)
        rho = np.hypot(xs - float(xy[0]), ys - float(xy[1])) / r
        # Old scars are pigmented clumps; others a pale, atrophic centre in a pigmented ring.
        pigmented = rng.random() < 0.35
        ring = np.exp(-(((rho - 0.75) / 0.25) ** 2)).astype(np.float32) * np.float32(rng.uniform(0.35, 0.7))
        centre = np.clip(1.0 - rho / 0.8, 0.0, 1.0).astype(np.float32) ** 0.5 * np.float32(rng.uniform(0.55, 0.95))
        crop = p.img[:, box[1] : box[3], box[0] : box[2]]
        if pigmented:
            shade = np.float32(rng.uniform(0.35, 0.6))
            colour = crop * (1.0 - (1.0 - shade) * np.clip(1.2 - rho, 0.0, 1.0))[None]
        else:
            dark = crop * (1.0 - ring)[None]
            colour = dark + (pale[:, None, None] - dark) * centre[None]
        p.distractor("laser", box, alpha, mask, colour, "blend")
