"""Writing a synthetic cohort: photographs, part masks, labels and (optionally) OP DICOM files.

Layout of a cohort folder ``OUT``::

    OUT/cohort.json                 generator version, look, size, n, seed, ungradeable share, rules
    OUT/labels.csv                  one row per image (columns below)
    OUT/images/<id>.png             RGB photograph
    OUT/masks/<part>/<id>.png       0/255 mask for every part key, empty ones included
    OUT/masks/fov/<id>.png          0/255 the true field of view: retina pixels of the photograph
    OUT/masks/text/<id>.png         0/255 burned-in text and logo boxes (empty in the clean look)
    OUT/masks/artefact/<id>.png     0/255 every non-eye artefact: text, lens dust, reflections, the
                                    cover of an ``obscured`` ungradeable photograph, a site artefact
    OUT/masks/confounder/<id>.png   with a confounder: 0/255 the site artefact, where it was drawn
    OUT/dicom/<id>.dcm              with dicom=True: Ophthalmic Photography instance

Image ``i`` of seed ``S`` has id ``s{S}_{i:05d}`` and comes from ``SeedSequence([S, i])``: the
same arguments give byte-identical files whatever the number of worker processes.

Looks: ``realistic`` (the default of :func:`generate_cohort` and ``icnn synth``) draws a camera
per image (see :mod:`napari_icnn.data.synth.camera`): frame size and shape, burned-in text and
photographic artefacts, plus the realistic lesion look with findings that are not diabetic
retinopathy. ``clean`` gives the original square, artefact-free photographs, pixel for pixel and
label for label what generator version 1 wrote (only the new columns and mask folders are added).

``labels.csv`` columns, besides the lesion, landmark and quadrant columns of version 1:

``look``
    ``realistic`` or ``clean``.
``camera``
    Camera profile name (``clean`` for the clean look).
``fov_shape``
    ``circle`` (black rim all round), ``clipped`` (circle cut at top and bottom by a wide frame),
    ``rimless`` (the retina fills the frame), ``notched`` (circle with a marker tab on the rim).
``width``, ``height``
    Photograph size in pixels (the realistic look draws frame widths of 400–1600 px unless a size
    is fixed; heights follow the frame's aspect ratio).
``n_text``
    Burned-in text items (timestamps, clinic names, patient-ID-like strings, camera settings,
    logo boxes); their pixels are ``masks/text``.
``cast``
    Colour cast: ``none``, ``yellow``, ``green``.
``exposure``
    Gain on the calibrated exposure (1 = nominal; < 1 under-, > 1 over-exposed).
``illumination``
    Amplitude of uneven illumination (0 = even).
``vignetting``
    Extra fall-off at the rim, beyond the eye's own (0 = none).
``blur``, ``blur_px``
    ``none``, ``defocus`` (Gaussian sigma ``blur_px``) or ``motion`` (shake over ``blur_px`` pixels).
``dust``
    Lens dust specks.
``reflection``
    ``none``, ``arc`` (bright arc near the rim) or ``haze`` (milky flare from one side of the rim).
``sheen``
    Strength of the central (macular) reflex of young eyes (0 = none).
``jpeg_quality``
    JPEG quality the photograph went through (0 = none).
``treated``
    1 when laser-photocoagulation scars were drawn (``n_laser`` > 0). They are drawn only on eyes
    whose target grade is 4 (treated proliferative disease, never on healthy eyes). ``treated``
    does not enter ``grade``, ``dme`` or ``referable``, which stay derived from the drawn DR lesions
    by the rules in ``cohort.json``; scars are in no part mask.
``n_drusen``, ``n_pigment``, ``n_laser``
    Drusen, pigment clumps and laser scars drawn. Drusen and pigment clumps are not diabetic
    retinopathy: drawn whatever the grade, in no part mask, never referable.
``confounder``, ``confounder_kind``
    Only in a cohort drawn with a confounder (:mod:`napari_icnn.data.synth.confounder`): 1 when the site
    artefact ``confounder_kind`` (``stamp``, ``logo``, ``notch``) was drawn on this photograph, else 0. Its
    pixels are ``masks/confounder`` (and part of ``masks/artefact``; a stamp's or logo's of ``masks/text``).
``gradable``, ``ungradeable``
    ``gradable`` is 0 when the photograph was made ungradeable (``ungradeable_share`` > 0, realistic
    look only), and ``ungradeable`` then names how: ``defocus`` (blur of 2.5–5 % of the field
    diameter), ``underexposed``, ``overexposed`` (washed out) or ``obscured`` (an eyelid shadow or a
    milky media haze over 50–80 % of the field, its cover added to ``masks/artefact``); otherwise 1 and
    empty. See :mod:`napari_icnn.data.synth.degrade`. Grades, lesion counts and every part mask stay
    what was drawn: the truth the photograph cannot show.

Every camera and artefact column is drawn from random streams that depend on the seed only, never
on the grade: the same seed with another grade gives the same camera and artefacts. Lesions are
never drawn under text, dust or reflections, so the lesion masks hold only visible lesions (an
ungradeable photograph aside: its masks hold what was drawn, seen or not). Whether and how a
photograph is made ungradeable comes from a stream of its own, so ``ungradeable_share`` = 0 (the
default) gives the very files of a cohort written without it.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import re
import time
import zlib
from collections.abc import Generator, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from napari_icnn import __version__
from napari_icnn.atomic import atomic_write
from napari_icnn.data.synth.camera import FOV_SHAPES, PROFILES, check_cameras
from napari_icnn.data.synth.confounder import check_confounder
from napari_icnn.data.synth.degrade import UNGRADEABLE_KINDS, check_ungradeable_share
from napari_icnn.data.synth.fundus import (
    ARTEFACT_KEYS,
    CAMERA_COLUMNS,
    EXTRA_COLUMNS,
    GRADE_MIX,
    LABEL_COLUMNS,
    LOOKS,
    MIN_REALISTIC_SIZE,
    MIN_SIZE,
    SIZE_RANGE,
    check_size_range,
    generate_fundus,
    image_id,
)
from napari_icnn.data.synth.grading import RULES
from napari_icnn.errors import ConfigError, IcnnError, InputError
from napari_icnn.parts import PART_KEYS
from napari_icnn.progress import Message, Progress, drain

__all__ = [
    "CohortSummary",
    "generate_cohort",
    "write_cohort",
    "is_cohort",
    "GENERATOR_VERSION",
    "DICOM_COLUMNS",
    "COHORT_FORMAT",
    "MASK_FOLDERS",
    "CONFOUNDER_FOLDER",
    "CONFOUNDER_COLUMNS",
]

GENERATOR_VERSION = "2"
"""Changes whenever the same seed would give different pixels or labels. Version 2 added the looks
(``realistic``, new; ``clean``, version 1's pixels and labels) and the camera columns and masks."""
COHORT_FORMAT = "napari-icnn synthetic fundus cohort"
DICOM_COLUMNS = ("dicom_path", "sop_instance_uid")
FOV_DEGREES = 45.0  # nominal camera field, for the DICOM pixel spacing
FOV_MM = 13.0  # a 45° field spans ≈ 13 mm of retina
_ID = re.compile(r"s\d+_\d{5}")
MASK_FOLDERS: tuple[str, ...] = (*PART_KEYS, *ARTEFACT_KEYS)
"""The folders under ``masks/``: every part key, then ``fov``, ``text`` and ``artefact``."""
CONFOUNDER_FOLDER = "confounder"
"""Mask folder of a cohort drawn with a confounder: the site artefact's pixels where it was drawn."""
CONFOUNDER_COLUMNS = ("confounder", "confounder_kind")
"""labels.csv columns of a cohort drawn with a confounder."""
EXTRA_RULES = {
    "treated": (
        "1 when laser-photocoagulation scars were drawn (n_laser > 0); drawn only on eyes whose target "
        "grade is 4; does not enter grade, dme or referable; scars are in no part mask"
    ),
    "distractors": (
        "drusen and pigment clumps (n_drusen, n_pigment) are not diabetic retinopathy: drawn whatever "
        "the grade, in no part mask, never counted as lesions"
    ),
    "artefacts": (
        "camera, frame and artefact columns are drawn from random streams of the seed alone, never of "
        "the grade; no lesion is drawn under text, dust or reflections"
    ),
    "ungradeable": (
        "a share ungradeable_share of the photographs (realistic look), chosen by a random stream of the "
        "seed alone, is made ungradeable by one of defocus, underexposed, overexposed, obscured (drawn "
        "uniformly; columns gradable and ungradeable); grades, counts and part masks stay what was drawn, "
        "an obscured photograph's cover is added to masks/artefact"
    ),
}
# Fast and still compact: run-length zlib at level 1 (sensor noise defeats stronger settings).
_PNG_LEVEL = 1


@dataclass(frozen=True)
class CohortSummary:
    """What :func:`generate_cohort` wrote."""

    out: Path
    n: int
    size: int | None
    """Fixed image size (clean: side; realistic: frame width), or ``None`` when drawn per image."""
    seed: int
    dicom: bool
    grade_counts: tuple[int, ...]
    """Images per ICDR grade 0–4 (derived grades)."""
    n_referable: int
    n_dme: int
    seconds: float
    """Wall-clock time of the generation."""
    look: str = "realistic"
    n_ungradeable: int = 0
    """Photographs made ungradeable (``gradable`` = 0)."""
    cameras: tuple[str, ...] | None = None
    """The camera profiles the cohort was restricted to (``None``: every profile, by its weight)."""
    confounder: str | None = None
    """The site artefact drawn in correlation with the label (``None``: none)."""
    confounder_rate: float | None = None
    confounded: tuple[int, int] = (0, 0)
    """Referable and other photographs that carry the site artefact."""

    @property
    def images_per_second(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("inf")

    def describe(self) -> str:
        """One paragraph for people."""
        grades = ", ".join(f"grade {g}: {c}" for g, c in enumerate(self.grade_counts))
        pct = 100.0 * self.n_referable / max(self.n, 1)
        extra = " with DICOM copies" if self.dicom else ""
        if self.look == "clean":
            what = f"synthetic fundus photographs of {self.size}×{self.size} px (clean look)"
        elif self.size is None:
            what = "synthetic fundus photographs (realistic look: varied cameras and sizes)"
        else:
            what = f"synthetic fundus photographs (realistic look: varied cameras, {self.size} px wide)"
        if self.look != "clean" and self.cameras is not None:
            names = ", ".join(self.cameras)
            what = what.replace("varied cameras", f"camera{'s' if len(self.cameras) > 1 else ''} {names} only")
        failed = f", ungradeable {self.n_ungradeable}" if self.n_ungradeable else ""
        site = ""
        if self.confounder:
            ref, other = self.confounded
            site = (f" Site {self.confounder} (rate {self.confounder_rate:g}) on {ref} of {self.n_referable} referable "
                    f"and {other} of {self.n - self.n_referable} other photographs.")
        return (
            f"Wrote {self.n} {what}{extra} to {self.out} "
            f"(seed {self.seed}; ids {image_id(self.seed, 0)}…{image_id(self.seed, self.n - 1)}). "
            f"{grades}; referable {self.n_referable} ({pct:.0f} %), DME {self.n_dme}{failed}.{site} "
            f"{self.seconds:.1f} s, {self.images_per_second:.1f} images/s."
        )


def write_cohort(
    out: str | os.PathLike[str],
    n: int,
    *,
    size: int | None = 512,
    seed: int = 0,
    dicom: bool = False,
    workers: int = 1,
    overwrite: bool = False,
    look: str = "realistic",
    size_range: tuple[int, int] = SIZE_RANGE,
    ungradeable_share: float = 0.0,
    cameras: tuple[str, ...] | None = None,
    confounder: str | None = None,
    confounder_rate: float | None = None,
) -> CohortSummary:
    """Write a cohort and return its summary (:func:`generate_cohort` without progress events)."""
    return drain(
        generate_cohort(
            out, n, size=size, seed=seed, dicom=dicom, workers=workers, overwrite=overwrite,
            look=look, size_range=size_range, ungradeable_share=ungradeable_share, cameras=cameras,
            confounder=confounder, confounder_rate=confounder_rate,
        )  # fmt: skip
    )


def generate_cohort(
    out: str | os.PathLike[str],
    n: int,
    *,
    size: int | None = 512,
    seed: int = 0,
    dicom: bool = False,
    workers: int = 1,
    overwrite: bool = False,
    look: str = "realistic",
    size_range: tuple[int, int] = SIZE_RANGE,
    ungradeable_share: float = 0.0,
    cameras: tuple[str, ...] | None = None,
    confounder: str | None = None,
    confounder_rate: float | None = None,
) -> Generator[Progress | Message, None, CohortSummary]:
    """Write ``n`` synthetic photographs with masks and labels to ``out``, yielding progress.

    Parameters
    ----------
    out
        Cohort folder. It may be new, empty, or a previous cohort (which is replaced: files of
        ids no longer generated are removed). Any other non-empty folder is refused unless
        ``overwrite`` is true, in which case only the cohort's own file names are written
        there and nothing else is touched.
    n, size, seed
        Number of images, their size in pixels (clean: the side of the square; realistic: the
        frame width, or ``None`` to draw each from ``size_range``), and the cohort seed.
    dicom
        Also write each photograph as an Ophthalmic Photography DICOM file with deterministic
        UIDs and synthetic patient ids ``SYNTH-<seed>-<i>``.
    workers
        Processes generating in parallel; the files are the same for any value.
    look
        ``"realistic"`` (camera variety, artefacts, realistic lesion look) or ``"clean"`` (the
        original photographs, unchanged); see the module docstring.
    size_range
        ``(min, max)`` frame widths the realistic look draws from when ``size`` is ``None``.
    ungradeable_share
        Realistic look: the share of photographs made ungradeable, each image deciding by a random
        stream of its seed alone (so about this share; exactly none at 0, every one at 1), by one of
        ``defocus``, ``underexposed``, ``overexposed``, ``obscured`` drawn uniformly. 0 (the default)
        writes exactly the files of a cohort without the option.
    cameras
        Realistic look: restrict the camera of every photograph to these profiles (names of
        :data:`~napari_icnn.data.synth.camera.PROFILES`, e.g. ``("handheld",)``: a clinic with one kind of
        camera), drawn by their relative weights; ``cohort.json`` then lists them under ``cameras``. ``None``
        (the default) draws from every profile by its weight and writes exactly the files of a cohort without
        the option.
    confounder, confounder_rate
        Realistic look: a site artefact correlated with the label (``stamp``, ``logo`` or ``notch``; see
        :mod:`napari_icnn.data.synth.confounder`), drawn on a share ``confounder_rate`` of the referable eyes and
        ``1 - confounder_rate`` of the others. labels.csv gains ``confounder`` (1 when drawn) and
        ``confounder_kind``, ``masks/confounder`` holds its pixels, ``cohort.json`` both settings. The same seed
        with rates ``P`` and ``1 - P`` gives the same eyes with the correlation reversed. ``None`` (the default)
        writes exactly the files of a cohort without the option.

    Returns
    -------
    CohortSummary

    Raises
    ------
    ConfigError
        An argument is out of range.
    InputError
        ``out`` is a file, or a non-empty folder that is not a cohort and ``overwrite`` is false.
    """
    n, size, seed, workers = _checked(n, size, seed, workers, look, size_range)
    share = check_ungradeable_share(ungradeable_share, look)
    if look == "clean" and cameras is not None:
        raise ConfigError("cameras applies to the realistic look only (the clean look has no camera profiles)")
    cams = check_cameras(cameras)
    conf_kind, conf_rate = check_confounder(confounder, confounder_rate, look)
    if dicom:
        try:
            import napari_icnn.dicom.op_writer  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"DICOM output needs the OP writer, which cannot be imported: {exc}") from None
    root = Path(out)
    previous = _prepare(root, overwrite)
    conf_folders = (f"masks/{CONFOUNDER_FOLDER}",) if conf_kind else ()
    for folder in ("images", *(f"masks/{p}" for p in MASK_FOLDERS), *conf_folders, *(("dicom",) if dicom else ())):
        (root / folder).mkdir(parents=True, exist_ok=True)
    meta = _meta(n, size, seed, dicom, look, size_range, share, cams, conf_kind, conf_rate)
    _write_json(root / "cohort.json", {**meta, "complete": False})

    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    yield Progress("synth", 0, n)
    ranged = (int(size_range[0]), int(size_range[1]))
    for row in _rows(root, n, size, seed, dicom, workers, look, ranged, share, cams, conf_kind, conf_rate):
        rows.append(row)
        rate = len(rows) / max(time.perf_counter() - start, 1e-9)
        yield Progress("synth", len(rows), n, f"{rate:.1f} images/s")
    seconds = time.perf_counter() - start

    columns = [*LABEL_COLUMNS, *EXTRA_COLUMNS, *CAMERA_COLUMNS, *(CONFOUNDER_COLUMNS if conf_kind else ()),
               *(DICOM_COLUMNS if dicom else ())]
    _atomic(root / "labels.csv", lambda f: _write_csv(f, columns, rows), binary=False)
    if previous:
        removed = _remove_stale(root, {r["id"] for r in rows}, dicom, confounder=conf_kind is not None)
        if removed:
            yield Message(
                f"removed {removed} files of the previous cohort in {root} that this one does not have"
            )
    grades = tuple(sum(1 for r in rows if r["grade"] == g) for g in range(5))
    n_ref = sum(r["referable"] for r in rows)
    n_dme = sum(r["dme"] for r in rows)
    failed = {k: sum(1 for r in rows if r["ungradeable"] == k) for k in UNGRADEABLE_KINDS}
    summary_meta: dict[str, Any] = {"grade_counts": list(grades), "referable": n_ref, "dme": n_dme,
                                    "ungradeable_counts": failed}
    confounded = (sum(1 for r in rows if r.get("confounder") and r["referable"]),
                  sum(1 for r in rows if r.get("confounder") and not r["referable"]))
    if conf_kind:
        summary_meta["confounded"] = {"referable": confounded[0], "other": confounded[1]}
    _write_json(root / "cohort.json", {**meta, **summary_meta, "complete": True})
    return CohortSummary(root, n, size, seed, dicom, grades, n_ref, n_dme, seconds, look, sum(failed.values()), cams,
                         conf_kind, conf_rate, confounded)


# -- checks and folder handling ----------------------------------------------------------------


def _checked(
    n: Any, size: Any, seed: Any, workers: Any, look: Any, size_range: Any
) -> tuple[int, int | None, int, int]:
    def whole(name: str, v: Any, lo: int) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ConfigError(f"{name} must be an integer >= {lo}; got {v!r}")
        return int(v)

    if look not in LOOKS:
        raise ConfigError(f"look must be one of {', '.join(LOOKS)}; got {look!r}")
    if look == "clean" and size is None:
        raise ConfigError("size must be given for the clean look (only the realistic look draws sizes)")
    if look == "realistic":
        check_size_range(size_range)
    least = MIN_SIZE if look == "clean" else MIN_REALISTIC_SIZE
    return (
        whole("n", n, 1),
        None if size is None else whole(f"size ({look} look)", size, least),
        whole("seed", seed, 0),
        whole("workers", workers, 1),
    )


def is_cohort(root: Path) -> bool:
    """Whether ``root`` holds a cohort written by this generator (its ``cohort.json`` says so)."""
    try:
        meta = json.loads((root / "cohort.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == COHORT_FORMAT


def _prepare(root: Path, overwrite: bool) -> bool:
    """Check that ``root`` may be written; return whether it holds a previous cohort."""
    if root.exists() and not root.is_dir():
        raise InputError(root, "exists and is not a folder; give a folder for the cohort")
    if not root.exists():
        try:
            root.mkdir(parents=True)
        except OSError as exc:
            raise InputError(root, f"cannot create the cohort folder ({exc.strerror or exc})") from None
        return False
    if is_cohort(root):
        return True
    if any(root.iterdir()) and not overwrite:
        raise InputError(
            root,
            "is not empty and holds no synthetic cohort (no cohort.json from `icnn synth`); "
            "choose a new or empty folder, or pass --overwrite (overwrite=True) to write the cohort "
            "files into it (other files are left alone)",
        )
    return False


def _remove_stale(root: Path, keep: set[str], dicom: bool, confounder: bool = False) -> int:
    """Remove the files of a previous cohort whose ids are not in ``keep``, its DICOM files when
    this cohort has none, its site-artefact masks when this cohort has no confounder, and stray temporaries."""
    removed = 0
    folders = [root / "images", root / "dicom", *(root / "masks" / p for p in (*MASK_FOLDERS, CONFOUNDER_FOLDER))]
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            stem = path.name.split(".")[0]
            ours = _ID.fullmatch(stem) and path.suffix in (".png", ".dcm")
            unwanted = (path.suffix == ".dcm" and not dicom) or (folder.name == CONFOUNDER_FOLDER and not confounder)
            stale = ours and (stem not in keep or unwanted)
            if stale or (path.name.startswith(".s") and path.name.endswith(".tmp")):
                path.unlink()
                removed += 1
    return removed


def _meta(
    n: int, size: int | None, seed: int, dicom: bool, look: str, size_range: tuple[int, int], share: float,
    cameras: tuple[str, ...] | None = None, confounder: str | None = None, confounder_rate: float | None = None,
) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if look == "realistic":
        extra = {
            "size_range": None if size is not None else list(size_range),
            "camera_profiles": {p.name: {"fov_shape": p.fov_shape, "weight": p.weight} for p in PROFILES},
            # only when restricted: a cohort of every profile keeps the very cohort.json it had
            **({"cameras": list(cameras)} if cameras is not None else {}),
            # likewise only with a confounder
            **({"confounder": confounder, "confounder_rate": confounder_rate} if confounder else {}),
        }
    return {
        "format": COHORT_FORMAT,
        "generator_version": GENERATOR_VERSION,
        "package_version": __version__,
        "look": look,
        "n": n,
        "size": size,
        **extra,
        "seed": seed,
        "dicom": dicom,
        "ungradeable_share": share,
        "ids": f"{image_id(seed, 0)} ... {image_id(seed, n - 1)}; image i is drawn from numpy SeedSequence([seed, i])",
        "grade_mix": list(GRADE_MIX),
        "parts": list(PART_KEYS),
        "artefact_masks": list(ARTEFACT_KEYS),
        "fov_shapes": list(FOV_SHAPES),
        "rules": {**RULES, **EXTRA_RULES},
    }


# -- writing -----------------------------------------------------------------------------------


def _atomic(path: Path, write: Any, binary: bool = True) -> None:
    """Write through ``write(file)`` with :func:`~napari_icnn.atomic.atomic_write` (not synced: a cohort is
    generated again from its seed)."""

    def body(fh: Any) -> None:
        if binary:
            write(fh)
            return
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        write(text)
        text.flush()
        text.detach()

    try:
        atomic_write(path, body, durable=False)
    except OSError as exc:
        raise InputError(path, f"cannot be written ({exc.strerror or exc})") from None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _atomic(path, lambda f: f.write(json.dumps(data, indent=2).encode() + b"\n"))


def _write_csv(f: Any, columns: list[str], rows: list[dict[str, Any]]) -> None:
    writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n", extrasaction="raise")
    writer.writeheader()
    writer.writerows(rows)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=_PNG_LEVEL, compress_type=zlib.Z_RLE)
    return buf.getvalue()


def _rows(
    root: Path,
    n: int,
    size: int | None,
    seed: int,
    dicom: bool,
    workers: int,
    look: str,
    size_range: tuple[int, int],
    share: float,
    cameras: tuple[str, ...] | None = None,
    confounder: str | None = None,
    confounder_rate: float | None = None,
) -> Iterator[dict[str, Any]]:
    jobs = [(str(root), seed, i, size, dicom, look, size_range, share, cameras, confounder, confounder_rate)
            for i in range(n)]
    if workers == 1 or n == 1:
        yield from map(_make_one, jobs)
        return
    # "spawn": a fresh interpreter per worker, safe whatever threads the parent runs (torch, Qt).
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(workers, n), mp_context=ctx, initializer=_ignore_interrupts)
    try:
        yield from pool.map(_make_one, jobs, chunksize=max(1, min(8, n // (4 * workers))))
    except BrokenProcessPool as exc:
        raise IcnnError(
            f"{root}: a worker process stopped unexpectedly ({exc}); the cohort is incomplete, "
            "run again (with --workers 1 if memory is short)"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _ignore_interrupts() -> None:
    """Worker start-up: Ctrl-C reaches the whole process group; the parent alone stops the run (it cancels the
    jobs not started and waits for those running), so the workers print no traceback of their own."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _make_one(
    job: tuple[str, int, int, int | None, bool, str, tuple[int, int], float, tuple[str, ...] | None, str | None,
               float | None],
) -> dict[str, Any]:
    """Generate image ``i`` and write its files; return its labels row."""
    out, seed, i, size, dicom, look, size_range, share, cameras, confounder, rate = job
    root = Path(out)
    f = generate_fundus(
        np.random.SeedSequence([seed, i]), size, look=look, size_range=size_range, ungradeable_share=share,
        cameras=cameras, confounder=confounder, confounder_rate=rate,
    )
    rid = f.labels["id"]
    _atomic(root / "images" / f"{rid}.png", lambda fh: fh.write(_png(f.image)))
    masks = {**f.masks, **f.artefact_masks}
    for part in (*MASK_FOLDERS, *((CONFOUNDER_FOLDER,) if confounder else ())):
        data = _png(masks[part].view(np.uint8) * np.uint8(255))
        _atomic(root / "masks" / part / f"{rid}.png", lambda fh, d=data: fh.write(d))
    row = dict(f.labels)
    if dicom:
        row["dicom_path"] = f"dicom/{rid}.dcm"
        row["sop_instance_uid"] = _write_dicom(root / "dicom" / f"{rid}.dcm", f.image, f.labels, seed, i)
    return row


def _write_dicom(path: Path, image: np.ndarray, labels: dict[str, Any], seed: int, i: int) -> str:
    """Write the photograph as OP DICOM with identifiers derived from (seed, i); return its SOP UID."""
    import datetime as dt

    from pydicom.uid import generate_uid

    from napari_icnn.dicom.op_writer import write_op

    def uid(kind: str) -> str:
        return generate_uid(entropy_srcs=["napari-icnn synthetic cohort", str(seed), str(i), kind])

    spacing = FOV_MM / (2.0 * float(labels["fov_radius"]))
    acquired = dt.datetime(2000, 1, 1, 9, 0, 0) + dt.timedelta(minutes=i)
    # write_op writes atomically and derives everything else from these inputs: same cohort, same bytes
    ds = write_op(
        path,
        image,
        laterality=labels["laterality"],
        patient_id=f"SYNTH-{seed}-{i}",
        patient_name=f"SYNTHETIC^S{seed}-{i}",
        study_instance_uid=uid("study"),
        series_instance_uid=uid("series"),
        sop_instance_uid=uid("instance"),
        study_date=acquired.strftime("%Y%m%d"),
        pixel_spacing=(round(spacing, 6), round(spacing, 6)),
        horizontal_fov_deg=FOV_DEGREES,
        acquired=acquired,
        overwrite=True,
    )
    return str(ds.SOPInstanceUID)
