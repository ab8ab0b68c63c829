"""Strict writing of Ophthalmic Photography (OP) DICOM instances.

The output is a conformant OP 8-bit or 16-bit image instance (PS3.3 A.39): every mandatory
module is present (Patient, General Study, General Series, OP Series, Synchronization, General
Equipment, General Acquisition, General Image, Image Pixel, Multi-frame, OP Image, Ocular Region
Imaged, OP Acquisition Parameters, Ophthalmic Photographic Parameters, SOP Common), there is no
Frame of Reference, and lossy encodings carry their compression ratio and method. Used to make
test and demonstration data and to export photographs for a PACS.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from napari_icnn import __version__
from napari_icnn.atomic import atomic_write
from napari_icnn.dicom.read import normalize_laterality
from napari_icnn.errors import ConfigError, InputError

__all__ = ["OP_8BIT_SOP_CLASS", "OP_16BIT_SOP_CLASS", "TRANSFER_SYNTAXES", "write_op"]

OP_8BIT_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.77.1.5.1")
OP_16BIT_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.77.1.5.2")


@dataclass(frozen=True)
class _Syntax:
    uid: UID
    lossy_method: str | None
    """LossyImageCompressionMethod when the encoding loses information, else ``None``."""
    colour_photometric: str
    """Photometric Interpretation of colour pixels in this encoding."""


TRANSFER_SYNTAXES: dict[str, _Syntax] = {
    "jpeg-baseline": _Syntax(JPEGBaseline8Bit, "ISO_10918_1", "YBR_FULL_422"),
    "jpeg2000-lossless": _Syntax(JPEG2000Lossless, None, "YBR_RCT"),
    "jpeg2000": _Syntax(JPEG2000, "ISO_15444_1", "YBR_ICT"),
    "rle": _Syntax(RLELossless, None, "RGB"),
    "explicit": _Syntax(ExplicitVRLittleEndian, None, "RGB"),
    "jpeg-ls-lossless": _Syntax(JPEGLSLossless, None, "RGB"),
}
"""The encodings :func:`write_op` offers, by name."""

_FRAME_TIME = 0x00181063  # (0018,1063) Frame Time: the Frame Increment Pointer target
_DATE = re.compile(r"^\d{8}$")


def write_op(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    *,
    laterality: str | None = None,
    transfer_syntax: str = "jpeg-baseline",
    patient_id: str = "ANON",
    patient_name: str = "Anonymous",
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    study_date: str | None = None,
    pixel_spacing: tuple[float, float] | None = None,
    horizontal_fov_deg: float | None = 45.0,
    planar_configuration: int = 0,
    manufacturer: str = "napari-icnn",
    jpeg_quality: int = 92,
    jpeg2000_ratio: float = 10.0,
    series_number: int = 1,
    instance_number: int = 1,
    acquired: dt.datetime | None = None,
    overwrite: bool = False,
) -> Dataset:
    """Write ``pixels`` as an Ophthalmic Photography instance at ``path`` and return the data set.

    Parameters
    ----------
    path
        Destination file. Written under a temporary name in the same folder, then renamed.
    pixels
        ``(H, W, 3)`` or ``(F, H, W, 3)`` RGB, or ``(H, W)`` / ``(F, H, W)`` grey (a red-free
        photograph, written MONOCHROME2 with ImageType ``REDFREE``). ``uint8`` gives the OP
        8-bit SOP class; ``uint16`` the 16-bit one (Bits Allocated/Stored/High 16/16/15).
    laterality
        ``"L"``, ``"R"`` or ``"B"`` (``"left"``, ``"OS"``, ... are accepted). Required:
        ImageLaterality is type 1 in OP and has no "unknown" value, so ``None`` is refused.
    transfer_syntax
        One of :data:`TRANSFER_SYNTAXES`: ``"jpeg-baseline"`` (YBR_FULL_422, 8-bit only, as
        cameras write), ``"jpeg2000-lossless"`` (YBR_RCT), ``"jpeg2000"`` (lossy, YBR_ICT, about
        ``jpeg2000_ratio``:1), ``"rle"``, ``"explicit"`` (uncompressed RGB) or ``"jpeg-ls-lossless"``.
    study_instance_uid, series_instance_uid, sop_instance_uid
        New UIDs are generated when not given.
    study_date
        ``YYYYMMDD``; the acquisition date when not given.
    pixel_spacing
        (row, column) nominal spacing in mm at the retina, written as PixelSpacing when given.
    horizontal_fov_deg
        The camera's horizontal field of view in degrees; ``None`` leaves it empty.
    planar_configuration
        0 (colour-by-pixel) or 1 (colour-by-plane); 1 only with ``"explicit"``. The OP IOD
        defines 0, so 1 exists to produce the by-plane files some systems still emit.
    manufacturer
        General Equipment Manufacturer.
    jpeg_quality
        Pillow JPEG quality (1-100; 85-95 is what cameras use) for ``"jpeg-baseline"``.
    jpeg2000_ratio
        Target compression ratio (> 1) for lossy ``"jpeg2000"``.
    series_number, instance_number
        SeriesNumber and InstanceNumber.
    acquired
        Acquisition date and time; now when not given.
    overwrite
        Replace an existing file at ``path`` (refused by default).

    Returns
    -------
    pydicom.dataset.Dataset
        The data set as written (with its encoded pixel data).

    Raises
    ------
    ConfigError
        An argument is invalid (shape, dtype, encoding, missing laterality, value).
    InputError
        ``path`` exists and ``overwrite`` is false.
    """
    frames, colour = _frames(pixels)
    syntax = _syntax(transfer_syntax, frames, colour, planar_configuration)
    side = normalize_laterality(laterality)
    if side is None:
        raise ConfigError(
            "laterality is required: ImageLaterality is type 1 in Ophthalmic Photography "
            f"(one of 'L', 'R', 'B'; 'left', 'OS', ... are accepted); got {laterality!r}"
        )
    if study_date is not None and not _DATE.match(study_date):
        raise ConfigError(f"study_date must be YYYYMMDD; got {study_date!r}")
    if pixel_spacing is not None and (len(pixel_spacing) != 2 or min(pixel_spacing) <= 0):
        raise ConfigError(f"pixel_spacing must be two positive numbers (mm); got {pixel_spacing!r}")
    if not 1 <= jpeg_quality <= 100:
        raise ConfigError(f"jpeg_quality must be 1-100; got {jpeg_quality}")
    if not jpeg2000_ratio > 1:
        raise ConfigError(f"jpeg2000_ratio must be above 1; got {jpeg2000_ratio}")
    if horizontal_fov_deg is not None and not 0 < horizontal_fov_deg <= 360:
        raise ConfigError(f"horizontal_fov_deg must be in (0, 360]; got {horizontal_fov_deg}")
    target = Path(path)
    if target.exists() and not overwrite:
        raise InputError(target, "already exists; not overwritten (pass overwrite=True to replace it)")

    ds = _dataset(
        frames,
        colour,
        syntax,
        laterality=side,
        patient_id=patient_id,
        patient_name=patient_name,
        uids=(study_instance_uid, series_instance_uid, sop_instance_uid),
        study_date=study_date,
        acquired=acquired or dt.datetime.now().replace(microsecond=0),
        pixel_spacing=pixel_spacing,
        horizontal_fov_deg=horizontal_fov_deg,
        manufacturer=manufacturer,
        series_number=series_number,
        instance_number=instance_number,
    )
    _encode(ds, frames, colour, syntax, planar_configuration, jpeg_quality, jpeg2000_ratio)
    _save_atomically(ds, target)
    return ds


# --------------------------------------------------------------------------- validation


def _frames(pixels: np.ndarray) -> tuple[np.ndarray, bool]:
    """``pixels`` as ``(F, H, W, 3)`` colour or ``(F, H, W)`` grey, and whether it is colour."""
    arr = np.asarray(pixels)
    if arr.dtype not in (np.uint8, np.uint16):
        raise ConfigError(f"pixels must be uint8 or uint16; got {arr.dtype}")
    colour = arr.ndim in (3, 4) and arr.shape[-1] == 3
    if colour:
        arr = arr[None] if arr.ndim == 3 else arr
    elif arr.ndim in (2, 3):
        arr = arr[None] if arr.ndim == 2 else arr
    else:
        raise ConfigError(
            f"pixels must be (H, W, 3), (F, H, W, 3), (H, W) or (F, H, W); got shape {arr.shape}"
        )
    if 0 in arr.shape or max(arr.shape[1:3]) > 65535:
        raise ConfigError(
            f"pixels must have 1 to 65535 rows and columns and at least one frame; got {arr.shape}"
        )
    return np.ascontiguousarray(arr), colour


def _syntax(name: str, frames: np.ndarray, colour: bool, planar: int) -> _Syntax:
    if name not in TRANSFER_SYNTAXES:
        raise ConfigError(f"transfer_syntax must be one of {', '.join(TRANSFER_SYNTAXES)}; got {name!r}")
    if name == "jpeg-baseline" and frames.dtype != np.uint8:
        raise ConfigError(
            "jpeg-baseline holds 8-bit samples only; use jpeg2000-lossless, rle or explicit for uint16"
        )
    if planar not in (0, 1):
        raise ConfigError(f"planar_configuration must be 0 or 1; got {planar}")
    if planar == 1 and (name != "explicit" or not colour):
        raise ConfigError(
            "planar_configuration=1 applies to colour pixels with transfer_syntax='explicit' only"
        )
    return TRANSFER_SYNTAXES[name]


# --------------------------------------------------------------------------- data set


def _dataset(
    frames: np.ndarray,
    colour: bool,
    syntax: _Syntax,
    *,
    laterality: str,
    patient_id: str,
    patient_name: str,
    uids: tuple[str | None, str | None, str | None],
    study_date: str | None,
    acquired: dt.datetime,
    pixel_spacing: Sequence[float] | None,
    horizontal_fov_deg: float | None,
    manufacturer: str,
    series_number: int,
    instance_number: int,
) -> Dataset:
    """Every attribute of the OP IOD except the pixel data and its compression notes."""
    sixteen = frames.dtype == np.uint16
    study_uid, series_uid, sop_uid = (u or generate_uid() for u in uids)
    sop_class = OP_16BIT_SOP_CLASS if sixteen else OP_8BIT_SOP_CLASS
    date, time = acquired.strftime("%Y%m%d"), acquired.strftime("%H%M%S")

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = syntax.uid
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = f"ICNN_{__version__}"[:16]

    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = date  # the acquisition date: the same inputs give the same bytes
    # Patient
    # A single-component name is legal but flagged as the retired form; "^" keeps it identical.
    ds.PatientName = patient_name if "^" in patient_name or not patient_name else patient_name + "^"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    # General Study
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = study_date or date
    ds.StudyTime = time
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    # General Series + OP Series
    ds.Modality = "OP"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    # Synchronization (the OP IOD has no Frame of Reference module, so no FrameOfReferenceUID)
    ds.SynchronizationFrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid, sop_uid, "synchronization"])
    ds.SynchronizationTrigger = "NO TRIGGER"
    ds.AcquisitionTimeSynchronized = "N"
    # General Equipment
    ds.Manufacturer = manufacturer
    ds.SoftwareVersions = f"napari-icnn {__version__}"
    # General Acquisition / General Image / OP Image
    ds.ImageType = ["ORIGINAL", "PRIMARY", "", "COLOR" if colour else "REDFREE"]
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ""
    ds.ContentDate = date
    ds.ContentTime = time
    ds.AcquisitionDateTime = acquired.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "YES"
    ds.LossyImageCompression = "00"
    if pixel_spacing is not None:
        ds.PixelSpacing = [_ds_value(v) for v in pixel_spacing]
    # Image Pixel
    _set_pixel_module(ds, frames, colour, syntax)
    # Multi-frame
    ds.NumberOfFrames = frames.shape[0]
    ds.FrameIncrementPointer = _FRAME_TIME
    ds.FrameTime = 0
    # Ocular Region Imaged
    ds.ImageLaterality = laterality
    ds.AnatomicRegionSequence = [_code("81745001", "SCT", "Eye")]
    # OP Acquisition Parameters (type 2: present, empty when unknown)
    ds.PatientEyeMovementCommanded = ""
    ds.EmmetropicMagnification = None
    ds.IntraOcularPressure = None
    ds.HorizontalFieldOfView = None if horizontal_fov_deg is None else float(horizontal_fov_deg)
    ds.PupilDilated = ""
    ds.RefractiveStateSequence = []
    # Ophthalmic Photographic Parameters
    ds.AcquisitionDeviceTypeCodeSequence = [_code("409898007", "SCT", "Fundus Camera")]
    ds.IlluminationTypeCodeSequence = []
    ds.LightPathFilterTypeStackCodeSequence = []
    ds.ImagePathFilterTypeStackCodeSequence = []
    ds.LensesCodeSequence = []
    ds.DetectorType = "CCD"
    return ds


def _set_pixel_module(ds: Dataset, frames: np.ndarray, colour: bool, syntax: _Syntax) -> None:
    bits = 16 if frames.dtype == np.uint16 else 8
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = syntax.colour_photometric if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    else:
        ds.PresentationLUTShape = "IDENTITY"
    ds.Rows, ds.Columns = int(frames.shape[1]), int(frames.shape[2])
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _ds_value(value: float) -> str:
    """A decimal string of at most 16 characters."""
    text = f"{float(value):.10g}"
    return text if len(text) <= 16 else f"{float(value):.6e}"


# --------------------------------------------------------------------------- pixel data


def _encode(
    ds: Dataset,
    frames: np.ndarray,
    colour: bool,
    syntax: _Syntax,
    planar: int,
    jpeg_quality: int,
    jpeg2000_ratio: float,
) -> None:
    raw_bytes = frames.nbytes
    if syntax.uid == JPEGBaseline8Bit:
        ds.PixelData = encapsulate([_jpeg(frame, jpeg_quality) for frame in frames], has_bot=True)
        ds["PixelData"].VR = "OB"
    elif syntax.uid == ExplicitVRLittleEndian:
        if planar == 1:
            ds.PlanarConfiguration = 1
            frames = np.ascontiguousarray(frames.transpose(0, 3, 1, 2))
        data = frames.astype(frames.dtype.newbyteorder("<"), copy=False).tobytes()
        ds.PixelData = data + b"\0" * (len(data) % 2)
        ds["PixelData"].VR = "OW" if frames.dtype == np.uint16 else "OB"
    else:
        options: dict[str, Any] = {"j2k_cr": [float(jpeg2000_ratio)]} if syntax.uid == JPEG2000 else {}
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # compress() starts from native
        try:
            ds.compress(
                syntax.uid,
                frames if frames.shape[0] > 1 else frames[0],
                generate_instance_uid=False,
                **options,
            )
        except (RuntimeError, ValueError, ImportError) as exc:
            raise ConfigError(f"cannot encode with {syntax.uid.name}: {exc}") from exc
        # compress() may rewrite the pixel module; restore what the OP IOD requires.
        ds.PhotometricInterpretation = syntax.colour_photometric if colour else "MONOCHROME2"
        if colour:
            ds.PlanarConfiguration = 0
    if syntax.lossy_method is not None:
        ratio = raw_bytes / max(1, len(ds.PixelData))
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = _ds_value(round(ratio, 2))
        ds.LossyImageCompressionMethod = syntax.lossy_method


def _jpeg(frame: np.ndarray, quality: int) -> bytes:
    """One frame as a baseline JPEG; colour as YCbCr 4:2:2 (what YBR_FULL_422 announces)."""
    from PIL import Image

    buffer = io.BytesIO()
    image = Image.fromarray(frame)
    if frame.ndim == 3:
        image.save(buffer, format="JPEG", quality=quality, subsampling="4:2:2")
    else:
        image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _save_atomically(ds: Dataset, target: Path) -> None:
    """:func:`~napari_icnn.atomic.atomic_write` of the DICOM file; an error names ``target``."""
    try:
        atomic_write(target, lambda fh: ds.save_as(fh, enforce_file_format=True))
    except OSError as exc:
        raise InputError(target, f"cannot be written ({exc.strerror or exc})") from exc
