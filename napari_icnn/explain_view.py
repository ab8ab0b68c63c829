"""Explaining a scan in a napari viewer, without Qt: the job the Explain widget runs off the GUI
thread, and its evidence layers in the viewer.

:func:`explain_job` loads (or reuses) the model, calls :func:`napari_icnn.explain.explain` and makes
the layer data (:func:`napari_icnn.layer_data.evidence_layers`), yielding progress.
:class:`EvidenceView` keeps a viewer's evidence layers in step with the latest result: it swaps the
evidence of a scan for a new run's, adds heat maps on request, carries out renames, shows and hides a
filter's layers and arranges the scan beside its evidence. The widget wires its fields, buttons and
legend to these; this module touches the viewer only through its layer list and grid, never Qt.

Side by side
    napari's grid puts consecutive layers into one cell (``grid.stride`` of them). The evidence
    of the explained scan is moved to the top of the layer list above a copy of the scan (the
    "underlay"), and the scan itself directly below, and the stride is set to minus the size of
    that block. The first cell then shows the evidence over the copy, the second the scan alone
    (it is opaque, so whatever lies beneath it in that cell is hidden). Both cells share the
    camera, so panning or zooming one moves the other. Other visible layers further down fill
    further cells.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_icnn.errors import Cancelled
from napari_icnn.layer_data import (
    EVIDENCE_KEY,
    HEAT,
    REGION,
    UNDERLAY,
    EvidenceInfo,
    LayerData,
    Placement,
    ShownFilter,
    evidence_info,
    evidence_layers,
    heat_layer,
    heat_name,
    layer_name,
    layers_of_scan,
    rows_in_layer_order,
    scan_key,
)
from napari_icnn.progress import Progress
from napari_icnn.roles import ARTEFACT, CONTEXT, EVIDENCE

if TYPE_CHECKING:
    from napari_icnn.bundle import ModelCache
    from napari_icnn.explain import Explanation

__all__ = [
    "STAGES",
    "ExplainRequest",
    "ExplainResult",
    "explain_job",
    "check_scan",
    "refill_layer",
    "Renamed",
    "EvidenceView",
]

SOURCE_KEY = "icnn_source"  # napari_icnn._reader.SOURCE_KEY, without importing the DICOM reader here
STAGES = ("loading the model", "explaining", "making layers")
"""The stages :func:`explain_job` reports, in order."""


def _evidence(layer: Any) -> EvidenceInfo:
    """The :class:`EvidenceInfo` of a layer known to be evidence (one :func:`layers_of_scan` returned)."""
    info = evidence_info(layer.metadata)
    assert info is not None, f"{layer.name!r} is not an evidence layer"
    return info


# ---------------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class ExplainRequest:
    """Everything one Explain run needs, gathered on the GUI thread."""

    pixels: np.ndarray
    scan_name: str
    scan: str
    """:func:`~napari_icnn.layer_data.scan_key` of the scan layer."""
    model_path: Path
    top_k: int
    threshold: float
    heat_maps: bool
    """Make heat-map layers (they are shown only when ``show_heat_maps``)."""
    placement: Placement
    source: Any = None
    """The scan's FundusImage when its layer carries one (read from DICOM, or a sample)."""
    show_heat_maps: bool | None = None
    keep_declined: bool = False
    """Keep the prediction of a scan the gate declines (ungradeable), marked as such, instead of raising
    :class:`~napari_icnn.errors.GateDeclined`."""

    @classmethod
    def of_layer(
        cls,
        layer: Any,
        layers: Any,
        *,
        model_path: Path,
        top_k: int,
        threshold: float,
        heat_maps: bool,
        keep_declined: bool = False,
    ) -> ExplainRequest:
        """The request to explain the image ``layer`` (one of the viewer's ``layers``)."""
        source = layer.metadata.get(SOURCE_KEY)
        pixels = layer.data
        if source is not None and getattr(source, "shape", None) != tuple(np.shape(pixels)[:2]):
            source = None  # the layer's data were replaced since it was read
        key = scan_key(layer)
        # Heat maps are made only once asked for (each layer costs napari time to create); once made
        # they are kept, hidden, so that a re-run refills them instead of removing them.
        had_heat = any(_evidence(la).role == HEAT for la in layers_of_scan(list(layers), key))
        return cls(
            pixels=pixels,
            scan_name=layer.name,
            scan=key,
            model_path=model_path,
            top_k=top_k,
            threshold=threshold,
            heat_maps=heat_maps or had_heat,
            show_heat_maps=heat_maps,
            placement=Placement.from_layer(layer),
            source=source,
            keep_declined=keep_declined,
        )


@dataclass(frozen=True)
class ExplainResult:
    """A finished run: the explanation and the layer data that show it."""

    request: ExplainRequest
    explanation: Explanation
    layers: list[LayerData]
    seconds: float
    """Time of the explanation itself (the model was loaded or taken from the cache before)."""
    load_seconds: float
    """Time spent loading the model (0 when the cached one was used)."""

    def time_text(self) -> str:
        """``"0.84 s"``, or ``"0.84 s + 1.2 s loading the model"`` when the model was loaded."""
        load = f" + {self.load_seconds:.1f} s loading the model" if self.load_seconds else ""
        return f"{self.seconds:.2f} s{load}"

    def summary(self) -> str:
        """What was shown, by group: ``"3 evidence, 2 context filters shown for 'scan'."``."""
        counts = dict.fromkeys((EVIDENCE, CONTEXT, ARTEFACT), 0)
        for _, kwargs, kind in self.layers:
            if kind == "labels":
                counts[kwargs["metadata"][EVIDENCE_KEY].group] += 1
        shown = f"{counts[EVIDENCE]} evidence, {counts[CONTEXT]} context"
        if counts[ARTEFACT]:
            shown += f", {counts[ARTEFACT]} possible-artefact"
        return f"{shown} filters shown for '{self.request.scan_name}'."


def explain_job(
    request: ExplainRequest, cache: ModelCache, should_stop: Callable[[], bool] | None = None
) -> Generator[Progress, None, ExplainResult]:
    """Load (or reuse) the model, explain the scan, make the layers; yields progress, returns the result.

    Raises :class:`~napari_icnn.errors.Cancelled` between stages once ``should_stop()`` is true, and
    :class:`~napari_icnn.errors.GateDeclined` (carrying the explanation and its gate) for an ungradeable scan
    unless the request keeps it (``keep_declined``).
    """
    from napari_icnn.explain import explain
    from napari_icnn.image import FundusImage

    def stage(i: int) -> Progress:
        if should_stop is not None and should_stop():
            raise Cancelled(f"stopped before {STAGES[i]}")
        return Progress(STAGES[i], i, len(STAGES))

    yield stage(0)
    t0 = time.perf_counter()
    model, loaded = cache.get(request.model_path)
    load_seconds = time.perf_counter() - t0 if loaded else 0.0
    yield stage(1)
    t1 = time.perf_counter()
    image: Any = request.source
    if not isinstance(image, FundusImage):
        pixels = np.asarray(request.pixels)
        if pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8:
            image = FundusImage(pixels=np.ascontiguousarray(pixels), source=request.scan_name)
        else:
            image = pixels  # explain() converts RGBA and other bit depths
    expl = explain(image, model, gate=not request.keep_declined)
    yield stage(2)
    layers = evidence_layers(
        expl,
        scan=request.scan,
        top_k=request.top_k,
        threshold=request.threshold,
        heat_maps=request.heat_maps,
        show_heat_maps=request.show_heat_maps,
        placement=request.placement,
        model_path=str(request.model_path),
        source=request.source,
    )
    seconds = time.perf_counter() - t1
    yield Progress("done", len(STAGES), len(STAGES))
    return ExplainResult(request, expl, layers, seconds, load_seconds)


def check_scan(layer: Any) -> str | None:
    """Why the image layer ``layer`` cannot be explained (``None`` when it can)."""
    if layer is None:
        return "Open a colour fundus photograph first (File ▸ Open, or File ▸ Open Sample ▸ napari-icnn)."
    if getattr(layer, "multiscale", False):
        return f"'{layer.name}' is a multiscale (pyramid) image; open the photograph itself."
    if not getattr(layer, "rgb", False):
        return f"'{layer.name}' is not an RGB colour image; a fundus photograph has 3 colour channels."
    if layer.ndim != 2:
        return f"'{layer.name}' has {layer.ndim} dimensions; choose one 2-D photograph (one frame)."
    return None


def refill_layer(layer: Any, data: Any, kwargs: Mapping[str, Any]) -> None:
    """Give an existing layer the data and attributes of a layer data tuple."""
    kwargs = dict(kwargs)
    layer.metadata = kwargs.pop("metadata")
    for attr in ("scale", "translate", "rotate", "shear", "affine", "units"):
        if attr in kwargs:  # the placement first, so the data never show misplaced
            setattr(layer, attr, kwargs.pop(attr))
    layer.data = data
    for attr, value in kwargs.items():
        setattr(layer, attr, value)


# ---------------------------------------------------------------------------------- in the viewer


@dataclass(frozen=True)
class Renamed:
    """A filter renamed by :meth:`EvidenceView.rename`."""

    filter_id: int
    name: str
    """The new display name, ``"filter N · <label>"``."""
    model: Path
    """The bundle the name was saved into."""
    previous: Path
    """The bundle the evidence came from: :attr:`model` unless that is a user copy of it (the shipped
    demo model is never edited)."""

    @property
    def copied(self) -> bool:
        """Whether the name went into a user copy rather than the bundle the evidence came from."""
        from napari_icnn.bundle import same_bundle

        return not same_bundle(self.model, self.previous)


class EvidenceView:
    """The evidence of the last explained scan in ``viewer`` (a napari viewer or viewer model).

    ``on_region_visible(filter_id, visible)`` is called when a region layer of the shown scan is shown
    or hidden in napari's layer list, so that a legend can follow.
    """

    def __init__(self, viewer: Any, on_region_visible: Callable[[int, bool], None] | None = None):
        self.viewer = viewer
        self.on_region_visible = on_region_visible
        self.shown_scan: str | None = None
        """:func:`~napari_icnn.layer_data.scan_key` of the scan whose evidence is shown."""
        self.shown_model: Path | None = None
        """The bundle that evidence came from (a user copy once a filter was renamed in it)."""
        self.adding = False
        """True while layers are being added or moved in a batch: listeners may wait for the end."""
        self.side_by_side = False
        self._grid_stride: int | None = None
        self._watched: set[int] = set()

    def scan(self, key: str | None = None) -> Any:
        """The image layer whose key is ``key`` (default: the shown scan), or ``None``."""
        key = self.shown_scan if key is None else key
        if key is None:
            return None
        return next((la for la in self.viewer.layers if scan_key(la) == key), None)

    def evidence(self, role: str | None = None, filter_id: int | None = None) -> list[Any]:
        """The shown scan's evidence layers, bottom first, optionally of one ``role`` and one filter."""
        if self.shown_scan is None:
            return []
        out = []
        for layer in layers_of_scan(list(self.viewer.layers), self.shown_scan):
            info = _evidence(layer)
            if (role is None or info.role == role) and (filter_id is None or info.filter_id == filter_id):
                out.append(layer)
        return out

    def show(self, result: Any) -> bool:
        """Show an :class:`ExplainResult` in place of earlier evidence of its scan; ``False`` (nothing
        shown) when the scan was closed meanwhile."""
        request = result.request
        scan = self.scan(request.scan)
        if scan is None:
            return False
        self._replace(scan, result.layers)
        self.shown_scan = request.scan
        self.shown_model = request.model_path
        if self.side_by_side:
            self.arrange_side_by_side()
        return True

    def select(self, key: str | None) -> None:
        """Make ``key``'s evidence the shown one (what the legend lists, renames and side by side act on), as
        when the user chooses another scan; ``None`` or a scan without evidence shows none."""
        regions = [] if key is None else [
            la for la in layers_of_scan(list(self.viewer.layers), key) if _evidence(la).role == REGION
        ]
        model = next((info.model_path for la in regions if (info := _evidence(la)).model_path), None)
        self.shown_scan = key if regions else None
        self.shown_model = Path(model) if model else None
        if self.side_by_side:
            self._remove_underlays(keep=self.shown_scan)
            self.arrange_side_by_side()

    def _remove_underlays(self, keep: str | None = None) -> None:
        """Remove the scan copies side by side put under evidence, but ``keep``'s."""
        for layer in [la for la in self.viewer.layers if (info := evidence_info(la.metadata)) is not None
                      and info.role == UNDERLAY and info.scan != keep]:
            self.viewer.layers.remove(layer)

    def _replace(self, scan: Any, layers: list[LayerData]) -> None:
        """Show ``layers`` as the evidence of ``scan`` in place of earlier runs', on top of the list.

        napari frees the GPU resources of every removed layer with a full garbage collection
        (most of a second in a process holding a model), so the layers of the previous run are
        refilled with the new data and only the surplus is removed.
        """
        old = [
            la
            for la in layers_of_scan(list(self.viewer.layers), scan_key(scan))
            if _evidence(la).role != UNDERLAY
        ]
        pool: dict[str, list[Any]] = {"labels": [], "image": []}
        for la in old:
            pool["labels" if type(la).__name__ == "Labels" else "image"].append(la)
        self.adding = True
        try:
            for la in old:  # free the names first: napari renames a layer whose name is taken
                la.name = f"{la.name} (previous)"
            placed = []
            for data, kwargs, layer_type in layers:
                reused = pool[layer_type].pop(0) if pool.get(layer_type) else None
                if reused is None:
                    reused = getattr(self.viewer, f"add_{layer_type}")(data, **kwargs)
                else:
                    refill_layer(reused, data, kwargs)
                self._watch(reused)
                placed.append(reused)
            for la in pool["labels"] + pool["image"]:
                self.viewer.layers.remove(la)
            listed = self.viewer.layers
            for la in placed:
                listed.move(listed.index(la), len(listed))
        finally:
            self.adding = False

    def _watch(self, layer: Any) -> None:
        if id(layer) in self._watched:
            return
        self._watched.add(id(layer))
        layer.events.visible.connect(lambda e, la=layer: self._on_visible(la))

    def _on_visible(self, layer: Any) -> None:
        info = evidence_info(layer.metadata)
        if self.on_region_visible is None or info is None:
            return
        if info.role == REGION and info.scan == self.shown_scan and info.filter_id is not None:
            self.on_region_visible(info.filter_id, bool(layer.visible))

    # ------------------------------------------------------------------ legend

    def legend_rows(self) -> tuple[list[ShownFilter], dict[int, bool]]:
        """The shown filters in layer-list order (top first) and whether each one's region is visible."""
        if self.shown_scan is None:
            return [], {}
        rows = rows_in_layer_order(list(self.viewer.layers), self.shown_scan)
        visible = {
            fid: bool(la.visible) for la in self.evidence(REGION) if (fid := _evidence(la).filter_id) is not None
        }
        return rows, visible

    def show_filter(self, filter_id: int, visible: bool, heat_maps: bool) -> None:
        """Show or hide one filter's layers (its heat map only where ``heat_maps`` are on)."""
        for layer in self.evidence(filter_id=filter_id):
            role = _evidence(layer).role
            layer.visible = visible and (role != HEAT or heat_maps)

    def set_heat_maps(self, on: bool, shown: Mapping[int, bool]) -> None:
        """Show the heat maps of the filters ``shown`` says are shown (making missing ones), or hide all."""
        if on:
            self.add_missing_heat_maps()
        for layer in self.evidence(HEAT):
            fid = _evidence(layer).filter_id
            layer.visible = on and (True if fid is None else shown.get(fid, True))

    def add_missing_heat_maps(self) -> bool:
        """Give each shown region that has none its heat map (hidden), directly below it; whether any
        was added."""
        have = {_evidence(la).filter_id for la in self.evidence(HEAT)}
        added = False
        self.adding = True
        try:
            for region in self.evidence(REGION):
                info = _evidence(region)
                if info.filter_id in have or info.explanation is None:
                    continue
                data, kwargs, _ = heat_layer(region.name, info, Placement.from_layer(region), visible=False)
                heat = self.viewer.add_image(data, **kwargs)
                listed = self.viewer.layers
                listed.move(listed.index(heat), listed.index(region))
                added = True
        finally:
            self.adding = False
        if added and self.side_by_side:
            self.arrange_side_by_side()
        return added

    # ------------------------------------------------------------------ renaming

    def region_name(self, filter_id: int) -> str | None:
        """The name of a shown filter's region layer (``None`` when it is not shown)."""
        regions = self.evidence(REGION, filter_id)
        return regions[0].name if regions else None

    def rename(self, filter_id: int, name: str) -> Renamed | None:
        """Give a shown filter a clinician's name: saved into the model (a user copy of the shipped
        demo bundle, made now if need be), shown on its layers. ``None`` when the filter is not shown.

        Raises
        ------
        IcnnError, OSError
            The name could not be saved; nothing was changed.
        """
        from napari_icnn.bundle import editable_bundle, rename_filters
        from napari_icnn.parts import filter_display_name

        regions = self.evidence(REGION, filter_id)
        if self.shown_model is None or not regions:
            return None
        info = _evidence(regions[0])
        target = editable_bundle(self.shown_model)
        rename_filters(target, {filter_id: name})
        previous, self.shown_model = self.shown_model, target
        new_name = filter_display_name(filter_id, name, info.part, info.category)
        shown_name = layer_name(new_name, info.group)
        for layer in self.evidence():  # every filter's evidence now comes from the copy (same weights)
            linfo = _evidence(layer)
            layer.metadata[EVIDENCE_KEY] = replace(linfo, model_path=str(target))
            if linfo.filter_id != filter_id:
                continue
            if linfo.role == REGION:
                layer.name = shown_name
                features = layer.features.copy()
                features["name"] = shown_name
                layer.features = features
            elif linfo.role == HEAT:
                layer.name = heat_name(shown_name)
        return Renamed(filter_id, new_name, target, previous)

    # ------------------------------------------------------------------ side by side

    @property
    def grid(self) -> Any:
        canvas = getattr(self.viewer, "canvas", None)  # napari >= 0.9; viewer.grid before
        return getattr(canvas, "grid", None) or self.viewer.grid

    def set_side_by_side(self, on: bool) -> None:
        """Arrange the scan beside its evidence, or put the grid back as it was."""
        self.side_by_side = bool(on)
        if on:
            self.arrange_side_by_side()
            return
        self._remove_underlays()
        self.grid.enabled = False
        if self._grid_stride is not None:
            self.grid.stride = self._grid_stride
            self._grid_stride = None

    def arrange_side_by_side(self) -> None:
        """Evidence over a copy of the scan in one grid cell, the scan alone in the next."""
        scan = self.scan()
        block = [la for la in self.evidence() if _evidence(la).role != UNDERLAY]
        if scan is None or not block:
            self.grid.enabled = False
            return
        underlays = self.evidence(UNDERLAY)
        if not underlays:
            info = _evidence(block[0])
            underlay = self.viewer.add_image(
                scan.data,
                name=f"{scan.name} · under evidence",
                rgb=scan.rgb,
                contrast_limits=scan.contrast_limits,
                metadata={EVIDENCE_KEY: EvidenceInfo(scan=info.scan, run=info.run, role=UNDERLAY)},
                **Placement.from_layer(scan).kwargs(),
            )
        else:
            underlay = underlays[0]
        layers = self.viewer.layers
        for la in [scan, underlay, *block]:  # one at a time: move_multiple mis-orders moves to the very end
            layers.move(layers.index(la), len(layers))
        if self._grid_stride is None:
            self._grid_stride = self.grid.stride
        # Negative stride fills cells from the top of the layer list: the block first, then the scan's cell.
        self.grid.stride = -(len(block) + 1)
        self.grid.enabled = True

