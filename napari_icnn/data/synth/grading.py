"""ICDR grading of a synthetic fundus from the lesions actually drawn.

The labels of a synthetic image are never sampled: they are derived from its masks and lesion
instances with the rules below, so a label always agrees with the pixels.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Findings",
    "QUADRANT_COLUMNS",
    "RULES",
    "SEVERE_HE_PER_QUADRANT",
    "quadrant",
    "has_dme",
    "icdr_grade",
    "is_referable",
    "findings_from",
]

SEVERE_HE_PER_QUADRANT = 20  # 4-2-1 rule: more than 20 intraretinal haemorrhages in each quadrant
QUADRANT_COLUMNS = ("he_sn", "he_st", "he_in", "he_it")
"""labels.csv columns: intraretinal haemorrhages per quadrant around the fovea
(superior/inferior × nasal/temporal)."""

RULES = {
    "grade": (
        "ICDR from the drawn lesions: 4 = any neovascularisation (n_NV > 0) or pre-retinal haemorrhage "
        "(n_preretinal > 0); else 3 = more than 20 intraretinal haemorrhages in each of the 4 quadrants "
        "around the fovea (lines through the fovea centre; a haemorrhage's quadrant is that of its mask "
        "centroid); else 2 = any haemorrhage, hard exudate or cotton-wool spot; else 1 = microaneurysms "
        "only; else 0"
    ),
    "dme": "any hard-exudate mask pixel within 1 disc diameter (disc_diameter) of the fovea centre",
    "referable": "grade >= 2 or dme",
    "counts": "n_X = number of drawn instances of part X = number of 8-connected regions of mask X",
    "coordinates": "image pixels, x = column, y = row, pixel centres at integer coordinates",
}


def quadrant(x: float, y: float, fovea_x: float, fovea_y: float, laterality: str) -> str:
    """The quadrant column (``he_sn``, ``he_st``, ``he_in``, ``he_it``) of point ``(x, y)``.

    Superior is the image top; nasal is the side of the disc (image right for a right eye).
    """
    sup = "s" if y < fovea_y else "i"
    right = x >= fovea_x
    nasal = right if laterality == "R" else not right
    return f"he_{sup}{'n' if nasal else 't'}"


def has_dme(ex_mask: np.ndarray, fovea_x: float, fovea_y: float, dd: float) -> bool:
    """Whether any hard-exudate pixel lies within ``dd`` pixels of the fovea centre."""
    ys, xs = np.nonzero(ex_mask)
    if not len(xs):
        return False
    d2 = (xs - fovea_x) ** 2 + (ys - fovea_y) ** 2
    return bool((d2 <= dd * dd).any())


@dataclass(frozen=True)
class Findings:
    """What is drawn in one image, as the grading rules need it."""

    counts: dict[str, int]
    """Instances per lesion part key (``MA``, ``HE``, ``EX``, ``SE``, ``NV``); HE includes pre-retinal."""
    n_preretinal: int
    he_quadrants: dict[str, int]
    """Intraretinal haemorrhages per :data:`QUADRANT_COLUMNS` entry."""
    dme: bool


def icdr_grade(f: Findings) -> int:
    """ICDR grade 0–4 of ``f`` (see :data:`RULES`)."""
    c = f.counts
    if c.get("NV", 0) > 0 or f.n_preretinal > 0:
        return 4
    if all(f.he_quadrants.get(q, 0) > SEVERE_HE_PER_QUADRANT for q in QUADRANT_COLUMNS):
        return 3
    if c.get("HE", 0) + c.get("EX", 0) + c.get("SE", 0) > 0:
        return 2
    if c.get("MA", 0) > 0:
        return 1
    return 0


def is_referable(grade: int, dme: bool) -> bool:
    """Referable diabetic retinopathy: ICDR grade 2 or more, or macular oedema."""
    return grade >= 2 or dme


def findings_from(
    instances: Iterable,
    ex_mask: np.ndarray,
    fovea_x: float,
    fovea_y: float,
    dd: float,
    laterality: str,
    kinds: Iterable[str],
) -> Findings:
    """Tally drawn lesion instances (objects with ``kind``, ``subtype``, ``x``, ``y``)."""
    counts = {k: 0 for k in kinds}
    quads = {q: 0 for q in QUADRANT_COLUMNS}
    pre = 0
    for les in instances:
        counts[les.kind] = counts.get(les.kind, 0) + 1
        if les.kind == "HE":
            if les.subtype == "preretinal":
                pre += 1
            else:
                quads[quadrant(les.x, les.y, fovea_x, fovea_y, laterality)] += 1
    return Findings(
        counts=counts, n_preretinal=pre, he_quadrants=quads, dme=has_dme(ex_mask, fovea_x, fovea_y, dd)
    )
