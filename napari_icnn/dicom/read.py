"""Tolerant reading of colour fundus photographs stored as DICOM.

Accepted: Ophthalmic Photography 8/16 bit (OP), Wide-Field OP, VL Photographic Image (XC) and
Secondary Capture (single- and multi-frame true colour) instances whose pixels are colour,
in any transfer syntax an installed decoder handles (JPEG baseline, JPEG 2000, JPEG-LS, RLE,
uncompressed). Every frame comes out as RGB ``uint8`` (16-bit and palette data are scaled to
8 bit), one :class:`~napari_icnn.image.FundusImage` per frame.

Declined (:class:`~napari_icnn.errors.DeclinedInput`): other modalities, instances without pixel
data, tiny or huge images and **monochrome (red-free) photographs**: the models are trained on
colour photographs and a grey image replicated into three channels is a different input, so it is
refused rather than silently mis-scored. Unreadable or inconsistent files raise
:class:`~napari_icnn.errors.InputError` naming the file and the problem; messages never quote
patient attributes.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import UID, ExplicitVRLittleEndian

from napari_icnn.dicom.carry import source_uid, text_value
from napari_icnn.errors import DeclinedInput, IcnnError, InputError
from napari_icnn.image import FundusImage

__all__ = [
    "ACCEPTED_SOP_CLASSES",
    "MAX_PIXELS",
    "MAX_SIDE",
    "MIN_SIDE",
    "check_compressed_size",
    "check_image_size",
    "check_supported",
    "is_dicom",
    "iter_frames",
    "normalize_laterality",
    "open_bounded",
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

_JPEG_LS = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
_RLE = "1.2.840.10008.1.2.5"

MAX_INFLATED = 128 * 2**20
"""Largest accepted size of a deflated data set once inflated, in bytes (44 Mpixel of 8-bit RGB;
inflating it takes about half a second)."""
_BOMB_FLOOR = 32 * 2**20
_BOMB_RATIO = 250
# Compressed pixel data that would decode to more than _BOMB_FLOOR bytes at more than _BOMB_RATIO
# times its stored size is refused before decoding. Photographs compress 2:1 (PNG, lossless) to
# about 50:1 (lossy); only a corrupt header or a decompression bomb claims more.

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
    options: dict[str, Any]
    """pydicom decoding options, built from the checked values (missing or mislabelled header values
    replaced), so that the decoders never read a raw header value themselves."""

    @property
    def decoded_bytes(self) -> int:
        """Memory the decoded frames take, all of them together."""
        return self.rows * self.columns * self.samples * self.frames * (self.bits_allocated // 8)

    @property
    def expected_bytes(self) -> int:
        n = self.rows * self.columns * self.samples * self.frames
        n = (n + 7) // 8 if self.bits_allocated == 1 else n * (self.bits_allocated // 8)
        return n // 3 * 2 if self.photometric == "YBR_FULL_422" else n


# --------------------------------------------------------------------------- files


class _BoundedFile(io.BufferedReader):
    """A file whose reads never ask for more than the bytes left in it.

    pydicom reads a value of its declared length in one call, and Python allocates a buffer of the
    requested size before it finds the end of the file: a length field of 0xFFFFFFF0 in a 20 kB
    file would take 4 GiB of memory to report a truncated element.
    """

    def __init__(self, path: str):
        super().__init__(io.FileIO(path, "rb"))
        self._size = os.fstat(self.fileno()).st_size

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size > 0:
            size = min(size, max(0, self._size - self.tell()))
            if size == 0:
                return b""
        return super().read(size)


def open_bounded(path: str | os.PathLike[str]) -> io.BufferedReader:
    """Open ``path`` for reading such that no read asks for more bytes than the file has left:
    parsers of corrupt files (pydicom, Pillow, tifffile) then never allocate what a length field
    claims beyond the end of the file."""
    return _BoundedFile(os.fspath(path))


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
        return _looks_like_bare_dataset(os.fspath(path), head)
    except (OSError, ValueError, TypeError):
        return False


def _looks_like_bare_dataset(path: str, head: bytes) -> bool:
    """A data set written without preamble starts with group 0000, 0002 or 0008 and parses."""
    if len(head) < 8:
        return False
    group_le, group_be = struct.unpack("<H", head[:2])[0], struct.unpack(">H", head[:2])[0]
    if group_le not in (0x0000, 0x0002, 0x0008) and group_be not in (0x0002, 0x0008):
        return False
    try:
        with _BoundedFile(path) as bounded:
            meta = _file_meta(bounded)
            if _meta_is_deflated(meta):
                return True  # a file meta naming a deflated data set: DICOM; _scan inflates it with care
            bounded.seek(0)
            ds = pydicom.dcmread(bounded, force=True, stop_before_pixels=True)
            keys = ("SOPClassUID", "Modality", "Rows", "StudyInstanceUID")
            return len(ds) > 0 and any(k in ds for k in keys)
    except Exception:  # noqa: BLE001 - any parse failure simply means "not DICOM"
        return False


# --------------------------------------------------------------------------- header


def read_header(path: str | os.PathLike[str]) -> Dataset:
    """Read the DICOM header of ``path`` without its pixel data.

    Raises
    ------
    InputError
        The file is missing, empty, not DICOM or its header is truncated or unreadable.
    """
    header, element, _ = _scan(path)
    # Remember where the pixel data is, so check_supported can judge presence without I/O.
    object.__setattr__(header, _PIXEL_ELEMENT_ATTR, element)
    return header


def _scan(path: str | os.PathLike[str]) -> tuple[Dataset, _PixelElement | None, bytes | None]:
    """Parse the header of ``path`` and locate (not read) its pixel data element.

    Returns the header, the pixel element and, for a deflated file, the inflated data set (the
    pixel element's offsets then point into it rather than into the file).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(path, "file not found")
    if os.path.isdir(path):
        raise InputError(path, "is a folder, not a DICOM file")
    inflated = None
    try:
        size = os.path.getsize(path)
        if size == 0:
            raise InputError(path, "empty file (0 bytes)")
        if not is_dicom(path):
            raise InputError(path, "not a DICOM file (no 'DICM' marker and no readable DICOM data set)")
        with _BoundedFile(path) as f:
            has_preamble = f.read(132)[128:132] == b"DICM"
            f.seek(0)
            meta = _file_meta(f)
            if _meta_is_deflated(meta):
                inflated = _inflate(path, f)
                body = io.BytesIO(inflated)
                header = pydicom.dcmread(body, stop_before_pixels=True, force=True)
                header.file_meta = meta
                element = _pixel_element(body, header, len(inflated))
            else:
                f.seek(0)
                header = pydicom.dcmread(f, stop_before_pixels=True, force=not has_preamble)
                element = _pixel_element(f, header, size)
    except (IcnnError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises anything on a corrupt header
        raise InputError(path, f"unreadable DICOM header ({_brief(exc)})") from exc
    if len(header) == 0:
        raise InputError(path, "truncated: no data set after the file meta information")
    if element is None:
        _check_not_truncated(path, header, size if inflated is None else len(inflated))
    else:
        _check_not_truncated(path, header, None)
    _quarantine_unconvertible(header)
    return header, element, inflated


_READ_BY_CALLERS = (
    "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated", "BitsStored",
    "PhotometricInterpretation", "PixelRepresentation", "PlanarConfiguration",
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
)  # fmt: skip
"""Attributes that the reader and the code holding its headers read as plain values."""


def _quarantine_unconvertible(ds: Dataset) -> None:
    """Convert each of :data:`_READ_BY_CALLERS` now, so that reading it later never raises.

    pydicom converts a value on first access and raises there, in whatever code touches it: a
    corrupt Number of Frames would break a caller that only wanted a frame count. A value stored
    under a wrong VR is read by its attribute's own VR; one that does not convert even so is kept
    as raw bytes of VR UN, which :func:`_value` reports. Other attributes are left as read
    (converting them all would change what later writers copy).
    """
    for keyword in _READ_BY_CALLERS:
        try:
            if keyword in ds:
                ds[keyword]
            continue
        except MemoryError:
            raise
        except Exception:  # noqa: BLE001 - whatever pydicom raises, the stored value is not usable as is
            pass
        tag = pydicom.datadict.tag_for_keyword(keyword)
        assert tag is not None  # every keyword in _READ_BY_CALLERS is in pydicom's dictionary
        raw = ds.get_item(tag).value
        raw = raw if isinstance(raw, bytes) else b""
        try:
            elem = DataElement(tag, dictionary_VR(tag), raw)
            if isinstance(elem.value, bytes | bytearray):
                raise ValueError("not converted")
        except MemoryError:
            raise
        except Exception:  # noqa: BLE001 - not a value of the attribute's own VR either
            elem = DataElement(tag, "OB", raw)
            elem.VR = "UN"  # set after construction: pydicom turns UN of a known tag back into its VR
        ds[tag] = elem


def _file_meta(f: Any) -> FileMetaDataset:
    """The file meta information at the start of ``f`` (empty for a bare data set)."""
    pydicom.filereader.read_preamble(f, True)
    return pydicom.filereader._read_file_meta_info(f)


def _meta_is_deflated(meta: Dataset) -> bool:
    ts = meta.get("TransferSyntaxUID")
    return ts is not None and UID(str(ts).strip()) == pydicom.uid.DeflatedExplicitVRLittleEndian


def _inflate(path: str, f: Any) -> bytes:
    """The deflated data set after the file meta at ``f``'s position, inflated up to
    :data:`MAX_INFLATED` bytes (pydicom would inflate all of it, whatever it claims to hold).

    Inflation stops early when it outgrows the compressed bytes as no photograph does (see
    :func:`check_compressed_size`), so that a deflate bomb costs milliseconds, not seconds.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    parts: list[bytes] = []
    inflated = consumed = 0
    while not inflater.eof:
        chunk = f.read(1 << 16)
        if not chunk:
            raise InputError(path, "truncated: the deflated data set ends early")
        consumed += len(chunk)
        while chunk and not inflater.eof:
            part = inflater.decompress(chunk, 1 << 22)
            chunk = inflater.unconsumed_tail
            parts.append(part)
            inflated += len(part)
            if inflated > MAX_INFLATED:
                raise DeclinedInput(
                    path, f"the deflated data set inflates to more than {_size(MAX_INFLATED)}: too large"
                )
            claim = "the deflated data set inflates too far"
            check_compressed_size(path, inflated, consumed - len(chunk), claim)
    return b"".join(parts)


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
    photometric = _code_string(ds, "PhotometricInterpretation", path)
    if photometric in _MONOCHROME:
        raise DeclinedInput(path, "monochrome (red-free) photograph: the models need colour")
    if photometric and photometric not in _COLOUR_PHOTOMETRICS and not photometric.startswith("YBR_PARTIAL"):
        raise DeclinedInput(path, f"photometric interpretation {_shown(photometric)} is not supported")
    rows, columns = _as_int(_value(ds, "Rows", path)), _as_int(_value(ds, "Columns", path))
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
    # An unusable SOP Class UID (absent, empty, multi-valued, not a UID) falls back to the file
    # meta information's, then to the modality: header quirks alone never decline a photograph.
    sop = source_uid(ds, "SOPClassUID") or ""
    modality = (_single_text(ds, "Modality") or "").upper()
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
        rows, columns = _as_int(_safe_get(ds, "Rows")), _as_int(_safe_get(ds, "Columns"))
        if rows is not None and columns is not None:
            hint = f" although the header describes a {columns}×{rows} image (truncated file?)"
        raise DeclinedInput(path, f"no pixel data{hint}")
    if element.keyword != "PixelData":
        raise DeclinedInput(path, f"{element.keyword} (floating-point pixels) is not a photograph")


def _check_transfer_syntax(ds: Dataset, path: Any) -> None:
    ts = _transfer_syntax(ds)
    if ts is None:
        return
    if not ts.is_transfer_syntax:
        raise DeclinedInput(path, f"unknown transfer syntax {_shown(ts)}: cannot decode its pixel data")
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
    bits = _as_int(_safe_get(ds, "BitsStored")) or _as_int(_safe_get(ds, "BitsAllocated")) or 8
    if ts == "1.2.840.10008.1.2.4.51" and bits > 8 and decoder.available_plugins == ("pillow",):
        raise DeclinedInput(
            path, f"{bits}-bit JPEG Extended needs pylibjpeg-libjpeg or python-gdcm, which are not installed"
        )


# --------------------------------------------------------------------------- pixel layout


def _layout(ds: Dataset, path: str, element: _PixelElement) -> _Layout:
    """Check the Image Pixel attributes against each other and against the stored bytes."""
    value = {
        k: _value(ds, k, path)
        for k in (
            "Rows", "Columns", "BitsAllocated", "BitsStored", "PhotometricInterpretation", "NumberOfFrames",
            "SamplesPerPixel", "PixelRepresentation", "PlanarConfiguration",
        )
    }  # fmt: skip
    missing = [
        k for k in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation") if value[k] in (None, "")
    ]
    if missing:
        raise InputError(path, f"missing required pixel attribute(s): {', '.join(missing)}")
    rows, columns = _as_int(value["Rows"]), _as_int(value["Columns"])
    bits_allocated = _as_int(value["BitsAllocated"])
    frames = _as_int(value["NumberOfFrames"] or 1)
    photometric = _code_string(ds, "PhotometricInterpretation", path)
    samples = _as_int(value["SamplesPerPixel"]) or (1 if photometric == "PALETTE COLOR" else 3)
    if not rows or not columns or frames is None or frames < 1:
        raise InputError(
            path,
            f"invalid image size: Rows {_shown(value['Rows'])}, Columns {_shown(value['Columns'])}, "
            f"frames {_shown(value['NumberOfFrames'] or 1)}",
        )
    if bits_allocated not in (8, 16):
        raise DeclinedInput(
            path,
            f"{_shown(value['BitsAllocated'])}-bit samples are not supported "
            "(colour photographs use 8 or 16)",
        )
    wanted_samples = 1 if photometric == "PALETTE COLOR" else 3
    if samples != wanted_samples:
        raise InputError(
            path, f"{samples} samples per pixel contradict photometric interpretation {_shown(photometric)}"
        )
    bits_stored = _as_int(value["BitsStored"]) or bits_allocated
    bits_stored = min(max(bits_stored, 1), bits_allocated)
    # Absent or empty: unsigned, colour-by-pixel (what nearly every writer does).
    representation = _as_int(value["PixelRepresentation"]) if value["PixelRepresentation"] != "" else None
    planar = _as_int(value["PlanarConfiguration"]) if value["PlanarConfiguration"] != "" else None
    if value["PixelRepresentation"] not in (None, "") and representation not in (0, 1):
        raise InputError(path, f"invalid PixelRepresentation {_shown(value['PixelRepresentation'])}")
    if value["PlanarConfiguration"] not in (None, "") and planar not in (0, 1) and samples > 1:
        raise InputError(path, f"invalid PlanarConfiguration {_shown(value['PlanarConfiguration'])}")

    options: dict[str, Any] = {
        "rows": rows,
        "columns": columns,
        "number_of_frames": frames,
        "samples_per_pixel": samples,
        "bits_allocated": bits_allocated,
        "bits_stored": bits_stored,
        "pixel_representation": representation or 0,
        "photometric_interpretation": photometric,
        "allow_excess_frames": False,
    }
    if samples > 1:
        options["planar_configuration"] = planar or 0
    ts = _transfer_syntax(ds)
    if ts is None:
        implicit, little = ds.original_encoding
        if element.length is None:
            raise InputError(
                path, "compressed pixel data but no transfer syntax in the file meta information"
            )
        options["transfer_syntax_uid"] = (
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
        options["photometric_interpretation"] = "YBR_FULL_422"
    elif not _is_encapsulated(ds) and photometric not in _COLOUR_PHOTOMETRICS:
        raise DeclinedInput(path, f"uncompressed {_shown(photometric)} pixel data is not supported")

    layout = _Layout(rows, columns, samples, frames, bits_allocated, bits_stored, photometric, options)
    if _is_encapsulated(ds):
        _check_plausible_size(path, layout, element)
    elif element.length is None:
        raise InputError(path, "uncompressed pixel data of undefined length: the file is corrupt")
    else:
        _check_native_length(path, layout, element)
    return layout


def _check_plausible_size(path: str, layout: _Layout, element: _PixelElement) -> None:
    claim = f"the header describes {layout.frames} frame(s) of {layout.columns}×{layout.rows} px"
    check_compressed_size(path, layout.decoded_bytes, element.available, claim)


def check_compressed_size(path: str | os.PathLike[str] | None, decoded: int, stored: int, claim: str) -> None:
    """Refuse, before any decoding, compressed data far too small for the image its header claims.

    A decoder allocates the image the header describes before it finds out the data cannot fill
    it, and some spend seconds on the attempt; photographs compress from 2:1 (lossless) to about
    50:1, so ``decoded`` bytes from ``stored`` at more than :data:`_BOMB_RATIO`:1 (beyond
    :data:`_BOMB_FLOOR` bytes) is a corrupt header or a decompression bomb.

    Raises
    ------
    InputError
        With ``claim`` (what the header says) and the bytes present, naming ``path``.
    """
    stored = max(stored, 1)
    if decoded > _BOMB_FLOOR and decoded > _BOMB_RATIO * stored:
        raise InputError(
            path,
            f"{claim}: {_size(decoded)} decoded from only {_size(stored)} of compressed data "
            "(corrupt header or decompression bomb)",
        )


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
    header, element, inflated = _scan(path)
    object.__setattr__(header, _PIXEL_ELEMENT_ATTR, element)
    check_supported(header, path)
    if element is None:  # check_supported declines this already; kept for a path-less header
        raise DeclinedInput(path, "no pixel data")
    layout = _layout(header, path, element)
    common = _common_fields(header, path)
    frames = _decoded_frames(path, header, element, layout, inflated)
    count = 0
    while True:
        try:
            arr = next(frames)
        except StopIteration:
            break
        except (IcnnError, MemoryError):
            raise
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - decoders raise anything, Rust ones even panic
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
    path: str, header: Dataset, element: _PixelElement, layout: _Layout, inflated: bytes | None
) -> Iterator[np.ndarray]:
    """Decode frame by frame from the file, starting at the pixel value found while scanning.

    Seeking to the offset found by the header parse (rather than re-parsing, as
    ``pydicom.pixels.iter_pixels(path)`` does) keeps files whose data set encoding contradicts
    their transfer syntax readable, as pydicom's header reader tolerates them.
    """
    options = dict(layout.options)
    named = options.pop("transfer_syntax_uid", None) or _transfer_syntax(header)
    assert named is not None  # the layout names one whenever the file meta information does not
    ts = UID(named)
    if ts.is_deflated:
        ts = ExplicitVRLittleEndian  # the offsets point into the inflated data set
    options["pixel_keyword"] = element.keyword
    if element.vr is not None:
        options["pixel_vr"] = element.vr
    decoder = pydicom.pixels.get_decoder(ts)
    with io.BytesIO(inflated) if inflated is not None else _BoundedFile(path) as f:
        if not ts.is_encapsulated:
            f.seek(element.value_offset)
            for arr, _ in decoder.iter_array(f, transfer_syntax_uid=ts, **options):
                yield arr
            return
        _check_fragments(path, f, element)
        f.seek(element.value_offset)
        options["number_of_frames"] = 1
        offsets = _extended_offsets(header)
        frames = generate_frames(f, number_of_frames=layout.frames, extended_offsets=offsets)
        for index, frame in enumerate(frames):
            if index == layout.frames:
                break  # excess fragments (JPEG frames are split by markers) are not frames of this image
            frame = _checked_codestream(path, ts, frame, layout, index)
            arr, _ = decoder.as_array(
                encapsulate([frame]),
                transfer_syntax_uid=ts,  # type: ignore[arg-type]  # pydicom types **kwargs as DecodeOptions, not Unpack[...]
                **options,
            )
            yield arr


def _extended_offsets(header: Dataset) -> tuple[bytes, bytes] | None:
    if "ExtendedOffsetTable" in header and "ExtendedOffsetTableLengths" in header:
        return header.ExtendedOffsetTable, header.ExtendedOffsetTableLengths
    return None


def _check_fragments(path: str, f: Any, element: _PixelElement) -> None:
    """Walk the items of encapsulated pixel data: each must lie whole inside the file.

    A decoder handed a cut codestream may spend seconds on it (CharLS does), so truncation is
    reported before decoding.
    """
    end = element.value_offset + element.available
    pos, index = element.value_offset, 0
    while pos + 8 <= end:
        f.seek(pos)
        group, elem, length = struct.unpack("<HHL", f.read(8))
        if (group, elem) == (0xFFFE, 0xE0DD):
            return
        if (group, elem) != (0xFFFE, 0xE000):
            raise InputError(
                path,
                f"corrupt compressed pixel data: tag ({group:04X},{elem:04X}) "
                f"where item {index} should start",
            )
        if pos + 8 + length > end:
            what = "the offset table" if index == 0 else f"fragment {index}"
            raise InputError(
                path,
                f"truncated: {what} of the compressed pixel data should hold {length} bytes "
                f"but the file ends after {end - pos - 8}",
            )
        pos += 8 + length
        index += 1


def _checked_codestream(path: str, ts: UID, frame: bytes, layout: _Layout, index: int) -> bytes:
    """``frame`` after checking that its codestream describes the image the header does.

    Decoders trust the codestream: one that claims 65535 × 65535 px gets that allocated (and a
    JPEG 2000 header with an empty box makes pydicom's parser loop for ever), so a contradiction is
    an error before any decoding.
    """
    where = f"frame {index + 1} of {layout.frames}" if layout.frames > 1 else "the image"
    if ts == _RLE:
        _check_rle_header(path, frame, layout, where)
        return frame
    if ts.name.startswith("JPEG 2000") or ts in ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"):
        size = _j2k_size(path, frame, where)
    elif ts in _JPEG_DCT or ts in _JPEG_LOSSLESS or ts in _JPEG_LS:
        size = _jpeg_size(frame)
    else:
        return frame
    if size is not None:
        width, height, components = size
        if height and (width, height) != (layout.columns, layout.rows):
            raise InputError(
                path,
                f"cannot decode {where} ({ts.name}): its size does not match the header's "
                f"{layout.columns}×{layout.rows} px (the codestream is {width}×{height} px)",
            )
        if components != layout.samples:
            raise InputError(
                path,
                f"cannot decode {where} ({ts.name}): the codestream has {components} component(s) "
                f"but the header says {layout.samples} samples per pixel",
            )
    if ts in _JPEG_LS:
        # CharLS spends seconds on a stream that ends without its end-of-image marker; ended, a cut
        # stream fails at once and one that only lacks the marker still decodes.
        body = frame.rstrip(b"\0")
        if not body.endswith(b"\xff\xd9"):
            frame = body + b"\xff\xd9"
    return frame


def _jpeg_size(stream: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a JPEG or JPEG-LS start-of-frame; ``None`` if not found."""
    if stream[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(stream):
        if stream[pos] != 0xFF:
            return None
        marker = stream[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7):
            if pos + 10 > len(stream):
                return None
            height, width = struct.unpack_from(">HH", stream, pos + 5)
            return width, height, stream[pos + 9]
        if marker in (0xD8, 0xD9, 0xDA):
            return None
        length = struct.unpack_from(">H", stream, pos + 2)[0]
        if length < 2:
            return None
        pos += 2 + length
    return None


def _j2k_size(path: str, stream: bytes, where: str) -> tuple[int, int, int] | None:
    """(width, height, components) from a JPEG 2000 SIZ segment, in a JP2 file or bare."""
    start = 0
    if stream.startswith(b"\x00\x00\x00\x0cjP  "):
        pos = 12
        while True:
            if pos + 8 > len(stream):
                raise InputError(path, f"cannot decode {where}: JP2 header without a codestream box")
            length = int.from_bytes(stream[pos : pos + 4], "big")
            if stream[pos + 4 : pos + 8] == b"jp2c":
                start = pos + 16 if length == 1 else pos + 8
                break
            # pydicom walks these boxes by their 4-byte length; below 8 (0: "to the end", 1: a
            # 64-bit length follows) its walk can stop advancing and never end.
            if length < 8:
                raise InputError(path, f"cannot decode {where}: corrupt JP2 header (a box of {length} bytes)")
            pos += length
    if stream[start : start + 4] != b"\xff\x4f\xff\x51" or len(stream) < start + 42:
        return None
    x, y, x0, y0 = struct.unpack_from(">LLLL", stream, start + 8)
    components = struct.unpack_from(">H", stream, start + 40)[0]
    return max(0, x - x0), max(0, y - y0), components


def _check_rle_header(path: str, frame: bytes, layout: _Layout, where: str) -> None:
    """An RLE frame's header: one segment per byte of each sample, in order, inside the frame."""
    if len(frame) < 64:
        raise InputError(path, f"cannot decode {where} (RLE): the frame is shorter than its 64-byte header")
    count, *offsets = struct.unpack_from("<16L", frame)
    wanted = layout.samples * layout.bits_allocated // 8
    offsets = offsets[:count] if 0 < count <= 15 else []
    ordered = all(a < b for a, b in zip(offsets, offsets[1:]))
    if count != wanted or offsets[0] != 64 or not ordered or offsets[-1] >= len(frame):
        raise InputError(
            path,
            f"cannot decode {where} (RLE): corrupt segment table ({count} segments; "
            f"{wanted} expected for {layout.samples} samples of {layout.bits_allocated} bits)",
        )


def _to_rgb8(arr: np.ndarray, header: Dataset, layout: _Layout, path: str) -> np.ndarray:
    """Decoded frame → ``(H, W, 3)`` uint8 RGB, scaling by the stored (not allocated) bit depth."""
    bits = layout.bits_stored
    if layout.photometric == "PALETTE COLOR":
        try:
            arr = pydicom.pixels.apply_color_lut(arr, header)
            descriptor = header.get("RedPaletteColorLookupTableDescriptor")
            has_depth = descriptor is not None and len(descriptor) == 3
            bits = int(descriptor[2]) if has_depth else 8 * arr.dtype.itemsize
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - the tables are header values pydicom converts on use
            raise InputError(path, f"unusable palette colour lookup table ({_brief(exc)})") from exc
        bits = min(max(bits, 1), 16)
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
        # Identifiers name outputs and fill summaries: only valid UIDs, never a stray value.
        "sop_instance_uid": source_uid(header, "SOPInstanceUID"),
        "sop_class_uid": source_uid(header, "SOPClassUID"),
        "study_instance_uid": source_uid(header, "StudyInstanceUID"),
        "series_instance_uid": source_uid(header, "SeriesInstanceUID"),
        "study_date": _single_text(header, "StudyDate"),
        "modality": _single_text(header, "Modality"),
        "pixel_spacing": _pixel_spacing(header),
        "bits_stored": (
            _as_int(_safe_get(header, "BitsStored")) or _as_int(_safe_get(header, "BitsAllocated")) or 8
        ),
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


class _Unreadable(Exception):
    """A stored value that does not convert to its attribute's VR."""


def _get(header: Dataset, keyword: str) -> Any:
    """An attribute's value (``None`` when absent); raises :class:`_Unreadable`."""
    try:
        if keyword not in header:
            return None
        elem = header[keyword]
        value = elem.value
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom converts on first access, raising anything
        raise _Unreadable(type(exc).__name__) from exc
    if elem.VR == "UN" and dictionary_VR(keyword) != "UN":  # kept raw by _quarantine_unconvertible
        raise _Unreadable("its bytes do not fit its value representation")
    return value


def _safe_get(header: Dataset, keyword: str) -> Any:
    """An attribute's value, or ``None`` when it is absent or its stored value does not parse."""
    try:
        return _get(header, keyword)
    except _Unreadable:
        return None


def _value(header: Dataset, keyword: str, path: Any) -> Any:
    """An attribute's value (``None`` when absent); one that does not parse is the file's error.

    The reason names the attribute, not its bytes: a corrupt element may hold patient data.
    """
    try:
        return _get(header, keyword)
    except _Unreadable as exc:
        raise InputError(path, f"unreadable {keyword} in the header ({exc})") from exc


def _code_string(header: Dataset, keyword: str, path: Any) -> str:
    """A code string attribute, stripped and upper case (``""`` when absent)."""
    return str(_value(header, keyword, path) or "").strip().upper()


def _shown(value: Any) -> str:
    """A header value fit to quote in a reason: printable ASCII, at most 40 characters."""
    text = "".join(c if c.isascii() and c.isprintable() else "?" for c in str(value))
    return text if len(text) <= 40 else text[:37] + "..."


def _size(n: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("kiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _single_text(header: Dataset, keyword: str) -> str | None:
    """One text value of ``keyword``, stripped; ``None`` when absent, empty, multi-valued or unusable."""
    value = text_value(header, keyword)
    return value.strip() or None if isinstance(value, str) else None


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _ts_name(header: Dataset) -> str:
    ts = _transfer_syntax(header)
    return ts.name if ts is not None else "no transfer syntax"


_QUOTED = re.compile(r"(?<![\w'\"])b?('[^']{4,}'|\"[^\"]{4,}\")(?!\w)")


def _brief(exc: BaseException) -> str:
    """One line of an exception's text, short enough for a batch report.

    Quoted values are left out: pydicom quotes the bytes it failed to convert, and in a corrupt
    header those may be another element's, a patient's name among them.
    """
    text = _QUOTED.sub("'…'", " ".join(str(exc).split())) or type(exc).__name__
    return text if len(text) <= 240 else text[:237] + "..."
