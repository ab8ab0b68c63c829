"""DICOM Segmentation of the evidence: one FRACTIONAL (probability) segment per reported
filter, on the source frame's own pixel grid, referencing the source instance and frame. A
segment of a filter that is not evidence (anatomy context, a possible artefact) says so in its
label and description.

Fundus photographs (OP, XC, SC) have no Frame of Reference, so the segmentation is tied to
its source by the pixel grid alone (Spatial Locations Preserved = YES): same rows and
columns, one frame per segment, each deriving from the source frame.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_icnn.atomic import atomic_write, disk_full_errno
from napari_icnn.dicom.uids import ModelInfo, SourceRef, derived_uids, source_ref, tracking_uid
from napari_icnn.errors import InputError
from napari_icnn.parts import PARTS
from napari_icnn.roles import ARTEFACT, ROLES

if TYPE_CHECKING:
    import highdicom as hd
    from pydicom.dataset import Dataset

    from napari_icnn.image import FundusImage

__all__ = [
    "EvidenceMap",
    "ModelInfo",
    "build_seg",
    "write_seg",
    "lossless_transfer_syntax",
    "series_description",
    "save_atomic",
    "fit_text",
    "segment_label",
    "software_versions",
    "NOT_FOR_CLINICAL_USE",
    "LATERALITY_CODES",
    "MANUFACTURER",
    "CHARACTER_SET",
]

NOT_FOR_CLINICAL_USE = "not for clinical use"
MANUFACTURER = "napari-icnn"
# Display names contain "·" (and clinicians' names anything), which the default repertoire
# lacks; UTF-8 also re-encodes patient names from any source character set faithfully.
CHARACTER_SET = "ISO_IR 192"
_LO = 64  # maximum length of LO values (labels, descriptions, names)
_ST = 1024  # maximum length of ST values (Segment Description)

# CID 7150 categories, and the generic property type for a filter without a matched part.
# Such a map asserts no anatomy or pathology: "Spatial and Relational Concept" is the one
# category that does not, and "Saliency" (CID 217, Visual Explanation) says what the map is.
_ANATOMY = ("91723000", "SCT", "Anatomical Structure")
_MORPHOLOGY = ("49755003", "SCT", "Morphologically Abnormal Structure")
_SPATIAL = ("309825002", "SCT", "Spatial and Relational Concept")
_SALIENCY = ("130404", "DCM", "Saliency")
# CID 244. The eye is a paired structure; SEG states laterality as a modifier of the
# segmented property (series-level Laterality does not apply to SEG).
LATERALITY_CODES = {
    "R": ("24028007", "SCT", "Right"),
    "L": ("7771000", "SCT", "Left"),
    "B": ("51440002", "SCT", "Bilateral"),
}

# Wide-field OP IODs mandate a Frame of Reference, which a segmentation aligned by pixel grid
# cannot use and highdicom then refuses to go without: their proxy poses as an OP 8-bit
# image, and the real SOP Class is put back into the references afterwards.
_FRAME_OF_REFERENCE_IODS = {"1.2.840.10008.5.1.4.1.1.77.1.5.5", "1.2.840.10008.5.1.4.1.1.77.1.5.6"}
_POSE_AS = "1.2.840.10008.5.1.4.1.1.77.1.5.1"


@dataclass(frozen=True)
class EvidenceMap:
    """One filter's evidence map on the source frame's pixel grid.

    Valid once built: ``probability`` is a C-contiguous ``(H, W)`` float32 array with
    every value in [0, 1].
    """

    filter_id: int
    name: str
    """Display name, e.g. ``"filter 17 · hard exudates"``."""
    part_key: str | None
    """:mod:`napari_icnn.parts` key of the matched part, or ``None``."""
    probability: np.ndarray
    """``(H, W)`` float32 in [0, 1], same rows and columns as the source frame."""
    role: str | None = None
    """``evidence``, ``context`` or ``possible artefact`` (:mod:`napari_icnn.roles`); ``None``: not stated."""
    flags: tuple[str, ...] = ()
    """Why the role, in words."""

    def __post_init__(self) -> None:
        if not str(self.name).strip():
            raise ValueError(f"EvidenceMap of filter {self.filter_id}: name must not be empty")
        if self.role is not None and self.role not in ROLES:
            raise ValueError(f"EvidenceMap of filter {self.filter_id}: role must be one of {ROLES}; got {self.role!r}")
        object.__setattr__(self, "flags", tuple(str(f) for f in self.flags))
        p = np.asarray(self.probability)
        if p.ndim != 2 or not np.issubdtype(p.dtype, np.floating):
            raise ValueError(
                f"EvidenceMap of filter {self.filter_id}: probability must be a 2-D float array; "
                f"got shape {p.shape} dtype {p.dtype}"
            )
        p = np.array(p, dtype=np.float32, order="C")  # own copy: the caller's array stays theirs
        if not np.isfinite(p).all():
            raise ValueError(f"EvidenceMap of filter {self.filter_id}: probability contains NaN or inf")
        lo, hi = float(p.min()), float(p.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(
                f"EvidenceMap of filter {self.filter_id}: probability must lie in [0, 1]; got [{lo:.4g}, {hi:.4g}]"
            )
        if lo < 0 or hi > 1:  # resampling round-off only
            p = np.clip(p, 0.0, 1.0)
        p.setflags(write=False)
        object.__setattr__(self, "filter_id", int(self.filter_id))
        object.__setattr__(self, "probability", p)


def build_seg(
    source: FundusImage,
    maps: Sequence[EvidenceMap],
    model: ModelInfo,
    *,
    series_number: int = 901,
    instance_number: int = 1,
    transfer_syntax_uid: str | None = None,
) -> hd.seg.Segmentation:
    """Build the FRACTIONAL segmentation of ``maps`` over the frame ``source``.

    Parameters
    ----------
    source
        The frame the maps were computed on; must come from DICOM (``source.header``).
    maps
        One or more evidence maps, each with the source's rows and columns.
    model
        The model that produced them; its SHA-256 determines the UIDs.
    series_number, instance_number
        Numbers shown by viewers.
    transfer_syntax_uid
        Encoding of the frames; default :func:`lossless_transfer_syntax`.

    Raises
    ------
    InputError
        ``source`` cannot be referenced (see :func:`napari_icnn.dicom.uids.source_ref`) or a
        map's shape differs from the source frame.
    ValueError
        No maps, or two maps for the same filter.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    ref = source_ref(source)
    _check_maps(ref, maps)
    uids = derived_uids(ref, model, "seg")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=fit_text(model.name),
        version=fit_text(model.version),
        family=codes.cid7162.ArtificialIntelligence,
        parameters={"sha256": model.sha256},
    )
    laterality = LATERALITY_CODES.get(source.laterality or "")
    descriptions = [
        _segment_description(i, m, algorithm, tracking_uid(ref, model, m.filter_id), laterality)
        for i, m in enumerate(maps, start=1)
    ]
    spacing = ref.pixel_spacing
    pixels = np.stack([m.probability for m in maps], axis=-1)[None]
    seg = hd.seg.Segmentation(
        source_images=[_proxy(ref, spacing)],
        pixel_array=pixels,
        pixel_measures=_pixel_measures(spacing),
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=255,
        segment_descriptions=descriptions,
        series_instance_uid=uids.series_instance_uid,
        series_number=series_number,
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=fit_text(model.name),
        software_versions=software_versions(model),  # type: ignore[arg-type]  # highdicom's tuple[str] means any number of strings
        device_serial_number=model.sha256,
        content_label="ICNN_EVIDENCE",
        content_description=fit_text(f"Per-filter evidence maps of {model.name} {model.version}"),
        transfer_syntax_uid=transfer_syntax_uid or lossless_transfer_syntax(),
        specific_character_set=CHARACTER_SET,
    )
    _complete(seg, ref, spacing)
    seg.SeriesDescription = series_description("ICNN evidence maps", model)
    return seg


def write_seg(
    path: str | os.PathLike[str],
    source: FundusImage,
    maps: Sequence[EvidenceMap],
    model: ModelInfo,
    **kw: Any,
) -> Path:
    """:func:`build_seg` and save it to ``path`` atomically; returns the path."""
    return save_atomic(build_seg(source, maps, model, **kw), path)


def lossless_transfer_syntax() -> str:
    """JPEG-LS Lossless where an encoder is installed (smooth maps come out about 5x smaller
    than with RLE), else RLE Lossless (pydicom encodes it natively); both are lossless, so
    the probabilities survive exactly."""
    from pydicom.pixels.encoders import JPEGLSLosslessEncoder
    from pydicom.uid import JPEGLSLossless, RLELossless

    return str(JPEGLSLossless if JPEGLSLosslessEncoder.is_available else RLELossless)


def series_description(what: str, model: ModelInfo) -> str:
    """``"<what> (<model> <version>) - not for clinical use"`` within the 64-character limit,
    shortening the model part so the warning always survives."""
    tail = f" - {NOT_FOR_CLINICAL_USE}"
    return fit_text(f"{what} ({model.name} {model.version}", _LO - len(tail) - 1) + ")" + tail


def save_atomic(dataset: Dataset, path: str | os.PathLike[str]) -> Path:
    """Write ``dataset`` as a DICOM file under a temporary name, then rename it to ``path``.

    Readers never see a half-written file and a failed write leaves ``path`` as it was. An
    existing file is replaced only when it is an earlier copy of the same object (same SOP
    Instance UID, as re-running produces); anything else is left alone.

    Raises
    ------
    InputError
        ``path`` is a folder, its folder is missing, it holds another file, or writing failed.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a folder; give a file name for the DICOM output")
    folder = path.parent
    if not folder.is_dir():
        raise InputError(folder, "output folder does not exist")
    if path.exists() and _sop_instance_uid(path) != str(dataset.SOPInstanceUID):
        raise InputError(path, "already exists and is not an earlier copy of this result; not overwritten")
    try:
        return atomic_write(path, lambda fh: dataset.save_as(fh, enforce_file_format=True))
    except OSError as exc:
        if disk_full_errno(exc) is not None:
            raise  # a full disk ends a batch run: it is not this result's fault
        raise InputError(path, f"cannot write: {_root_cause(exc)}") from None


def _root_cause(exc: BaseException) -> str:
    """The innermost OSError's words: pydicom re-raises a failed write with its traceback in the text."""
    inner: BaseException = exc
    while isinstance(nested := inner.__cause__ or inner.__context__, OSError):
        inner = nested
    return getattr(inner, "strerror", None) or " ".join(str(inner).split())[:200]


def fit_text(text: str, limit: int = _LO) -> str:
    """``text`` on one line within ``limit`` bytes of UTF-8 (validators count bytes)."""
    text = " ".join(str(text).split())  # LO/SH forbid control characters
    if len(text.encode()) <= limit:
        return text
    while len(text.encode()) > limit - 3:
        text = text[:-1]
    return text.rstrip() + "..."


def software_versions(model: ModelInfo) -> list[str]:
    """Software Versions of a derived object: this package's and the model's."""
    from napari_icnn import __version__

    return [fit_text(f"napari-icnn {__version__}"), fit_text(f"{model.name} {model.version}")]


# ---------------------------------------------------------------------------------------


def _sop_instance_uid(path: Path) -> str | None:
    """SOP Instance UID of an existing DICOM file, or ``None`` for anything else."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return str(
            pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID
        )
    except (InvalidDicomError, OSError, AttributeError, ValueError, EOFError):
        return None


def _check_maps(ref: SourceRef, maps: Sequence[EvidenceMap]) -> None:
    if not maps:
        raise ValueError("a segmentation needs at least one evidence map")
    seen: set[int] = set()
    for m in maps:
        if not isinstance(m, EvidenceMap):
            raise TypeError(f"expected EvidenceMap objects; got {type(m).__name__}")
        if m.filter_id in seen:
            raise ValueError(f"two evidence maps for filter {m.filter_id}")
        seen.add(m.filter_id)
        if m.probability.shape != (ref.rows, ref.columns):
            h, w = m.probability.shape
            raise InputError(
                ref.path,
                f"evidence map of filter {m.filter_id} is {h}x{w} but the image is {ref.rows}x{ref.columns}; "
                "maps must be resampled onto the source pixel grid",
            )


def _code(triple: tuple[str, str, str]) -> Any:
    from pydicom.sr.coding import Code

    return Code(*triple)


def _segment_description(
    number: int, m: EvidenceMap, algorithm: Any, track_uid: str, laterality: tuple[str, str, str] | None
) -> Any:
    import highdicom as hd

    part = PARTS.get(m.part_key) if m.part_key else None
    snomed = part.snomed if part is not None else None
    # A possible artefact's map asserts no structure: coding it as the lesion its filter was
    # matched to would file an artefact as a finding.
    if part is not None and snomed is not None and m.role != ARTEFACT:
        category = _ANATOMY if part.kind == "anatomy" else _MORPHOLOGY
        prop = (snomed[0], "SCT", snomed[1])
    else:
        category, prop = _SPATIAL, _SALIENCY
    if part is not None and snomed is not None:
        matched = f"matched part: {part.display} ({part.key})"
    else:
        matched = f"assigned to: {m.part_key}" if m.part_key else "no matched part"
    label = fit_text(segment_label(m.name, m.role))
    desc = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=_code(category),
        segmented_property_type=_code(prop),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=track_uid,
        tracking_id=label,
    )
    text = f"Interpretable CNN filter {m.filter_id}; {matched}"
    if m.role is not None:
        text += f"; role: {m.role}" + (f" ({'; '.join(m.flags)})" if m.flags else "")
    desc.SegmentDescription = fit_text(text, _ST)
    if laterality is not None and prop is not _SALIENCY:
        desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept(*laterality)
        ]
    return desc


def segment_label(name: str, role: str | None) -> str:
    """The label a viewer lists: the display name, after the role where it is not evidence (in front,
    where shortening to the VR limit cannot cut it off), as on the evidence sheet."""
    from napari_icnn.render import role_label

    return role_label(name, role)


def _proxy(ref: SourceRef, spacing: tuple[float, float] | None) -> Dataset:
    """The source as highdicom needs it for a photograph, built on the checked attributes of
    ``ref.header`` (never a copy of the source header: see :mod:`napari_icnn.dicom.carry`).

    highdicom treats every instance of a multi-frame IOD (OP has the Multi-frame module) as an
    enhanced image, reads its Number of Frames and Shared Functional Groups, and supports sources
    without a Frame of Reference only as one frame. The proxy keeps the SOP Instance UID (and, but
    for wide-field OP, the SOP Class UID), so the references it produces are the source's;
    :func:`_complete` adds the frame number of a multi-frame source.
    """
    from pydicom.dataset import Dataset

    proxy = copy.deepcopy(ref.header)
    proxy.NumberOfFrames = 1
    if ref.sop_class_uid in _FRAME_OF_REFERENCE_IODS:
        proxy.SOPClassUID = _POSE_AS
    shared = Dataset()
    shared.PixelMeasuresSequence = _pixel_measures(spacing)
    proxy.SharedFunctionalGroupsSequence = [shared]
    return proxy


def _pixel_measures(spacing: tuple[float, float] | None) -> Any:
    """Pixel Measures of the segmentation (a placeholder when the source states no spacing,
    removed again by :func:`_complete`)."""
    import highdicom as hd

    row, col = spacing or (1.0, 1.0)
    # highdicom's reader requires Slice Thickness next to Pixel Spacing. A photograph has no
    # slice, so state one pixel: 3-D-aware viewers then see a cubic voxel, not a slab.
    return hd.PixelMeasuresSequence(pixel_spacing=[row, col], slice_thickness=row)


def _complete(seg: Dataset, ref: SourceRef, spacing: tuple[float, float] | None) -> None:
    """Fix up what highdicom cannot express for a photograph."""
    # General Image: 2C, required when there is no patient orientation/position geometry.
    seg.PatientOrientation = ref.header.get("PatientOrientation", "")
    if spacing is None:
        # The source states no spacing; Pixel Measures is optional without a Frame of
        # Reference, and inventing a scale would be worse than having none.
        shared = seg.SharedFunctionalGroupsSequence[0]
        if "PixelMeasuresSequence" in shared:
            del shared.PixelMeasuresSequence
    if ref.frame_number is not None:
        _reference_frame(seg, ref.frame_number)
    if ref.sop_class_uid in _FRAME_OF_REFERENCE_IODS:
        _restore_sop_class(seg, ref)


def _reference_frame(seg: Dataset, frame_number: int) -> None:
    """Point every image reference of ``seg`` at one frame of the multi-frame source."""
    for item in seg.PerFrameFunctionalGroupsSequence:
        for derivation in item.get("DerivationImageSequence", []):
            for src in derivation.SourceImageSequence:
                src.ReferencedFrameNumber = frame_number
    if "SourceImageSequence" in seg:
        # highdicom shares these items with the Referenced Series Sequence, whose items may
        # not carry a frame number: give this sequence its own copies.
        items = [copy.deepcopy(item) for item in seg.SourceImageSequence]
        for item in items:
            item.ReferencedFrameNumber = frame_number
        seg.SourceImageSequence = items


def _restore_sop_class(ds: Dataset, ref: SourceRef) -> None:
    """Replace the proxy's SOP Class by the source's in every reference to the source."""
    for elem in ds:
        if elem.VR != "SQ":
            continue
        for item in elem.value:
            if (
                item.get("ReferencedSOPInstanceUID") == ref.sop_instance_uid
                and "ReferencedSOPClassUID" in item
            ):
                item.ReferencedSOPClassUID = ref.sop_class_uid
            _restore_sop_class(item, ref)
