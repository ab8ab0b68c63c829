"""Valid fundus DICOM files of every supported kind and encoding, and the header mutations that
real cameras and archives produce, for the header-quirk tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = [
    "SEED_KINDS",
    "PIXEL_MODULE",
    "MUTATIONS",
    "seed_file",
    "mutate",
    "EXTRA_ELEMENTS",
]

VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MF_TRUE_COLOUR_SC = "1.2.840.10008.5.1.4.1.1.7.4"

SEED_KINDS: tuple[tuple[str, str], ...] = (
    ("op", "jpeg-baseline"),
    ("op", "jpeg2000-lossless"),
    ("op", "jpeg2000"),
    ("op", "jpeg-ls-lossless"),
    ("op", "rle"),
    ("op", "explicit"),
    ("op", "implicit"),
    ("op-multiframe", "explicit"),
    ("op-multiframe", "jpeg-baseline"),
    ("xc", "jpeg-baseline"),
    ("xc", "explicit"),
    ("sc", "explicit"),
    ("sc", "rle"),
    ("sc-multiframe", "jpeg2000-lossless"),
)
"""(kind, transfer syntax) of the seed files: OP single- and multi-frame, VL Photographic (XC),
Secondary Capture single- and multi-frame true colour, in every transfer syntax the reader decodes."""

PIXEL_MODULE = frozenset({
    "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PixelData", "NumberOfFrames",
    "TransferSyntaxUID", "ExtendedOffsetTable", "ExtendedOffsetTableLengths", "FloatPixelData",
    "DoubleFloatPixelData", "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData", "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData", "PixelPaddingValue", "ICCProfile",
})
"""The pixel module (and what encodes it): the only attributes whose loss may decline a file."""

PATIENT_NAME = "Müller^Zoë^^Dr.^"
PATIENT_ID = "PAT-0042/7"


def seed_file(path: Path, kind: str, syntax: str, seed: int = 0, size: int = 80) -> Path:
    """A valid fundus instance of ``kind`` in ``syntax`` with a full set of patient/study attributes."""
    import pydicom
    from pydicom.uid import ImplicitVRLittleEndian

    from napari_icnn.data.synth import generate_fundus
    from napari_icnn.dicom.op_writer import write_op

    img = generate_fundus(seed, size=size).image
    multi = kind.endswith("multiframe")
    pixels = np.stack([img, img[:, ::-1]]) if multi else img
    ts = "explicit" if syntax == "implicit" else syntax
    ds = write_op(path, pixels, laterality="R", transfer_syntax=ts, patient_id=PATIENT_ID,
                  patient_name=PATIENT_NAME, pixel_spacing=(0.01, 0.01), study_date="20240229",
                  overwrite=True)
    ds = pydicom.dcmread(path)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = PATIENT_NAME
    ds.PatientBirthDate, ds.PatientSex, ds.PatientAge = "19611231", "F", "062Y"
    ds.AccessionNumber, ds.StudyID, ds.StudyTime = "ACC123", "S1", "101500.25"
    ds.ReferringPhysicianName, ds.StudyDescription = "Who^Doctor", "Diabetic eye screening"
    ds.IssuerOfPatientID, ds.PatientSize, ds.PatientWeight = "HOSP", "1.72", "68.5"
    ds.PatientOrientation = ["L", "F"]
    if kind.startswith("xc"):
        _retag(ds, VL_PHOTOGRAPHIC, "XC")
    elif kind.startswith("sc"):
        _retag(ds, MF_TRUE_COLOUR_SC if multi else SECONDARY_CAPTURE, "OT")
        ds.ConversionType = "WSD"
    if syntax == "implicit":
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def _retag(ds, sop_class: str, modality: str) -> None:
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.Modality = modality


def _text_vr(keyword: str) -> str:
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    return dictionary_VR(tag_for_keyword(keyword)).split(" or ")[0]  # "US or SS": write it as US


def _set(ds, keyword: str, elem) -> None:
    target = ds.file_meta if keyword.startswith("MediaStorage") or keyword == "TransferSyntaxUID" else ds
    target[elem.tag] = elem


def _element(keyword: str, vr: str, value):
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import DataElement

    return DataElement(tag_for_keyword(keyword), vr, value)


def _drop(ds, kw: str) -> None:
    target = ds.file_meta if kw.startswith("MediaStorage") or kw == "TransferSyntaxUID" else ds
    if kw in target:
        del target[kw]


def _empty(ds, kw: str) -> None:
    _set(ds, kw, _element(kw, _text_vr(kw), None))


def _multi(ds, kw: str) -> None:
    vr = _text_vr(kw)
    target = ds.file_meta if kw.startswith("MediaStorage") or kw == "TransferSyntaxUID" else ds
    old = target[kw].value if kw in target else None
    if isinstance(old, list) or type(old).__name__ == "MultiValue":
        old = old[0] if len(old) else None
    if vr in ("US", "SS", "UL", "SL", "IS"):
        first = old if old not in (None, "") and not isinstance(old, list) else 1
        value = [first, first]
    elif vr == "UI":
        value = [str(old or "1.2.3"), "1.2.3.4"]
    elif vr == "DS":
        value = ["0.01", "0.02", "0.03"]
    elif vr == "DA":
        value = ["20240101", "20240102"]
    elif vr == "TM":
        value = ["101500", "111500"]
    elif vr in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        return _drop(ds, kw)
    else:
        value = [str(old or "A"), "B\u00e9"]
    _set(ds, kw, _element(kw, vr, value))


def _wrong_vr(ds, kw: str) -> None:
    """The attribute stored with another VR: text as binary, numbers as text."""
    vr = _text_vr(kw)
    if kw == "SpecificCharacterSet":  # pydicom itself must decode the rest: another text VR
        _set(ds, kw, _element(kw, "LO", "ISO_IR 192"))
    elif vr in ("US", "SS", "UL", "SL"):
        _set(ds, kw, _element(kw, "LO", "twelve"))
    elif vr in ("OB", "OW", "SQ", "UN"):
        _set(ds, kw, _element(kw, "LO", "not binary"))
    else:
        _set(ds, kw, _element(kw, "US", 7))


def _odd_text(ds, kw: str) -> None:
    """A value legal in some VR but not this one: control characters, a path, an overlong string."""
    vr = _text_vr(kw)
    if vr in ("US", "SS", "UL", "SL"):
        _set(ds, kw, _element(kw, vr, 0))
    elif vr in ("OB", "OW", "SQ", "UN"):  # four stray bytes (pydicom refuses to write Pixel Data as UN)
        _set(ds, kw, _element(kw, "OB" if kw == "PixelData" else "UN", b"\x00\x01\x02\x03"))
    else:
        _set(ds, kw, _element(kw, "UT", "../../etc/passwd\r\n" + "x" * 80))


MUTATIONS: dict[str, Callable[[object, str], None]] = {
    "drop": _drop,
    "empty": _empty,
    "multi": _multi,
    "wrong-vr": _wrong_vr,
    "odd-text": _odd_text,
}
"""What archives do to an attribute: leave it out, leave it empty, give it several values, store it
with another VR, fill it with characters its VR forbids."""


def _private(ds) -> None:
    ds.add_new(0x00091010, "LO", "ACME FUNDUS 1.0")
    ds.add_new(0x00091011, "OB", b"\x00\xff" * 9)
    ds.add_new(0x00091012, "UN", b"\x01\x02\x03\x04")


def _retired(ds) -> None:
    ds.add_new(0x00080040, "US", 1)  # Data Set Type
    ds.add_new(0x00081000, "AE", "NET1")  # Network ID
    ds.add_new(0x00101050, "LO", "PLAN-7")  # Insurance Plan Identification
    ds.add_new(0x00280005, "US", 2)  # Image Dimensions


def _per_frame(ds) -> None:
    from pydicom.dataset import Dataset

    frames = int(ds.get("NumberOfFrames", 1) or 1)
    items = []
    for i in range(frames):
        content = Dataset()
        content.FrameAcquisitionNumber = i + 1
        item = Dataset()
        item.FrameContentSequence = [content]
        items.append(item)
    ds.PerFrameFunctionalGroupsSequence = items
    shared = Dataset()
    ds.SharedFunctionalGroupsSequence = [shared]


def _no_frame_count(ds) -> None:
    if int(ds.get("NumberOfFrames", 1) or 1) == 1 and "NumberOfFrames" in ds:
        del ds.NumberOfFrames


EXTRA_ELEMENTS: dict[str, Callable[[object], None]] = {
    "private": _private,
    "retired": _retired,
    "per-frame-groups": _per_frame,
    "single-frame-without-NumberOfFrames": _no_frame_count,
}
"""Additions that concern no one attribute: private and retired elements, functional groups."""


def mutate(src: Path, dst: Path, changes: list[tuple[str, str]], extras: tuple[str, ...] = ()) -> Path:
    """``src`` rewritten to ``dst`` with each (keyword, mutation) in ``changes`` and ``extras`` applied."""
    import pydicom
    from pydicom import config

    ds = pydicom.dcmread(src)
    for kw, how in changes:
        MUTATIONS[how](ds, kw)
    for extra in extras:
        EXTRA_ELEMENTS[extra](ds)
    old = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        implicit = ds.file_meta.get("TransferSyntaxUID") == pydicom.uid.ImplicitVRLittleEndian
        ts = ds.file_meta.get("TransferSyntaxUID")
        if ts is None:  # a dropped transfer syntax: write as the original file was encoded
            ds.save_as(dst, implicit_vr=implicit, little_endian=True)
        else:
            ds.save_as(dst, enforce_file_format=False)
    finally:
        config.settings.writing_validation_mode = old
    return dst
