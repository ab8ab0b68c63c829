"""What a derived object (SEG, SR) carries over from its source header — tolerant reading,
strict writing.

Cameras and archives write headers with absent, empty, multi-valued and mistyped attributes,
retired name forms and stray characters. The writers never copy the source header as it is:
they build on a :class:`CarriedHeader`, a fresh data set that holds

- the source's identity (SOP Class/Instance, Study and Series Instance UIDs) when each is a valid
  UID, the SOP UIDs falling back to the file meta information, which states the same instance;
- the Patient, General Study and Patient Study attributes of :data:`CARRIED`, each copied
  unchanged when its value is valid for its VR and multiplicity (a PACS files results under the
  patient and study by them, so a value is never "normalised"); a value that cannot be carried
  into a valid object is given its empty Type 2 form or left out (Type 3), never invented;
- the geometry a derived object needs: the frame's rows and columns as decoded, the source's
  Patient Orientation when valid, its pixel spacing when usable.

Identifiers are carried as the same characters. Their bytes are the source's for ASCII and UTF-8
sources; sources in another character set are re-encoded into UTF-8 (the derived objects need it
for filter names), which a PACS decodes to the same characters.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from napari_icnn.image import FundusImage

__all__ = [
    "CARRIED",
    "IDENTITY",
    "CarriedHeader",
    "carry_header",
    "valid_uid",
    "source_uid",
    "text_value",
]

IDENTITY = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
"""The UIDs a derived object references its source by (Type 1: without them there is no reference)."""

CARRIED: dict[str, tuple[str, int]] = {
    # Patient module
    "PatientName": ("PN", 2),
    "PatientID": ("LO", 2),
    "IssuerOfPatientID": ("LO", 3),
    "PatientBirthDate": ("DA", 2),
    "PatientBirthTime": ("TM", 3),
    "PatientSex": ("CS", 2),
    "PatientComments": ("LT", 3),
    # General Study module
    "StudyDate": ("DA", 2),
    "StudyTime": ("TM", 2),
    "ReferringPhysicianName": ("PN", 2),
    "StudyID": ("SH", 2),
    "AccessionNumber": ("SH", 2),
    "StudyDescription": ("LO", 3),
    # Patient Study module
    "PatientAge": ("AS", 3),
    "PatientSize": ("DS", 3),
    "PatientWeight": ("DS", 3),
}
"""Patient and study attributes carried into derived objects: keyword → (VR, Type in SEG and SR)."""

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
_MAX_CHARS = {"PN": 64, "LO": 64, "SH": 16, "CS": 16, "AS": 4, "DS": 16, "LT": 10240}
_CS = re.compile(r"[A-Z0-9 _]*")
_AS = re.compile(r"[0-9]{3}[DWMY]")
_DS = re.compile(r" *[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)? *")
_TM = re.compile(r"([01][0-9]|2[0-3])([0-5][0-9]([0-5][0-9](\.[0-9]{1,6})?)?)?")
_ENUMERATED = {"PatientSex": {"M", "F", "O"}}
_ORIENTATION = re.compile(r"[APRLHF]{1,3}")
_UNUSABLE = object()


@dataclass(frozen=True)
class CarriedHeader:
    """The attributes of a source frame that derived objects may carry, each checked.

    Valid once built: ``dataset`` holds only checked values; ``referable`` is True when all four
    identity UIDs are valid, so a derived object can reference the source.
    """

    dataset: Dataset
    """A fresh data set: identity, carried patient/study attributes, Rows, Columns, orientation."""
    left_out: tuple[str, ...]
    """Keywords present in the source whose values could not be carried (emptied or omitted)."""
    missing_identity: tuple[str, ...]
    """Identity UIDs the source lacks or holds in an unusable form."""
    pixel_spacing: tuple[float, float] | None = None
    """(row, column) spacing in mm when the source states a usable one."""

    @property
    def referable(self) -> bool:
        return not self.missing_identity


def carry_header(source: FundusImage) -> CarriedHeader:
    """The checked attributes of ``source`` (a frame read from DICOM) for derived objects.

    Never raises for a header's content: what is unusable is listed in ``left_out`` or
    ``missing_identity``. Rows and Columns are the decoded frame's, which the reader has checked
    against the header.
    """
    from pydicom.dataset import Dataset

    header = source.header
    if header is None:
        raise ValueError(f"{source.source}: not a DICOM image; only DICOM frames carry a header")
    ds = Dataset()
    missing: list[str] = []
    for keyword in IDENTITY:
        uid = source_uid(header, keyword)
        if uid is None:
            missing.append(keyword)
        else:
            setattr(ds, keyword, uid)
    left_out: list[str] = []
    for keyword, (vr, type_) in CARRIED.items():
        value = text_value(header, keyword)
        if value is None:  # absent: Type 2 still needs its empty form
            if type_ == 2:
                setattr(ds, keyword, None)
            continue
        if value is _UNUSABLE or not _valid_for(keyword, vr, value):
            left_out.append(keyword)
            if type_ == 2:
                setattr(ds, keyword, None)
            continue
        if value != "" or type_ == 2:  # an empty Type 3 attribute is simply not written
            setattr(ds, keyword, value or None)
    rows, columns = source.shape
    ds.Rows, ds.Columns = rows, columns
    ds.PatientOrientation = _orientation(header)
    return CarriedHeader(ds, tuple(left_out), tuple(missing), _spacing(source))


def valid_uid(value: Any) -> str | None:
    """``value`` as a UID string when it is one (digits and dots, no leading zeros, ≤ 64
    characters), else ``None``. Multi-valued, binary and padded-with-junk values are not UIDs."""
    if value is None or isinstance(value, bytes | bytearray) or type(value).__name__ == "MultiValue":
        return None
    text = str(value).strip().rstrip("\0")
    return text if len(text) <= 64 and _UID.fullmatch(text) else None


def source_uid(header: Any, keyword: str) -> str | None:
    """A valid UID of ``header``'s ``keyword`` (for the SOP Class, a registered one); SOP Class and
    Instance fall back to the file meta information (Media Storage SOP Class/Instance UID states the
    same instance)."""
    check = _known_sop_class if keyword == "SOPClassUID" else (lambda u: u)
    uid = check(valid_uid(_raw_value(header, keyword)))
    if uid is None and keyword in ("SOPClassUID", "SOPInstanceUID"):
        meta = getattr(header, "file_meta", None)
        if meta is not None:
            uid = check(valid_uid(_raw_value(meta, "MediaStorage" + keyword)))
    return uid


def text_value(header: Any, keyword: str) -> Any:
    """The single text value of ``keyword`` in ``header``: ``None`` when absent, ``""`` when empty,
    the string when it is one value of a text VR that decoded cleanly, else an unusable marker."""
    try:
        if keyword not in header:
            return None
        elem = header[keyword]
        value = elem.value
    except Exception:  # noqa: BLE001 - a stored value that does not parse is unusable, not fatal
        return _UNUSABLE
    if elem.VR not in _TEXT_VRS:
        return _UNUSABLE
    if value is None:
        return ""
    if type(value).__name__ == "MultiValue" or isinstance(value, list | tuple):
        if len(value) == 0:
            return ""
        if len(value) != 1:
            return _UNUSABLE
        value = value[0]
    if isinstance(value, bytes | bytearray):
        return _UNUSABLE
    text = str(value)
    # U+FFFD: bytes the declared character set could not decode. Non-ASCII text under no (or an
    # unknown) character set was decoded by guesswork. Carrying either would alter the value.
    if "\ufffd" in text or (not text.isascii() and not _declared_charset(header)):
        return _UNUSABLE
    return text


# ---------------------------------------------------------------------------------------


def _raw_value(header: Any, keyword: str) -> Any:
    """The value of ``keyword`` when it is stored with a text VR (a UID stored as a number is none)."""
    try:
        if keyword not in header:
            return None
        elem = header[keyword]
        return elem.value if elem.VR in _TEXT_VRS else None
    except Exception:  # noqa: BLE001 - a stored value that does not parse is no UID
        return None


def _known_sop_class(uid: str | None) -> str | None:
    from pydicom.uid import UID

    return uid if uid is not None and UID(uid).type == "SOP Class" else None


def _declared_charset(header: Any) -> bool:
    """Whether ``header`` declares a character set whose every term pydicom knows."""
    from pydicom.charset import python_encoding

    try:
        value = header.get("SpecificCharacterSet")
    except Exception:  # noqa: BLE001
        return False
    terms = [value] if isinstance(value, str) else list(value or [])
    terms = [str(t).strip() for t in terms]
    return bool(terms) and any(terms) and all(t == "" or t in python_encoding for t in terms)


def _valid_for(keyword: str, vr: str, text: str) -> bool:
    """Whether ``text`` is a valid single value of ``vr`` (and of the attribute's enumeration)."""
    if text == "":
        return True
    control = any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)
    if vr == "LT":
        return len(text) <= _MAX_CHARS["LT"] and not any(
            (ord(c) < 0x20 and c not in "\t\n\f\r") or ord(c) == 0x7F for c in text
        )
    if control or "\\" in text:
        return False
    if vr == "PN":
        groups = text.split("=")
        return len(groups) <= 3 and all(len(g) <= 64 and g.count("^") <= 4 for g in groups)
    if len(text) > _MAX_CHARS.get(vr, 64):
        return False
    if vr == "CS":
        return bool(_CS.fullmatch(text)) and text.strip() in _ENUMERATED.get(keyword, {text.strip()})
    if vr == "DA":
        return _valid_date(text)
    if vr == "TM":
        return bool(_TM.fullmatch(text.strip()))
    if vr == "AS":
        return bool(_AS.fullmatch(text))
    if vr == "DS":
        return bool(_DS.fullmatch(text))
    return True  # LO, SH


def _valid_date(text: str) -> bool:
    if len(text) != 8 or not text.isdigit():
        return False
    try:
        dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return False
    return True


def _orientation(header: Any) -> list[str] | str:
    """The source's Patient Orientation when it is two valid direction codes, else empty (Type 2C
    in the derived image: a photograph without a stated orientation has the empty form)."""
    try:
        value = header["PatientOrientation"].value if "PatientOrientation" in header else None
    except Exception:  # noqa: BLE001
        return ""
    if value is None or type(value).__name__ != "MultiValue" or len(value) != 2:
        return ""
    codes = [str(v) for v in value]
    return codes if all(_ORIENTATION.fullmatch(c) for c in codes) else ""


def _spacing(source: FundusImage) -> tuple[float, float] | None:
    import math

    spacing = source.pixel_spacing
    if spacing is None or len(spacing) != 2:
        return None
    row, col = (float(v) for v in spacing)
    return (row, col) if all(math.isfinite(v) and v > 0 for v in (row, col)) else None
