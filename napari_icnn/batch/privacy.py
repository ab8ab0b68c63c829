"""Keeping patient attributes out of what a batch run says: reasons, names, logs.

Reasons come from decoders and validators that may quote header values; before a reason leaves
the process that read the file, every patient-identifying value of that file's header is
replaced by ``[redacted]``.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["PHI_KEYWORDS", "phi_values", "scrub"]

PHI_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthDate",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "IssuerOfPatientID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "InstitutionName",
    "StudyID",
)
"""Header attributes whose values never appear in reasons, file names or messages."""

_MIN_LEN = 3  # shorter values (sex "M", "0") would blank out ordinary words


def phi_values(header: Any) -> list[str]:
    """The identifying strings of a pydicom header (a person name also by its components)."""
    if header is None:
        return []
    found: set[str] = set()
    for keyword in PHI_KEYWORDS:
        try:
            value = header.get(keyword)
        except Exception:  # noqa: BLE001 - a value that does not parse cannot be quoted either
            continue
        if value is None:
            continue
        items = value if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue" else [value]
        for item in items:
            text = str(item).strip()
            found.add(text)
            found.update(p.strip() for p in re.split(r"[\^=]", text))
    return sorted((v for v in found if len(v) >= _MIN_LEN), key=len, reverse=True)


def scrub(text: str, values: list[str]) -> str:
    """``text`` with every value in ``values`` (case-insensitive) replaced by ``[redacted]``."""
    for v in values:
        text = re.sub(re.escape(v), "[redacted]", text, flags=re.IGNORECASE)
    return text
