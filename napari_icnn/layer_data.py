"""An :class:`~napari_icnn.explain.Explanation` as napari layer data: one Labels layer per shown filter.

Pure functions (no Qt, no napari import): the Explain widget adds what they make to its viewer, the
evidence writers (:mod:`napari_icnn._writer`) read back what the layers' metadata say, and both are
tested without a viewer. Filters are shown in three groups, each the top-K of its role by contribution
(:mod:`napari_icnn.roles`; the explanation already sorts filters into them):

* **evidence** (:meth:`~napari_icnn.explain.Explanation.evidence`): on top of the layer list, visible;
* **context**, anatomy (:meth:`~napari_icnn.explain.Explanation.context`): below the evidence, named
  ``"context · filter N · optic disc"``, hidden and fainter, so anatomy is never mistaken for evidence;
* **possible artefacts** (:meth:`~napari_icnn.explain.Explanation.possible_artefacts`): at the bottom,
  named ``"possible artefact · filter N · …"``, hidden.

Each filter gets

* a Labels layer named with the filter's display name ("filter 17 · hard exudates"): label 1 where
  the filter fires (:meth:`~napari_icnn.explain.Explanation.region_on_scan`), coloured as its part
  (:data:`~napari_icnn.render.PART_COLOURS`), with a ``features`` row for label 1 so hovering names
  the filter and shows its activation and contribution;
* on request, a heat-map Image layer (:meth:`~napari_icnn.explain.Explanation.map_on_scan`) from
  black to the part's colour, blended additively, directly below its region.

Every layer is placed exactly as the scan (:class:`Placement`): the maps are already on the scan's
pixel grid, so the scan's own data-to-world transform puts them in register. Within a group layers
are grouped by part (parts ordered by their strongest filter, filters by contribution) and their
metadata (:data:`EVIDENCE_KEY`) says which scan they explain and in which group, so a new run can
replace them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_icnn.explain import REGION_THRESHOLD
from napari_icnn.parts import FREE_CATEGORY, display_name
from napari_icnn.render import PART_COLOURS
from napari_icnn.roles import ARTEFACT, CONTEXT, EVIDENCE, ROLES

if TYPE_CHECKING:
    from napari_icnn.explain import Explanation
    from napari_icnn.image import FundusImage

__all__ = [
    "EVIDENCE_KEY",
    "REGION",
    "HEAT",
    "UNDERLAY",
    "FEATURE_COLUMNS",
    "GROUP_HEADINGS",
    "GROUP_VISIBLE",
    "LayerData",
    "Placement",
    "ShownFilter",
    "EvidenceInfo",
    "shown_filters",
    "evidence_layers",
    "evidence_info",
    "layers_of_scan",
    "rows_in_layer_order",
    "scan_key",
    "label_of",
    "layer_name",
    "filter_name_of",
    "heat_name",
    "heat_layer",
    "part_colour",
    "part_heading",
    "feature_table",
]

LayerData = tuple[Any, dict[str, Any], str]

EVIDENCE_KEY = "icnn_evidence"
"""Metadata key of every layer an explanation adds (an :class:`EvidenceInfo`)."""
REGION, HEAT, UNDERLAY = "region", "heat", "underlay"
"""Roles of evidence layers: a filter's region (Labels), its heat map (Image), and the copy of the
scan under the evidence in side-by-side mode."""
FEATURE_COLUMNS = ("index", "filter_id", "part", "name", "activation", "contribution")
_NAME_SEP = " · "
_NO_PART = "—"
REGION_OPACITY = 0.55
"""Enough to see the region at a glance while the vessels and lesions under it stay readable."""
CONTEXT_OPACITY = 0.3
"""Anatomy, once shown, reads as background to the evidence drawn over it."""
HEAT_OPACITY = 0.8

GROUP_HEADINGS = {EVIDENCE: "Evidence", CONTEXT: "Context (anatomy)", ARTEFACT: "Possible artefacts"}
"""The legend's heading of each group of filters (keys: the roles of :mod:`napari_icnn.roles`)."""
_GROUP_PREFIX = {EVIDENCE: "", CONTEXT: f"context{_NAME_SEP}", ARTEFACT: f"possible artefact{_NAME_SEP}"}
GROUP_VISIBLE = {EVIDENCE: True, CONTEXT: False, ARTEFACT: False}
"""Whether a group's layers start visible: only evidence is drawn over the scan until asked for."""
_GROUP_OPACITY = {EVIDENCE: REGION_OPACITY, CONTEXT: CONTEXT_OPACITY, ARTEFACT: REGION_OPACITY}


@dataclass(frozen=True)
class Placement:
    """Where a layer's data sit in the world: the scan layer's data-to-world transform.

    Copied verbatim onto every evidence layer so that pixel ``(r, c)`` of a map lands where pixel
    ``(r, c)`` of the scan is shown, whatever scale, translation, rotation, shear or affine the scan
    carries.
    """

    scale: tuple[float, ...] = (1.0, 1.0)
    translate: tuple[float, ...] = (0.0, 0.0)
    rotate: tuple[tuple[float, ...], ...] | None = None
    shear: tuple[float, ...] | None = None
    affine: tuple[tuple[float, ...], ...] | None = None
    units: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.scale) != 2 or len(self.translate) != 2:
            raise ValueError(
                f"a fundus scan is placed in 2-D; got scale {self.scale} and translate {self.translate}"
            )
        if not all(np.isfinite(self.scale)) or any(s == 0 for s in self.scale):
            raise ValueError(f"scale must be finite and non-zero; got {self.scale}")

    @classmethod
    def from_layer(cls, layer: Any) -> Placement:
        """The placement of a napari layer (read through its public attributes)."""

        def matrix(value: Any) -> tuple[tuple[float, ...], ...] | None:
            if value is None:
                return None
            m = np.asarray(getattr(value, "affine_matrix", value), dtype=float)
            return tuple(tuple(float(v) for v in row) for row in m)

        units = getattr(layer, "units", None)
        return cls(
            scale=tuple(float(v) for v in layer.scale),
            translate=tuple(float(v) for v in layer.translate),
            rotate=matrix(getattr(layer, "rotate", None)),
            shear=None if getattr(layer, "shear", None) is None else tuple(float(v) for v in layer.shear),
            affine=matrix(getattr(layer, "affine", None)),
            units=None if units is None else tuple(str(u) for u in units),
        )

    def kwargs(self) -> dict[str, Any]:
        """Layer keyword arguments that reproduce this placement."""
        out: dict[str, Any] = {"scale": self.scale, "translate": self.translate}
        for key in ("rotate", "shear", "affine", "units"):
            value = getattr(self, key)
            if key == "units" and value is not None and all(u == "pixel" for u in value):
                continue  # napari's default; napari 0.5.0's add_image refuses any units tuple
            if value is not None:
                out[key] = np.asarray(value) if key in ("rotate", "affine") else value
        return out


@dataclass(frozen=True)
class ShownFilter:
    """One filter as the layers and the legend show it."""

    filter_id: int
    name: str
    """Display name, ``"filter N · <label>"``."""
    part: str | None
    category: str | None
    colour: tuple[int, int, int]
    contribution: float
    activation: float
    group: str = EVIDENCE
    """The filter's role on this scan: ``evidence``, ``context`` or ``possible artefact``."""
    flags: tuple[str, ...] = ()
    """Why that role, in words ("label-free filter (anatomy context)", "peak on the field-of-view rim")."""

    @property
    def label(self) -> str:
        """The name without the ``"filter N · "`` prefix: what a clinician renames."""
        return label_of(self.name)

    @property
    def layer_name(self) -> str:
        """The name of its layer: the display name with its group's prefix."""
        return layer_name(self.name, self.group)


@dataclass(frozen=True)
class EvidenceInfo:
    """What an evidence layer's metadata says about it (under :data:`EVIDENCE_KEY`)."""

    scan: str
    """:func:`scan_key` of the image layer it explains."""
    run: str
    """One id per Explain run: the layers added together."""
    role: str
    filter_id: int | None = None
    group: str = EVIDENCE
    """The filter's role on the scan (``evidence``, ``context``, ``possible artefact``): its group of layers."""
    flags: tuple[str, ...] = ()
    part: str | None = None
    category: str | None = None
    contribution: float | None = None
    activation: float | None = None
    threshold: float | None = None
    model_name: str = ""
    model_version: str = ""
    model_sha256: str = ""
    model_path: str | None = None
    explanation: Any = None
    """The :class:`~napari_icnn.explain.Explanation` the layer came from (probability maps on request)."""
    source: Any = None
    """The scan's :class:`~napari_icnn.image.FundusImage` when known (DICOM references)."""

    def probability_map(self) -> np.ndarray | None:
        """The filter's map on the scan grid in [0, 1], when the explanation is at hand."""
        if self.explanation is None or self.filter_id is None:
            return None
        return self.explanation.map_on_scan(self.filter_id)


def scan_key(layer: Any) -> str:
    """A key that identifies a napari layer for the life of the session (its ``unique_id``)."""
    uid = getattr(layer, "unique_id", None)
    return str(uid if uid is not None else id(layer))


def layer_name(name: str, group: str = EVIDENCE) -> str:
    """The layer name of a filter called ``name`` shown in ``group``: ``"context · filter 4 · optic disc"``."""
    return f"{_GROUP_PREFIX[group]}{name}"


def filter_name_of(name: str) -> str:
    """A layer's name without its group's prefix: ``"context · filter 4 · optic disc"`` →
    ``"filter 4 · optic disc"`` (other names are returned whole)."""
    for prefix in _GROUP_PREFIX.values():
        if prefix and name.startswith(prefix) and name[len(prefix):].startswith("filter "):
            return name[len(prefix):]
    return name


def label_of(name: str) -> str:
    """``"filter 17 · hard exudates"`` → ``"hard exudates"`` (a name without prefix is returned whole;
    a group's prefix, as in ``"context · filter 4 · optic disc"``, goes too)."""
    head, sep, tail = filter_name_of(name).partition(_NAME_SEP)
    return tail if sep and head.startswith("filter ") else name


def heat_name(name: str) -> str:
    """The name of the heat-map layer of the filter whose region layer is called ``name``."""
    return f"{name}{_NAME_SEP}heat map"


def part_colour(part: str | None) -> tuple[int, int, int]:
    """The RGB colour of a part key (:data:`~napari_icnn.render.PART_COLOURS`; grey when unmatched)."""
    return PART_COLOURS.get(part, PART_COLOURS[None])


def part_heading(part: str | None, category: str | None = None) -> str:
    """The legend's heading of a part group."""
    if part is not None:
        return display_name(part) or part
    if category == FREE_CATEGORY:
        category = "label-free"  # "free" is the training term
    elif category is not None:
        category = f"trained for {display_name(category)}"  # a lesion type by its name
    return f"not matched to a part ({category})" if category else "not matched to a part"


def shown_filters(expl: Explanation, top_k: int) -> list[ShownFilter]:
    """The ``top_k`` evidence filters, then the ``top_k`` context filters, then the ``top_k`` possible
    artefacts, each by contribution (top of the layer list and legend first). Within a group filters
    are grouped by part: parts ordered by their strongest filter, filters within a part by contribution."""
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1; got {top_k}")
    chosen = {EVIDENCE: expl.evidence(top_k), CONTEXT: expl.context(top_k), ARTEFACT: expl.possible_artefacts(top_k)}
    out: list[ShownFilter] = []
    for group in ROLES:
        parts: dict[str | None, list[ShownFilter]] = {}
        for f in chosen[group]:  # already by contribution, so each part's first member is its strongest
            parts.setdefault(f.part, []).append(
                ShownFilter(
                    filter_id=f.id,
                    name=f.name,
                    part=f.part,
                    colour=part_colour(f.part),
                    category=f.category,
                    contribution=f.contribution,
                    activation=f.activation,
                    group=group,
                    flags=tuple(f.flags),
                )
            )
        out += [f for members in parts.values() for f in members]
    return out


def feature_table(f: ShownFilter) -> dict[str, list[Any]]:
    """The ``features`` of a filter's Labels layer: one row, for label 1 (what hovering shows)."""
    return {
        "index": [1],
        "filter_id": [f.filter_id],
        "part": [display_name(f.part) or _NO_PART],
        "name": [f.layer_name],
        "activation": [round(float(f.activation), 4)],
        "contribution": [round(float(f.contribution), 4)],
    }


def evidence_layers(
    expl: Explanation,
    *,
    scan: str,
    top_k: int = 5,
    threshold: float = REGION_THRESHOLD,
    heat_maps: bool = False,
    show_heat_maps: bool | None = None,
    placement: Placement | None = None,
    model_path: str | None = None,
    source: FundusImage | None = None,
    run: str | None = None,
) -> list[LayerData]:
    """The layers that show ``expl`` over its scan, bottom first (add them in this order).

    Parameters
    ----------
    expl
        The explanation of the scan.
    scan
        :func:`scan_key` of the scan's image layer (recorded in every layer's metadata).
    top_k
        How many filters to show of each group (evidence, context, possible artefacts), by contribution.
    threshold
        Region threshold: fraction of each filter's own peak (see ``region_on_scan``).
    heat_maps
        Whether to make a heat-map layer per filter (each directly below its region).
    show_heat_maps
        Whether those start visible (default: ``heat_maps``), in the groups that start visible
        (:data:`GROUP_VISIBLE`).
    placement
        The scan layer's placement (default: napari's identity placement).
    model_path, source
        Recorded in the metadata for writers (bundle folder; the scan's ``FundusImage``).
    run
        Id of this run (a fresh one by default).
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie strictly between 0 and 1; got {threshold}")
    placement = placement or Placement()
    show = heat_maps if show_heat_maps is None else show_heat_maps
    run = run or uuid.uuid4().hex
    layers: list[LayerData] = []
    # `shown` lists the top of the layer list first; napari stacks later additions on top.
    for f in reversed(shown_filters(expl, top_k)):
        info = EvidenceInfo(
            scan=scan,
            run=run,
            role=REGION,
            filter_id=f.filter_id,
            group=f.group,
            flags=f.flags,
            part=f.part,
            category=f.category,
            contribution=float(f.contribution),
            activation=float(f.activation),
            threshold=float(threshold),
            model_name=expl.model_name,
            model_version=expl.model_version,
            model_sha256=expl.model_sha256,
            model_path=model_path,
            explanation=expl,
            source=source,
        )
        visible = GROUP_VISIBLE[f.group]
        if heat_maps:
            layers.append(heat_layer(f.layer_name, info, placement, visible=show and visible))
        region = expl.region_on_scan(f.filter_id, threshold).astype(np.uint8)
        rgb = tuple(c / 255 for c in f.colour)
        layers.append(
            (
                region,
                {
                    "name": f.layer_name,
                    "colormap": {None: "transparent", 0: "transparent", 1: (*rgb, 1.0)},
                    "features": feature_table(f),
                    "opacity": _GROUP_OPACITY[f.group],
                    "visible": visible,
                    "metadata": {EVIDENCE_KEY: info},
                    **placement.kwargs(),
                },
                "labels",
            )
        )
    return layers


def heat_layer(name: str, info: EvidenceInfo, placement: Placement, *, visible: bool = True) -> LayerData:
    """The heat-map layer of the filter whose region layer is called ``name`` and described by ``info``:
    its map on the scan grid in [0, 1], black to the part's colour, blended additively."""
    if info.explanation is None or info.filter_id is None:
        raise ValueError(f"'{name}' does not carry its explanation; explain the scan again")
    rgb = [c / 255 for c in part_colour(info.part)]
    return (
        info.explanation.map_on_scan(info.filter_id),
        {
            "name": heat_name(name),
            "colormap": {
                "colors": [[0.0, 0.0, 0.0, 1.0], [*rgb, 1.0]],
                "name": f"icnn {info.part or 'unmatched'}",
            },
            "contrast_limits": (0.0, 1.0),
            "blending": "additive",
            "opacity": HEAT_OPACITY,
            "visible": bool(visible),
            "metadata": {EVIDENCE_KEY: replace(info, role=HEAT)},
            **placement.kwargs(),
        },
        "image",
    )


def evidence_info(metadata: Mapping[str, Any] | None) -> EvidenceInfo | None:
    """The :class:`EvidenceInfo` in a layer's metadata, or ``None`` for other layers."""
    if not metadata:
        return None
    info = metadata.get(EVIDENCE_KEY)
    return info if isinstance(info, EvidenceInfo) else None


def layers_of_scan(layers: Iterable[Any], scan: str) -> list[Any]:
    """The evidence layers (objects with ``metadata``) that explain the scan ``scan``."""
    out = []
    for layer in layers:
        info = evidence_info(getattr(layer, "metadata", None))
        if info is not None and info.scan == scan:
            out.append(layer)
    return out


def rows_in_layer_order(layers: Sequence[Any], scan: str) -> list[ShownFilter]:
    """The filters whose Labels layers explain ``scan``, top of the layer list first (legend order)."""
    rows = []
    for layer in reversed(list(layers)):
        info = evidence_info(getattr(layer, "metadata", None))
        if info is None or info.scan != scan or info.role != REGION or info.filter_id is None:
            continue
        rows.append(
            ShownFilter(
                filter_id=info.filter_id,
                name=filter_name_of(str(layer.name)),
                part=info.part,
                category=info.category,
                colour=part_colour(info.part),
                contribution=0.0 if info.contribution is None else float(info.contribution),
                activation=0.0 if info.activation is None else float(info.activation),
                group=info.group,
                flags=tuple(info.flags),
            )
        )
    return rows
