"""One synthetic fundus photograph with exact part masks and labels derived from them."""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from scipy import special

from napari_icnn.data.synth.anatomy import (
    paint_background,
    paint_disc,
    paint_field,
    paint_macula,
    paint_vessels,
    sample_palette,
)
from napari_icnn.data.synth.camera import (
    MIN_REALISTIC_SIZE,
    SIZE_RANGE,
    Frame,
    check_cameras,
    plan_artefacts,
    render,
    sample_frame,
)
from napari_icnn.data.synth.confounder import check_confounder, plan_confounder
from napari_icnn.data.synth.degrade import check_ungradeable_share, degrade, plan_degradation
from napari_icnn.data.synth.geometry import Geometry, sample_geometry
from napari_icnn.data.synth.grading import QUADRANT_COLUMNS, findings_from, icdr_grade, is_referable
from napari_icnn.data.synth.lesions import (
    LesionInstance,
    LesionPainter,
    draw_distractors,
    draw_laser_scars,
    draw_lesions,
)
from napari_icnn.data.synth.vessels import grow_tree
from napari_icnn.errors import ConfigError
from napari_icnn.parts import LESION_KEYS, PART_KEYS

__all__ = [
    "SynthFundus",
    "generate_fundus",
    "check_size_range",
    "image_id",
    "GRADE_MIX",
    "LABEL_COLUMNS",
    "EXTRA_COLUMNS",
    "CAMERA_COLUMNS",
    "ARTEFACT_KEYS",
    "LOOKS",
    "MIN_SIZE",
    "MIN_REALISTIC_SIZE",
    "SIZE_RANGE",
]

GRADE_MIX = (0.35, 0.15, 0.25, 0.15, 0.10)
"""Default probability of each target ICDR grade 0–4 (about half the cohort referable)."""
MIN_SIZE = 64
LABEL_COLUMNS = (
    "id", "laterality", "grade", "referable", "dme",
    "n_MA", "n_HE", "n_EX", "n_SE", "n_NV",
    "disc_x", "disc_y", "fovea_x", "fovea_y",
)  # fmt: skip
EXTRA_COLUMNS = (
    "fov_x", "fov_y", "fov_radius", "disc_diameter", "disc_height",
    "target_grade", "n_preretinal", *QUADRANT_COLUMNS,
    "vessel_fraction", "jpeg_quality", "seed", "index", "image_path",
)  # fmt: skip
CAMERA_COLUMNS = (
    "look", "camera", "fov_shape", "width", "height", "n_text", "cast", "exposure", "illumination",
    "vignetting", "blur", "blur_px", "dust", "reflection", "sheen",
    "treated", "n_drusen", "n_pigment", "n_laser", "gradable", "ungradeable",
)  # fmt: skip
"""labels.csv columns describing the camera, its artefacts, the non-DR findings and whether the
photograph was made ungradeable (documented in :mod:`napari_icnn.data.synth.cohort`)."""
LOOKS = ("realistic", "clean")
"""``realistic``: camera variety, burned-in text, artefacts, lesion look; ``clean``: the original
square, artefact-free photographs (byte for byte what generator version 1 drew)."""
ARTEFACT_KEYS = ("fov", "text", "artefact")
"""Keys of :attr:`SynthFundus.artefact_masks`: the retina's field of view, burned-in text, and the
union of every non-eye artefact (text, dust, reflections, and the cover of an ``obscured`` photograph)."""
_CLEAN_CAMERA = {
    "camera": "clean", "cast": "none", "exposure": 1.0, "illumination": 0.0, "vignetting": 0.0,
    "blur": "none", "blur_px": 0.0, "dust": 0, "reflection": "none", "sheen": 0.0, "n_text": 0,
    "gradable": 1, "ungradeable": "",
}  # fmt: skip

# The mean colour inside the FOV is kept within the real photograph's 5th–95th percentiles
# (R 176–240, G 59–114, B 43–86) with a few grey levels to spare for noise and compression.
EXPOSURE_RANGE = ((180.0, 236.0), (63.0, 110.0), (47.0, 82.0))
JPEG_PROBABILITY = 0.35

_NORMAL_LUT = np.asarray(special.ndtri((np.arange(256) + 0.5) / 256), dtype=np.float32)

# Independent random streams, so that e.g. asking for another grade changes only the lesions.
# The realistic look only adds streams (6 on), so the clean look's draws are unchanged; the frame
# and artefact streams never see the grade, so a seed's camera is the same whatever its disease.
_STREAMS = {
    "choice": 0, "geometry": 1, "palette": 2, "vessels": 3, "lesions": 4, "camera": 5,
    "frame": 6, "artefacts": 7, "noise": 8, "distractors": 9, "laser": 10, "lesion_look": 11,
    "quality": 12, "confounder": 13,
}  # fmt: skip


@dataclass(frozen=True, eq=False)
class SynthFundus:
    """A synthetic fundus photograph, its part masks and its labels.

    Valid once built: ``image`` is ``(H, W, 3)`` uint8 RGB and ``masks`` holds an ``(H, W)`` bool
    mask for every part key of :data:`napari_icnn.parts.PART_KEYS` (empty when absent).
    """

    image: np.ndarray
    masks: dict[str, np.ndarray]
    labels: dict[str, Any]
    """The ``labels.csv`` row of this image (Python scalars, columns :data:`LABEL_COLUMNS` then
    :data:`EXTRA_COLUMNS`)."""
    lesions: tuple[LesionInstance, ...] = field(default=(), repr=False)
    """Every lesion instance drawn, with its mask centroid and area."""
    artefact_masks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    """``(H, W)`` bool masks :data:`ARTEFACT_KEYS`: ``fov`` (retina pixels), ``text`` (burned-in
    text) and ``artefact`` (text, dust, reflections and an ``obscured`` photograph's cover). Filled by
    :func:`generate_fundus`."""

    def __post_init__(self) -> None:
        img = self.image
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(
                f"image must be (H, W, 3) uint8; got {getattr(img, 'shape', None)} {getattr(img, 'dtype', None)}"
            )
        missing = [k for k in PART_KEYS if k not in self.masks]
        if missing:
            raise ValueError(f"masks missing for parts {missing}")
        for k, m in (*self.masks.items(), *self.artefact_masks.items()):
            if m.shape != img.shape[:2] or m.dtype != bool:
                raise ValueError(f"mask {k!r} must be {img.shape[:2]} bool; got {m.shape} {m.dtype}")


def _seed_sequence(seed: int | np.random.SeedSequence) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0:
        return np.random.SeedSequence([int(seed), 0])
    raise ConfigError(f"seed must be a non-negative integer or a numpy SeedSequence; got {seed!r}")


def image_id(seed: int, index: int) -> str:
    """The id of image ``index`` of the cohort with seed ``seed`` (unique across seeds)."""
    return f"s{seed}_{index:05d}"


def _identity(ss: np.random.SeedSequence) -> tuple[str, int, int]:
    ent = ss.entropy
    if isinstance(ent, (list, tuple)) and len(ent) == 2 and not ss.spawn_key:
        return image_id(int(ent[0]), int(ent[1])), int(ent[0]), int(ent[1])
    parts = list(ent) if isinstance(ent, (list, tuple)) else [ent]
    return "ss" + "_".join(str(int(p)) for p in [*parts, *ss.spawn_key]), -1, -1  # type: ignore[arg-type]  # numpy types entropy as optional array-like; once constructed it holds ints


def _stream(ss: np.random.SeedSequence, name: str) -> np.random.Generator:
    child = np.random.SeedSequence(
        ss.entropy, spawn_key=(*ss.spawn_key, _STREAMS[name]), pool_size=ss.pool_size
    )
    return np.random.default_rng(child)


def generate_fundus(
    seed: int | np.random.SeedSequence,
    size: int | None = 512,
    *,
    laterality: str | None = None,
    grade: int | None = None,
    look: str = "clean",
    size_range: tuple[int, int] = SIZE_RANGE,
    ungradeable_share: float = 0.0,
    cameras: tuple[str, ...] | None = None,
    confounder: str | None = None,
    confounder_rate: float | None = None,
) -> SynthFundus:
    """Generate one synthetic macula-centred fundus photograph.

    Parameters
    ----------
    seed
        A numpy ``SeedSequence``, or an integer ``S`` meaning ``SeedSequence([S, 0])`` (image 0 of
        the cohort with seed ``S``). The same seed always gives the same pixels.
    size
        ``clean``: side of the square image in pixels (at least 64). ``realistic``: width of the
        frame (at least 96; its height follows the camera's aspect ratio), or ``None`` to draw it
        log-uniformly from ``size_range``.
    laterality
        ``"L"`` or ``"R"``; ``None`` draws one at random.
    grade
        ICDR grade 0–4 whose typical lesions are drawn; ``None`` draws one from :data:`GRADE_MIX`.
        The labelled grade is derived from what was drawn and equals the target unless a lesion
        could not be placed. Anatomy, camera and artefacts do not depend on the target, so one
        seed with different grades gives the same eye and photograph with different disease.
    look
        ``"clean"`` (default here; the original square, artefact-free photographs, unchanged) or
        ``"realistic"`` (camera profiles, burned-in text, photographic artefacts, the realistic
        lesion look with non-DR findings; see :mod:`napari_icnn.data.synth.camera`).
    size_range
        ``(min, max)`` frame widths drawn by the realistic look when ``size`` is ``None``.
    ungradeable_share
        Realistic look: the probability that the photograph is made ungradeable (defocused, under- or
        over-exposed, or obscured; see :mod:`napari_icnn.data.synth.degrade`), decided by a random stream
        of the seed alone. Masks and labels stay what was drawn; columns ``gradable`` and ``ungradeable``
        say what happened.
    cameras
        Realistic look: the camera profiles (:data:`~napari_icnn.data.synth.camera.PROFILES` names) the camera is
        drawn from, by their relative weights; ``None`` (the default) draws from every profile. Only the camera
        draw changes: the same seed keeps its eye, lesions and artefact streams.
    confounder, confounder_rate
        Realistic look: a site artefact (``stamp``, ``logo`` or ``notch``, see
        :mod:`napari_icnn.data.synth.confounder`) drawn on a referable eye with probability ``confounder_rate``
        and on any other with ``1 - confounder_rate``; its place is kept clear of lesions either way. Columns
        ``confounder`` (1 when drawn) and ``confounder_kind``; its pixels in :attr:`SynthFundus.artefact_masks`
        ``confounder`` (and in ``artefact``, and for print in ``text``).

    Returns
    -------
    SynthFundus

    Raises
    ------
    ConfigError
        An argument is out of range.
    """
    if look not in LOOKS:
        raise ConfigError(f"look must be one of {', '.join(LOOKS)}; got {look!r}")
    realistic = look == "realistic"
    least = MIN_REALISTIC_SIZE if realistic else MIN_SIZE
    if size is None and not realistic:
        raise ConfigError("size must be given for the clean look (only the realistic look draws sizes)")
    if size is not None and (not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < least):
        raise ConfigError(f"size must be an integer of at least {least} pixels for the {look} look; got {size!r}")
    if realistic:
        check_size_range(size_range)
    elif cameras is not None:
        raise ConfigError("cameras applies to the realistic look only (the clean look has no camera profiles)")
    cams = check_cameras(cameras)
    share = check_ungradeable_share(ungradeable_share, look)
    conf = check_confounder(confounder, confounder_rate, look)
    if laterality not in (None, "L", "R"):
        raise ConfigError(f"laterality must be 'L', 'R' or None; got {laterality!r}")
    if grade is not None and (
        not isinstance(grade, (int, np.integer)) or isinstance(grade, bool) or not 0 <= grade <= 4
    ):
        raise ConfigError(f"grade must be an ICDR grade 0-4 or None; got {grade!r}")
    ss = _seed_sequence(seed)
    ident, cohort_seed, index = _identity(ss)
    # Both draws always happen, so fixing one of them leaves the other as it was.
    choice = _stream(ss, "choice")
    drawn_eye = "L" if choice.random() < 0.5 else "R"
    drawn_grade = int(choice.choice(5, p=GRADE_MIX))
    eye = laterality or drawn_eye
    target = int(grade) if grade is not None else drawn_grade
    if realistic:
        return _realistic(
            ss, None if size is None else int(size), size_range, eye, target, ident, cohort_seed, index, share,
            cams, conf,
        )
    assert size is not None
    size = int(size)

    geo = sample_geometry(_stream(ss, "geometry"), size, eye)
    prng, pal, img, r, disc, tree, vessels = _paint_eye(ss, geo, size)

    painter = LesionPainter(_stream(ss, "lesions"), img, geo, r, disc, tree, pal.rgb())
    draw_lesions(painter.rng, painter, target)

    fov = paint_field(prng, img, geo, r, pal)
    image, quality = _camera(_stream(ss, "camera"), img, fov, size)

    yy, xx = np.ogrid[:size, :size]
    fovea = (xx - geo.fovea_x) ** 2 + (yy - geo.fovea_y) ** 2 <= (0.5 * geo.dd) ** 2
    masks = {"optic_disc": disc, "fovea": fovea, "vessels": vessels & fov}
    masks.update(painter.masks)
    labels = _labels(geo, painter.instances, masks, fov, target, quality, ident, cohort_seed, index)
    empty = np.zeros((size, size), dtype=bool)
    labels.update(
        look="clean", **_CLEAN_CAMERA, fov_shape="notched" if geo.notch is not None else "circle",
        width=size, height=size, treated=0, n_drusen=0, n_pigment=0, n_laser=0,
    )  # fmt: skip
    arte = {"fov": fov, "text": empty, "artefact": empty.copy()}
    return SynthFundus(image=image, masks=masks, labels=labels, lesions=tuple(painter.instances), artefact_masks=arte)



def _paint_eye(ss: np.random.SeedSequence, geo: Geometry, size: int) -> tuple[Any, ...]:
    """The healthy eye on a ``size`` square canvas, from the palette and vessel streams (the same draws for
    both looks): ``(palette stream, palette, canvas, radius map, disc mask, vessel tree, vessel mask)``."""
    prng = _stream(ss, "palette")
    pal = sample_palette(prng)
    img, r = paint_background(prng, geo, pal)
    paint_macula(prng, img, geo)
    disc = paint_disc(prng, img, geo)
    vrng = _stream(ss, "vessels")
    tree = grow_tree(vrng, geo)
    vessels = paint_vessels(vrng, img, tree, pal, size)
    return prng, pal, img, r, disc, tree, vessels


def check_size_range(size_range: Any) -> None:
    """Refuse a realistic look's frame-width range that is not two integers ``MIN <= MAX`` of at least
    :data:`MIN_REALISTIC_SIZE` pixels (:class:`~napari_icnn.errors.ConfigError`)."""
    ok = (
        isinstance(size_range, (tuple, list))
        and len(size_range) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size_range)
    )
    if not ok or not MIN_REALISTIC_SIZE <= size_range[0] <= size_range[1]:
        raise ConfigError(
            f"size_range must be two integers MIN <= MAX, MIN at least {MIN_REALISTIC_SIZE} pixels; got {size_range!r}"
        )


def _realistic(
    ss: np.random.SeedSequence,
    size: int | None,
    size_range: tuple[int, int],
    eye: str,
    target: int,
    ident: str,
    cohort_seed: int,
    index: int,
    ungradeable_share: float = 0.0,
    cameras: tuple[str, ...] | None = None,
    confounder: tuple[str | None, float | None] = (None, None),
) -> SynthFundus:
    """The realistic look: a camera frame, artefacts planned first, the eye painted around them."""
    frame = sample_frame(_stream(ss, "frame"), size, size_range, cameras)
    s = frame.canvas
    shape = frame.profile.fov_shape
    geo = sample_geometry(
        _stream(ss, "geometry"), s, eye, fov_scale=frame.fov_scale, notch=shape == "notched"
    )
    art = plan_artefacts(
        _stream(ss, "artefacts"), frame, geo.fov_x - frame.ox, geo.fov_y - frame.oy, geo.fov_radius,
        (geo.fovea_x - frame.ox, geo.fovea_y - frame.oy), geo.dd,
    )  # fmt: skip
    kind, rate = confounder
    site = None
    clear = art.keep_clear()
    if kind is not None:
        site = plan_confounder(
            _stream(ss, "confounder"), kind, frame.width, frame.height, geo.fov_x - frame.ox, geo.fov_y - frame.oy,
            geo.fov_radius,
        )  # fmt: skip
        clear = clear | site.keep_clear()
    blocked = frame.to_canvas(clear, fill=True)

    prng, pal, img, r, disc, tree, vessels = _paint_eye(ss, geo, s)

    painter = LesionPainter(
        _stream(ss, "lesions"), img, geo, r, disc, tree, pal.rgb(), blocked=blocked, style=_stream(ss, "lesion_look")
    )
    draw_distractors(_stream(ss, "distractors"), painter)
    draw_laser_scars(_stream(ss, "laser"), painter, target)
    draw_lesions(painter.rng, painter, target)
    fov_c = paint_field(prng, img, geo, r, pal, rimless=shape == "rimless")

    surround = img[:, 0, 0].copy() if shape != "rimless" else np.zeros(3, dtype=np.float32)
    canvas_img = frame.crop(img, 0.0)
    canvas_img = _pad_surround(canvas_img, frame, surround)
    fov = frame.crop(fov_c, False)
    fx, fy = geo.fov_x - frame.ox, geo.fov_y - frame.oy
    # Planned on its own stream and not kept clear of lesions: the truth stays what was drawn, the
    # photograph just cannot show it.
    quality = _stream(ss, "quality")
    failure = plan_degradation(quality, ungradeable_share, fov, (fx, fy), geo.fov_radius)
    text = art.masks["text"]
    yy, xx = np.ogrid[:s, :s]
    fovea_c = (xx - geo.fovea_x) ** 2 + (yy - geo.fovea_y) ** 2 <= (0.5 * geo.dd) ** 2
    masks = {
        "optic_disc": frame.crop(disc, False) & ~text,
        "fovea": frame.crop(fovea_c, False) & ~text,
        "vessels": frame.crop(vessels & fov_c, False) & ~text,
    }
    masks.update({k: frame.crop(m, False) for k, m in painter.masks.items()})
    shifted = replace(
        geo,
        fov_x=round(fx, 2), fov_y=round(fy, 2),
        disc_x=round(geo.disc_x - frame.ox, 2), disc_y=round(geo.disc_y - frame.oy, 2),
        fovea_x=round(geo.fovea_x - frame.ox, 2), fovea_y=round(geo.fovea_y - frame.oy, 2),
        notch=None,
    )  # fmt: skip
    instances = tuple(replace(i, x=i.x - frame.ox, y=i.y - frame.oy) for i in painter.instances)
    # The eye's labels, as drawn: the site artefact (kept clear of lesions) then follows the label.
    labels = _labels(shifted, instances, masks, fov, target, art.jpeg_quality, ident, cohort_seed, index)
    drawn = site is not None and rate is not None and site.present(bool(labels["referable"]), rate)
    image = render(
        canvas_img, fov, art, EXPOSURE_RANGE, _stream(ss, "noise"), _NORMAL_LUT,
        failure=None if failure.gradable else lambda light: degrade(light, failure, quality),
        cut=site.cut if drawn and site is not None else None,
        stamp=(site.alpha, site.rgb) if drawn and site is not None and site.kind != "notch" else None,
    )  # fmt: skip
    site_mask = site.mask if drawn and site is not None else np.zeros_like(text)
    if drawn:
        # what the artefact covers is no longer seen: out of the anatomy masks (and, for a notch, the field)
        masks.update({k: masks[k] & ~site_mask for k in ("optic_disc", "fovea", "vessels")})
        if site is not None and site.kind == "notch":
            fov = fov & ~site_mask
        else:
            text = text | site_mask
    labels.update(look="realistic", **art.labels())
    labels.update(
        treated=int(painter.extras["laser"] > 0),
        n_drusen=painter.extras["drusen"],
        n_pigment=painter.extras["pigment"],
        n_laser=painter.extras["laser"],
        **failure.labels(),
    )
    artefact = art.masks["text"] | art.masks["dust"] | art.masks["reflection"] | failure.mask | site_mask
    arte = {"fov": fov, "text": text.copy(), "artefact": artefact}
    if site is not None:
        labels.update(confounder=int(drawn), confounder_kind=site.kind)
        arte["confounder"] = site_mask
    return SynthFundus(image=image, masks=masks, labels=labels, lesions=instances, artefact_masks=arte)


def _pad_surround(img: np.ndarray, frame: Frame, surround: np.ndarray) -> np.ndarray:
    """Give the frame pixels off the canvas the surround's colour."""
    on = frame.crop(np.ones((frame.canvas, frame.canvas), dtype=bool), False)
    if not on.all():
        img[:, ~on] = surround[:, None]
    return img


def _camera(rng: np.random.Generator, img: np.ndarray, fov: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """Exposure, slight optical blur, sensor noise and (sometimes) JPEG compression.

    ``img`` is the ``(3, H, W)`` float canvas; the result is ``(H, W, 3)`` uint8.
    """
    sub = fov[::3, ::3]
    for _ in range(3):
        mean = np.minimum(img[:, ::3, ::3][:, sub], 255.0).mean(axis=1)
        target = np.asarray(
            [min(max(m, lo), hi) for m, (lo, hi) in zip(mean, EXPOSURE_RANGE, strict=True)], dtype=np.float32
        )
        if np.allclose(target, mean, atol=0.25):
            break
        img *= (target / mean)[:, None, None]
    planes = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    u8 = np.ascontiguousarray(planes.transpose(1, 2, 0))
    # A box blur of fractional radius r is the kernel [w, 1-2w, w], w = r/(2r+1): optical blur
    # of sigma ≈ 0.6–0.75 px at 512 px.
    pil = Image.fromarray(u8).filter(ImageFilter.BoxBlur(rng.uniform(0.3, 0.6) * size / 512))
    # Sensor noise: random bytes mapped through the normal quantile function (fast, Gaussian).
    sd = np.float32(rng.uniform(1.0, 2.6))
    noise = _NORMAL_LUT[np.frombuffer(rng.bytes(size * size * 3), dtype=np.uint8)].reshape(size, size, 3)
    out = np.asarray(pil, dtype=np.float32).reshape(-1) + (noise * sd).reshape(-1)
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8).reshape(size, size, 3)
    quality = 0
    if rng.random() < JPEG_PROBABILITY:
        quality = int(rng.integers(72, 96))
        buf = io.BytesIO()
        Image.fromarray(out).save(buf, format="JPEG", quality=quality, subsampling=int(rng.integers(0, 3)))
        buf.seek(0)
        out = np.asarray(Image.open(buf).convert("RGB"))
    return np.ascontiguousarray(out), quality


def _labels(
    geo: Geometry,
    instances: Any,
    masks: dict[str, np.ndarray],
    fov: np.ndarray,
    target: int,
    quality: int,
    ident: str,
    seed: int,
    index: int,
) -> dict[str, Any]:
    f = findings_from(
        instances, masks["EX"], geo.fovea_x, geo.fovea_y, geo.dd, geo.laterality, LESION_KEYS
    )
    grade = icdr_grade(f)
    row: dict[str, Any] = {
        "id": ident,
        "laterality": geo.laterality,
        "grade": grade,
        "referable": int(is_referable(grade, f.dme)),
        "dme": int(f.dme),
    }
    for k in ("MA", "HE", "EX", "SE", "NV"):
        row[f"n_{k}"] = int(f.counts[k])
    row.update(
        disc_x=geo.disc_x, disc_y=geo.disc_y, fovea_x=geo.fovea_x, fovea_y=geo.fovea_y,
        fov_x=geo.fov_x, fov_y=geo.fov_y, fov_radius=geo.fov_radius,
        disc_diameter=geo.disc_width, disc_height=geo.disc_height,
        target_grade=target, n_preretinal=f.n_preretinal,
    )  # fmt: skip
    row.update({q: int(f.he_quadrants[q]) for q in QUADRANT_COLUMNS})
    row["vessel_fraction"] = round(float(masks["vessels"].sum()) / max(int(fov.sum()), 1), 4)
    row["jpeg_quality"] = quality
    row["seed"] = seed
    row["index"] = index
    row["image_path"] = f"images/{ident}.png"
    return row
