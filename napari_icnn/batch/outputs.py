"""Where a frame's results go and writing them: DICOM SEG and SR (DICOM inputs), a PNG evidence
sheet and a prediction JSON.

Each reports the top-K evidence filters, then the top-K anatomy-context filters and the top-K
possible artefacts, every filter with its role (:mod:`napari_icnn.roles`).

Names come from UIDs and hashes only, never from patient attributes or input file names::

    DIR/<hash of the Study Instance UID>/<SOP Instance UID>[_f0003].{seg.dcm,sr.dcm,png,json}
    DIR/images/<hash of the input's absolute path>[_f0003].{png,json}

(``_fNNNN``: the 0-based frame of a multi-frame input.) Every file is written under a temporary
name and renamed, and every path is checked to lie inside ``DIR``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_icnn.atomic import atomic_write_bytes
from napari_icnn.batch.config import DICOM_FORMATS, FORMATS
from napari_icnn.dicom.uids import ModelInfo

if TYPE_CHECKING:
    from napari_icnn.explain import Explanation, FilterEvidence
    from napari_icnn.image import FundusImage

__all__ = ["OutputSpec", "path_hash", "output_stem", "write_outputs", "reported_filters", "sheet_array", "gate_entry",
           "gate_line", "SHEET_TILE"]

SHEET_TILE = 384
"""Side of one tile of the PNG evidence sheet, in pixels."""
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_SUFFIX = {"seg": ".seg.dcm", "sr": ".sr.dcm", "png": ".png", "json": ".json"}


@dataclass(frozen=True)
class OutputSpec:
    """What to write for each frame, and where.

    Valid once built: an absolute output folder, known formats (or ``None``: all that apply),
    a positive top-K.
    """

    out: str
    model: ModelInfo
    formats: tuple[str, ...] | None = None
    top_k: int = 5

    def __post_init__(self) -> None:
        if not os.path.isabs(self.out):
            raise ValueError(f"OutputSpec.out must be an absolute folder; got {self.out!r}")
        if self.formats is not None and (not self.formats or set(self.formats) - set(FORMATS)):
            raise ValueError(f"OutputSpec.formats must be a non-empty subset of {FORMATS}; got {self.formats!r}")
        if self.top_k < 1:
            raise ValueError(f"OutputSpec.top_k must be positive; got {self.top_k}")

    def formats_for(self, is_dicom: bool) -> tuple[str, ...]:
        return tuple(f for f in (self.formats or FORMATS) if is_dicom or f not in DICOM_FORMATS)


def path_hash(path: str, n: int = 16) -> str:
    """First ``n`` hex digits of the SHA-256 of ``path`` (names files without revealing it)."""
    return hashlib.sha256(os.fsencode(path)).hexdigest()[:n]


def output_stem(image: FundusImage, input_path: str) -> str:
    """The output name of a frame without suffix, relative to the output folder (``/``-separated)."""
    if image.header is not None:
        study = image.study_instance_uid or ""
        folder = path_hash(study) if study else "no-study"
        sop = image.sop_instance_uid or ""
        # A UID is digits and dots by definition; anything else in that attribute could be a path.
        name = sop if _UID.fullmatch(sop) and len(sop) <= 64 else "file-" + path_hash(input_path)
    else:
        folder, name = "images", path_hash(input_path)
    if image.frame is not None:
        name += f"_f{int(image.frame):04d}"
    return f"{folder}/{name}"


def reported_filters(expl: Explanation, top_k: int) -> list[FilterEvidence]:
    """The filters a frame's results report, in their order: the ``top_k`` evidence filters, then the
    ``top_k`` context filters, then the ``top_k`` possible artefacts (each group by contribution), as
    the JSON lists them."""
    return expl.evidence(top_k) + expl.context(top_k) + expl.possible_artefacts(top_k)


def _target(out: Path, rel: str) -> Path:
    path = (out / rel).resolve()
    if not path.is_relative_to(out.resolve()):
        raise ValueError(f"output name {rel!r} leaves the output folder")
    return path


def write_outputs(
    spec: OutputSpec, image: FundusImage, expl: Explanation, input_path: str
) -> tuple[list[str], list[str], list[str]]:
    """Write the requested formats for one explained frame.

    A full disk (``OSError`` with ENOSPC, EDQUOT or EFBIG, possibly wrapped) is raised, not
    reported: it is the run's failure, not this frame's.

    Returns
    -------
    written, problems, notes
        Paths written (relative to the output folder, in format order); one line per format that
        could not be written (``"seg: <reason>"``; a failed format does not stop the others); and
        what the frame's ``ok`` row should say: DICOM results a source without valid identity UIDs
        cannot have, header attributes left out of them (keywords only, never values).
    """
    from napari_icnn.errors import InputError

    out = Path(spec.out)
    stem = output_stem(image, input_path)
    formats = spec.formats_for(image.header is not None)
    top = reported_filters(expl, spec.top_k)
    written: list[str] = []
    problems: list[str] = []
    notes = _dicom_notes(image, formats)
    if notes and notes[0].startswith("no "):  # nothing to reference: SEG and SR do not apply
        formats = tuple(f for f in formats if f not in DICOM_FORMATS)
    for fmt in formats:
        rel = stem + _SUFFIX[fmt]
        try:
            target = _target(out, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            if fmt == "seg":
                _write_seg(target, spec, image, expl, top)
            elif fmt == "sr":
                _write_sr(target, spec, image, expl, top)
            elif fmt == "png":
                _write_sheet(target, image, expl, top)
            else:
                _write_json(target, image, expl, spec.top_k, input_path, written + [rel])
        except InputError as exc:
            problems.append(f"{fmt}: {exc.reason}")
        except OSError as exc:
            from napari_icnn.atomic import disk_full_errno

            if disk_full_errno(exc) is not None:
                raise  # not this frame's fault, and every write after it would fail: the run stops
            problems.append(f"{fmt}: cannot write ({exc.strerror or exc})")
        except Exception as exc:  # noqa: BLE001 - one format failing must not lose the others
            problems.append(f"{fmt}: {type(exc).__name__}: {exc}")
        else:
            written.append(rel)
    return written, problems, notes


def _dicom_notes(image: FundusImage, formats: tuple[str, ...]) -> list[str]:
    """What the DICOM results of ``image`` lack because of its header (see :mod:`napari_icnn.dicom.carry`)."""
    dicom = [f for f in formats if f in DICOM_FORMATS]
    if not dicom or image.header is None:
        return []
    from napari_icnn.dicom.carry import carry_header
    from napari_icnn.dicom.uids import unreferenceable_reason

    carried = carry_header(image)
    if not carried.referable:
        return [f"no {' or '.join(f.upper() for f in dicom)}: {unreferenceable_reason(carried.missing_identity)}"]
    if carried.left_out:
        return [f"left out of {' and '.join(f.upper() for f in dicom)} (not valid in the source): "
                + ", ".join(carried.left_out)]
    return []


def _write_seg(target: Path, spec: OutputSpec, image: FundusImage, expl: Explanation, top: list) -> None:
    from napari_icnn.dicom.seg import EvidenceMap, write_seg

    maps = [EvidenceMap(f.id, f.name, f.part, expl.map_on_scan(f.id), f.role, f.flags) for f in top]
    write_seg(target, image, maps, spec.model)


def _write_sr(target: Path, spec: OutputSpec, image: FundusImage, expl: Explanation, top: list) -> None:
    from napari_icnn.dicom.sr import write_sr
    from napari_icnn.explain import silent_summary

    filters = [
        {
            "id": f.id,
            "name": f.name,
            "part": f.part,
            "peak_x": f.peak_x,
            "peak_y": f.peak_y,
            "activation": f.activation,
            "contribution": f.contribution,
            "role": f.role,
        }
        for f in top
    ]
    write_sr(
        target,
        image,
        probability=expl.probability,
        predicted_class=expl.predicted_class,
        threshold=expl.threshold,
        model=spec.model,
        filters=filters,
        gate=gate_entry(expl),
        silent=silent_summary(expl),
    )


def gate_entry(expl: Explanation) -> dict | None:
    """The gate of an explanation whose verdict is given, as its results record it: the gate's JSON
    (:meth:`napari_icnn.gate.Gate.to_json`) with ``kept``, whether the verdict was given although the gate
    declined the scan (``--keep-ungradeable``); ``None`` when the scan was not assessed."""
    if expl.gate is None:
        return None
    entry = expl.gate.to_json()
    entry["kept"] = bool(entry["declined"])
    return entry


def gate_line(expl: Explanation) -> str:
    """One short line for a title when the gate did not find the scan plainly gradable; else ``""``."""
    gate = expl.gate
    if gate is None or gate.status == "gradable":
        return ""
    if gate.status == "ungradeable":
        return "UNGRADEABLE photograph: verdict kept on request"
    score = "" if gate.experience is None else f" (score {gate.experience:.2f})"
    return f"outside the model's experience{score}: the probability may not hold"


def sheet_array(image: FundusImage, expl: Explanation, top: list, tile: int = SHEET_TILE) -> np.ndarray:
    """The evidence sheet (scan + one tile per reported filter, in the order of ``top``) as an RGB
    array. Tiles of filters that are not evidence are titled and coloured by their role; the scan's
    tile says how the contributions were measured.

    The scan is shrunk to the tile size first and the maps are resampled straight onto the small
    grid, so a 4000-pixel photograph costs what a 400-pixel one does.
    """
    from PIL import Image

    from napari_icnn.data.geometry import Geometry
    from napari_icnn.render import basis_label, evidence_sheet, role_label

    h, w = image.shape
    s = min(1.0, tile / max(h, w))
    sh, sw = max(1, round(h * s)), max(1, round(w * s))
    rgb = image.pixels if s == 1.0 else np.asarray(Image.fromarray(image.pixels).resize((sw, sh), Image.Resampling.BILINEAR))
    g = expl.geometry
    geom = g if s == 1.0 else Geometry((sh, sw), g.x0 * s, g.y0 * s, g.side * s, g.size)
    panels = []
    for f in top:
        m = np.clip(geom.map_to_scan((f.map / f.act_scale).astype(np.float32)), 0.0, 1.0)
        # pixel centres sit at integers: scale about the pixel edges
        peak = ((f.peak_x + 0.5) * s - 0.5, (f.peak_y + 0.5) * s - 0.5)
        panels.append((role_label(f"{f.name}  {f.contribution:+.3f}", f.role), m, peak, f.role))
    title = f"{expl.predicted_class}  p = {expl.probability:.3f}  (not for clinical use)"
    basis = basis_label(expl.contribution_basis)
    if basis:
        title += "\n" + basis
    warning = gate_line(expl)
    if warning:
        title += "\n" + warning
    return evidence_sheet(rgb, panels, title, tile=tile)


def _write_sheet(target: Path, image: FundusImage, expl: Explanation, top: list) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(sheet_array(image, expl, top)).save(buf, format="PNG", compress_level=1)
    atomic_write_bytes(target, buf.getvalue())


def _write_json(
    target: Path, image: FundusImage, expl: Explanation, top_k: int, input_path: str, outputs: list[str]
) -> None:
    doc = expl.to_json(top_k)
    doc["gate"] = gate_entry(expl)
    doc.pop("source", None)  # the input's path may name the patient; summary.csv maps it instead
    doc["input"] = {
        "path_sha256": hashlib.sha256(os.fsencode(input_path)).hexdigest(),
        "frame": image.frame,
        "sop_instance_uid": image.sop_instance_uid,
        "series_instance_uid": image.series_instance_uid,
        "study_instance_uid": image.study_instance_uid,
        "sop_class_uid": image.sop_class_uid,
    }
    doc["outputs"] = outputs
    atomic_write_bytes(target, json.dumps(doc, indent=2).encode("utf-8"))
