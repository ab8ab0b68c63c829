"""Camera variety for the ``realistic`` look: frames, burned-in text and photographic artefacts.

Each photograph draws one :class:`Profile` from :data:`PROFILES` (weights ``weight``), a frame
size, and every artefact's parameters from its own random streams, which depend on the seed only,
never on the grade or the lesions. The artefacts are planned *before* the lesions are drawn (the
lesions keep off them, so lesion masks stay exact) and rendered after, at the final resolution:

| field-of-view shape | frame | what real cameras it stands for |
|---|---|---|
| ``circle`` | square, or wide with black margins left and right | desktop 45° cameras |
| ``clipped`` | 4:3 or 3:2, circle wider than the frame is high | wide sensors, DSLR backs (IDRiD, Messidor) |
| ``rimless`` | 5:4 to 3:2, retina fills the frame | cameras that crop inside the field |
| ``notched`` | square or 5:4, a rectangular marker on the rim | camera masks with an orientation tab |

Artefacts (each recorded per image, see :data:`napari_icnn.data.synth.cohort`): burned-in text
(timestamps, clinic names, patient-ID-like strings, camera settings, small logo boxes) at corners
and edges, white, yellow or green; colour cast (yellow, green); exposure spread; defocus or motion
blur; uneven illumination; extra vignetting; central (macular) reflex; lens dust; reflections
(a bright arc or a milky haze near the rim); sensor noise; JPEG at quality 55–97.

The painting canvas is square (the anatomy painters' convention); the frame is an exact crop of
it, padded with the dark surround where the frame is wider than the canvas. Masks are cropped
and padded the same way, never resized.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from napari_icnn.data.synth._raster import dilate1, noise_field, smoothstep
from napari_icnn.errors import ConfigError

__all__ = [
    "Profile",
    "PROFILES",
    "FOV_SHAPES",
    "SIZE_RANGE",
    "MIN_REALISTIC_SIZE",
    "Frame",
    "Artefacts",
    "sample_frame",
    "plan_artefacts",
    "render",
]

FOV_SHAPES = ("circle", "clipped", "rimless", "notched")
SIZE_RANGE = (400, 1600)
"""Frame widths (px) drawn log-uniformly when no fixed size is asked for."""
MIN_REALISTIC_SIZE = 96

WHITE, YELLOW, GREEN = (238, 238, 232), (246, 222, 70), (96, 236, 110)


@dataclass(frozen=True)
class Profile:
    """One kind of camera: its field-of-view shape, frame shapes and artefact tendencies."""

    name: str
    fov_shape: str
    """One of :data:`FOV_SHAPES`."""
    aspects: tuple[float, ...]
    """Frame width / height, one drawn per image."""
    weight: float
    """Share of the cohort."""
    text_colours: tuple[tuple[int, int, int], ...]
    """Colours of its burned-in text; one drawn per image."""
    text_probability: float
    """Chance that an image carries burned-in text."""
    cast: tuple[float, float, float]
    """Probabilities of no cast, a yellow cast, a green cast."""
    blur: tuple[float, float, float]
    """Probabilities of no extra blur, defocus, motion blur."""
    dust_rate: float
    """Mean number of dust specks."""


PROFILES: tuple[Profile, ...] = (
    Profile("desktop-45", "circle", (1.0,), 0.20, (WHITE, YELLOW), 0.7, (0.6, 0.25, 0.15), (0.75, 0.15, 0.1), 0.8),
    Profile("desktop-wide", "circle", (1.25, 1.333, 1.5), 0.14, (WHITE, GREEN), 0.8, (0.6, 0.15, 0.25), (0.7, 0.2, 0.1), 0.6),
    Profile("sensor-3:2", "clipped", (1.5,), 0.18, (WHITE, YELLOW), 0.75, (0.55, 0.3, 0.15), (0.7, 0.2, 0.1), 1.0),
    Profile("sensor-4:3", "clipped", (1.333,), 0.12, (WHITE, GREEN, YELLOW), 0.7, (0.6, 0.2, 0.2), (0.7, 0.2, 0.1), 0.8),
    Profile("widefield", "rimless", (1.25, 1.333, 1.5), 0.16, (WHITE, YELLOW, GREEN), 0.8, (0.65, 0.2, 0.15), (0.7, 0.2, 0.1), 0.5),
    Profile("marker-45", "notched", (1.0, 1.25), 0.12, (WHITE, GREEN), 0.65, (0.6, 0.2, 0.2), (0.7, 0.15, 0.15), 0.8),
    Profile("handheld", "circle", (1.0, 1.333), 0.08, (WHITE, YELLOW), 0.6, (0.45, 0.3, 0.25), (0.4, 0.35, 0.25), 1.5),
)  # fmt: skip
_WEIGHTS = np.asarray([p.weight for p in PROFILES]) / sum(p.weight for p in PROFILES)
CAMERA_NAMES: tuple[str, ...] = tuple(p.name for p in PROFILES)
"""The camera profiles' names, in :data:`PROFILES` order."""


def check_cameras(cameras: Any) -> tuple[str, ...] | None:
    """The camera profiles a cohort is restricted to, as a tuple in :data:`PROFILES` order without repeats,
    or ``None`` (every profile, by its weight); :class:`~napari_icnn.errors.ConfigError` for an empty choice,
    a name that is not a profile's, or a bare string (which would be read letter by letter)."""
    if cameras is None:
        return None
    if isinstance(cameras, str) or not all(isinstance(c, str) for c in cameras) or not cameras:
        raise ConfigError(f"cameras must be a non-empty list of camera profile names ({', '.join(CAMERA_NAMES)}) "
                          f"or None for all of them; got {cameras!r}")
    unknown = [c for c in cameras if c not in CAMERA_NAMES]
    if unknown:
        raise ConfigError(f"unknown camera profile {', '.join(map(repr, unknown))}; the profiles are "
                          f"{', '.join(CAMERA_NAMES)}")
    return tuple(c for c in CAMERA_NAMES if c in cameras)

CLINICS = (
    "RIVERSIDE EYE CLINIC", "Northgate Retina Service", "DR SCREENING UNIT 3", "St. Lucia Ophthalmology",
    "City Diabetes Centre", "EYE DEPT - WARD 7", "Hillview Medical", "Mobile Screening Van 2",
    "Lakeshore Vision Care", "CENTRO OFTALMOLOGICO", "Klinik fur Augenheilkunde", "Kingsway Optometry",
)  # fmt: skip
LOGOS = ("TRC", "CR-2", "VX", "NW8", "FF450", "KOWA", "DRS", "AFC")


@dataclass(frozen=True)
class Frame:
    """The photograph's frame and where it sits on the square painting canvas.

    Frame pixel ``(y, x)`` is canvas pixel ``(y + oy, x + ox)``; frame pixels off the canvas are
    the dark surround.
    """

    profile: Profile
    width: int
    height: int
    canvas: int
    """Side of the square canvas the eye is painted on."""
    ox: int
    oy: int
    fov_scale: float
    """FOV diameter relative to the clean look's (> 1: the circle reaches beyond the canvas)."""

    def crop(self, a: np.ndarray, fill: Any) -> np.ndarray:
        """``a`` of shape ``(..., S, S)`` (canvas) as ``(..., H, W)`` (frame), off-canvas pixels ``fill``."""
        out = np.empty((*a.shape[:-2], self.height, self.width), dtype=a.dtype)
        out[...] = fill
        (fy0, fy1, cy0, cy1), (fx0, fx1, cx0, cx1) = self._spans()
        out[..., fy0:fy1, fx0:fx1] = a[..., cy0:cy1, cx0:cx1]
        return out

    def to_canvas(self, a: np.ndarray, fill: bool) -> np.ndarray:
        """A frame-sized bool mask on the canvas grid, canvas pixels off the frame ``fill``."""
        out = np.full((self.canvas, self.canvas), fill, dtype=bool)
        (fy0, fy1, cy0, cy1), (fx0, fx1, cx0, cx1) = self._spans()
        out[cy0:cy1, cx0:cx1] = a[fy0:fy1, fx0:fx1]
        return out

    def _spans(self) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
        def span(n: int, off: int) -> tuple[int, int, int, int]:
            f0, f1 = max(0, -off), min(n, self.canvas - off)
            return f0, f1, f0 + off, f1 + off

        return span(self.height, self.oy), span(self.width, self.ox)


def sample_frame(rng: np.random.Generator, size: int | None, size_range: tuple[int, int] = SIZE_RANGE,
                 cameras: tuple[str, ...] | None = None) -> Frame:
    """Draw a camera profile and its frame; ``size`` fixes the frame width (else drawn from ``size_range``).

    ``cameras`` (checked by :func:`check_cameras`) restricts the profile to those named, drawn by their relative
    weights; ``None`` draws from every profile. The same draws happen whatever ``size`` and ``cameras`` are, so
    fixing either changes nothing else.
    """
    if cameras is None:
        prof = PROFILES[int(rng.choice(len(PROFILES), p=_WEIGHTS))]
    else:
        allowed = [p for p in PROFILES if p.name in cameras]
        w = np.asarray([p.weight for p in allowed])
        prof = allowed[int(rng.choice(len(allowed), p=w / w.sum()))]
    aspect = prof.aspects[int(rng.integers(len(prof.aspects)))]
    lo, hi = size_range
    drawn = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
    k = rng.uniform(1.25, 1.45)
    scale = rng.uniform(1.06, 1.14)
    width = int(size) if size is not None else drawn
    height = max(int(round(width / aspect)), 2)
    if prof.fov_shape == "rimless":
        canvas = width
    else:
        # The circle (at most 0.96 of the canvas, centre within 2 % of it) stays on the canvas,
        # so a frame wider than the canvas never shows a straight cut in the circle's side.
        canvas = min(int(round(height * k)), width) if prof.fov_shape == "clipped" else height
        scale = 0.96
    return Frame(prof, width, height, canvas, (canvas - width) // 2, (canvas - height) // 2, float(scale))


# -- the artefact plan ---------------------------------------------------------------------------


@dataclass(eq=False)
class Artefacts:
    """Every artefact of one photograph, drawn before painting (frame coordinates)."""

    frame: Frame
    texts: list[tuple[str, int, int, int, tuple[int, int, int], bool]]
    """``(text, x, y, font px, RGB, boxed)`` of each burned-in item."""
    text_alpha: np.ndarray
    """``(H, W)`` float32 coverage of the burned-in text and boxes."""
    text_rgb: tuple[int, int, int]
    cast: str
    cast_rgb: tuple[float, float, float]
    exposure: float
    blur: str
    blur_px: float
    blur_angle: float
    dust_alpha: np.ndarray
    """``(H, W)`` float32 fraction of light each dust speck takes away."""
    n_dust: int
    reflection: str
    reflection_field: np.ndarray
    """``(H, W)`` float32 added light (fraction of white)."""
    illumination: float
    illumination_field: np.ndarray
    vignetting: float
    sheen: float
    sheen_field: np.ndarray
    noise_sd: float
    jpeg_quality: int
    subsampling: int
    radius: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    """``(H, W)`` float32 distance to the FOV centre over the FOV radius."""
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    """``text``, ``dust``, ``reflection``: the pixels each artefact visibly changes."""

    def keep_clear(self) -> np.ndarray:
        """Frame pixels no lesion may touch: text (with a margin), dust and reflections."""
        text = self.masks["text"]
        if text.any():
            text = dilate1(dilate1(text))
        return text | self.masks["dust"] | self.masks["reflection"]

    def labels(self) -> dict[str, Any]:
        """The per-image columns that describe the camera and its artefacts."""
        f = self.frame
        return {
            "camera": f.profile.name,
            "fov_shape": f.profile.fov_shape,
            "width": f.width,
            "height": f.height,
            "n_text": len(self.texts),
            "cast": self.cast,
            "exposure": round(self.exposure, 3),
            "illumination": round(self.illumination, 3),
            "vignetting": round(self.vignetting, 3),
            "blur": self.blur,
            "blur_px": round(self.blur_px, 2),
            "dust": self.n_dust,
            "reflection": self.reflection,
            "sheen": round(self.sheen, 3),
        }


def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=px)


def _text_items(rng: np.random.Generator) -> list[str]:
    year, month, day = int(rng.integers(2008, 2027)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    hh, mm, ss = int(rng.integers(7, 19)), int(rng.integers(0, 60)), int(rng.integers(0, 60))
    stamps = (
        f"{year}/{month:02d}/{day:02d} {hh:02d}:{mm:02d}:{ss:02d}",
        f"{day:02d}-{month:02d}-{year} {hh:02d}:{mm:02d}",
        f"{month:02d}/{day:02d}/{year % 100:02d} {hh % 12 + 1}:{mm:02d}:{ss:02d} {'AM' if hh < 12 else 'PM'}",
    )
    ids = (
        f"ID: {int(rng.integers(10**7, 10**8))}",
        f"PID {int(rng.integers(1000, 9999))}-{int(rng.integers(1000, 9999))}",
        f"MRN A{int(rng.integers(10**6, 10**7)):07d}",
    )
    settings = (
        f"45{chr(176)} FLASH {int(rng.integers(1, 6))}",
        f"ISO {int(rng.choice([100, 200, 400, 800]))}  1/{int(rng.choice([30, 60, 125]))}",
        f"G:{int(rng.integers(0, 12))} F:{int(rng.integers(1, 9))}",
    )
    return [
        stamps[int(rng.integers(len(stamps)))],
        CLINICS[int(rng.integers(len(CLINICS)))],
        ids[int(rng.integers(len(ids)))],
        settings[int(rng.integers(len(settings)))],
        LOGOS[int(rng.integers(len(LOGOS)))],
    ]


def plan_artefacts(
    rng: np.random.Generator, frame: Frame, fov_x: float, fov_y: float, fov_radius: float, fovea: tuple[float, float], dd: float
) -> Artefacts:
    """Draw every artefact of one photograph (frame coordinates; the FOV and fovea given in them).

    Only ``rng`` and the frame/FOV geometry (which depend on the seed alone) are used.
    """
    W, H, prof = frame.width, frame.height, frame.profile
    u = W / 512.0  # artefact sizes scale with the frame

    # -- burned-in text ---------------------------------------------------------------------
    has_text = rng.random() < prof.text_probability
    n_items = int(rng.integers(1, 6))
    colour = prof.text_colours[int(rng.integers(len(prof.text_colours)))]
    font_px = max(int(round(W * rng.uniform(0.019, 0.03))), 8)
    contents = _text_items(rng)
    order = rng.permutation(len(contents))
    corners = rng.permutation(4)
    margin = max(int(round(W * rng.uniform(0.01, 0.025))), 2)
    text_img = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(text_img)
    font = _font(font_px)
    texts: list[tuple[str, int, int, int, tuple[int, int, int], bool]] = []
    cursor = dict.fromkeys(range(4), 0)
    for j in range(n_items if has_text else 0):
        content = contents[int(order[j])]
        boxed = content in LOGOS
        corner = int(corners[j % 4]) if j < 4 else int(corners[int(rng.integers(4))])
        x0, y0, x1, y1 = draw.textbbox((0, 0), content, font=font)
        tw, th = x1 - x0 + (6 if boxed else 0), y1 - y0 + (6 if boxed else 0)
        line = cursor[corner]
        cursor[corner] += 1
        right, bottom = corner in (1, 3), corner in (2, 3)
        x = W - margin - tw if right else margin
        step = int(th + max(2, font_px // 3))
        y = H - margin - th - line * step if bottom else margin + line * step
        x, y = min(max(x, 0), max(W - tw, 0)), min(max(y, 0), max(H - th, 0))
        if boxed:
            draw.rectangle((x, y, x + tw - 1, y + th - 1), outline=255, width=max(1, font_px // 10))
            draw.text((x + 3 - x0, y + 3 - y0), content, font=font, fill=255)
        else:
            draw.text((x - x0, y - y0), content, font=font, fill=255)
        texts.append((content, int(x), int(y), font_px, colour, boxed))
    text_alpha = np.asarray(text_img, dtype=np.float32) * np.float32(1 / 255)

    # -- photographic artefacts -------------------------------------------------------------
    cast = ("none", "yellow", "green")[int(rng.choice(3, p=prof.cast))]
    k = rng.uniform(0.06, 0.2)
    cast_rgb = {"none": (1.0, 1.0, 1.0), "yellow": (1.0 + 0.3 * k, 1.0 + 0.5 * k, 1.0 - 2.2 * k),
                "green": (1.0 - 0.8 * k, 1.0 + 0.7 * k, 1.0 - 0.4 * k)}[cast]  # fmt: skip
    exposure = float(np.clip(math.exp(rng.normal(0.0, 0.28)), 0.5, 1.8))
    blur = ("none", "defocus", "motion")[int(rng.choice(3, p=prof.blur))]
    blur_px = {"none": 0.0, "defocus": rng.uniform(0.8, 3.0) * u, "motion": rng.uniform(2.0, 8.0) * u}[blur]
    blur_angle = rng.uniform(0.0, math.pi)

    yy = np.arange(H, dtype=np.float32)[:, None]
    xx = np.arange(W, dtype=np.float32)[None, :]
    dxf, dyf = xx - np.float32(fov_x), yy - np.float32(fov_y)
    r = np.sqrt(dxf * dxf + dyf * dyf) * np.float32(1.0 / fov_radius)
    fov_rim = r <= 1.0

    n_dust = int(min(rng.poisson(prof.dust_rate), 8))
    dust = np.zeros((H, W), dtype=np.float32)
    for _ in range(n_dust):
        rad = 0.85 * fov_radius * math.sqrt(rng.random())
        ang = rng.uniform(0.0, 2 * math.pi)
        cx, cy = fov_x + rad * math.cos(ang), fov_y + rad * math.sin(ang)
        s = rng.uniform(3.0, 9.0) * u
        strength = rng.uniform(0.12, 0.35)
        h = int(3 * s) + 1
        bx0, by0 = max(int(cx) - h, 0), max(int(cy) - h, 0)
        bx1, by1 = min(int(cx) + h + 1, W), min(int(cy) + h + 1, H)
        if bx1 <= bx0 or by1 <= by0:
            continue
        d2 = (xx[:, bx0:bx1] - cx) ** 2 + (yy[by0:by1] - cy) ** 2
        # A soft disc with a slightly darker ring: an out-of-focus particle on the optics.
        rho = np.sqrt(d2) / s
        spot = strength * (smoothstep(1.0, 0.55, rho) * (0.8 + 0.2 * smoothstep(0.3, 0.9, rho)))
        np.maximum(dust[by0:by1, bx0:bx1], spot.astype(np.float32), out=dust[by0:by1, bx0:bx1])

    reflection = ("none", "arc", "haze")[int(rng.choice(3, p=(0.55, 0.25, 0.2)))]
    ang0 = rng.uniform(-math.pi, math.pi)
    width_a = rng.uniform(0.35, 1.1)
    strength_r = rng.uniform(0.12, 0.35)
    refl = np.zeros((H, W), dtype=np.float32)
    if reflection != "none":
        theta = np.arctan2(dyf, dxf)
        window = np.exp((np.cos(theta - np.float32(ang0)) - 1.0) / np.float32(width_a**2 / 2))
        if reflection == "arc":
            r0, w = rng.uniform(0.84, 0.93), rng.uniform(0.025, 0.05)
            band = np.exp(-(((r - np.float32(r0)) / np.float32(w)) ** 2))
        else:
            band = smoothstep(0.65, 1.0, r) * 0.8
        refl = (strength_r * band * window * fov_rim).astype(np.float32)

    illumination = rng.uniform(0.0, 0.3)
    grad = rng.uniform(-math.pi, math.pi)
    low = noise_field(rng, 48, cells=2, octaves=1)
    low = np.asarray(Image.fromarray(low).resize((W, H), Image.Resampling.BILINEAR))
    ramp = (dxf * math.cos(grad) + dyf * math.sin(grad)) * np.float32(1.0 / fov_radius)
    illum = 1.0 + np.float32(illumination) * (0.6 * ramp + 0.4 * low) / 1.5
    vignetting = rng.uniform(0.0, 0.3)

    sheen = rng.uniform(0.03, 0.09) if rng.random() < 0.45 else 0.0
    ring_r = rng.uniform(0.6, 1.0) * dd
    patchy = noise_field(rng, 48, cells=9, octaves=1)
    sheen_field = np.zeros((H, W), dtype=np.float32)
    if sheen:
        # The macular reflex of young eyes: a broken, glinting ring around the fovea and a
        # small foveal light reflex.
        fx, fy = fovea
        half = int(1.6 * ring_r) + 2
        x0, y0 = max(int(fx) - half, 0), max(int(fy) - half, 0)
        x1, y1 = min(int(fx) + half + 1, W), min(int(fy) + half + 1, H)
        if x1 > x0 and y1 > y0:
            dist = np.sqrt((xx[:, x0:x1] - fx) ** 2 + (yy[y0:y1] - fy) ** 2)
            patch = np.asarray(Image.fromarray(patchy).resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR))
            ring = np.exp(-(((dist - ring_r) / (0.16 * dd)) ** 2)) * np.clip(patch * 0.7 + 0.3, 0.0, 1.0)
            dot = np.exp(-((dist / (0.04 * dd)) ** 2))
            sheen_field[y0:y1, x0:x1] = sheen * (ring + 1.5 * dot)

    noise_sd = rng.uniform(1.0, 4.0)
    quality = int(rng.integers(55, 98)) if rng.random() < 0.9 else 0
    subsampling = int(rng.integers(0, 3))

    inside = fov_rim if frame.profile.fov_shape != "rimless" else np.ones_like(fov_rim)
    masks = {
        "text": text_alpha >= 0.25,
        "dust": (dust >= 0.05) & inside,
        "reflection": (refl >= 0.06) & inside,
    }
    return Artefacts(
        frame=frame, texts=texts, text_alpha=text_alpha, text_rgb=colour, cast=cast, cast_rgb=cast_rgb,
        exposure=exposure, blur=blur, blur_px=float(blur_px), blur_angle=blur_angle, dust_alpha=dust,
        n_dust=n_dust, reflection=reflection, reflection_field=refl, illumination=float(illumination),
        illumination_field=illum.astype(np.float32), vignetting=float(vignetting), sheen=float(sheen),
        sheen_field=sheen_field, noise_sd=float(noise_sd), jpeg_quality=quality, subsampling=subsampling,
        radius=r, masks=masks,
    )  # fmt: skip


# -- rendering -------------------------------------------------------------------------------------

_REFLECTION_RGB = np.asarray((235.0, 240.0, 255.0), dtype=np.float32)[:, None, None]
_SHEEN_RGB = np.asarray((120.0, 130.0, 140.0), dtype=np.float32)[:, None, None]


def render(
    img: np.ndarray,
    fov: np.ndarray,
    art: Artefacts,
    exposure_range: tuple[tuple[float, float], ...],
    noise: np.random.Generator,
    normal_lut: np.ndarray,
    failure: Callable[[np.ndarray], np.ndarray] | None = None,
    cut: np.ndarray | None = None,
    stamp: tuple[np.ndarray, tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """Turn the ``(3, H, W)`` float frame into the camera's ``(H, W, 3)`` uint8 photograph.

    ``failure`` (see :mod:`napari_icnn.data.synth.degrade`) maps the ``(H, W, 3)`` float light that
    reaches the sensor to what an ungradeable photograph records; it acts before the sensor noise, the
    burned-in text and the JPEG, which a failed photograph gets like any other. ``cut`` (``(H, W)`` bool)
    is field the camera's mask hides (dark before the noise); ``stamp`` is a second print, ``(alpha, RGB)``,
    burned in after the camera's own text (see :mod:`napari_icnn.data.synth.confounder`).
    """
    H, W = fov.shape
    sub = fov[::3, ::3]
    if sub.any():
        for _ in range(3):
            mean = np.minimum(img[:, ::3, ::3][:, sub], 255.0).mean(axis=1)
            target = np.asarray(
                [min(max(m, lo), hi) for m, (lo, hi) in zip(mean, exposure_range, strict=True)], dtype=np.float32
            )
            if np.allclose(target, mean, atol=0.25):
                break
            img *= (target / np.maximum(mean, 1e-3))[:, None, None]
    gain = art.illumination_field
    if art.vignetting:
        gain = gain * (1.0 - np.float32(art.vignetting) * smoothstep(0.35, 1.05, art.radius))
    cast = np.asarray(art.cast_rgb, dtype=np.float32)[:, None, None] * np.float32(art.exposure)
    img *= gain[None] * cast
    if art.sheen:
        ys, xs = _extent(art.sheen_field)
        img[:, ys, xs] += art.sheen_field[None, ys, xs] * _SHEEN_RGB * fov[None, ys, xs]
    if art.reflection != "none":
        ys, xs = _extent(art.reflection_field)
        img[:, ys, xs] += art.reflection_field[None, ys, xs] * _REFLECTION_RGB
    if art.n_dust:
        ys, xs = _extent(art.dust_alpha)
        img[:, ys, xs] *= 1.0 - art.dust_alpha[None, ys, xs]
    u8 = np.ascontiguousarray(np.clip(img + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0))
    pil = Image.fromarray(u8)
    optics = 0.45 * W / 512
    if art.blur == "defocus":
        pil = pil.filter(ImageFilter.GaussianBlur(math.hypot(art.blur_px, optics)))
    else:
        pil = pil.filter(ImageFilter.BoxBlur(optics))
    out = np.asarray(pil, dtype=np.float32)
    if art.blur == "motion":
        out = _motion(out, art.blur_px, art.blur_angle)
    if failure is not None:
        out = failure(out)
    if cut is not None and cut.any():
        out[cut] = np.float32(4.0)  # the black camera mask, lifted a little by the sensor's offset
    # Sensor noise, luminance only (colour noise would not survive the JPEG's chroma subsampling).
    sd = np.float32(art.noise_sd)
    grain = normal_lut[np.frombuffer(noise.bytes(H * W), dtype=np.uint8)].reshape(H, W, 1)
    out += grain * sd
    if art.texts:
        ys, xs = _extent(art.text_alpha)
        a = art.text_alpha[ys, xs, None]
        out[ys, xs] += a * (np.asarray(art.text_rgb, dtype=np.float32) - out[ys, xs])
    if stamp is not None:
        ys, xs = _extent(stamp[0])
        a = stamp[0][ys, xs, None]
        out[ys, xs] += a * (np.asarray(stamp[1], dtype=np.float32) - out[ys, xs])
    res = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if art.jpeg_quality:
        buf = io.BytesIO()
        Image.fromarray(res).save(buf, format="JPEG", quality=art.jpeg_quality, subsampling=art.subsampling)
        buf.seek(0)
        res = np.asarray(Image.open(buf).convert("RGB"))
    return np.ascontiguousarray(res)


def _extent(field: np.ndarray) -> tuple[slice, slice]:
    """Row and column slices of the bounding box of ``field``'s non-zero pixels (empty if none)."""
    rows, cols = np.flatnonzero(field.any(axis=1)), np.flatnonzero(field.any(axis=0))
    if not len(rows):
        return slice(0, 0), slice(0, 0)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _motion(img: np.ndarray, length: float, angle: float) -> np.ndarray:
    """Average of shifted copies along a line of ``length`` px at ``angle`` (camera shake)."""
    n = max(int(round(length)), 2)
    h, w = img.shape[:2]
    m = n // 2 + 1
    padded = np.pad(img, ((m, m), (m, m), (0, 0)), mode="edge")  # no wrap-around at the frame edges
    acc = np.zeros_like(img)
    dx, dy = math.cos(angle), math.sin(angle)
    for k in range(n):
        t = k - (n - 1) / 2
        sx, sy = int(round(t * dx)), int(round(t * dy))
        acc += padded[m - sy : m - sy + h, m - sx : m - sx + w]
    return acc / np.float32(n)
