"""What a filter's response is to a reader: evidence, context or a possible artefact.

- **evidence**: a filter assigned to a lesion type or to the decision class whose matched part (if any)
  is not an anatomy landmark;
- **context**: anatomy — label-free filters, filters matched to the optic disc, fovea or vessels (a
  category filter that learned anatomy is flagged as such), and filters without a category (an
  ordinary CNN's);
- **possible artefact**: an active filter whose peak lies outside the field of view, outside the
  photograph, on the field of view's rim (for every field shape: a circle's rim, the frame's edge
  where the frame cuts the field or the retina fills it, a rim marker) or on burned-in text,
  whatever its category. Kept and listed apart, never evidence.

A **silent** filter (no response anywhere on the scan: its masked map is zero) has no peak, so no place to
judge: it keeps the role of its category, flagged :data:`SILENT_FLAG`. Its contribution is real (a lesion-type
filter's silence is what a healthy decision rests on), but there is nothing to draw.

Roles only group and flag: the maps, contributions and logits are never altered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_icnn.parts import ANATOMY_KEYS, FREE_CATEGORY

__all__ = ["EVIDENCE", "CONTEXT", "ARTEFACT", "ROLES", "RIM", "MIN_STRENGTH", "TEXT_REACH", "SILENT_FLAG", "Role",
           "role_of", "fov_radius_of", "peak_on_mask"]

EVIDENCE = "evidence"
CONTEXT = "context"
ARTEFACT = "possible artefact"
ROLES = (EVIDENCE, CONTEXT, ARTEFACT)

RIM = 0.9
"""Peaks beyond this rim coordinate (:meth:`napari_icnn.data.fov.FOV.rim_coordinate`: on a whole circle the
distance from the centre in radii; for every shape 1 - the distance from the field's boundary in inscribed
radii) lie on its rim: where the black border, the frame's edge, the camera's notch and burned-in text sit,
and no lesion evidence can be judged."""
TEXT_REACH = 0.08
"""A peak is on burned-in text when text lies within its cell, up to this fraction of the field's inscribed
radius away (a coarse map's cell is larger than any character)."""
MIN_STRENGTH = 0.1
"""A filter below this fraction of its typical strong response is silent: where its (arbitrary) peak
lies says nothing."""
SILENT_FLAG = "silent: no response anywhere on this scan"
"""The flag of a filter whose masked map is zero everywhere: it has no peak."""


@dataclass(frozen=True)
class Role:
    """A filter's role on one scan and the reasons, in words."""

    role: str
    flags: tuple[str, ...] = ()


def role_of(category: str | None, part: str | None, strength: float, fov_radius: float,
            inside_scan: bool = True, on_text: bool = False) -> Role:
    """The role of a filter with this ``category`` and matched ``part`` whose peak has ``strength``
    (activation / typical strong response), lies at rim coordinate ``fov_radius`` (:func:`fov_radius_of`:
    0 deep in the field, 1 on its boundary), within the photograph's pixels (``inside_scan``) and, with
    ``on_text``, on burned-in text (:func:`peak_on_mask`). A ``strength`` of 0 or less is a silent filter:
    it has no peak, so the place is not read."""
    flags: list[str] = []
    anatomy = part in ANATOMY_KEYS
    if category == FREE_CATEGORY:
        flags.append("label-free filter (anatomy context)")
    elif category is None:
        flags.append("no category (not an interpretable filter)")
    elif anatomy:
        flags.append("category filter that learned anatomy")
    if not strength > 0:
        # the argmax of an all-zero map is its first cell, a corner: no place to judge, so no artefact either
        flags.append(SILENT_FLAG)
        return Role(CONTEXT if category in (None, FREE_CATEGORY) or anatomy else EVIDENCE, tuple(flags))
    active = strength >= MIN_STRENGTH
    # A peak beyond the photograph's pixels (the padding of a field of view the frame cuts) is never evidence
    # or context, however weak: no reader can look there, and a DICOM SR cannot point there.
    if not inside_scan:
        flags.append("peak outside the photograph")
        return Role(ARTEFACT, tuple(flags))
    # Nor is a peak on the black surround, however weak: a clinician reading "evidence" must find retina there.
    if not fov_radius <= 1.0:
        flags.append("peak outside the field of view")
        return Role(ARTEFACT, tuple(flags))
    if active and fov_radius > RIM:
        flags.append("peak on the field-of-view rim")
    if active and on_text:
        flags.append("peak on burned-in text")
    if active and (on_text or not fov_radius <= RIM):
        return Role(ARTEFACT, tuple(flags))
    if category in (None, FREE_CATEGORY) or anatomy:
        return Role(CONTEXT, tuple(flags))
    return Role(EVIDENCE, tuple(flags))


# fov and geometry are typed loosely: roles sits below the data layer and must not import it.
def fov_radius_of(x: float, y: float, size: int, fov: Any = None, geometry: Any = None) -> float:
    """Rim coordinate of model pixel ``(x, y)``: 0 deep in the field of view, 1 on its boundary, above 1 outside.

    With the scan's ``fov`` and the preprocessing ``geometry``, :meth:`~napari_icnn.data.fov.FOV.rim_coordinate`
    of the point on the scan, for every field shape. Without them, the model input is taken to be a whole
    circle's bounding square: the distance from its centre in radii of ``size / 2``.
    """
    if fov is not None and geometry is not None:
        sx, sy = geometry.to_scan((x, y))[0]
        return float(fov.rim_coordinate(sx, sy))
    c = size / 2 - 0.5
    return math.hypot(x - c, y - c) / (size / 2)


def peak_on_mask(mask: np.ndarray | None, x: float, y: float, reach: float) -> bool:
    """Whether any set pixel of the scan ``mask`` (e.g. burned-in text) lies within ``reach`` pixels (a square)
    of the peak at scan ``(x, y)``."""
    if mask is None:
        return False
    h, w = mask.shape
    r = max(float(reach), 1.0)
    x0, x1 = max(int(math.floor(x - r)), 0), min(int(math.ceil(x + r)) + 1, w)
    y0, y1 = max(int(math.floor(y - r)), 0), min(int(math.ceil(y + r)) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return False
    return bool(mask[y0:y1, x0:x1].any())
