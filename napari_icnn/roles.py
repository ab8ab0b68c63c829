"""What a filter's response is to a reader: evidence, context or a possible artefact.

- **evidence**: a filter assigned to a lesion type or to the decision class whose matched part (if any)
  is not an anatomy landmark;
- **context**: anatomy — label-free filters, filters matched to the optic disc, fovea or vessels (a
  category filter that learned anatomy is flagged as such), and filters without a category (an
  ordinary CNN's);
- **possible artefact**: an active filter whose peak lies outside the field of view, outside the
  photograph or on the field of view's rim, whatever its category. Kept and listed apart, never
  evidence.

Roles only group and flag: the maps, contributions and logits are never altered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from napari_icnn.parts import ANATOMY_KEYS, FREE_CATEGORY

__all__ = ["EVIDENCE", "CONTEXT", "ARTEFACT", "ROLES", "RIM", "MIN_STRENGTH", "Role", "role_of", "fov_radius_of"]

EVIDENCE = "evidence"
CONTEXT = "context"
ARTEFACT = "possible artefact"
ROLES = (EVIDENCE, CONTEXT, ARTEFACT)

RIM = 0.9
"""Peaks farther from the field of view's centre than this fraction of its radius lie on its rim: where
the black border, the camera's notch and burned-in text sit, and no lesion evidence can be judged."""
MIN_STRENGTH = 0.1
"""A filter below this fraction of its typical strong response is silent: where its (arbitrary) peak
lies says nothing."""


@dataclass(frozen=True)
class Role:
    """A filter's role on one scan and the reasons, in words."""

    role: str
    flags: tuple[str, ...] = ()


def role_of(category: str | None, part: str | None, strength: float, fov_radius: float,
            inside_scan: bool = True) -> Role:
    """The role of a filter with this ``category`` and matched ``part`` whose peak has ``strength``
    (activation / typical strong response) and lies ``fov_radius`` field-of-view radii from the FOV's
    centre (``inside_scan``: within the photograph's pixels)."""
    flags: list[str] = []
    anatomy = part in ANATOMY_KEYS
    if category == FREE_CATEGORY:
        flags.append("label-free filter (anatomy context)")
    elif category is None:
        flags.append("no category (not an interpretable filter)")
    elif anatomy:
        flags.append("category filter that learned anatomy")
    active = strength >= MIN_STRENGTH
    # A peak beyond the photograph's pixels (the padding of a field of view the frame cuts) is never evidence
    # or context, however weak: no reader can look there, and a DICOM SR cannot point there.
    if not inside_scan:
        flags.append("peak outside the photograph")
        return Role(ARTEFACT, tuple(flags))
    if active and not fov_radius <= 1.0:
        flags.append("peak outside the field of view")
    elif active and fov_radius > RIM:
        flags.append("peak on the field-of-view rim")
    if active and not fov_radius <= RIM:
        return Role(ARTEFACT, tuple(flags))
    if category in (None, FREE_CATEGORY) or anatomy:
        return Role(CONTEXT, tuple(flags))
    return Role(EVIDENCE, tuple(flags))


def fov_radius_of(x: float, y: float, size: int) -> float:
    """Distance of model pixel ``(x, y)`` from the field of view's centre, in FOV radii: the model
    input is the FOV's bounding square, so the circle is centred in it with radius ``size / 2``."""
    c = size / 2 - 0.5
    return math.hypot(x - c, y - c) / (size / 2)
