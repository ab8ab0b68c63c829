"""The shared vocabulary of fundus parts: keys, display names, file suffixes and codes.

Part keys are what folders and metadata use; display names are what clinicians read.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Part",
    "PARTS",
    "PART_KEYS",
    "ANATOMY_KEYS",
    "LESION_KEYS",
    "MASK_LESION_KEYS",
    "REFERABLE_LESION_KEYS",
    "display_name",
    "filter_display_name",
]


@dataclass(frozen=True)
class Part:
    """One fundus part of the shared vocabulary."""

    key: str
    """Key used in folders, CSV columns and bundle metadata."""
    display: str
    """Name shown to clinicians."""
    idrid_suffix: str | None
    """Suffix of IDRiD segmentation masks (``IDRiD_01_EX.tif``), if IDRiD annotates it."""
    kind: str
    """``anatomy`` or ``lesion``."""
    snomed: tuple[str, str] | None
    """(code value, meaning) in SNOMED CT for DICOM SEG segmented property type, where one is verified."""


PARTS: dict[str, Part] = {
    p.key: p
    for p in [
        Part("optic_disc", "optic disc", "OD", "anatomy", ("81016008", "Optic nerve head")),
        Part("fovea", "fovea", None, "anatomy", ("67046006", "Fovea centralis")),
        Part("vessels", "vessels", None, "anatomy", ("59820001", "Blood vessel")),
        Part("MA", "microaneurysms", "MA", "lesion", ("85659009", "Aneurysm")),
        Part("HE", "haemorrhages", "HE", "lesion", ("50960005", "Hemorrhage")),
        Part("EX", "hard exudates", "EX", "lesion", ("52988006", "Lesion")),
        Part("SE", "cotton-wool spots (soft exudates)", "SE", "lesion", ("52988006", "Lesion")),
        Part("NV", "neovascularisation", None, "lesion", ("52988006", "Lesion")),
    ]
}
PART_KEYS: tuple[str, ...] = tuple(PARTS)
ANATOMY_KEYS: tuple[str, ...] = tuple(k for k, p in PARTS.items() if p.kind == "anatomy")
LESION_KEYS: tuple[str, ...] = tuple(k for k, p in PARTS.items() if p.kind == "lesion")
# The lesion types of the multi-label task (IDRiD's four).
MASK_LESION_KEYS: tuple[str, ...] = ("MA", "HE", "EX", "SE")
# The lesion types whose presence makes an eye referable (ICDR moderate non-proliferative DR and beyond);
# microaneurysms alone are mild non-proliferative DR, which is not referable.
REFERABLE_LESION_KEYS: tuple[str, ...] = ("HE", "EX", "SE")


def display_name(part_key: str | None) -> str | None:
    """Display name of a part key (``"EX"`` -> ``"hard exudates"``); unknown keys pass through."""
    if part_key is None:
        return None
    part = PARTS.get(part_key)
    return part.display if part else part_key


FREE_CATEGORY = "free"
"""The category recorded for label-free filters (they belong to no class)."""


def filter_display_name(
    filter_id: int,
    clinician_name: str | None = None,
    part_key: str | None = None,
    category: str | None = None,
) -> str:
    """A filter's display name: ``"filter N · "`` + the clinician's name if set, else the
    matched part's display name, else the assigned category (a lesion type by its display name), else
    ``"unnamed"``."""
    category = (category or "").strip()
    if category == FREE_CATEGORY:
        category = "label-free, unnamed"  # "free" is the training term; a reader needs to know it has no name yet
    elif category in PARTS:
        category = PARTS[category].display
    label = (clinician_name or "").strip() or display_name(part_key) or category or "unnamed"
    return f"filter {filter_id} · {label}"
