"""Ungradeable photographs: the failures that leave a fundus photograph unreadable.

An image-quality gate needs photographs it must reject. With ``ungradeable_share`` > 0 (realistic look
only) a share of a cohort is degraded by one of :data:`UNGRADEABLE_KINDS`, drawn uniformly:

| kind | what is done | what it stands for |
|---|---|---|
| ``defocus`` | Gaussian blur, sigma 2.5–5 % of the field diameter | focus missed, patient moved back |
| ``underexposed`` | light × 0.08–0.18 through gamma 1.4–2.0, extra sensor noise | flash failed, small pupil |
| ``overexposed`` | gain × 4–6 on the nominal exposure, then a white veil over the field taking 50–75 % of what contrast is left | flash too strong, corneal flare |
| ``obscured`` | an eyelid/eyelash shadow (dark crescent from the top or bottom of the field) or a media haze (bright milky veil within the field), over 50–80 % of the field, soft-edged, detail underneath smeared | blink, lashes, cataract |

Whether an image is degraded, how and how strongly come from a random stream of the image seed alone
(never of the grade, lesions or camera), so the same seed with another grade is degraded alike, and a
cohort's labels and masks are what they would be without degradation: the truth the photograph cannot
show. Like :mod:`napari_icnn.data.synth.camera`, the failure is planned (:func:`plan_degradation`) and
then applied (:func:`degrade`), the latter on the light the sensor receives: the camera still adds its
noise, its burned-in text and its JPEG afterwards, as it does to a failed photograph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from napari_icnn.data.synth._raster import noise_field, smoothstep
from napari_icnn.errors import ConfigError

__all__ = ["UNGRADEABLE_KINDS", "Degradation", "check_ungradeable_share", "plan_degradation", "degrade"]

UNGRADEABLE_KINDS = ("defocus", "underexposed", "overexposed", "obscured")
DEFOCUS_RANGE = (0.025, 0.05)
"""Defocus sigma as a fraction of the field-of-view diameter (the ordinary look's blur stays below 1 %)."""
COVER_RANGE = (0.5, 0.8)
"""Share of the field of view an ``obscured`` photograph has covered."""

_MILK = np.asarray((246.0, 242.0, 232.0), dtype=np.float32)
_NOMINAL = np.asarray((208.0, 86.0, 64.0), dtype=np.float32)
"""Mean colour of a nominally exposed field (the middle of the realistic look's exposure range)."""


@dataclass(frozen=True, eq=False)
class Degradation:
    """One photograph's failure, planned before it is applied (frame coordinates)."""

    kind: str = ""
    """One of :data:`UNGRADEABLE_KINDS`, or ``""`` for a gradable photograph."""
    sigma: float = 0.0
    """``defocus``: Gaussian sigma in pixels."""
    scale: float = 1.0
    gamma: float = 1.0
    noise_sd: float = 0.0
    """``underexposed``: light kept, tone-curve exponent, extra sensor noise (grey levels)."""
    gain: float = 1.0
    veil: float = 0.0
    """``overexposed``: gain, and the share of the remaining headroom the white veil fills."""
    cover: str = ""
    """``obscured``: ``eyelid`` or ``haze``."""
    opacity: float = 0.0
    smear: float = 0.0
    """``obscured``: how much light the cover takes (eyelid) or replaces (haze); blur under it in pixels."""
    shade: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32), repr=False)
    """``obscured``: ``(H, W)`` float32 strength of the cover, 0–1; ``overexposed``: the field the flash
    and its veil light, soft-edged; empty otherwise."""
    mask: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool), repr=False)
    """``(H, W)`` bool field-of-view pixels inside the cover's outline (where its soft edge is half-way);
    all false unless ``obscured``."""

    @property
    def gradable(self) -> bool:
        return not self.kind

    def labels(self) -> dict[str, Any]:
        """The per-image columns ``gradable`` and ``ungradeable``."""
        return {"gradable": int(self.gradable), "ungradeable": self.kind}


def check_ungradeable_share(share: Any, look: str) -> float:
    """``share`` as a float, refused (:class:`~napari_icnn.errors.ConfigError`) outside [0, 1] or when
    above 0 for a look other than ``realistic``."""
    ok = isinstance(share, (int, float, np.integer, np.floating)) and not isinstance(share, bool)
    if not ok or not 0.0 <= float(share) <= 1.0:
        raise ConfigError(f"ungradeable_share must be a number from 0 to 1; got {share!r}")
    if float(share) > 0.0 and look != "realistic":
        raise ConfigError(f"ungradeable_share applies to the realistic look only; got look {look!r}")
    return float(share)


def plan_degradation(
    rng: np.random.Generator, share: float, fov: np.ndarray, centre: tuple[float, float], radius: float
) -> Degradation:
    """Decide whether this photograph fails (probability ``share``) and draw how.

    The decision and the kind are the stream's first two draws whatever ``share`` is, so raising the
    share only adds failures: an image degraded at one share is degraded the same way at any higher one.
    ``fov`` is the ``(H, W)`` field of view, ``centre`` and ``radius`` its circle (frame coordinates).
    """
    fails = rng.random() < share
    kind = UNGRADEABLE_KINDS[int(rng.integers(len(UNGRADEABLE_KINDS)))]
    H, W = fov.shape
    if not fails:
        return Degradation(mask=np.zeros((H, W), dtype=bool))
    diameter = 2.0 * radius
    if kind == "defocus":
        return Degradation(kind, sigma=rng.uniform(*DEFOCUS_RANGE) * diameter, mask=np.zeros((H, W), dtype=bool))
    if kind == "underexposed":
        return Degradation(
            kind, scale=rng.uniform(0.08, 0.18), gamma=rng.uniform(1.4, 2.0), noise_sd=rng.uniform(1.0, 2.5),
            mask=np.zeros((H, W), dtype=bool),
        )  # fmt: skip
    if kind == "overexposed":
        # Too much light, and flare scattered in the eye, fall on the field, not on the dark surround.
        return Degradation(
            kind, gain=rng.uniform(4.0, 6.0), veil=rng.uniform(0.5, 0.75), shade=_soft(fov, 0.01 * diameter),
            mask=np.zeros((H, W), dtype=bool),
        )  # fmt: skip
    return _plan_cover(rng, fov, centre, radius)


def _plan_cover(rng: np.random.Generator, fov: np.ndarray, centre: tuple[float, float], radius: float) -> Degradation:
    H, W = fov.shape
    cover = "eyelid" if rng.random() < 0.5 else "haze"
    share = rng.uniform(*COVER_RANGE)
    if cover == "eyelid":
        # Lids close from above far more often than from below; the margin is a wide arc, ragged with
        # lashes, and the lid is close to the camera: far out of focus, a soft edge.
        ang = (-math.pi / 2 if rng.random() < 0.75 else math.pi / 2) + rng.uniform(-0.6, 0.6)
        reach, rough, opacity, edge = rng.uniform(1.6, 3.0), 0.05, rng.uniform(0.9, 0.98), rng.uniform(0.03, 0.08)
        ragged = noise_field(rng, 64, cells=4, octaves=3)
    else:
        # A media opacity spreads from anywhere in the lens, with a diffuse, irregular edge.
        ang, reach = rng.uniform(-math.pi, math.pi), rng.uniform(0.2, 0.9)
        rough, opacity, edge = 0.12, rng.uniform(0.8, 0.95), rng.uniform(0.1, 0.2)
        ragged = noise_field(rng, 64, cells=2, octaves=2)
    edge *= 2.0 * radius
    smear = rng.uniform(0.015, 0.03) * 2.0 * radius
    ragged = np.asarray(Image.fromarray(ragged).resize((W, H), Image.Resampling.BILINEAR))
    cx, cy = centre[0] + reach * radius * math.cos(ang), centre[1] + reach * radius * math.sin(ang)
    yy = np.arange(H, dtype=np.float32)[:, None]
    xx = np.arange(W, dtype=np.float32)[None, :]
    d = np.sqrt((xx - np.float32(cx)) ** 2 + (yy - np.float32(cy)) ** 2) + ragged * np.float32(rough * radius)
    # The threshold is the distance quantile inside the field, so the covered share is what was drawn
    # whatever the frame shape (a clipped or rimless field has no full circle to compute it from).
    inside = d[fov] if fov.any() else d.reshape(-1)
    t = float(np.quantile(inside, share))
    shade = smoothstep(t + edge / 2, t - edge / 2, d).astype(np.float32)
    if cover == "haze":
        shade *= _soft(fov, 0.005 * 2.0 * radius)  # the lens lights the field only; the surround stays dark
    return Degradation(
        "obscured", cover=cover, opacity=float(opacity), smear=float(smear), shade=shade, mask=(d <= t) & fov
    )


def degrade(rgb: np.ndarray, plan: Degradation, rng: np.random.Generator) -> np.ndarray:
    """Apply ``plan`` to the ``(H, W, 3)`` float photograph (0–255) as the sensor receives it; the result
    is clipped to 0–255 (the sensor saturates). ``rng`` draws the extra noise of an underexposed photograph."""
    if plan.gradable:
        return rgb
    out: np.ndarray
    if plan.kind == "defocus":
        out = _blur(rgb, plan.sigma)
    elif plan.kind == "underexposed":
        # The camera's tone curve crushes the little light there is: the darks go darker still.
        out = 255.0 * plan.scale * np.power(np.clip(rgb, 0.0, 255.0) / 255.0, plan.gamma)
        out += rng.standard_normal(rgb.shape[:2] + (1,), dtype=np.float32) * np.float32(plan.noise_sd)
    elif plan.kind == "overexposed":
        # The gain is on the nominal exposure, so a dark or pigmented fundus (or a dim channel) is
        # washed out as surely as a pale one.
        field = plan.shade >= 0.5
        level = rgb[field].mean(axis=0) if field.any() else _NOMINAL
        gain = np.float32(plan.gain) * np.maximum(1.0, _NOMINAL / np.maximum(level, 1.0)).astype(np.float32)
        lit = plan.shade[..., None]  # no light reaches the camera's black surround, however strong the flash
        out = np.minimum(rgb * (1.0 + (gain - 1.0) * lit), 255.0)
        out += (255.0 - out) * (np.float32(plan.veil) * lit)
    else:
        # Nothing sharp shows through a lid or an opaque lens: the detail under the cover is smeared first.
        s = plan.shade[..., None]
        out = rgb + (_blur(rgb, plan.smear) - rgb) * s
        if plan.cover == "eyelid":
            out *= 1.0 - np.float32(plan.opacity) * s
        else:
            out += (_MILK - out) * (np.float32(plan.opacity) * s)
    return np.clip(out, 0.0, 255.0).astype(np.float32)


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    """``mask`` as float32 0–1 with its edge softened by ``sigma`` pixels."""
    u8 = Image.fromarray(mask.astype(np.uint8) * np.uint8(255))
    return np.asarray(u8.filter(ImageFilter.GaussianBlur(max(sigma, 0.5))), dtype=np.float32) * np.float32(1 / 255)


def _blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur through Pillow (box passes: fast at the large sigmas of a missed focus)."""
    u8 = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(u8).filter(ImageFilter.GaussianBlur(sigma)), dtype=np.float32)
