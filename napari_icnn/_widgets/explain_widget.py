"""The Explain dock widget: a fundus scan and a model in, named per-filter evidence layers out.

The widget gathers inputs (scan layer, model bundle, top-K, region threshold, heat maps), checks
them as they change (:func:`~napari_icnn.explain_view.check_scan`,
:func:`~napari_icnn.bundle.check_model`: the problem is shown next to the field and Run stays
disabled), and runs :func:`~napari_icnn.explain_view.explain_job` off the GUI thread through
:class:`~napari_icnn._widgets.jobs.JobWidget`. What happens to the viewer's layers (a re-run's layers
in place of the previous run's, heat maps, renames, side by side) is
:class:`~napari_icnn.explain_view.EvidenceView`'s; the widget fills in the result panel and the legend
(evidence, context and possible artefacts under their headings) and passes the user's changes on.

Above the result, :class:`GateBanner` says what the gate (:class:`~napari_icnn.gate.Gate`) made of the
explained scan: gradable (green), outside the model's experience (amber) or ungradeable (red: no probability,
no filter layers, and an "Explain anyway" button that keeps the prediction, marked as kept despite the gate).
The gate's outcome is also stored on the scan's image layer (metadata key :data:`GATE_KEY`) for scripts.
"""

from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.compat import isalive
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_icnn._widgets.form import (
    hbox,
    message_label,
    model_field,
    research_note,
    show_problem,
    status_label,
)
from napari_icnn._widgets.jobs import JobWidget
from napari_icnn._widgets.legend import EvidenceLegend
from napari_icnn.bundle import ModelCache, check_model, same_bundle
from napari_icnn.errors import DeclinedInput, GateDeclined, IcnnError
from napari_icnn.explain_view import STAGES, EvidenceView, ExplainRequest, check_scan, explain_job
from napari_icnn.layer_data import evidence_info, scan_key
from napari_icnn.remembered import (
    THRESHOLD_RANGE,
    TOP_K_RANGE,
    ExplainSettings,
    load_settings,
    save_settings,
)

if TYPE_CHECKING:
    import napari

    from napari_icnn.explain import Explanation
    from napari_icnn.explain_view import ExplainRequest, ExplainResult
    from napari_icnn.gate import Gate

__all__ = ["ExplainWidget", "GateBanner", "GATE_KEY", "gate_banner_text", "gate_tooltip"]

_log = logging.getLogger(__name__)

GATE_KEY = "icnn_gate"
"""Metadata key on the image layer of a scan the widget explained (or declined): the gate's outcome as JSON
(:meth:`napari_icnn.gate.Gate.to_json`), e.g. ``viewer.layers["scan"].metadata["icnn_gate"]["status"]``."""

_MEASURE_NAMES = {
    "brightness": "brightness",
    "dark_fraction": "dark share of the field",
    "bright_fraction": "clipped-white share of the field",
    "contrast": "contrast",
    "sharpness": "sharpness",
    "coverage": "share covered by artefacts",
}


def gate_banner_text(gate: Gate, kept: bool = False) -> str:
    """The banner's line for ``gate``; ``kept``: the prediction was kept although the gate declines the scan."""
    if gate.status == "ungradeable":
        reasons = "; ".join(gate.quality.reasons) or gate.message
        if kept:
            return f"Ungradeable: {reasons} — kept despite the gate; its probability and evidence may not hold"
        return f"Ungradeable: {reasons} — no probability given"
    score = ("" if gate.experience is None
             else f" (experience score {gate.experience:.2f}, limit 1.00)")
    if gate.status == "unfamiliar":
        if gate.declined and not kept:
            return f"Outside the model's experience — no probability given{score}"
        tail = " — kept despite the gate" if gate.declined else ""
        return f"Outside the model's experience — its probability may not hold{score}{tail}"
    return gate.message[:1].upper() + gate.message[1:]


def gate_tooltip(gate: Gate) -> str:
    """The quality measures (with the limits they are held to) and the experience score, one a line."""
    quality = gate.quality.to_json()
    limits = quality.get("limits", {})
    lines = ["Image quality of the field of view:"]
    for key, value in quality["measures"].items():
        bound = ""
        if f"min_{key}" in limits:
            bound = f" (gradable from {limits[f'min_{key}']:g})"
        elif f"max_{key}" in limits:
            bound = f" (gradable up to {limits[f'max_{key}']:g})"
        lines.append(f"  {_MEASURE_NAMES.get(key, key.replace('_', ' '))}: {value:.3f}{bound}")
    if gate.experience is None:
        lines.append("Experience score: not known (the model stores no statistics of its training photographs)")
    else:
        lines.append(f"Experience score: {gate.experience:.2f} (limit 1.00; above it the scan is unlike the "
                     "photographs the model was trained on)")
    return "\n".join(lines)


class GateBanner(QFrame):
    """One coloured, word-wrapped line above the result: what the gate made of the explained scan.

    Green for a gradable scan, amber for one outside the model's experience, red for an ungradeable one;
    the tooltip lists the quality measures and the experience score. While a declined scan has no
    probability, :attr:`anyway_button` offers to explain it anyway.
    """

    COLOURS = {"gradable": ("#2e7d32", "white"), "unfamiliar": ("#f9a825", "black"),
               "ungradeable": ("#b3261e", "white")}
    """Background and text colour of each gate status."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("gateBanner")
        self.label = message_label()  # word-wrapped, selectable, as tall as its text
        self.label.setVisible(True)
        self.anyway_button = QPushButton("Explain anyway")
        self.anyway_button.setToolTip(
            "Explain this scan although the gate declines it: the probability and the filter layers are "
            "shown, marked as kept despite the gate"
        )
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 5, 8, 5)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.anyway_button, 0, Qt.AlignmentFlag.AlignVCenter)
        self.gate: Gate | None = None
        self.kept = False
        self.clear()

    @property
    def status(self) -> str | None:
        """The shown gate's status (``None`` when the banner is empty)."""
        return None if self.gate is None else self.gate.status

    @property
    def offers_anyway(self) -> bool:
        """Whether the banner offers to explain the declined scan anyway."""
        return self.gate is not None and self.gate.declined and not self.kept

    def show_gate(self, gate: Gate, kept: bool = False) -> None:
        """Show ``gate``'s outcome; ``kept``: its prediction was kept although the gate declines it."""
        self.gate, self.kept = gate, kept
        background, text = self.COLOURS.get(gate.status, self.COLOURS["ungradeable"])
        self.setStyleSheet(f"QFrame#gateBanner {{ background-color: {background}; border-radius: 4px; }}")
        self.label.setStyleSheet(f"color: {text}; font-weight: bold; background: transparent;")
        self.label.setText(gate_banner_text(gate, kept))
        tip = gate_tooltip(gate)
        self.setToolTip(tip)
        self.label.setToolTip(tip)
        self.anyway_button.setVisible(self.offers_anyway)
        self.setVisible(True)

    def clear(self) -> None:
        """No gate to show (no scan explained yet, or another scan or model chosen)."""
        self.gate, self.kept = None, False
        self.label.setText("")
        self.setToolTip("")
        self.label.setToolTip("")
        self.anyway_button.setVisible(False)
        self.setVisible(False)


@dataclass(frozen=True)
class _Outcome:
    """What the result panel shows for one explained scan: its result, or the verdict the gate withheld."""

    request: ExplainRequest
    explanation: Explanation
    result: ExplainResult | None
    """Without its layers (they hold the maps); ``None`` where the gate withheld the verdict."""
    summary: str = ""
    """What was shown, by group (:meth:`ExplainResult.summary`)."""


class ExplainWidget(JobWidget):
    """Explain a fundus scan with an interpretable CNN: one named Labels layer per filter.

    Parameters
    ----------
    napari_viewer
        The viewer whose image layers are offered and to which the evidence is added.
    """

    JOB_NAME = "Explain"

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(napari_viewer, parent)
        self._cache = ModelCache()
        self.view = EvidenceView(napari_viewer, on_region_visible=self._on_region_visible)
        self._watched_scans: set[int] = set()
        self._request: ExplainRequest | None = None
        """The last run's request (a declined scan's error does not name its scan)."""
        self._gate_for: tuple[str, Path] | None = None
        """The scan key and model of the gate the banner shows: another choice clears it."""
        self._outcomes: dict[str, _Outcome] = {}
        """The last outcome of each open scan explained, by scan key: the panel follows the chosen scan."""
        self._settings = load_settings()
        self._build()
        self._load_settings_into_fields()
        self._connect()
        self._refresh_scans()

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
        self.progress.setRange(0, len(STAGES))
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(6)
        self.progress.setVisible(False)
        root.addWidget(self.progress)
        self.status = status_label()
        root.addWidget(self.status)
        self.gate_banner = GateBanner()
        root.addWidget(self.gate_banner)

        self.results_box = results = QGroupBox("Result")
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
        # A closed dock must not be called back by the viewer it leaves behind. The viewer holds a plain
        # function, not the widget's method: napari compares a bound method's object with its other callbacks'
        # when disconnecting, and a widget whose Qt object is already deleted cannot be compared.
        widget = weakref.ref(self)

        def on_layers_changed(event: Any = None) -> None:
            w = widget()
            if w is not None and isalive(w):
                w._on_layers_changed(event)

        emitters = (events.inserted, events.removed, events.moved)
        for emitter in emitters:
            emitter.connect(on_layers_changed)
        self.destroyed.connect(lambda *_: [emitter.disconnect(on_layers_changed) for emitter in emitters])
        self.scan_combo.currentIndexChanged.connect(lambda _: self._on_scan_chosen())
        self.model_edit.textChanged.connect(lambda _: self._on_setting_changed())
        self.top_k_spin.valueChanged.connect(lambda _: self._on_setting_changed())
        self.threshold_spin.valueChanged.connect(lambda _: self._on_setting_changed())
        self.heat_check.toggled.connect(self._on_heat_toggled)
        self.side_check.toggled.connect(self.view.set_side_by_side)
        self.run_button.clicked.connect(self.run)
        self.gate_banner.anyway_button.clicked.connect(self.explain_anyway)
        self.legend.renameRequested.connect(self.rename_filter)
        self.legend.visibilityToggled.connect(
            lambda fid, visible: self.view.show_filter(fid, visible, self.heat_check.isChecked())
        )

    # ------------------------------------------------------------------ inputs

    @property
    def scan_layer(self) -> Any:
        """The chosen image layer (``None`` when there is none)."""
        key = self.scan_combo.currentData()
        return None if key is None else self.view.scan(key)

    def _scan_candidates(self) -> list[Any]:
        from napari.layers import Image

        return [
            la for la in self.viewer.layers if isinstance(la, Image) and evidence_info(la.metadata) is None
        ]

    def _refresh_scans(self, prefer: Any = None) -> None:
        """Re-list the image layers, keeping the choice (or choosing ``prefer``, a layer just opened)."""
        chosen = self.scan_combo.currentData()
        current = scan_key(prefer) if prefer is not None else chosen
        candidates = self._scan_candidates()
        self.scan_combo.blockSignals(True)
        self.scan_combo.clear()
        for layer in candidates:
            key = scan_key(layer)
            self.scan_combo.addItem(layer.name, key)
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
        open_keys = set(keys)
        closed = [key for key in self._outcomes if key not in open_keys]
        for key in closed:
            del self._outcomes[key]
        if closed or self.scan_combo.currentData() != chosen:
            self._show_outcome()
        self.validate()

    def _rename_scan_item(self, key: str) -> None:
        i = self.scan_combo.findData(key)
        layer = self.view.scan(key)
        if i >= 0 and layer is not None:
            self.scan_combo.setItemText(i, layer.name)

    def validate(self) -> bool:
        """Check the inputs, show what is wrong next to each field, enable Run only when all is well."""
        scan_problem = check_scan(self.scan_layer)
        model_problem = check_model(self.model_edit.text())
        show_problem(self.scan_combo, self.scan_message, scan_problem)
        show_problem(self.model_edit, self.model_message, model_problem)
        ok = scan_problem is None and model_problem is None
        self.run_button.setEnabled(ok and not self._running)
        self.gate_banner.anyway_button.setEnabled(ok and not self._running)
        self._follow_choice()
        return ok

    def _follow_choice(self) -> None:
        """Clear the gate banner once another scan or model is chosen: it spoke of the previous one."""
        if self._gate_for is None:
            return
        scan, model = self._gate_for
        if self.scan_combo.currentData() != scan or not same_bundle(self.model_edit.text().strip(), model):
            self._gate_for = None
            self.gate_banner.clear()

    def _on_setting_changed(self) -> None:
        self.validate()
        self._remember()

    def _on_scan_chosen(self) -> None:
        self._show_outcome()
        self.validate()

    def _remember(self) -> None:
        from napari_icnn.bundle import default_bundle_path

        text = self.model_edit.text().strip()
        same_as_default = bool(text) and same_bundle(text, default_bundle_path())
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
        if self.view.adding:  # one refresh after the whole batch, not one per layer
            return
        added = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
        opened = added if added is not None and added in self._scan_candidates() else None
        self._refresh_scans(prefer=opened)
        self._refresh_legend()

    # ------------------------------------------------------------------ running

    def set_model_path(self, path: str | os.PathLike[str]) -> None:
        """Use the bundle at ``path`` for the next explanation (checked and remembered like a typed path)."""
        self.model_edit.setText(str(path))

    def run(self) -> Any:
        """Start explaining the chosen scan in the background; returns the worker (``None`` if not started).

        A scan the gate declines (ungradeable) gets no probability and no layers: the banner says why and
        offers :meth:`explain_anyway`."""
        return self._explain(keep_declined=False)

    def explain_anyway(self) -> Any:
        """Explain the chosen scan even where the gate declines it: its probability and layers are shown, the
        banner saying they were kept despite the gate. Returns the worker (``None`` if not started)."""
        return self._explain(keep_declined=True)

    def _explain(self, keep_declined: bool) -> Any:
        if self._running or not self.validate():
            return None
        layer = self.scan_layer
        request = ExplainRequest.of_layer(
            layer,
            self.viewer.layers,
            model_path=Path(self.model_edit.text().strip()).expanduser(),
            top_k=int(self.top_k_spin.value()),
            threshold=float(self.threshold_spin.value()),
            heat_maps=self.heat_check.isChecked(),
            keep_declined=keep_declined,
        )
        self._request = request
        text = f"Explaining '{layer.name}'{' anyway' if keep_declined else ''}…"
        return self._start(explain_job, request, self._cache, self._stop.is_set, text=text)

    def _show_running(self, running: bool) -> None:
        self.progress.setVisible(running)
        self.run_button.setText("Explaining…" if running else "Explain")

    def _report_failure(self, err: BaseException) -> None:
        if isinstance(err, GateDeclined) and self._show_declined(err):
            return
        if not isinstance(err, DeclinedInput):
            super()._report_failure(err)
            return
        from napari.utils.notifications import show_warning

        show_warning(f"Explain declined the scan: {err}")
        self.status.setText("The scan was declined (see the notification).")

    def _show_declined(self, err: GateDeclined) -> bool:
        """The gate withheld the verdict: the banner says why, the result holds no probability, no layers are
        added. ``False`` when the error does not carry the gate (then it is reported as any declined scan)."""
        expl: Any = err.explanation
        gate = getattr(expl, "gate", None)
        request = self._request
        if gate is None or request is None:
            return False
        if self.view.scan(request.scan) is None:  # closed while it ran: nothing to show or keep
            self.status.setText("")
            return True
        self._outcomes[request.scan] = _Outcome(request, expl, None)
        self._store_gate(request, gate)
        self._show_outcome()
        if request.scan != self.scan_combo.currentData():  # another scan was chosen while it ran
            self.status.setText(f"The gate declined '{request.scan_name}': choose it to see why.")
        return True

    def _store_gate(self, request: ExplainRequest, gate: Gate | None) -> None:
        """Keep the gate's outcome on the scan's image layer, for scripts, whichever scan is chosen."""
        layer = self.view.scan(request.scan)
        if layer is not None and gate is not None:
            layer.metadata[GATE_KEY] = gate.to_json()

    def _show_gate(self, request: ExplainRequest, gate: Gate, kept: bool) -> None:
        """Show ``gate`` in the banner."""
        self._gate_for = (request.scan, request.model_path)
        self.gate_banner.show_gate(gate, kept=kept)
        self._follow_choice()  # another scan or model may have been chosen while it ran

    def _show_withheld(self, expl: Explanation, gate: Gate) -> None:
        why = "ungradeable scan" if gate.status == "ungradeable" else "outside the model's experience"
        self.decision_label.setText(f"Withheld ({why})")
        self.probability_label.setText("— (not given)")
        self.lesion_types_label.setText("—")
        self.model_label.setText(f"{expl.model_name} {expl.model_version}")
        self.time_label.setText("—")
        self.legend.set_basis("")
        self.legend.set_silent("")

    def _on_returned(self, result: ExplainResult) -> None:
        from napari.utils.notifications import show_warning

        super()._on_returned(result)
        self.status.setText("")
        if not self.view.show(result):
            show_warning(
                f"'{result.request.scan_name}' was closed while it was being explained; nothing was added."
            )
            return
        request = result.request
        self._outcomes[request.scan] = _Outcome(
            request, result.explanation, replace(result, layers=[]), result.summary()
        )
        self._store_gate(request, result.explanation.gate)
        self._refresh_scans()
        self._show_outcome()
        if request.scan != self.scan_combo.currentData():  # another scan was chosen while it ran
            self.status.setText(f"{result.summary()} Choose '{request.scan_name}' to see its result.")

    def _show_outcome(self) -> None:
        """Fill the result panel, the gate banner and the legend with the chosen scan's last outcome, or empty
        them when it has none: the panel always speaks of the scan chosen above it."""
        key = self.scan_combo.currentData()
        outcome = self._outcomes.get(key) if key is not None else None
        if outcome is None or outcome.result is None:
            self.view.select(None)
            self._refresh_legend(force=True)
        if outcome is None:
            self._clear_result()
            return
        request, expl = outcome.request, outcome.explanation
        self.results_box.setTitle(f"Result: {request.scan_name}")
        gate = expl.gate
        if outcome.result is None and gate is not None:
            self._show_gate(request, gate, kept=False)
            self._show_withheld(expl, gate)
            self.model_label.setToolTip("")
            self.status.setText(f"No probability and no filter layers for '{request.scan_name}' (see the banner "
                                "below).")
            return
        if outcome.result is None:
            return
        self.view.select(key)
        self._show_result(outcome.result, outcome.summary)
        if gate is None:
            self._gate_for = None
            self.gate_banner.clear()
        else:  # a declined gate here: the scan was explained anyway, its prediction kept on request
            self._show_gate(request, gate, kept=gate.declined)
        self._refresh_legend(force=True)

    def _clear_result(self) -> None:
        self.results_box.setTitle("Result")
        for label in (self.decision_label, self.probability_label, self.lesion_types_label, self.model_label,
                      self.time_label):
            label.setText("—")
        self.model_label.setToolTip("")
        self.status.setText("")
        self.legend.set_basis("")
        self.legend.set_silent("")

    def _show_result(self, result: ExplainResult, summary: str) -> None:
        from napari_icnn.explain import lesion_type_summary, silent_summary

        expl = result.explanation
        self.decision_label.setText(expl.predicted_class)
        cls_name = expl.class_names[expl.class_index]
        self.probability_label.setText(f"{expl.probability:.3f} ({cls_name}; threshold {expl.threshold:g})")
        self.lesion_types_label.setText(lesion_type_summary(expl))
        self.model_label.setText(f"{expl.model_name} {expl.model_version}")
        self.model_label.setToolTip(f"{result.request.model_path}\nSHA-256 {expl.model_sha256}")
        self.time_label.setText(result.time_text())
        self.status.setText(summary)
        self.legend.set_basis(expl.contribution_basis)
        self.legend.set_silent(silent_summary(expl))

    # ------------------------------------------------------------------ legend

    def _refresh_legend(self, force: bool = False) -> None:
        rows, visible = self.view.legend_rows()
        if force or [r.filter_id for r in rows] != list(self.legend.rows):
            self.legend.set_rows(rows, visible)

    def _on_region_visible(self, filter_id: int, visible: bool) -> None:
        self.legend.set_visible(filter_id, visible)

    def _on_heat_toggled(self, on: bool) -> None:
        self._remember()
        self.view.set_heat_maps(on, {fid: row.checkbox.isChecked() for fid, row in self.legend.rows.items()})

    def rename_filter(self, filter_id: int, name: str) -> None:
        """Give a shown filter a clinician's name: saved into the model (a user copy of the shipped
        demo bundle), shown on its layers and in the legend, used by every later explanation."""
        from napari.utils.notifications import show_error, show_info

        try:
            renamed = self.view.rename(filter_id, name)
        except (IcnnError, OSError) as err:
            show_error(f"Could not rename filter {filter_id}: {err}")
            self.legend.set_name(filter_id, self.view.region_name(filter_id) or "")
            return
        if renamed is None:
            return
        if renamed.copied:
            show_info(f"Filter names are saved in your copy of the model: {renamed.model}")
            if self._gate_for is not None and same_bundle(self._gate_for[1], renamed.previous):
                self._gate_for = (self._gate_for[0], Path(renamed.model))  # the same model, renamed filters
            if same_bundle(self.model_edit.text().strip(), renamed.previous):
                self.model_edit.setText(str(renamed.model))
        self.legend.set_name(filter_id, renamed.name)
