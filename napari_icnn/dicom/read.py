"""Tolerant reading of colour fundus photographs stored as DICOM.

Accepted: Ophthalmic Photography 8/16 bit (OP), Wide-Field OP, VL Photographic Image (XC) and
Secondary Capture (single- and multi-frame true colour) instances whose pixels are colour,
in any transfer syntax an installed decoder handles (JPEG baseline, JPEG 2000, JPEG-LS, RLE,
uncompressed). Every frame comes out as RGB ``uint8`` (16-bit and palette data are scaled to
8 bit), one :class:`~napari_icnn.data.fundus_image.FundusImage` per frame.

Declined (:class:`~napari_icnn.errors.DeclinedInput`): other modalities, instances without pixel
data, tiny or huge images and **monochrome (red-free) photographs**: the models are trained on
colour photographs and a grey image replicated into three channels is a different input, so it is
refused rather than silently mis-scored. Unreadable or inconsistent files raise
:class:`~napari_icnn.errors.InputError` naming the file and the problem; messages never quote
patient attributes.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from napari_icnn.data.fundus_image import FundusImage
from napari_icnn.errors import DeclinedInput, InputError

__all__ = [
    "ACCEPTED_SOP_CLASSES",
    "MAX_PIXELS",
    "MAX_SIDE",
    "MIN_SIDE",
    "check_image_size",
    "check_supported",
    "is_dicom",
    "iter_frames",
    "normalize_laterality",
    "read_dicom",
    "read_header",
]

MIN_SIDE = 64
"""Smallest accepted image side in pixels (a fundus photograph below this holds no detail)."""
MAX_SIDE = 20_000
"""Largest accepted image side in pixels."""
MAX_PIXELS = 200_000_000
"""Largest accepted number of pixels per frame."""

ACCEPTED_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.77.1.5.1": "Ophthalmic Photography 8 Bit Image",
    "1.2.840.10008.5.1.4.1.1.77.1.5.2": "Ophthalmic Photography 16 Bit Image",
    "1.2.840.10008.5.1.4.1.1.77.1.5.5": "Wide Field Ophthalmic Photography Stereographic Projection Image",
    "1.2.840.10008.5.1.4.1.1.77.1.5.6": "Wide Field Ophthalmic Photography 3D Coordinates Image",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image",
}
"""SOP classes that can hold a fundus photograph (grey SC classes are then declined as monochrome)."""

# Instances without a SOP Class UID (old or raw files) are judged by their modality instead.
_ACCEPTED_MODALITIES_WITHOUT_SOP = {"", "OP", "XC", "OT"}

_COLOUR_PHOTOMETRICS = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR"}
_MONOCHROME = {"MONOCHROME1", "MONOCHROME2"}
_JPEG_DCT = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}
_JPEG_LOSSLESS = {"1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"}

_PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_ELEMENT_ATTR = "_icnn_pixel_element"

_LATERALITY = {
    "L": "L", "LEFT": "L", "OS": "L", "SINISTER": "L",
    "R": "R", "RIGHT": "R", "OD": "R", "DEXTER": "R",
    "B": "B", "BOTH": "B", "OU": "B",
}  # fmt: skip


@dataclass(frozen=True)
class _PixelElement:
    """Where the pixel data element sits in the file (found without reading its value)."""

    keyword: str
    vr: str | None
    """The explicit VR (``"OB"``, ``"OW"``), ``None`` when implicit."""
    value_offset: int
    length: int | None
    """Declared value length in bytes; ``None`` for undefined length (encapsulated)."""
    available: int
    """Bytes actually present in the file from ``value_offset`` on."""


@dataclass(frozen=True)
class _Layout:
    """The Image Pixel attributes needed to decode, with tolerated omissions filled in."""

    rows: int
    columns: int
    samples: int
    frames: int
    bits_allocated: int
    bits_stored: int
    photometric: str
    overrides: dict[str, Any]
    """Decoding options that replace missing or mislabelled header values."""

    @property
    def expected_bytes(self) -> int:
        n = self.rows * self.columns * self.samples * self.frames
        n = (n + 7) // 8 if self.bits_allocated == 1 else n * (self.bits_allocated // 8)
        return n // 3 * 2 if self.photometric == "YBR_FULL_422" else n


# --------------------------------------------------------------------------- detection


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a DICOM data set, judged by content only (never by extension).

    True for Part 10 files (128-byte preamble + ``DICM``) and for preamble-less data sets whose
    first element is a plausible DICOM tag and that parse. Never raises.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(132)
            if len(head) == 132 and head[128:132] == b"DICM":
                return True
            return _looks_like_bare_dataset(f, head)
    except (OSError, ValueError, TypeError):
        return False


def _looks_like_bare_dataset(f: Any, head: bytes) -> bool:
    """A data set written without preamble starts with group 0000, 0002 or 0008 and parses."""
    if len(head) < 8:
        return False
    group_le, group_be = struct.unpack("<H", head[:2])[0], struct.unpack(">H", head[:2])[0]
    if group_le not in (0x0000, 0x0002, 0x0008) and group_be not in (0x0002, 0x0008):
        return False
    f.seek(0)
    try:
        ds = pydicom.dcmread(f, force=True, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - any parse failure simply means "not DICOM"
        return False
    return len(ds) > 0 and any(k in ds for k in ("SOPClassUID", "Modality", "Rows", "StudyInstanceUID"))


# --------------------------------------------------------------------------- header


def read_header(path: str | os.PathLike[str]) -> Dataset:
    """Read the DICOM header of ``path`` without its pixel data.

    Raises
    ------
    InputError
        The file is missing, empty, not DICOM or its header is truncated or unreadable.
    """
    header, element = _scan(path)
    # Remember where the pixel data is, so check_supported can judge presence without I/O.
    object.__setattr__(header, _PIXEL_ELEMENT_ATTR, element)
    return header


def _scan(path: str | os.PathLike[str]) -> tuple[Dataset, _PixelElement | None]:
    """Parse the header of ``path`` and locate (not read) its pixel data element."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(path, "file not found")
    if os.path.isdir(path):
        raise InputError(path, "is a folder, not a DICOM file")
    try:
        size = os.path.getsize(path)
        if size == 0:
            raise InputError(path, "empty file (0 bytes)")
        if not is_dicom(path):
            raise InputError(path, "not a DICOM file (no 'DICM' marker and no readable DICOM data set)")
        with open(path, "rb") as f:
            has_preamble = f.read(132)[128:132] == b"DICM"
            f.seek(0)
            header = pydicom.dcmread(f, stop_before_pixels=True, force=not has_preamble)
            if _is_deflated(header):
                element = _deflated_pixel_element(path)
            else:
                element = _pixel_element(f, header, size)
    except InputError:
        raise
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, struct.error, zlib.error) as exc:
        raise InputError(path, f"unreadable DICOM header ({_brief(exc)})") from exc
    if len(header) == 0:
        raise InputError(path, "truncated: no data set after the file meta information")
    _check_not_truncated(path, header, size if element is None and not _is_deflated(header) else None)
    return header, element


def _check_not_truncated(path: str, header: Dataset, size: int | None) -> None:
    """pydicom ends a data set silently at end of file; betray truncation by the last element.

    Its value may be short, or (when ``size`` is given because no pixel data followed) bytes may
    remain after it that do not make up a whole element.
    """
    last = header._dict[max(header._dict)]
    value = getattr(last, "value", None)
    length = getattr(last, "length", None)
    tell = getattr(last, "value_tell", None)
    if not isinstance(length, int) or length == _UNDEFINED_LENGTH:
        return
    if isinstance(value, bytes | bytearray) and len(value) < length:
        raise InputError(path, f"truncated: the header ends inside element {last.tag}")
    if size is not None and isinstance(tell, int) and tell + length < size:
        raise InputError(path, f"truncated: {size - tell - length} stray bytes after the last whole element")


def _pixel_element(f: Any, header: Dataset, size: int) -> _PixelElement | None:
    """Read the pixel data element's tag and length at the file position ``f`` stopped at."""
    start = f.tell()
    head = f.read(8)
    f.seek(start)
    if len(head) < 8:
        return None
    implicit, little = header.original_encoding
    endian = "<" if little in (True, None) else ">"
    group, elem = struct.unpack(endian + "HH", head[:4])
    keyword = _PIXEL_TAGS.get((group << 16) | elem)
    if keyword is None:
        return None
    vr = None if implicit else head[4:6].decode("ascii", "replace")
    if implicit:
        length, value_offset = struct.unpack(endian + "L", head[4:8])[0], start + 8
    elif head[4:6] in _LONG_VRS:
        f.seek(start + 8)
        more = f.read(4)
        if len(more) < 4:
            raise EOFError("the file ends inside the pixel data element header")
        length, value_offset = struct.unpack(endian + "L", more)[0], start + 12
    else:
        length, value_offset = struct.unpack(endian + "H", head[6:8])[0], start + 8
    return _PixelElement(
        keyword=keyword,
        vr=vr,
        value_offset=value_offset,
        length=None if length == _UNDEFINED_LENGTH else length,
        available=max(0, size - value_offset),
    )


def _deflated_pixel_element(path: str) -> _PixelElement | None:
    """Deflated files are inflated in memory, so file offsets mean nothing: read the whole set."""
    ds = pydicom.dcmread(path)
    for tag, keyword in _PIXEL_TAGS.items():
        if tag in ds:
            elem = ds[tag]
            n = len(elem.value) if elem.value is not None else 0
            return _PixelElement(keyword, elem.VR, 0, None if elem.is_undefined_length else n, n)
    return None


def _transfer_syntax(header: Dataset) -> UID | None:
    meta = getattr(header, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(ts).strip()) if ts else None


def _is_deflated(header: Dataset) -> bool:
    ts = _transfer_syntax(header)
    return ts is not None and ts.is_transfer_syntax and ts.is_deflated


def _is_encapsulated(header: Dataset) -> bool:
    ts = _transfer_syntax(header)
    return ts is not None and ts.is_transfer_syntax and ts.is_encapsulated


# --------------------------------------------------------------------------- support decision


def check_supported(ds: Dataset, path: str | os.PathLike[str] | None) -> None:
    """Decline, from the header alone, what is not a colour fundus photograph.

    Monochrome images (MONOCHROME1/2, i.e. red-free photographs) are declined: the models need
    colour. So are other modalities and SOP classes, instances without pixel data, transfer
    syntaxes no installed decoder handles (JPEG Lossless without pylibjpeg-libjpeg or
    python-gdcm), and images smaller than :data:`MIN_SIDE` or larger than :data:`MAX_SIDE` /
    :data:`MAX_PIXELS`.

    Raises
    ------
    DeclinedInput
        With the reason, naming ``path``.
    """
    _check_sop_class(ds, path)
    _check_has_pixels(ds, path)
    _check_transfer_syntax(ds, path)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric in _MONOCHROME:
        raise DeclinedInput(path, "monochrome (red-free) photograph: the models need colour")
    if photometric and photometric not in _COLOUR_PHOTOMETRICS and not photometric.startswith("YBR_PARTIAL"):
        raise DeclinedInput(path, f"photometric interpretation {photometric} is not supported")
    rows, columns = _as_int(ds.get("Rows")), _as_int(ds.get("Columns"))
    if rows is not None and columns is not None:
        check_image_size(path, rows, columns)


def check_image_size(path: str | os.PathLike[str] | None, rows: int, columns: int) -> None:
    """Decline images too small to hold a fundus or too large to process."""
    if min(rows, columns) < MIN_SIDE:
        raise DeclinedInput(
            path, f"image is {columns}×{rows} px: too small (at least {MIN_SIDE} px on a side needed)"
        )
    if max(rows, columns) > MAX_SIDE or rows * columns > MAX_PIXELS:
        raise DeclinedInput(
            path,
            f"image is {columns}×{rows} px ({rows * columns / 1e6:.0f} Mpixel): too large "
            f"(at most {MAX_SIDE} px on a side and {MAX_PIXELS // 1_000_000} Mpixel)",
        )


def _check_sop_class(ds: Dataset, path: Any) -> None:
    sop = str(ds.get("SOPClassUID", "") or "")
    if not sop and getattr(ds, "file_meta", None) is not None:
        sop = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if sop in ACCEPTED_SOP_CLASSES or (not sop and modality in _ACCEPTED_MODALITIES_WITHOUT_SOP):
        return
    sop_name = UID(sop).name if sop else "no SOP Class UID"
    raise DeclinedInput(
        path, f"modality {modality or 'unknown'} ({sop_name}) is not a colour fundus photograph"
    )


def _check_has_pixels(ds: Dataset, path: Any) -> None:
    if "PixelData" in ds:
        return
    if hasattr(ds, _PIXEL_ELEMENT_ATTR):
        element = getattr(ds, _PIXEL_ELEMENT_ATTR)
    elif path is not None:
        element = _scan(path)[1]
    else:
        return
    if element is None:
        hint = ""
        if "Rows" in ds and "Columns" in ds:
            hint = f" although the header describes a {ds.Columns}×{ds.Rows} image (truncated file?)"
        raise DeclinedInput(path, f"no pixel data{hint}")
    if element.keyword != "PixelData":
        raise DeclinedInput(path, f"{element.keyword} (floating-point pixels) is not a photograph")


def _check_transfer_syntax(ds: Dataset, path: Any) -> None:
    ts = _transfer_syntax(ds)
    if ts is None:
        return
    if not ts.is_transfer_syntax:
        raise DeclinedInput(path, f"unknown transfer syntax {ts}: cannot decode its pixel data")
    if not ts.is_encapsulated:
        return
    try:
        decoder = pydicom.pixels.get_decoder(ts)
    except NotImplementedError:
        raise DeclinedInput(
            path, f"transfer syntax {ts.name} ({ts}) cannot be decoded: no decoder exists"
        ) from None
    if ts in _JPEG_LOSSLESS and not decoder.is_available:
        raise DeclinedInput(
            path,
            f"{ts.name} ({ts}) needs a JPEG Lossless decoder that is not installed; "
            "install pylibjpeg-libjpeg or python-gdcm to read it",
        )
    if not decoder.is_available:
        raise DeclinedInput(path, f"transfer syntax {ts.name} ({ts}) cannot be decoded: no decoder installed")
    bits = _as_int(ds.get("BitsStored")) or _as_int(ds.get("BitsAllocated")) or 8
    if ts == "1.2.840.10008.1.2.4.51" and bits > 8 and decoder.available_plugins == ("pillow",):
        raise DeclinedInput(
            path, f"{bits}-bit JPEG Extended needs pylibjpeg-libjpeg or python-gdcm, which are not installed"
        )


# --------------------------------------------------------------------------- pixel layout


def _layout(ds: Dataset, path: str, element: _PixelElement) -> _Layout:
    """Check the Image Pixel attributes against each other and against the stored bytes."""
    missing = [
        k
        for k in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation")
        if ds.get(k) in (None, "")
    ]
    if missing:
        raise InputError(path, f"missing required pixel attribute(s): {', '.join(missing)}")
    rows, columns, bits_allocated = _as_int(ds.Rows), _as_int(ds.Columns), _as_int(ds.BitsAllocated)
    frames = _as_int(ds.get("NumberOfFrames", 1) or 1)
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    samples = _as_int(ds.get("SamplesPerPixel")) or (1 if photometric == "PALETTE COLOR" else 3)
    if not rows or not columns or frames is None or frames < 1:
        raise InputError(path, f"invalid image size: Rows {ds.Rows}, Columns {ds.Columns}, frames {frames}")
    if bits_allocated not in (8, 16):
        raise DeclinedInput(
            path, f"{bits_allocated}-bit samples are not supported (colour photographs use 8 or 16)"
        )
    wanted_samples = 1 if photometric == "PALETTE COLOR" else 3
    if samples != wanted_samples:
        raise InputError(
            path, f"{samples} samples per pixel contradict photometric interpretation {photometric}"
        )
    bits_stored = _as_int(ds.get("BitsStored")) or bits_allocated
    bits_stored = min(max(bits_stored, 1), bits_allocated)

    overrides: dict[str, Any] = {"allow_excess_frames": False, "samples_per_pixel": samples}
    if "BitsStored" not in ds or _as_int(ds.BitsStored) != bits_stored:
        overrides["bits_stored"] = bits_stored
    if "PixelRepresentation" not in ds:
        overrides["pixel_representation"] = 0
    if samples > 1 and ds.get("PlanarConfiguration") is None:
        overrides["planar_configuration"] = 0  # colour-by-pixel, what nearly every writer does
    ts = _transfer_syntax(ds)
    if ts is None:
        implicit, little = ds.original_encoding
        if element.length is None:
            raise InputError(
                path, "compressed pixel data but no transfer syntax in the file meta information"
            )
        overrides["transfer_syntax_uid"] = (
            pydicom.uid.ImplicitVRLittleEndian
            if implicit
            else (
                pydicom.uid.ExplicitVRLittleEndian
                if little in (True, None)
                else pydicom.uid.ExplicitVRBigEndian
            )
        )
    elif (
        ts in _JPEG_DCT and samples == 3 and photometric.startswith("YBR_") and photometric != "YBR_FULL_422"
    ):
        # A JPEG DCT stream holds full-range YCbCr whatever the label says.
        overrides["photometric_interpretation"] = "YBR_FULL_422"
    elif not _is_encapsulated(ds) and photometric not in _COLOUR_PHOTOMETRICS:
        raise DeclinedInput(path, f"uncompressed {photometric} pixel data is not supported")

    layout = _Layout(rows, columns, samples, frames, bits_allocated, bits_stored, photometric, overrides)
    if element.length is not None and not _is_encapsulated(ds):
        _check_native_length(path, layout, element)
    return layout


def _check_native_length(path: str, layout: _Layout, element: _PixelElement) -> None:
    declared, expected = element.length or 0, layout.expected_bytes
    described = (
        f"Rows {layout.rows} × Columns {layout.columns} × {layout.samples} samples × {layout.frames} frame(s) "
        f"at {layout.bits_allocated} bits ({layout.photometric}) = {expected} bytes"
    )
    if element.available < declared:
        raise InputError(
            path,
            f"truncated: the pixel data should hold {declared} bytes but only {element.available} are present",
        )
    if declared < expected:
        raise InputError(
            path, f"pixel data holds {declared} bytes, fewer than the header describes: {described}"
        )
    if declared > expected + expected % 2:
        raise InputError(
            path, f"pixel data holds {declared} bytes, more than the header describes: {described}"
        )


# --------------------------------------------------------------------------- frames


def iter_frames(path: str | os.PathLike[str]) -> Iterator[FundusImage]:
    """Yield one :class:`FundusImage` per frame of the DICOM instance at ``path``.

    Frames are decoded one at a time straight from the file (encapsulated frames fragment by
    fragment, native frames by offset), so memory stays flat for large multi-frame instances.

    Raises
    ------
    DeclinedInput
        The instance is readable but not a colour fundus photograph (see :func:`check_supported`).
    InputError
        The file is not DICOM, is truncated, or its pixel data is inconsistent or undecodable.
    """
    path = os.fspath(path)
    header, element = _scan(path)
    object.__setattr__(header, _PIXEL_ELEMENT_ATTR, element)
    check_supported(header, path)
    if element is None:  # check_supported declines this already; kept for a path-less header
        raise DeclinedInput(path, "no pixel data")
    layout = _layout(header, path, element)
    common = _common_fields(header, path)
    frames = _decoded_frames(path, header, element, layout)
    count = 0
    while True:
        try:
            arr = next(frames)
        except StopIteration:
            break
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - decoders raise anything; report it against the file
            where = f"frame {count + 1} of {layout.frames}" if layout.frames > 1 else "the image"
            detail = _brief(exc)
            if "reshape" in detail:  # the codestream's size contradicts Rows/Columns
                detail = f"its size does not match the header's {layout.columns}×{layout.rows} px ({detail})"
            raise InputError(path, f"cannot decode {where} ({_ts_name(header)}): {detail}") from exc
        pixels = _to_rgb8(arr, header, layout, path)
        if pixels.shape[:2] != (layout.rows, layout.columns):
            raise InputError(
                path,
                f"decoded frame is {pixels.shape[1]}×{pixels.shape[0]} px but the header says "
                f"{layout.columns}×{layout.rows}",
            )
        yield FundusImage(pixels=pixels, frame=count if layout.frames > 1 else None, **common)
        count += 1
    if count < layout.frames:
        raise InputError(path, f"only {count} of {layout.frames} frames are present (truncated file?)")


def read_dicom(path: str | os.PathLike[str]) -> list[FundusImage]:
    """All frames of the DICOM instance at ``path``; see :func:`iter_frames`."""
    return list(iter_frames(path))


def _decoded_frames(
    path: str, header: Dataset, element: _PixelElement, layout: _Layout
) -> Iterator[np.ndarray]:
    """Decode frame by frame from the file, starting at the pixel value found while scanning.

    Seeking to the offset found by the header parse (rather than re-parsing, as
    ``pydicom.pixels.iter_pixels(path)`` does) keeps files whose data set encoding contradicts
    their transfer syntax readable, as pydicom's header reader tolerates them.
    """
    if _is_deflated(header):
        yield from pydicom.pixels.iter_pixels(pydicom.dcmread(path), **layout.overrides)
        return
    options = pydicom.pixels.as_pixel_options(header, **layout.overrides)
    ts = UID(options.pop("transfer_syntax_uid", None) or _transfer_syntax(header))
    options["pixel_keyword"] = element.keyword
    if element.vr is not None:
        options["pixel_vr"] = element.vr
    decoder = pydicom.pixels.get_decoder(ts)
    with open(path, "rb") as f:
        f.seek(element.value_offset)
        for arr, _ in decoder.iter_array(f, transfer_syntax_uid=ts, **options):
            yield arr


def _to_rgb8(arr: np.ndarray, header: Dataset, layout: _Layout, path: str) -> np.ndarray:
    """Decoded frame → ``(H, W, 3)`` uint8 RGB, scaling by the stored (not allocated) bit depth."""
    bits = layout.bits_stored
    if layout.photometric == "PALETTE COLOR":
        try:
            arr = pydicom.pixels.apply_color_lut(arr, header)
        except (ValueError, KeyError, AttributeError, IndexError) as exc:
            raise InputError(path, f"unusable palette colour lookup table ({_brief(exc)})") from exc
        descriptor = header.get("RedPaletteColorLookupTableDescriptor")
        bits = (
            int(descriptor[2]) if descriptor is not None and len(descriptor) == 3 else 8 * arr.dtype.itemsize
        )
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(path, f"decoded pixels have shape {arr.shape}, not a colour image")
    if arr.dtype == np.uint8 and bits == 8:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind == "i":
        arr = np.clip(arr, 0, None)
    top = (1 << bits) - 1
    wide = np.minimum(arr.astype(np.uint32), top)
    return ((wide * 255 + top // 2) // top).astype(np.uint8)


def _common_fields(header: Dataset, path: str) -> dict[str, Any]:
    """The per-instance fields every frame's FundusImage shares."""
    return {
        "source": path,
        "laterality": _laterality(header),
        "sop_instance_uid": _text(header.get("SOPInstanceUID")),
        "sop_class_uid": _text(header.get("SOPClassUID")),
        "study_instance_uid": _text(header.get("StudyInstanceUID")),
        "series_instance_uid": _text(header.get("SeriesInstanceUID")),
        "study_date": _text(header.get("StudyDate")),
        "modality": _text(header.get("Modality")),
        "pixel_spacing": _pixel_spacing(header),
        "bits_stored": _as_int(header.get("BitsStored")) or _as_int(header.get("BitsAllocated")) or 8,
        "header": header,
    }


# --------------------------------------------------------------------------- attribute helpers


def normalize_laterality(value: Any) -> str | None:
    """``"L"``, ``"R"``, ``"B"`` or ``None`` from the spellings found in the wild
    (``"l"``, ``"LEFT"``, ``"OS"``, ``"OD"``, ``"OU"``, ...); ``"U"`` and unknown → ``None``."""
    if value is None:
        return None
    return _LATERALITY.get(str(value).strip().upper())


def _laterality(header: Dataset) -> str | None:
    """ImageLaterality first, then the series-level Laterality; never guessed from the pixels."""
    for keyword in ("ImageLaterality", "Laterality"):
        found = normalize_laterality(_safe_get(header, keyword))
        if found is not None:
            return found
    return None


def _pixel_spacing(header: Dataset) -> tuple[float, float] | None:
    value = _safe_get(header, "PixelSpacing")
    try:
        row, col = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (row, col) if row > 0 and col > 0 and np.isfinite(row) and np.isfinite(col) else None


def _safe_get(header: Dataset, keyword: str) -> Any:
    """An attribute's value, or ``None`` when it is absent or its stored value does not parse."""
    try:
        return header.get(keyword)
    except (ValueError, TypeError, KeyError):
        return None


def _text(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _ts_name(header: Dataset) -> str:
    ts = _transfer_syntax(header)
    return ts.name if ts is not None else "no transfer syntax"


def _brief(exc: BaseException) -> str:
    """One line of an exception's text, short enough for a batch report."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 240 else text[:237] + "..."
