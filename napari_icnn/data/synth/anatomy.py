"""Painting the healthy fundus: background, macula, optic disc, vessels and the camera's field.

Everything works on one float32 canvas of shape ``(3, H, W)`` (channel planes, so whole-image
operations run over contiguous memory), in grey levels on the 0–255 scale, not yet clipped.
Colours are calibrated to the real photograph scikit-image ships (a normal left eye): mid-field
background ≈ (223, 86, 61), fovea ≈ (185, 45, 21), disc centre ≈ (254, 203, 140) with red
saturated, vessel/background ratio ≈ (0.96, 0.77, 0.86) over all vessel pixels, vignetting
15–20 % from mid-field to rim.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from napari_icnn.data.synth._raster import crop_box, crop_grid, noise_field, smoothstep
from napari_icnn.data.synth.geometry import Geometry
from napari_icnn.data.synth.vessels import Vessel, rasterise_tree

__all__ = [
    "Palette",
    "sample_palette",
    "paint_background",
    "paint_macula",
    "paint_disc",
    "paint_vessels",
    "vignetting",
    "paint_field",
    "VIGNETTING_DROP",
]

VIGNETTING_DROP = (0.165, 0.185)  # brightness lost from r/R = 0.5 to r/R = 0.95 (real: 15–20 %)
# Blood seen through the retina, as a fraction of the local background (per RGB channel).
VEIN_RATIO = (0.8, 0.46, 0.62)
ARTERY_RATIO = (0.93, 0.64, 0.78)
VESSEL_MASK_COVERAGE = 0.28  # coverage above which a pixel is labelled vessel


@dataclass(frozen=True)
class Palette:
    """Per-image colours: the fundus pigmentation sets the background and how visible the choroid is."""

    base: tuple[float, float, float]
    """Mid-field background RGB before vignetting."""
    pigment: float
    """0 = lightly pigmented (orange, tessellated), 1 = dark."""
    vignetting: float
    """Fractional drop from r/R = 0.5 to r/R = 0.95."""

    def rgb(self) -> np.ndarray:
        return np.asarray(self.base, dtype=np.float32)


def sample_palette(rng: np.random.Generator) -> Palette:
    """A random fundus colouring: base colour by pigmentation, and the vignetting drop."""
    p = float(rng.beta(2.0, 2.0))
    r = 240.0 - 24.0 * p + rng.normal(0.0, 5.0)
    g = 104.0 - 30.0 * p + rng.normal(0.0, 6.0)
    b = 76.0 - 20.0 * p + rng.normal(0.0, 5.0)
    return Palette(base=(r, g, b), pigment=p, vignetting=float(rng.uniform(*VIGNETTING_DROP)))


def _radius_map(geo: Geometry) -> np.ndarray:
    """Distance to the FOV centre divided by the FOV radius, ``(S, S)`` float32."""
    s = geo.size
    dx = (np.arange(s, dtype=np.float32) - geo.fov_x)[None, :]
    dy = (np.arange(s, dtype=np.float32) - geo.fov_y)[:, None]
    return np.sqrt(dx * dx + dy * dy) * np.float32(1.0 / geo.fov_radius)


def paint_background(rng: np.random.Generator, geo: Geometry, pal: Palette) -> tuple[np.ndarray, np.ndarray]:
    """Orange-red fundus with slow illumination/colour drift and choroidal tessellation.

    Returns the canvas and the normalised radius map (reused by the field painter).
    """
    s = geo.size
    # The texture is smooth at the pixel scale, so it is built at half resolution and upsampled.
    h = (s + 1) // 2
    scale = s / h
    centres = (np.arange(h, dtype=np.float32) + 0.5) * np.float32(scale) - 0.5
    dx, dy = centres[None, :] - geo.fov_x, centres[:, None] - geo.fov_y
    r_half = np.sqrt(dx * dx + dy * dy) * np.float32(1.0 / geo.fov_radius)
    light = noise_field(rng, h, cells=3, octaves=2)
    hue = noise_field(rng, h, cells=2, octaves=1)
    choroid = noise_field(rng, h, cells=13, octaves=2, persistence=0.45)
    grain = noise_field(rng, h, cells=56, octaves=1)
    # Choroidal vessels show as a network of darker pigment lines (zero crossings of the
    # noise), stronger in lightly pigmented eyes and towards the periphery.
    ridge = np.exp(choroid * choroid * np.float32(-1.0 / 0.12))
    strength = rng.uniform(0.015, 0.1) * (1.0 - 0.75 * pal.pigment)
    weight = 0.35 + 0.65 * smoothstep(0.2, 0.9, r_half)
    lum = (1.0 + 0.03 * light) * (1.0 - strength * weight * (ridge - 0.24)) * (1.0 + 0.012 * grain)
    # Texture must not change the radial profile (that is the vignetting's job): every ring
    # around the FOV centre keeps a mean of exactly 1.
    rings = np.minimum((r_half * np.float32(geo.fov_radius / scale)).astype(np.int32), int(geo.fov_radius))
    lum = _upsample(_ring_normalised(lum, rings), s)
    tint = _upsample(_ring_normalised(1.0 + 0.05 * hue, rings), s)
    img = lum[None] * pal.rgb()[:, None, None]
    img[1:] *= tint[None]
    return img, _radius_map(geo)


def _upsample(field: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(
        Image.fromarray(field.astype(np.float32, copy=False)).resize((size, size), Image.Resampling.BILINEAR)
    )


def _ring_normalised(field: np.ndarray, rings: np.ndarray) -> np.ndarray:
    """``field`` divided by its mean over each one-pixel ring (``rings`` = integer radius)."""
    flat = rings.ravel()
    n = int(rings.max()) + 1
    sums = np.bincount(flat, weights=field.ravel(), minlength=n)
    counts = np.bincount(flat, minlength=n)
    mean = np.where(counts > 0, sums / np.maximum(counts, 1), 1.0).astype(np.float32)
    return field / mean[rings]


def paint_macula(rng: np.random.Generator, img: np.ndarray, geo: Geometry) -> None:
    """Darker, browner macula centred on the fovea; a small foveal reflex in some (young) eyes."""
    dd = geo.dd
    sigma = rng.uniform(0.5, 0.7) * dd
    broad = 1.0 * dd
    box = crop_box(geo.fovea_x, geo.fovea_y, 1.5 * dd, geo.size)
    xs, ys = crop_grid(box)
    d2 = (xs - geo.fovea_x) ** 2 + (ys - geo.fovea_y) ** 2
    # The macula fades out by 1.45 DD, inside the mid-field ring where vignetting is referenced.
    fade = 1.0 - smoothstep(1.0, 1.45, np.sqrt(d2) / dd)
    w = (np.exp(-d2 / sigma**2) + 0.3 * np.exp(-d2 / broad**2)) * fade
    k = np.asarray((0.17, 0.46, 0.6), dtype=np.float32) * rng.uniform(0.6, 1.0)
    x0, y0, x1, y1 = box
    crop = img[:, y0:y1, x0:x1]
    crop *= 1.0 - np.minimum(w, 1.0)[None] * k[:, None, None]
    if rng.random() < 0.3:
        reflex = np.exp(-d2 / (0.035 * dd) ** 2)
        crop *= 1.0 + 0.18 * reflex[None]


def paint_disc(rng: np.random.Generator, img: np.ndarray, geo: Geometry) -> np.ndarray:
    """Yellow-white, slightly vertically oval disc with a paler cup and a soft edge.

    Returns the disc mask (the ellipse), ``(S, S)`` bool.
    """
    a, b = geo.disc_width / 2, geo.disc_height / 2
    box = crop_box(geo.disc_x, geo.disc_y, 1.6 * b, geo.size)
    xs, ys = crop_grid(box)
    dx, dy = xs - geo.disc_x, ys - geo.disc_y
    rho = np.sqrt((dx / a) ** 2 + (dy / b) ** 2)
    # Red saturates on the disc in real photographs: its colour is set above the sensor's range.
    rim = np.asarray((rng.uniform(275, 290), rng.uniform(158, 188), rng.uniform(92, 122)), dtype=np.float32)
    cup = np.asarray((290.0, rng.uniform(218, 240), rng.uniform(150, 185)), dtype=np.float32)
    cdr = rng.uniform(0.3, 0.55)
    temporal = -1.0 if geo.laterality == "R" else 1.0  # cup sits slightly temporal in the disc
    cx = geo.disc_x + temporal * rng.uniform(0.03, 0.1) * geo.dd
    rho_cup = np.sqrt(((xs - cx) / (a * cdr * 0.9)) ** 2 + (dy / (b * cdr)) ** 2)
    t_cup = 1.0 / (1.0 + np.exp((rho_cup - 1.0) / 0.18))
    colour = rim[:, None, None] + (cup - rim)[:, None, None] * t_cup[None]
    # Dome-like brightness and a paler temporal side; the nasal rim stays orange.
    side = np.clip(dx * temporal / a, -1.0, 1.0)
    colour *= (1.0 - 0.1 * np.minimum(rho, 1.2) ** 2)[None]
    colour[1:] *= (1.0 + 0.08 * side)[None]
    edge = rng.uniform(0.04, 0.07)
    alpha = 0.97 / (1.0 + np.exp((rho - 1.0) / edge))
    x0, y0, x1, y1 = box
    crop = img[:, y0:y1, x0:x1]
    if rng.random() < 0.35:
        # Peripapillary atrophy: a pale-brown crescent on the temporal border.
        crescent = (
            smoothstep(0.95, 1.05, rho) * (1.0 - smoothstep(1.15, 1.35, rho)) * smoothstep(0.2, 0.8, side)
        )
        crop *= 1.0 - 0.3 * crescent[None] * np.asarray((0.6, 1.0, 1.0), dtype=np.float32)[:, None, None]
    crop += alpha[None] * (colour - crop)
    mask = np.zeros((geo.size, geo.size), dtype=bool)
    mask[y0:y1, x0:x1] = rho <= 1.0
    return mask


def paint_vessels(
    rng: np.random.Generator, img: np.ndarray, vessels: list[Vessel], pal: Palette, size: int
) -> np.ndarray:
    """Blend veins and arteries over the canvas; return the vessel mask, ``(S, S)`` bool."""
    layers = rasterise_tree(vessels, size)
    base = pal.rgb()
    tone = rng.uniform(0.95, 1.05)
    mask = np.zeros((size, size), dtype=bool)
    for kind, ratio, opacity in (("vein", VEIN_RATIO, 0.97), ("artery", ARTERY_RATIO, 0.9)):
        cov = layers[kind]
        blood = base * np.asarray(ratio, dtype=np.float32) * tone
        rows = np.flatnonzero(cov.any(axis=1))
        if not len(rows):
            continue
        sl = slice(rows[0], rows[-1] + 1)
        alpha = (cov[sl] * opacity)[None]
        img[:, sl] += alpha * (blood[:, None, None] - img[:, sl])
        mask |= cov >= VESSEL_MASK_COVERAGE
    return mask


def vignetting(r: np.ndarray, drop: float) -> np.ndarray:
    """Radial fall-off ``1 - A t²`` with ``t`` = (r - 0.3) / 0.7 clipped to [0, 1], scaled so the
    value at r = 0.95 is ``1 - drop`` times the value at r = 0.5."""
    t5, t95 = (0.5 - 0.3) / 0.7, (0.95 - 0.3) / 0.7
    amp = drop / (t95**2 - (1.0 - drop) * t5**2)
    t = np.clip((r - 0.3) * np.float32(1 / 0.7), 0.0, 1.0)
    return 1.0 - np.float32(amp) * t * t


def paint_field(
    rng: np.random.Generator,
    img: np.ndarray,
    geo: Geometry,
    r: np.ndarray,
    pal: Palette,
    *,
    rimless: bool = False,
) -> np.ndarray:
    """Vignetting, the slightly blurred and darkened FOV rim, and the dark surround (not exactly 0).

    Returns the FOV mask, ``(S, S)`` bool (the circle plus the rim marker, if any). With
    ``rimless`` the retina fills the whole canvas: no rim and no surround, the vignetting keeps
    falling beyond the circle (to at most 1.35 times its rim value), and the mask is all true.
    """
    if rimless:
        t = np.clip((r - 0.3) * np.float32(1 / 0.7), 0.0, 1.35)
        t5, t95 = (0.5 - 0.3) / 0.7, (0.95 - 0.3) / 0.7
        amp = pal.vignetting / (t95**2 - (1.0 - pal.vignetting) * t5**2)
        img *= np.maximum(1.0 - np.float32(amp) * t * t, 0.25)[None]
        rng.uniform(0.0, 3.0, 3)  # the surround colour is drawn all the same
        return np.ones(r.shape, dtype=bool)
    v = vignetting(r, pal.vignetting)
    rim_px = max(0.8, 1.2 * geo.size / 512)
    inside = np.clip((1.0 - r) * np.float32(geo.fov_radius / rim_px) + 0.5, 0.0, 1.0)
    v *= 1.0 - 0.25 * smoothstep(0.975, 1.0, r)
    if geo.notch is not None:
        x0, y0, x1, y1 = geo.notch
        x0, y0 = max(x0, 0), max(y0, 0)
        inside[y0:y1, x0:x1] = 1.0
        v[y0:y1, x0:x1] = np.maximum(v[y0:y1, x0:x1], 0.8)
    surround = np.asarray(rng.uniform(0.0, 3.0, 3), dtype=np.float32)
    img *= (v * inside)[None]
    img += (1.0 - inside)[None] * surround[:, None, None]
    return inside >= 0.5
