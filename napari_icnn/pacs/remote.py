"""One interface to a PACS, whichever protocol it speaks (DICOMweb or DIMSE).

Every method makes one request (or one association) and raises
:class:`~napari_icnn.pacs.errors.PacsUnavailable` or :class:`~napari_icnn.pacs.errors.PacsRefused`;
retrying is the caller's choice (:class:`~napari_icnn.pacs.retry.RetryPolicy`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from napari_icnn.errors import require_extra

if TYPE_CHECKING:
    from napari_icnn.pacs.credentials import Credentials, PacsSettings
    from napari_icnn.pacs.urls import PacsUrl

__all__ = ["InstanceRef", "SeriesRef", "Remote", "connect", "is_uid", "is_image_sop_class", "NON_IMAGE_SOP_CLASSES"]

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")

NON_IMAGE_SOP_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports (ours among them)
    "1.2.840.10008.5.1.4.1.1.66.",  # segmentations (ours among them), registrations, fiducials
    "1.2.840.10008.5.1.4.1.1.66",  # raw data
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF / CDA / STL
    "1.2.840.10008.5.1.4.1.1.481.",  # radiotherapy objects
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms
    "1.2.840.10008.5.1.4.1.1.78.",  # ophthalmic measurements (refraction, acuity, axial, IOL)
    "1.2.840.10008.5.1.4.1.1.79.",  # macular grid thickness report
    "1.2.840.10008.5.1.4.1.1.80.",  # visual field perimetry
    "1.2.840.10008.5.1.4.1.1.81.",  # ophthalmic thickness map
    "1.2.840.10008.5.1.4.1.1.82.",  # corneal topography map
)
"""SOP Class UID prefixes of objects that hold no photograph: never retrieved."""


def is_uid(text: str) -> bool:
    """Whether ``text`` is a well-formed UID (safe in a file name and a query)."""
    return bool(_UID.fullmatch(text or "")) and len(text) <= 64


def is_image_sop_class(uid: str) -> bool:
    """Whether instances of this SOP class may hold a photograph (unknown classes may)."""
    return not any(uid.startswith(p) if p.endswith(".") else uid == p for p in NON_IMAGE_SOP_CLASSES)


@dataclass(frozen=True)
class SeriesRef:
    """One series on the PACS: its study, its UID and its modality (``""`` when not given)."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str = ""


@dataclass(frozen=True)
class InstanceRef:
    """One instance on the PACS. Valid once built: well-formed study, series and SOP Instance UIDs."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str = ""
    modality: str = ""

    def __post_init__(self) -> None:
        for name in ("study_instance_uid", "series_instance_uid", "sop_instance_uid"):
            if not is_uid(getattr(self, name)):
                raise ValueError(f"InstanceRef.{name} is not a UID: {getattr(self, name)!r}")


class Remote(Protocol):
    """A PACS connection (one per thread)."""

    url: PacsUrl

    def probe(self) -> None:
        """Check the PACS answers and accepts us (a small query, or a C-ECHO)."""

    def find_studies(self, study_uid: str | None = None, since: str | None = None) -> list[str]:
        """Study Instance UIDs: the one study ``study_uid`` if the PACS has it, or those dated
        ``since`` (YYYYMMDD) or later."""

    def find_series(self, study_uid: str) -> list[SeriesRef]:
        """The series of a study, with their modalities."""

    def find_instances(self, series: SeriesRef) -> list[InstanceRef]:
        """The instances of a series, with their SOP classes."""

    def retrieve(self, ref: InstanceRef, target: Path) -> None:
        """Write the instance as a DICOM file at ``target`` (atomically, as the PACS has it)."""

    def exists(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        """Whether the PACS holds this instance."""

    def store(self, path: Path) -> None:
        """Store the DICOM file at ``path``; success only when the PACS confirms it."""

    def close(self) -> None:
        """Release the connection."""


def connect(url: PacsUrl, settings: PacsSettings, credentials: Credentials | None = None) -> Remote:
    """A connection to ``url`` (nothing is sent yet). ``credentials``: those of ``settings`` unless given.

    Raises
    ------
    MissingExtra
        The client package of ``url``'s protocol (the ``pacs`` extra) is not installed.
    """
    creds = settings.credentials if credentials is None else credentials
    if url.protocol == "dicomweb":
        require_extra("a PACS over DICOMweb", "pacs", ("dicomweb_client", "requests"))
        from napari_icnn.pacs.dicomweb import DicomWebRemote

        return DicomWebRemote(url, creds, settings.timeout)
    require_extra("a PACS over DIMSE", "pacs", ("pynetdicom",))
    from napari_icnn.pacs.dimse import DimseRemote

    return DimseRemote(url, settings.aet, settings.timeout)
