"""The Explain dock widget: a fundus scan and a model in, named per-filter evidence layers out.

The widget gathers inputs (scan layer, model bundle, top-K, region threshold, heat maps), checks
them as they change (the problem is shown next to the field and Run stays disabled), and runs
:func:`explain_job` off the GUI thread. The job calls :func:`napari_icnn.explain.explain` and
:func:`napari_icnn._widgets.layers.evidence_layers`; the widget only swaps the evidence layers of
that scan for the new ones, fills in the result panel and the legend, and carries out renames.
The layers come in three groups (evidence, context, possible artefacts; see
:mod:`napari_icnn._widgets.layers`), which the legend shows under their headings.

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

import logging
import os
import time
from collections.abc import Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_icnn._widgets.form import (
    HINT_STYLE,
    hbox,
    message_label,
    model_field,
    research_note,
    show_problem,
)
from napari_icnn._widgets.jobs import JobFailed, guarded, new_worker, notify_failure
from napari_icnn._widgets.layers import (
    EVIDENCE_KEY,
    HEAT,
    REGION,
    UNDERLAY,
    EvidenceInfo,
    LayerData,
    Placement,
    evidence_info,
    evidence_layers,
    heat_layer,
    heat_name,
    layer_name,
    layers_of_scan,
    rows_in_layer_order,
    scan_key,
)
from napari_icnn._widgets.legend import EvidenceLegend
from napari_icnn._widgets.settings import (
    THRESHOLD_RANGE,
    TOP_K_RANGE,
    ExplainSettings,
    load_settings,
    save_settings,
)
from napari_icnn.bundle import ModelCache, check_model
from napari_icnn.errors import DeclinedInput, IcnnError
from napari_icnn.parts import filter_display_name
from napari_icnn.progress import Progress
from napari_icnn.roles import ARTEFACT, CONTEXT, EVIDENCE

if TYPE_CHECKING:
    import napari

    from napari_icnn.explain import Explanation

__all__ = [
    "ExplainWidget",
    "ExplainRequest",
    "ExplainResult",
    "explain_job",
    "check_scan",
]

_log = logging.getLogger(__name__)
_SOURCE_KEY = "icnn_source"  # napari_icnn._reader.SOURCE_KEY, without importing the DICOM reader here
_STAGES = ("loading the model", "explaining", "making layers")


# ---------------------------------------------------------------------------------- the job (no Qt)


@dataclass(frozen=True)
class ExplainRequest:
    """Everything one Explain run needs, gathered on the GUI thread."""

    pixels: np.ndarray
    scan_name: str
    scan: str
    """:func:`~napari_icnn._widgets.layers.scan_key` of the scan layer."""
    model_path: Path
    top_k: int
    threshold: float
    heat_maps: bool
    """Make heat-map layers (they are shown only when ``show_heat_maps``)."""
    placement: Placement
    source: Any = None
    """The scan's FundusImage when its layer carries one (read from DICOM, or a sample)."""
    show_heat_maps: bool | None = None


@dataclass(frozen=True)
class ExplainResult:
    request: ExplainRequest
    explanation: Explanation
    layers: list[LayerData]
    seconds: float
    """Time of the explanation itself (the model was loaded or taken from the cache before)."""
    load_seconds: float
    """Time spent loading the model (0 when the cached one was used)."""


def explain_job(request: ExplainRequest, cache: ModelCache) -> Generator[Progress, None, ExplainResult]:
    """Load (or reuse) the model, explain the scan, make the layers; yields progress, returns the result."""
    from napari_icnn.data.fundus_image import FundusImage
    from napari_icnn.explain import explain

    total = len(_STAGES)
    yield Progress(_STAGES[0], 0, total)
    t0 = time.perf_counter()
    model, loaded = cache.get(request.model_path)
    load_seconds = time.perf_counter() - t0 if loaded else 0.0
    yield Progress(_STAGES[1], 1, total)
    t1 = time.perf_counter()
    image: Any = request.source
    if not isinstance(image, FundusImage):
        pixels = np.asarray(request.pixels)
        if pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8:
            image = FundusImage(pixels=np.ascontiguousarray(pixels), source=request.scan_name)
        else:
            image = pixels  # explain() converts RGBA and other bit depths
    expl = explain(image, model)
    yield Progress(_STAGES[2], 2, total)
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
    yield Progress("done", total, total)
    return ExplainResult(request, expl, layers, seconds, load_seconds)


def _guarded_job(request: ExplainRequest, cache: ModelCache) -> Generator[Progress, None, ExplainResult]:
    return (yield from guarded(explain_job(request, cache)))


def check_scan(layer: Any) -> str | None:
    """Why ``layer`` cannot be explained (``None`` when it can)."""
    if layer is None:
        return "Open a colour fundus photograph first (File ▸ Open, or File ▸ Open Sample ▸ napari-icnn)."
    if getattr(layer, "multiscale", False):
        return f"'{layer.name}' is a multiscale (pyramid) image; open the photograph itself."
    if not getattr(layer, "rgb", False):
        return f"'{layer.name}' is not an RGB colour image; a fundus photograph has 3 colour channels."
    if layer.ndim != 2:
        return f"'{layer.name}' has {layer.ndim} dimensions; choose one 2-D photograph (one frame)."
    return None


# ---------------------------------------------------------------------------------- the widget


class ExplainWidget(QWidget):
    """Explain a fundus scan with an interpretable CNN: one named Labels layer per filter.

    Parameters
    ----------
    napari_viewer
        The viewer whose image layers are offered and to which the evidence is added.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._cache = ModelCache()
        self._worker: Any = None
        self._running = False
        self._shown_scan: str | None = None
        self._shown_model: Path | None = None
        self._grid_stride: int | None = None
        self._watched_scans: set[int] = set()
        self._watched_evidence: set[int] = set()
        self._adding = False
        self._settings = load_settings()
        self._build()
        self._load_settings_into_fields()
        self._connect()
        self._refresh_scans()
        self._validate()

    # ------------------------------------------------------------------ construction

    def _build(self) -> None:
        root = QVBoxLayout(self)
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)

        self.scan_combo = QComboBox()
        self.scan_combo.setToolTip("The colour fundus photograph to explain (an RGB image layer)")
        self.scan_message = message_label()
        form.addRow("Scan", self.scan_combo)
        form.addRow("", self.scan_message)

        self.model_edit, self.model_browse, self.model_default, self.model_message = model_field(
            form, self, "Use the default model (the demo bundle, with your filter names)"
        )

        self.top_k_spin = QSpinBox()
        self.top_k_spin.setRange(*TOP_K_RANGE)
        self.top_k_spin.setToolTip(
            "How many filters to show of each group (evidence, anatomy context, possible artefacts), "
            "by contribution to the decision"
        )
        form.addRow("Filters per group", self.top_k_spin)

        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(*THRESHOLD_RANGE)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setSuffix(" × peak")
        self.threshold_spin.setToolTip(
            "A filter's region: where its map exceeds this fraction of its own peak"
        )
        form.addRow("Region threshold", self.threshold_spin)

        self.heat_check = QCheckBox("Show heat maps")
        self.heat_check.setToolTip("Each filter's map as an additive colour layer under its region")
        self.side_check = QCheckBox("Side by side")
        self.side_check.setToolTip("The scan alone next to the scan with its evidence (napari grid mode)")
        form.addRow("", hbox(self.heat_check, self.side_check, stretch_first=False, stretch_end=True))
        root.addLayout(form)

        self.run_button = QPushButton("Explain")
        self.run_button.setToolTip("Explain the scan (runs in the background)")
        root.addWidget(self.run_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, len(_STAGES))
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(6)
        self.progress.setVisible(False)
        root.addWidget(self.progress)
        self.status = QLabel("")
        self.status.setStyleSheet(HINT_STYLE)
        root.addWidget(self.status)

        results = QGroupBox("Result")
        rform = QFormLayout(results)
        self.decision_label = QLabel("—")
        self.decision_label.setStyleSheet("font-weight: bold;")
        self.probability_label = QLabel("—")
        self.lesion_types_label = QLabel("—")
        self.lesion_types_label.setWordWrap(True)
        self.lesion_types_label.setToolTip("Presence of each lesion type as the model predicts it beside the decision "
                                           "(uncalibrated); a model trained without presence labels has none.")
        self.model_label = QLabel("—")
        self.model_label.setWordWrap(True)
        self.time_label = QLabel("—")
        rform.addRow("Decision", self.decision_label)
        rform.addRow("Probability", self.probability_label)
        rform.addRow("Lesion types", self.lesion_types_label)
        rform.addRow("Model", self.model_label)
        rform.addRow("Time", self.time_label)
        rform.addRow(research_note())
        root.addWidget(results)

        evidence = QGroupBox("Filters")
        ev_layout = QVBoxLayout(evidence)
        self.legend = EvidenceLegend()
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(self.legend)
        ev_layout.addWidget(scroll)
        root.addWidget(evidence, 1)

    def _load_settings_into_fields(self) -> None:
        from napari_icnn.bundle import default_bundle_path

        s = self._settings
        self.model_edit.setText(s.model_path or str(default_bundle_path()))
        self.top_k_spin.setValue(s.top_k)
        self.threshold_spin.setValue(s.threshold)
        self.heat_check.setChecked(s.heat_maps)

    def _connect(self) -> None:
        events = self.viewer.layers.events
        handlers = [(e, self._on_layers_changed) for e in (events.inserted, events.removed, events.moved)]
        for emitter, handler in handlers:
            emitter.connect(handler)
        # A closed dock must not be called back by the viewer it leaves behind.
        self.destroyed.connect(lambda *_: [emitter.disconnect(handler) for emitter, handler in handlers])
        self.scan_combo.currentIndexChanged.connect(lambda _: self._validate())
        self.model_edit.textChanged.connect(lambda _: self._on_setting_changed())
        self.top_k_spin.valueChanged.connect(lambda _: self._on_setting_changed())
        self.threshold_spin.valueChanged.connect(lambda _: self._on_setting_changed())
        self.heat_check.toggled.connect(self._on_heat_toggled)
        self.side_check.toggled.connect(self._on_side_by_side)
        self.run_button.clicked.connect(self.run)
        self.legend.renameRequested.connect(self.rename_filter)
        self.legend.visibilityToggled.connect(self._on_legend_visibility)

    # ------------------------------------------------------------------ inputs

    @property
    def scan_layer(self) -> Any:
        """The chosen image layer (``None`` when there is none)."""
        name = self.scan_combo.currentData()
        if name is None:
            return None
        return next((layer for layer in self.viewer.layers if scan_key(layer) == name), None)

    def _scan_candidates(self) -> list[Any]:
        from napari.layers import Image

        return [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, Image) and evidence_info(layer.metadata) is None
        ]

    def _refresh_scans(self, prefer: Any = None) -> None:
        """Re-list the image layers, keeping the choice (or choosing ``prefer``, a layer just opened)."""
        current = scan_key(prefer) if prefer is not None else self.scan_combo.currentData()
        candidates = self._scan_candidates()
        self.scan_combo.blockSignals(True)
        self.scan_combo.clear()
        for layer in candidates:
            self.scan_combo.addItem(layer.name, scan_key(layer))
            key = scan_key(layer)
            if id(layer) not in self._watched_scans:
                self._watched_scans.add(id(layer))
                layer.events.name.connect(lambda e, k=key: self._rename_scan_item(k))
        keys = [scan_key(layer) for layer in candidates]
        if current in keys:
            self.scan_combo.setCurrentIndex(keys.index(current))
        elif candidates:
            # Prefer the most recently added RGB image: what the user just opened.
            rgb = [i for i, layer in enumerate(candidates) if getattr(layer, "rgb", False)]
            self.scan_combo.setCurrentIndex(rgb[-1] if rgb else len(candidates) - 1)
        self.scan_combo.blockSignals(False)
        self._validate()

    def _rename_scan_item(self, key: str) -> None:
        i = self.scan_combo.findData(key)
        layer = next((la for la in self.viewer.layers if scan_key(la) == key), None)
        if i >= 0 and layer is not None:
            self.scan_combo.setItemText(i, layer.name)

    def _validate(self) -> bool:
        """Check the inputs, show what is wrong next to each field, enable Run only when all is well."""
        scan_problem = check_scan(self.scan_layer)
        model_problem = check_model(self.model_edit.text())
        show_problem(self.scan_combo, self.scan_message, scan_problem)
        show_problem(self.model_edit, self.model_message, model_problem)
        ok = scan_problem is None and model_problem is None
        self.run_button.setEnabled(ok and not self._running)
        return ok

    def _on_setting_changed(self) -> None:
        self._validate()
        self._remember()

    def _remember(self) -> None:
        from napari_icnn.bundle import default_bundle_path

        text = self.model_edit.text().strip()
        same_as_default = bool(text) and _same_path(text, default_bundle_path())
        try:
            self._settings = ExplainSettings(
                model_path=None if same_as_default or not text else text,
                top_k=int(self.top_k_spin.value()),
                threshold=round(float(self.threshold_spin.value()), 4),
                heat_maps=self.heat_check.isChecked(),
            )
        except ValueError as err:  # a value the spin boxes should not allow; keep the last good one
            _log.debug("not remembering Explain settings: %s", err)
            return
        save_settings(self._settings)

    def _on_layers_changed(self, event: Any = None) -> None:
        if self._adding:  # one refresh after the whole batch, not one per layer
            return
        added = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
        opened = added if added is not None and added in self._scan_candidates() else None
        self._refresh_scans(prefer=opened)
        self._refresh_legend()

    # ------------------------------------------------------------------ running

    @property
    def running(self) -> bool:
        return self._running

    def set_model_path(self, path: str | os.PathLike[str]) -> None:
        """Use the bundle at ``path`` for the next explanation (checked and remembered like a typed path)."""
        self.model_edit.setText(str(path))

    def run(self) -> Any:
        """Start explaining the chosen scan in the background; returns the worker (``None`` if not started)."""
        if self._running or not self._validate():
            return None
        layer = self.scan_layer
        source = layer.metadata.get(_SOURCE_KEY)
        pixels = layer.data
        if source is not None and getattr(source, "shape", None) != tuple(np.shape(pixels)[:2]):
            source = None  # the layer's data were replaced since it was read
        key = scan_key(layer)
        # Heat maps are made only once asked for (each layer costs napari time to create); once made
        # they are kept, hidden, so that a re-run refills them instead of removing them.
        had_heat = any(
            evidence_info(la.metadata).role == HEAT for la in layers_of_scan(list(self.viewer.layers), key)
        )
        request = ExplainRequest(
            pixels=pixels,
            scan_name=layer.name,
            scan=key,
            model_path=Path(self.model_edit.text().strip()).expanduser(),
            top_k=int(self.top_k_spin.value()),
            threshold=float(self.threshold_spin.value()),
            heat_maps=self.heat_check.isChecked() or had_heat,
            show_heat_maps=self.heat_check.isChecked(),
            placement=Placement.from_layer(layer),
            source=source,
        )
        self._set_running(True, f"Explaining '{layer.name}'…")
        self._worker = new_worker(
            _guarded_job,
            request,
            self._cache,
            yielded=self._on_progress,
            returned=self._on_result,
            errored=self._on_error,
            finished=self._on_finished,
        )
        self._worker.start()
        return self._worker

    def _set_running(self, running: bool, text: str = "") -> None:
        self._running = running
        self.progress.setVisible(running)
        self.progress.setValue(0)
        self.status.setText(text)
        self.run_button.setText("Explaining…" if running else "Explain")
        self._validate()

    def _on_progress(self, event: Any) -> None:
        if isinstance(event, Progress):
            self.progress.setValue(event.done)
            if event.stage != "done":
                self.status.setText(f"{event.stage.capitalize()}…")

    def _on_finished(self) -> None:
        self._worker = None
        if self._running:
            self._set_running(False, self.status.text())

    def _on_error(self, err: BaseException) -> None:
        from napari.utils.notifications import show_warning

        self._set_running(False, "")
        if isinstance(err, JobFailed):
            err = err.error
        if isinstance(err, DeclinedInput):
            show_warning(f"Explain declined the scan: {err}")
            self.status.setText("The scan was declined (see the notification).")
        else:
            notify_failure("Explain", err, _log)
            self.status.setText("Explain failed (see the notification).")

    def _on_result(self, result: ExplainResult) -> None:
        from napari.utils.notifications import show_warning

        request = result.request
        scan = next((la for la in self.viewer.layers if scan_key(la) == request.scan), None)
        self._set_running(False, "")
        if scan is None:
            show_warning(f"'{request.scan_name}' was closed while it was being explained; nothing was added.")
            return
        self._replace_evidence(scan, result.layers)
        self._shown_scan = request.scan
        self._shown_model = request.model_path
        self._show_result(result)
        self._refresh_scans()
        self._refresh_legend(force=True)
        if self.side_check.isChecked():
            self._arrange_side_by_side()

    def _replace_evidence(self, scan: Any, layers: list[LayerData]) -> None:
        """Show ``layers`` as the evidence of ``scan`` in place of earlier runs', on top of the list.

        napari frees the GPU resources of every removed layer with a full garbage collection
        (most of a second in a process holding a model), so the layers of the previous run are
        refilled with the new data and only the surplus is removed.
        """
        key = scan_key(scan)
        old = [
            la
            for la in layers_of_scan(list(self.viewer.layers), key)
            if evidence_info(la.metadata).role != UNDERLAY
        ]
        pool: dict[str, list[Any]] = {"labels": [], "image": []}
        for la in old:
            pool["labels" if type(la).__name__ == "Labels" else "image"].append(la)
        self._adding = True
        try:
            for la in old:  # free the names first: napari renames a layer whose name is taken
                la.name = f"{la.name} (previous)"
            placed = []
            for data, kwargs, layer_type in layers:
                reused = pool[layer_type].pop(0) if pool.get(layer_type) else None
                if reused is None:
                    reused = getattr(self.viewer, f"add_{layer_type}")(data, **kwargs)
                else:
                    _refill(reused, data, kwargs)
                self._watch_evidence(reused)
                placed.append(reused)
            for la in pool["labels"] + pool["image"]:
                self.viewer.layers.remove(la)
            listed = self.viewer.layers
            for la in placed:
                listed.move(listed.index(la), len(listed))
        finally:
            self._adding = False

    def _watch_evidence(self, layer: Any) -> None:
        if id(layer) in self._watched_evidence:
            return
        self._watched_evidence.add(id(layer))
        layer.events.visible.connect(lambda e, la=layer: self._on_evidence_visible(la))

    def _on_evidence_visible(self, layer: Any) -> None:
        info = evidence_info(layer.metadata)
        if info is not None and info.role == REGION and info.scan == self._shown_scan:
            self.legend.set_visible(info.filter_id, bool(layer.visible))

    def _show_result(self, result: ExplainResult) -> None:
        expl = result.explanation
        self.decision_label.setText(expl.predicted_class)
        cls_name = expl.class_names[expl.class_index]
        self.probability_label.setText(f"{expl.probability:.3f} ({cls_name}; threshold {expl.threshold:g})")
        from napari_icnn.explain import lesion_type_summary

        self.lesion_types_label.setText(lesion_type_summary(expl))
        self.model_label.setText(f"{expl.model_name} {expl.model_version}")
        self.model_label.setToolTip(f"{result.request.model_path}\nSHA-256 {expl.model_sha256}")
        load = f" + {result.load_seconds:.1f} s loading the model" if result.load_seconds else ""
        self.time_label.setText(f"{result.seconds:.2f} s{load}")
        counts = dict.fromkeys((EVIDENCE, CONTEXT, ARTEFACT), 0)
        for _, kwargs, kind in result.layers:
            if kind == "labels":
                counts[kwargs["metadata"][EVIDENCE_KEY].group] += 1
        shown = f"{counts[EVIDENCE]} evidence, {counts[CONTEXT]} context"
        if counts[ARTEFACT]:
            shown += f", {counts[ARTEFACT]} possible-artefact"
        self.status.setText(f"{shown} filters shown for '{result.request.scan_name}'.")
        self.legend.set_basis(expl.contribution_basis)

    # ------------------------------------------------------------------ legend

    def _evidence(self, role: str | None = None, filter_id: int | None = None) -> list[Any]:
        if self._shown_scan is None:
            return []
        out = []
        for layer in layers_of_scan(list(self.viewer.layers), self._shown_scan):
            info = evidence_info(layer.metadata)
            if (role is None or info.role == role) and (filter_id is None or info.filter_id == filter_id):
                out.append(layer)
        return out

    def _refresh_legend(self, force: bool = False) -> None:
        if self._shown_scan is None:
            return
        rows = rows_in_layer_order(list(self.viewer.layers), self._shown_scan)
        if not force and [r.filter_id for r in rows] == list(self.legend.rows):
            return
        visible = {
            info.filter_id: bool(la.visible)
            for la in self._evidence(REGION)
            if (info := evidence_info(la.metadata)) is not None
        }
        self.legend.set_rows(rows, visible)

    def _on_legend_visibility(self, filter_id: int, visible: bool) -> None:
        for layer in self._evidence(filter_id=filter_id):
            role = evidence_info(layer.metadata).role
            layer.visible = visible and (role != HEAT or self.heat_check.isChecked())

    def _on_heat_toggled(self, on: bool) -> None:
        self._remember()
        if on:
            self._add_missing_heat_maps()
        for layer in self._evidence(HEAT):
            fid = evidence_info(layer.metadata).filter_id
            row = self.legend.rows.get(fid)
            layer.visible = on and (row is None or row.checkbox.isChecked())

    def _add_missing_heat_maps(self) -> None:
        """Give each shown region that has none its heat map, directly below it."""
        have = {evidence_info(la.metadata).filter_id for la in self._evidence(HEAT)}
        added = False
        self._adding = True
        try:
            for region in self._evidence(REGION):
                info = evidence_info(region.metadata)
                if info.filter_id in have or info.explanation is None:
                    continue
                data, kwargs, _ = heat_layer(region.name, info, Placement.from_layer(region), visible=False)
                heat = self.viewer.add_image(data, **kwargs)
                listed = self.viewer.layers
                listed.move(listed.index(heat), listed.index(region))
                added = True
        finally:
            self._adding = False
        if added and self.side_check.isChecked():
            self._arrange_side_by_side()

    def rename_filter(self, filter_id: int, name: str) -> None:
        """Give a shown filter a clinician's name: saved into the model (a user copy of the shipped
        demo bundle), shown on its layers and in the legend, used by every later explanation."""
        from napari.utils.notifications import show_error, show_info

        from napari_icnn.bundle import editable_bundle, rename_filters

        regions = self._evidence(REGION, filter_id)
        if self._shown_model is None or not regions:
            return
        info = evidence_info(regions[0].metadata)
        old_name = regions[0].name
        try:
            target = editable_bundle(self._shown_model)
            rename_filters(target, {filter_id: name})
        except (IcnnError, OSError) as err:
            show_error(f"Could not rename filter {filter_id}: {err}")
            self.legend.set_name(filter_id, old_name)
            return
        if not _same_path(target, self._shown_model):
            show_info(f"Filter names are saved in your copy of the model: {target}")
            if _same_path(self.model_edit.text().strip(), self._shown_model):
                self.model_edit.setText(str(target))
        self._shown_model = target
        new_name = filter_display_name(filter_id, name, info.part, info.category)
        shown_name = layer_name(new_name, info.group)
        for layer in self._evidence(filter_id=filter_id):
            linfo = evidence_info(layer.metadata)
            layer.metadata[EVIDENCE_KEY] = replace(linfo, model_path=str(target))
            if linfo.role == REGION:
                layer.name = shown_name
                features = layer.features.copy()
                features["name"] = shown_name
                layer.features = features
            elif linfo.role == HEAT:
                layer.name = heat_name(shown_name)
        self.legend.set_name(filter_id, new_name)

    # ------------------------------------------------------------------ side by side

    @property
    def _grid(self) -> Any:
        canvas = getattr(self.viewer, "canvas", None)  # napari >= 0.9; viewer.grid before
        return getattr(canvas, "grid", None) or self.viewer.grid

    def _on_side_by_side(self, on: bool) -> None:
        if on:
            self._arrange_side_by_side()
        else:
            for layer in self._evidence(UNDERLAY):
                self.viewer.layers.remove(layer)
            self._grid.enabled = False
            if self._grid_stride is not None:
                self._grid.stride = self._grid_stride
                self._grid_stride = None

    def _arrange_side_by_side(self) -> None:
        """Evidence over a copy of the scan in one grid cell, the scan alone in the next."""
        scan = next((la for la in self.viewer.layers if scan_key(la) == self._shown_scan), None)
        block = [la for la in self._evidence() if evidence_info(la.metadata).role != UNDERLAY]
        if scan is None or not block:
            self._grid.enabled = False
            return
        underlays = self._evidence(UNDERLAY)
        if not underlays:
            info = evidence_info(block[0].metadata)
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
        order = [scan, underlay, *block]  # block keeps its order (grouped by part)
        for la in order:  # one at a time: move_multiple mis-orders moves to the very end
            layers.move(layers.index(la), len(layers))
        if self._grid_stride is None:
            self._grid_stride = self._grid.stride
        # Negative stride fills cells from the top of the layer list: the block first, then the scan's cell.
        self._grid.stride = -(len(block) + 1)
        self._grid.enabled = True


# ---------------------------------------------------------------------------------- helpers


def _refill(layer: Any, data: Any, kwargs: dict[str, Any]) -> None:
    """Give an existing layer the data and attributes of a layer data tuple."""
    kwargs = dict(kwargs)
    layer.metadata = kwargs.pop("metadata")
    for attr in ("scale", "translate", "rotate", "shear", "affine", "units"):
        if attr in kwargs:
            setattr(layer, attr, kwargs.pop(attr))
    layer.data = data
    for attr, value in kwargs.items():
        setattr(layer, attr, value)


def _same_path(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:
        return False
