"""Where things are in one synthetic fundus: field of view, optic disc, fovea.

The numbers follow real macula-centred 45° photographs (see the module constants): the disc is
about 1/7 of the field wide, sits 0.30–0.34 field diameters nasal of the fovea and 5–8° above it,
on the image left for a left eye and on the right for a right eye.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Geometry", "sample_geometry"]

FOV_DIAMETER = (0.92, 1.0)  # x image size
FOV_CENTRE_JITTER = 0.012  # x image size, standard deviation
FOVEA_OFFSET = 0.045  # x image size, uniform either way (photographs are macula-centred, ±5 %)
DISC_WIDTH = (0.125, 0.142)  # horizontal disc diameter, x FOV diameter (real: ≈0.135)
DISC_ASPECT = (1.04, 1.10)  # vertical / horizontal
DISC_FOVEA = (0.306, 0.334)  # centre distance, x FOV diameter (real: 0.32 ≈ 2.4 DD)
DISC_ELEVATION_DEG = (5.0, 8.0)  # disc centre above the horizontal through the fovea
NOTCH_PROBABILITY = 0.2  # a small rectangular camera marker on the rim


def _r2(v: float) -> float:
    # Geometry is rounded to 0.01 px before anything is drawn, so the numbers written to
    # labels.csv reproduce every label derived from them (DME distance, quadrants) exactly.
    return round(float(v), 2)


@dataclass(frozen=True)
class Geometry:
    """Landmarks of one synthetic fundus, in image pixels (``x`` = column, ``y`` = row)."""

    size: int
    laterality: str
    """``"L"`` (disc on the image left) or ``"R"``."""
    fov_x: float
    fov_y: float
    fov_radius: float
    disc_x: float
    disc_y: float
    disc_width: float
    """Horizontal disc diameter: the disc diameter (DD) used as the unit of retinal distances."""
    disc_height: float
    fovea_x: float
    fovea_y: float
    notch: tuple[int, int, int, int] | None = None
    """``(x0, y0, x1, y1)`` of the rim marker, or ``None``."""

    def __post_init__(self) -> None:
        if self.laterality not in ("L", "R"):
            raise ValueError(f"laterality must be 'L' or 'R'; got {self.laterality!r}")
        side = self.disc_x - self.fovea_x
        if (side < 0) != (self.laterality == "L"):
            raise ValueError(
                f"disc at x={self.disc_x} is on the wrong side of the fovea for eye {self.laterality}"
            )

    @property
    def dd(self) -> float:
        """One disc diameter in pixels."""
        return self.disc_width

    def frame(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit vectors ``(nasal, superior)``: fovea → disc, and perpendicular towards the image top."""
        n = np.array([self.disc_x - self.fovea_x, self.disc_y - self.fovea_y])
        n /= np.linalg.norm(n)
        s = np.array([n[1], -n[0]])
        if s[1] > 0:
            s = -s
        return n, s

    def to_px(self, a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
        """Retinal coordinates in disc diameters (``a`` nasal, ``b`` superior, fovea at 0) → ``(..., 2)`` pixels."""
        n, s = self.frame()
        a = np.asarray(a, dtype=np.float64)[..., None]
        b = np.asarray(b, dtype=np.float64)[..., None]
        return np.array([self.fovea_x, self.fovea_y]) + self.dd * (a * n + b * s)

    def to_retina(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of :meth:`to_px`."""
        n, s = self.frame()
        d = (np.asarray(xy, dtype=np.float64) - [self.fovea_x, self.fovea_y]) / self.dd
        return d @ n, d @ s


def sample_geometry(
    rng: np.random.Generator,
    size: int,
    laterality: str,
    *,
    fov_scale: float = 1.0,
    notch: bool | None = None,
) -> Geometry:
    """Draw the landmarks of one image of ``size`` × ``size`` pixels for eye ``laterality``.

    ``fov_scale`` enlarges the field of view beyond the canvas (a rimless wide field whose circle
    reaches past the frame); ``notch`` forces the rim marker on or off (``None``: drawn with
    :data:`NOTCH_PROBABILITY`). The random draws are the same whatever these two options say.
    """
    diameter = rng.uniform(*FOV_DIAMETER) * size * fov_scale
    jitter = np.clip(rng.normal(0.0, FOV_CENTRE_JITTER, 2), -0.02, 0.02) * size
    fov_x, fov_y = size / 2 + jitter[0], size / 2 + jitter[1]
    fovea = size / 2 + rng.uniform(-FOVEA_OFFSET, FOVEA_OFFSET, 2) * size
    width = rng.uniform(*DISC_WIDTH) * diameter
    height = width * rng.uniform(*DISC_ASPECT)
    dist = rng.uniform(*DISC_FOVEA) * diameter
    elev = math.radians(rng.uniform(*DISC_ELEVATION_DEG))
    sign = -1.0 if laterality == "L" else 1.0
    disc_x = fovea[0] + sign * dist * math.cos(elev)
    disc_y = fovea[1] - dist * math.sin(elev)
    drawn = None
    if rng.random() < NOTCH_PROBABILITY or notch:
        # A small tab outside the circle, upper right as on common camera masks.
        ang = math.radians(rng.uniform(-60.0, -30.0))
        r = diameter / 2
        w, h = 0.035 * size, 0.03 * size
        px, py = fov_x + r * math.cos(ang), fov_y + r * math.sin(ang)
        drawn = (int(px - w / 2), int(py - h / 2), int(px + w / 2), int(py + h / 2))
    if notch is False:
        drawn = None
    return Geometry(
        size=size,
        laterality=laterality,
        fov_x=_r2(fov_x),
        fov_y=_r2(fov_y),
        fov_radius=_r2(diameter / 2),
        disc_x=_r2(disc_x),
        disc_y=_r2(disc_y),
        disc_width=_r2(width),
        disc_height=_r2(height),
        fovea_x=_r2(fovea[0]),
        fovea_y=_r2(fovea[1]),
        notch=drawn,
    )
