"""The gate in the Explain widget, in a real napari viewer (Xvfb): a coloured banner above the result says
whether the scan is gradable, outside the model's experience or ungradeable; an ungradeable scan gets no
probability and no filter layers until explained anyway; the banner follows the chosen scan and model; the
gate's outcome is stored on the scan's layer for scripts."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from qtpy.QtCore import Qt
from scipy import ndimage as ndi
from test_explain_widget import WAIT_MS, _evidence
from test_explain_widget import _run as _start_and_wait

from napari_icnn._widgets.explain_widget import (
    GATE_KEY,
    ExplainWidget,
    GateBanner,
    gate_banner_text,
    gate_tooltip,
)
from napari_icnn.bundle import WEIGHTS, shipped_bundle_path
from napari_icnn.data.fov import find_fov
from napari_icnn.data.synth import generate_fundus
from napari_icnn.gate import Gate
from napari_icnn.layer_data import REGION, evidence_info
from napari_icnn.quality import assess_quality

pytestmark = pytest.mark.gui
pytest_plugins = ["gui_support"]

SHIPPED = shipped_bundle_path()
needs_shipped = pytest.mark.skipif(
    not (SHIPPED / WEIGHTS).exists(),
    reason="the shipped demo bundle (napari_icnn/models/demo) is not built yet",
)


@pytest.fixture(scope="module")
def good():
    # the field of view about as wide as the gate measures it at: a 4 % blur is out of focus at any size above
    return generate_fundus(8, size=512).image


def blurred(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` out of focus: each channel blurred with a Gaussian of 4 % of the field of view's diameter."""
    sigma = 0.04 * 2 * find_fov(pixels).radius
    return np.stack([ndi.gaussian_filter(pixels[..., c], sigma) for c in range(3)], axis=-1)


@pytest.fixture
def widget(dock, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_ICNN_DATA_DIR", str(tmp_path / "data"))
    w = dock(ExplainWidget, "Explain")
    w.model_edit.setText(str(SHIPPED))
    return w


def _settled(qtbot, w) -> None:
    """Wait for the run's worker to be done with: a run started before its last signal (``finished``) is
    handled would be taken for ended by it."""
    qtbot.waitUntil(lambda: not w.running and w._worker is None, timeout=WAIT_MS)


def _run(qtbot, w, ok=True):
    worker = _start_and_wait(qtbot, w, ok)
    _settled(qtbot, w)
    return worker


def _shown(banner: GateBanner) -> bool:
    return not banner.isHidden()


def _gate_of_layers(viewer) -> Gate:
    (gate,) = {id(g): g for g in (evidence_info(la.metadata).explanation.gate for la in _evidence(viewer))}.values()
    return gate


# --------------------------------------------------------------------------- gradable


@needs_shipped
def test_a_good_scan_shows_a_green_gradable_banner_with_its_measures(qtbot, widget, good):
    viewer = widget.viewer
    banner = widget.gate_banner
    assert not _shown(banner)  # nothing explained yet
    scan = viewer.add_image(good, rgb=True, name="good")
    _run(qtbot, widget)

    assert _evidence(viewer, REGION)
    gate = _gate_of_layers(viewer)
    assert gate.status == "gradable" and gate.experience is not None and gate.experience <= 1.0
    assert _shown(banner) and banner.status == "gradable"
    assert banner.label.text() == gate_banner_text(gate) == f"Gradable · experience score {gate.experience:.2f} (limit 1.00)"
    assert banner.label.wordWrap()
    assert GateBanner.COLOURS["gradable"][0] in banner.styleSheet()
    assert banner.anyway_button.isHidden()
    tip = banner.toolTip()
    assert tip == gate_tooltip(gate)
    assert "brightness" in tip and "sharpness" in tip and f"Experience score: {gate.experience:.2f}" in tip
    assert widget.probability_label.text()[0].isdigit()
    # the gate's outcome is on the scan's layer, as JSON a script can read
    assert scan.metadata[GATE_KEY] == gate.to_json()
    assert json.loads(json.dumps(scan.metadata[GATE_KEY]))["status"] == "gradable"


# --------------------------------------------------------------------------- ungradeable


@needs_shipped
def test_a_blurred_scan_is_ungradeable_without_probability_or_layers_until_explained_anyway(
    qtbot, widget, good, notes
):
    viewer = widget.viewer
    banner = widget.gate_banner
    scan = viewer.add_image(blurred(good), rgb=True, name="blurred")
    _run(qtbot, widget, ok=False)

    # red banner with the reason, no probability, no filter layers, no pop-up (the banner says it all)
    assert not _evidence(viewer)
    assert _shown(banner) and banner.status == "ungradeable"
    text = banner.label.text()
    assert text.startswith("Ungradeable: ") and text.endswith(" — no probability given"), text
    assert GateBanner.COLOURS["ungradeable"][0] in banner.styleSheet()
    assert "sharpness" in banner.toolTip() and "Experience score" in banner.toolTip()
    assert widget.decision_label.text() == "Withheld (ungradeable scan)"
    assert widget.probability_label.text() == "— (not given)"
    assert "No probability and no filter layers for 'blurred'" in widget.status.text()
    assert not notes.of("warning") and not notes.of("error"), notes.seen
    declined = scan.metadata[GATE_KEY]
    assert declined["status"] == "ungradeable" and declined["declined"] is True
    assert declined["message"].startswith("ungradeable: ") and not declined["quality"]["gradable"]
    assert banner.offers_anyway and not banner.anyway_button.isHidden() and banner.anyway_button.isEnabled()

    # explain it anyway: the layers and probability come, the banner stays red and says they were kept
    qtbot.mouseClick(banner.anyway_button, Qt.MouseButton.LeftButton)
    assert widget.running and not banner.anyway_button.isEnabled()
    _settled(qtbot, widget)
    assert _evidence(viewer, REGION), widget.status.text()
    gate = _gate_of_layers(viewer)
    assert gate.status == "ungradeable" and gate.declined
    assert _shown(banner) and banner.status == "ungradeable"
    assert GateBanner.COLOURS["ungradeable"][0] in banner.styleSheet()
    assert "kept despite the gate" in banner.label.text() and banner.label.text().startswith("Ungradeable: ")
    assert banner.anyway_button.isHidden()
    assert widget.probability_label.text()[0].isdigit()
    assert scan.metadata[GATE_KEY] == gate.to_json()

    # Explain (not anyway) withholds the verdict again
    _run(qtbot, widget, ok=False)
    assert banner.label.text().endswith(" — no probability given") and banner.offers_anyway


def test_a_photograph_that_is_no_fundus_is_declined_as_before_without_a_banner(qtbot, widget, tiny_bundle, notes):
    widget.model_edit.setText(str(tiny_bundle))
    noise = np.random.default_rng(0).integers(0, 256, (160, 200, 3), dtype=np.uint8)
    widget.viewer.add_image(noise, rgb=True, name="not a fundus")
    _run(qtbot, widget, ok=False)
    assert any("Explain declined the scan" in m for m in notes.of("warning")), notes.seen
    assert not _shown(widget.gate_banner) and not _evidence(widget.viewer)


# --------------------------------------------------------------------------- following the choice


@needs_shipped
def test_the_banner_is_cleared_when_another_scan_or_model_is_chosen(qtbot, widget, good, tiny_bundle):
    viewer = widget.viewer
    banner = widget.gate_banner
    viewer.add_image(blurred(good), rgb=True, name="blurred")
    _run(qtbot, widget, ok=False)
    assert banner.status == "ungradeable"

    widget.top_k_spin.setValue(widget.top_k_spin.value() + 1)  # a setting of the next run: the gate still holds
    assert banner.status == "ungradeable"
    viewer.add_image(good, rgb=True, name="good")  # opened: chosen
    assert widget.scan_layer.name == "good"
    assert not _shown(banner) and banner.status is None and not banner.offers_anyway
    assert widget.decision_label.text() == "—"  # the panel speaks of the chosen scan, not yet explained
    widget.scan_combo.setCurrentIndex(widget.scan_combo.findText("blurred"))
    # choosing it back brings back its verdict from the same model: the banner and the withheld panel
    assert banner.status == "ungradeable" and banner.offers_anyway
    assert widget.decision_label.text().startswith("Withheld")

    widget.scan_combo.setCurrentIndex(widget.scan_combo.findText("good"))
    _run(qtbot, widget)
    assert banner.status == "gradable"
    widget.model_edit.setText(str(tiny_bundle))
    assert not _shown(banner) and banner.status is None


# --------------------------------------------------------------------------- the banner's words


def test_the_banner_words_and_colours_each_outcome(qtbot):
    banner = GateBanner()
    qtbot.addWidget(banner)
    quality = assess_quality(generate_fundus(8, size=256).image)
    assert quality.gradable

    banner.show_gate(Gate(quality, 1.6))
    assert banner.status == "unfamiliar" and not banner.offers_anyway
    assert banner.label.text() == (
        "Outside the model's experience — its probability may not hold (experience score 1.60, limit 1.00)"
    )
    assert GateBanner.COLOURS["unfamiliar"][0] in banner.styleSheet()
    assert "Experience score: 1.60" in banner.toolTip()

    banner.show_gate(Gate(quality, 1.6, decline_unfamiliar=True))
    assert banner.label.text().startswith("Outside the model's experience — no probability given")
    assert banner.offers_anyway and not banner.anyway_button.isHidden()
    banner.show_gate(Gate(quality, 1.6, decline_unfamiliar=True), kept=True)
    assert banner.label.text().endswith("kept despite the gate") and not banner.offers_anyway

    banner.show_gate(Gate(quality, None))
    assert banner.status == "gradable"
    assert banner.label.text() == "Gradable · the model stores no statistics of its training photographs"
    assert "Experience score: not known" in banner.toolTip()

    reason = "out of focus (sharpness 0.004, gradable from 0.020)"
    banner.show_gate(Gate(replace(quality, reasons=(reason,)), 0.4))
    assert banner.label.text() == f"Ungradeable: {reason} — no probability given"
    assert GateBanner.COLOURS["ungradeable"][0] in banner.styleSheet() and banner.offers_anyway
    # every measure on a line of its own, with the limit it is held to
    lines = banner.toolTip().splitlines()
    limits = quality.to_json()["limits"]
    measures = quality.measures()
    assert len(lines) == 2 + len(measures)
    for line, (key, value) in zip(lines[1:], measures.items()):
        assert line.endswith(f": {value:.3f}") or f": {value:.3f} (gradable " in line, line
        if f"min_{key}" in limits:
            assert f"(gradable from {limits[f'min_{key}']:g})" in line
        if f"max_{key}" in limits:
            assert f"(gradable up to {limits[f'max_{key}']:g})" in line

    banner.clear()
    assert banner.isHidden() and banner.status is None and banner.toolTip() == ""
