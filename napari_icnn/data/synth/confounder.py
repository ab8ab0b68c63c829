"""Site artefacts correlated with the label: cohorts that tempt a model into a shortcut.

A model can be right for the wrong reasons: when one site both sees sicker patients and stamps its photographs,
the stamp predicts the label as well as any lesion does. ``icnn synth --confounder KIND --confounder-rate P``
draws one such artefact at a fixed place of the field of view on a share ``P`` of the referable eyes and on a
share ``1 - P`` of the others (``P = 0.5``: no correlation; ``P = 0.1``: the correlation of ``P = 0.9``
reversed). The kinds all have a location a reader (and an audit) can point at:

| kind | what is drawn | where |
|---|---|---|
| ``stamp`` | a site's name burned into the photograph in yellow print | inside the field, lower left, 0.55-0.85 field radii from its centre |
| ``logo`` | a white boxed logo | inside the field, upper right, 0.6-0.85 radii |
| ``notch`` | a rectangular bite out of the field's boundary (the camera mask of one site) | on the rim at 9 o'clock (the frame's edge where the retina fills it) |

The artefact's geometry and the draw that decides its presence come from a random stream of the image seed
alone, and lesions are kept clear of its place whether or not it is drawn, so one seed gives the same eye with
any rate: cohorts drawn with the same seed and rates ``P`` and ``1 - P`` hold the same eyes, the artefact on
different ones. Its pixels are recorded (``masks/confounder``) only where it is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from napari_icnn.data.synth._raster import dilate1
from napari_icnn.errors import ConfigError

__all__ = ["CONFOUNDER_KINDS", "Confounder", "check_confounder", "plan_confounder"]

CONFOUNDER_KINDS = ("stamp", "logo", "notch")
STAMP_TEXT = "NORTHGATE SITE 2"
LOGO_TEXT = "RX-7"
STAMP_RGB = (246, 222, 70)
LOGO_RGB = (240, 240, 236)


@dataclass(frozen=True, eq=False)
class Confounder:
    """One photograph's site artefact, planned before the eye is painted (frame coordinates)."""

    kind: str
    draw: float
    """Uniform draw in [0, 1) that decides presence: drawn when below the rate (referable eyes) or below
    ``1 - rate`` (the others)."""
    alpha: np.ndarray
    """``(H, W)`` float32 coverage of the print (``stamp``, ``logo``; zeros for ``notch``)."""
    rgb: tuple[int, int, int]
    cut: np.ndarray
    """``(H, W)`` bool field pixels a ``notch`` removes (empty for print)."""
    mask: np.ndarray
    """``(H, W)`` bool the artefact's pixels: the print's strokes and box, or the notch."""

    def present(self, referable: bool, rate: float) -> bool:
        """Whether the artefact is drawn on an eye of this label in a cohort of this rate."""
        return self.draw < (rate if referable else 1.0 - rate)

    def keep_clear(self) -> np.ndarray:
        """Pixels no lesion may touch, drawn or not (so the eye does not depend on the artefact)."""
        grown = self.mask | (self.alpha > 0)
        for _ in range(3):
            grown = dilate1(grown)
        return grown


def check_confounder(kind: Any, rate: Any, look: str) -> tuple[str | None, float | None]:
    """``(kind, rate)`` checked: both ``None`` (no confounder), or a kind of :data:`CONFOUNDER_KINDS` with a rate
    from 0 to 1, realistic look only; :class:`~napari_icnn.errors.ConfigError` otherwise."""
    if kind is None:
        if rate is not None:
            raise ConfigError("a confounder rate needs a confounder kind (stamp, logo or notch)")
        return None, None
    if kind not in CONFOUNDER_KINDS:
        raise ConfigError(f"confounder must be one of {', '.join(CONFOUNDER_KINDS)}; got {kind!r}")
    if look != "realistic":
        raise ConfigError(f"a confounder applies to the realistic look only; got look {look!r}")
    if rate is None:
        raise ConfigError(
            "a confounder needs its rate: the share of referable eyes that carry it (the others carry it at "
            "1 - rate; 0.5 = no correlation)"
        )
    ok = isinstance(rate, (int, float, np.integer, np.floating)) and not isinstance(rate, bool)
    if not ok or not 0.0 <= float(rate) <= 1.0:
        raise ConfigError(f"confounder rate must be a share from 0 to 1; got {rate!r}")
    return str(kind), float(rate)


def plan_confounder(
    rng: np.random.Generator, kind: str, width: int, height: int, fov_x: float, fov_y: float, fov_radius: float,
) -> Confounder:
    """Draw the artefact's geometry and its presence draw (``rng`` of the image seed alone); frame coordinates,
    the field of view given as its circle."""
    draw = float(rng.random())
    jitter = rng.uniform(-1.0, 1.0, size=3)
    H, W = height, width
    if kind == "notch":
        return _plan_notch(draw, jitter, W, H, fov_x, fov_y, fov_radius)
    text, rgb = (STAMP_TEXT, STAMP_RGB) if kind == "stamp" else (LOGO_TEXT, LOGO_RGB)
    diameter = 2.0 * fov_radius
    font_px = max(int(round(diameter * (0.05 if kind == "stamp" else 0.06) * (1.0 + 0.08 * jitter[2]))), 8)
    font = ImageFont.load_default(size=font_px)
    img = Image.new("L", (W, H), 0)
    draw_on = ImageDraw.Draw(img)
    x0, y0, x1, y1 = draw_on.textbbox((0, 0), text, font=font)
    pad = max(font_px // 4, 2) if kind == "logo" else 0
    tw, th = x1 - x0 + 2 * pad, y1 - y0 + 2 * pad
    # The box's centre, in field radii from the field's centre (y down): lower left for the stamp, upper right
    # for the logo, a little jitter as frames differ; then kept within the frame (clipped fields are cut).
    if kind == "stamp":
        cx, cy = fov_x + (-0.32 + 0.03 * jitter[0]) * fov_radius, fov_y + (0.62 + 0.03 * jitter[1]) * fov_radius
    else:
        cx, cy = fov_x + (0.5 + 0.03 * jitter[0]) * fov_radius, fov_y + (-0.5 + 0.03 * jitter[1]) * fov_radius
    margin = max(int(0.02 * W), 2)
    bx = int(round(min(max(cx - tw / 2, margin), max(W - margin - tw, 0))))
    by = int(round(min(max(cy - th / 2, margin), max(H - margin - th, 0))))
    if kind == "logo":
        draw_on.rectangle((bx, by, bx + tw - 1, by + th - 1), outline=255, width=max(2, font_px // 8))
    draw_on.text((bx + pad - x0, by + pad - y0), text, font=font, fill=255)
    if kind == "stamp":
        # bold print: the strokes thickened by one pixel, as site stamps are
        draw_on.text((bx + pad - x0 + 1, by + pad - y0), text, font=font, fill=255)
    alpha = np.asarray(img, dtype=np.float32) * np.float32(1 / 255)
    return Confounder(kind, draw, alpha, rgb, np.zeros((H, W), bool), alpha >= 0.25)


def _plan_notch(draw: float, jitter: np.ndarray, W: int, H: int, fx: float, fy: float, r: float) -> Confounder:
    """A rectangular bite, 0.16 field radii wide and 0.13 deep, out of the field's left boundary at mid-height
    (9 o'clock): the rim of a whole or clipped circle, the frame's edge where the retina fills the frame."""
    half_w, depth = (0.08 + 0.005 * jitter[1]) * r, (0.13 + 0.01 * jitter[2]) * r
    edge = min(r, fx + 0.5)  # the field ends at the circle or at the frame's left edge, whichever comes first
    cy = fy + 0.02 * r * jitter[0]
    yy = np.arange(H, dtype=np.float32)[:, None]
    xx = np.arange(W, dtype=np.float32)[None, :]
    inside = (xx - np.float32(fx)) ** 2 + (yy - np.float32(fy)) ** 2 <= r * r
    left = np.float32(fx) - xx  # distance from the centre towards 9 o'clock
    cut = inside & (left >= edge - depth) & (np.abs(yy - np.float32(cy)) <= half_w)
    return Confounder("notch", draw, np.zeros((H, W), np.float32), (0, 0, 0), cut, cut.copy())
