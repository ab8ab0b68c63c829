"""Small raster helpers shared by the anatomy and lesion painters: noise fields, crops, blobs.

Pixel ``(row, col)`` has its centre at ``(x=col, y=row)``; every coordinate here uses that
convention, so a shape centred on ``(x, y)`` covers the pixels whose centres it contains.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = [
    "noise_field",
    "crop_box",
    "crop_grid",
    "star_blob",
    "dilate1",
    "single_component",
    "smoothstep",
]

_BICUBIC = Image.Resampling.BICUBIC


def noise_field(
    rng: np.random.Generator, size: int, cells: int, octaves: int = 2, persistence: float = 0.5
) -> np.ndarray:
    """Smooth fractal noise of about zero mean and unit spread, ``(size, size)`` float32.

    The octaves are summed on small grids and upsampled once, so the pattern (and its cost)
    does not depend on ``size``: the same generator state gives the same field at any size.
    """
    grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    amp = 1.0
    for k in range(1, octaves):
        n = cells * 2**k + 1
        grid = np.asarray(Image.fromarray(grid).resize((n, n), _BICUBIC))
        amp *= persistence
        grid = grid + amp * rng.standard_normal((n, n)).astype(np.float32)
    grid = (grid - grid.mean()) / (grid.std() + 1e-6)
    return np.asarray(Image.fromarray(grid).resize((size, size), _BICUBIC))


def crop_box(x: float, y: float, half: float, size: int) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``: the square of half-width ``half`` around ``(x, y)``, clipped to the image."""
    h = int(math.ceil(half)) + 1
    cx, cy = int(round(x)), int(round(y))
    return max(cx - h, 0), max(cy - h, 0), min(cx + h + 1, size), min(cy + h + 1, size)


def crop_grid(box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of a crop: ``xs`` of shape ``(1, w)``, ``ys`` of shape ``(h, 1)``."""
    x0, y0, x1, y1 = box
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    return xs, ys


def smoothstep(e0: float, e1: float, v: np.ndarray) -> np.ndarray:
    t = np.clip((v - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def star_blob(
    xs: np.ndarray,
    ys: np.ndarray,
    x: float,
    y: float,
    rx: float,
    ry: float,
    angle: float,
    harmonics: list[tuple[float, float]] | tuple = (),
    soft: float = 0.15,
) -> tuple[np.ndarray, np.ndarray]:
    """A smooth star-shaped blob: ellipse (semi-axes ``rx`` along ``angle``, ``ry`` across) whose
    radius is modulated by ``1 + sum(a_k cos(k θ + φ_k))``.

    Returns ``(alpha, mask)``: alpha falls from 1 inside to 0 across a band of relative width
    ``soft`` around the outline; mask is the outline's inside (alpha >= 0.5). Along every ray from
    the centre the normalised radius grows monotonically, so the shape is connected in the plane.
    """
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = xs - x, ys - y
    u = (dx * c + dy * s) / rx
    v = (-dx * s + dy * c) / ry
    rho = np.sqrt(u * u + v * v)
    if harmonics:
        theta = np.arctan2(v, u)
        edge = np.ones_like(rho)
        for k, (a, phi) in enumerate(harmonics, start=2):
            edge += a * np.cos(k * theta + phi)
        rho = rho / edge
    alpha = np.clip((1.0 - rho) / soft + 0.5, 0.0, 1.0)
    return alpha, rho <= 1.0


def dilate1(mask: np.ndarray) -> np.ndarray:
    """8-connected dilation by one pixel (same shape; the border is not padded outward)."""
    out = mask.copy()
    out[1:, :] |= mask[:-1, :]
    out[:-1, :] |= mask[1:, :]
    tmp = out.copy()
    out[:, 1:] |= tmp[:, :-1]
    out[:, :-1] |= tmp[:, 1:]
    return out


_EIGHT = np.ones((3, 3), dtype=bool)


def single_component(mask: np.ndarray) -> bool:
    """True when ``mask`` is one non-empty 8-connected region."""
    if not mask.any():
        return False
    return ndimage.label(mask, structure=_EIGHT)[1] == 1
