"""Identity of derived DICOM objects: the model that made them, the source instance and
frame they derive from, and UIDs derived deterministically from both.

A PACS de-duplicates on the SOP Instance UID, so deriving the UIDs of a result from what
determines it (source instance, frame, model weights, kind of object) makes re-running a
batch replace nothing and duplicate nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from napari_icnn.errors import InputError

if TYPE_CHECKING:
    from napari_icnn.image import FundusImage

__all__ = [
    "ModelInfo",
    "SourceRef",
    "DerivedUids",
    "source_ref",
    "derive_uid",
    "derived_uids",
    "tracking_uid",
    "device_uid",
    "unreferenceable_reason",
]

# Changing this string changes every derived UID: only do so when the meaning of the
# derived objects changes, never for cosmetic reasons.
_NAMESPACE = "napari-icnn/derived/v1"
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ModelInfo:
    """The model that produced a result, as derived objects identify it.

    Valid once built: ``name`` and ``version`` are non-empty and ``sha256`` is the
    64-digit hex digest of the weights (stored lower-case).
    """

    name: str
    version: str
    sha256: str
    """SHA-256 of the weights file: the identity of the model for UID derivation."""
    description: str = ""

    def __post_init__(self) -> None:
        if not str(self.name).strip():
            raise ValueError("ModelInfo.name must not be empty")
        if not str(self.version).strip():
            raise ValueError("ModelInfo.version must not be empty")
        sha = str(self.sha256).strip().lower()
        if not _SHA256.fullmatch(sha):
            raise ValueError(f"ModelInfo.sha256 must be 64 hex digits; got {len(sha)} characters")
        object.__setattr__(self, "sha256", sha)


@dataclass(frozen=True)
class SourceRef:
    """The source instance (and frame) a result derives from, checked against its header."""

    path: str
    """File the source was read from; the only thing error messages name."""
    header: Any = None
    """The source's pydicom ``Dataset`` (no pixel data)."""
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    rows: int = 0
    columns: int = 0
    number_of_frames: int = 1
    frame_number: int | None = None
    """1-based frame within a multi-frame instance; ``None`` for single-frame instances."""
    left_out: tuple[str, ...] = ()
    """Source attributes whose values could not be carried into derived objects."""
    pixel_spacing: tuple[float, float] | None = None
    """(row, column) spacing in mm, when the source states a usable one."""

    @property
    def frame_numbers(self) -> list[int] | None:
        """``[frame_number]`` for references, or ``None`` where the whole instance is meant."""
        return None if self.frame_number is None else [self.frame_number]


@dataclass(frozen=True)
class DerivedUids:
    """The Series and SOP Instance UIDs of one derived object (:func:`derived_uids`)."""

    series_instance_uid: str
    sop_instance_uid: str


def source_ref(source: FundusImage) -> SourceRef:
    """Check that ``source`` is a DICOM frame a derived object can reference.

    The reference is built on the checked attributes of :func:`~napari_icnn.dicom.carry.carry_header`
    (``SourceRef.header`` is that fresh data set, never the source header itself), so a derived
    object copies nothing the source header holds in an unusable form.

    Raises
    ------
    InputError
        The image did not come from DICOM, its header lacks a valid identifying UID, or its frame
        index is missing or out of range.
    """
    from napari_icnn.dicom.carry import carry_header

    if source.header is None:
        raise InputError(
            source.source, "not a DICOM image: DICOM results must reference a DICOM source instance"
        )
    carried = carry_header(source)
    if not carried.referable:
        raise InputError(source.source, unreferenceable_reason(carried.missing_identity))
    header = carried.dataset
    n_frames = _frame_count(source.header)
    frame = source.frame
    if n_frames > 1:
        if frame is None or not 0 <= frame < n_frames:
            raise InputError(
                source.source, f"frame index {frame} is not a frame of this {n_frames}-frame instance"
            )
        frame_number: int | None = frame + 1
    else:
        if frame not in (None, 0):
            raise InputError(source.source, f"frame index {frame} given for a single-frame instance")
        frame_number = None
    return SourceRef(
        path=source.source,
        header=header,
        sop_class_uid=str(header.SOPClassUID),
        sop_instance_uid=str(header.SOPInstanceUID),
        study_instance_uid=str(header.StudyInstanceUID),
        series_instance_uid=str(header.SeriesInstanceUID),
        rows=int(header.Rows),
        columns=int(header.Columns),
        number_of_frames=n_frames,
        frame_number=frame_number,
        left_out=carried.left_out,
        pixel_spacing=carried.pixel_spacing,
    )


def unreferenceable_reason(missing: tuple[str, ...]) -> str:
    """Why a source without usable identity UIDs cannot be referenced (names keywords, never values)."""
    return f"the source has no valid {', '.join(missing)}, so a DICOM result cannot reference it"


def _frame_count(header: Any) -> int:
    """Number of frames; a single frame when the (Multi-frame module) attribute is absent or unusable:
    the reader has already matched the frames it decoded against the header."""
    try:
        value = header.get("NumberOfFrames")
        return max(1, int(value)) if value not in (None, "") else 1
    except Exception:  # noqa: BLE001 - a mistyped count is the reader's concern, not the writer's
        return 1


def derive_uid(*parts: object) -> str:
    """A UID that is a pure function of ``parts`` (under the pydicom root, which
    ``generate_uid`` reserves for this use)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[_NAMESPACE, *(str(p) for p in parts)]))


def derived_uids(ref: SourceRef, model: ModelInfo, kind: str) -> DerivedUids:
    """Series and SOP Instance UIDs of the ``kind`` (``"seg"``, ``"sr"``, ...) of result that
    ``model`` derives from the referenced frame."""
    key = (ref.sop_instance_uid, ref.frame_number or 0, model.sha256, kind)
    return DerivedUids(
        series_instance_uid=derive_uid("series", *key),
        sop_instance_uid=derive_uid("instance", *key),
    )


def tracking_uid(ref: SourceRef, model: ModelInfo, item: object) -> str:
    """Tracking UID of one reported item (a filter id, or ``"image"``) of one frame.

    The SEG segment and the SR measurement group of the same filter share it, so a viewer
    can link the map to its numbers.
    """
    return derive_uid("tracking", ref.sop_instance_uid, ref.frame_number or 0, model.sha256, item)


def device_uid(model: ModelInfo) -> str:
    """UID of the model as an observer device: the same weights are the same device."""
    return derive_uid("device", model.sha256)
