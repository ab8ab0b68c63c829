"""The Explain widget in a real napari viewer (Xvfb): named per-filter Labels layers aligned with the
scan, evidence apart from anatomy context and possible artefacts, re-runs that replace, renaming into
a copy of the model, input checks, errors as notifications, side-by-side grid, legend, persisted
settings, and saving the evidence as DICOM SEG."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_bundle

from napari_icnn._widgets.explain_widget import GATE_KEY, ExplainWidget
from napari_icnn.bundle import METADATA, WEIGHTS, load_bundle, shipped_bundle_path
from napari_icnn.data.synth import generate_fundus
from napari_icnn.explain import REGION_THRESHOLD, explain
from napari_icnn.image import FundusImage
from napari_icnn.layer_data import EVIDENCE_KEY, HEAT, REGION, UNDERLAY, evidence_info, layer_name, scan_key
from napari_icnn.parts import ANATOMY_KEYS, FREE_CATEGORY
from napari_icnn.render import PART_COLOURS
from napari_icnn.roles import ARTEFACT, CONTEXT, EVIDENCE

pytestmark = pytest.mark.gui
pytest_plugins = ["gui_support"]

SHIPPED = shipped_bundle_path()
SCALE, TRANSLATE = (0.8, 1.25), (12.0, -30.0)
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def fundus():
    return generate_fundus(8, size=192)


@pytest.fixture
def widget(dock, tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_ICNN_DATA_DIR", str(tmp_path / "data"))
    w = dock(ExplainWidget, "Explain")
    w.model_edit.setText(str(tiny_bundle))
    return w


def _add_scan(viewer, fundus, name="scan", **kw):
    kw = {"scale": SCALE, "translate": TRANSLATE, **kw}
    return viewer.add_image(fundus.image, rgb=True, name=name, **kw)


def _run(qtbot, w, ok=True):
    assert w.run_button.isEnabled(), (w.scan_message.text(), w.model_message.text())
    worker = w.run()
    assert worker is not None
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)
    if ok:  # a run that failed or was declined leaves the previous layers: say so rather than fail on them later
        assert "failed" not in w.status.text() and "declined" not in w.status.text(), w.status.text()
    return worker


def _evidence(viewer, role=None, group=None):
    """The layers Explain added (bottom first), optionally of one kind (``role``) and one ``group``."""
    out = []
    for layer in viewer.layers:
        info = evidence_info(layer.metadata)
        if info is not None and (role is None or info.role == role) and (group is None or info.group == group):
            out.append(layer)
    return out


def _shown(expl, k):
    """What Explain shows for ``k``, top of the layer list first: the evidence, the anatomy context and
    the possible artefacts, each its top ``k`` (as the core ranks them)."""
    return [*expl.evidence(k), *expl.context(k), *expl.possible_artefacts(k)]


# --------------------------------------------------------------------------- the evidence layers


def test_explain_adds_named_labels_layers_aligned_with_the_scan(qtbot, widget, fundus, tiny_bundle):
    viewer = widget.viewer
    scan = _add_scan(viewer, fundus, rotate=15)
    widget.top_k_spin.setValue(4)
    _run(qtbot, widget)

    regions = _evidence(viewer, REGION)
    expected = explain(fundus.image, load_bundle(tiny_bundle))
    assert expected.evidence() and expected.context()  # the tiny model has both
    assert sorted(la.name for la in _evidence(viewer, REGION, EVIDENCE)) == sorted(f.name for f in expected.evidence(4))
    assert sorted(la.name for la in _evidence(viewer, REGION, CONTEXT)) == sorted(
        f"context · {f.name}" for f in expected.context(4)
    )
    assert sorted(la.name for la in _evidence(viewer, REGION, ARTEFACT)) == sorted(
        f"possible artefact · {f.name}" for f in expected.possible_artefacts(4)
    )
    assert not _evidence(viewer, HEAT)  # heat maps are made when asked for
    # The evidence on top of the layer list, the context below it, the possible artefacts at the bottom.
    top_first = [evidence_info(la.metadata) for la in reversed(regions)]
    assert [i.filter_id for i in top_first] == [f.id for f in _shown(expected, 4)]
    for layer in regions:
        info = evidence_info(layer.metadata)
        f = expected.filter(info.filter_id)
        assert info.group == f.role and layer.visible is (f.role == EVIDENCE)
        if info.group == EVIDENCE:  # never a label-free or anatomy filter among the evidence
            assert f.category != FREE_CATEGORY and f.part not in ANATOMY_KEYS
        assert type(layer).__name__ == "Labels" and layer.data.shape == scan.data.shape[:2]
        np.testing.assert_allclose(layer.scale, scan.scale)
        np.testing.assert_allclose(layer.translate, scan.translate)
        np.testing.assert_allclose(layer.rotate, scan.rotate)
        np.testing.assert_array_equal(layer.data, expected.region_on_scan(info.filter_id, REGION_THRESHOLD))
        np.testing.assert_allclose(layer.colormap.map(1)[:3], np.array(PART_COLOURS[info.part]) / 255)
        if not np.asarray(layer.data).any():
            continue
        # A pixel of the region, found through world coordinates from the scan, is the same pixel.
        r, c = np.argwhere(np.asarray(layer.data))[len(np.argwhere(np.asarray(layer.data))) // 2]
        world = scan.data_to_world((r, c))
        np.testing.assert_allclose(layer.world_to_data(world), (r, c), atol=1e-6)
        # Hovering names the filter and shows its contribution (napari's status from `features`), once
        # the layer is shown (napari reports nothing for a hidden layer).
        was_visible, layer.visible = layer.visible, True
        assert layer.get_value(world, world=True) == 1
        status = layer.get_status(world, world=True)["coordinates"]
        assert f"name: {layer.name}" in status and "contribution:" in status
        layer.visible = was_visible

    # The result panel and the legend.
    assert widget.decision_label.text() == expected.predicted_class
    assert widget.probability_label.text().startswith(f"{expected.probability:.3f}")
    assert widget.model_label.text() == f"{expected.model_name} {expected.model_version}"
    # a fresh widget has no model at hand: the time of loading it is given apart from the explanation's
    assert re.fullmatch(r"\d+\.\d\d s \+ \d+\.\d s loading the model", widget.time_label.text()), (
        widget.time_label.text()
    )
    assert list(widget.legend.rows) == [i.filter_id for i in top_first]
    for fid, row in widget.legend.rows.items():
        f = expected.filter(fid)
        assert row.contribution.text() == f"{f.contribution:+.3f}"
        assert row.checkbox.isChecked() is (f.role == EVIDENCE)
        if f.flags:  # why a filter is context or a possible artefact, in small print under its row
            assert row.note is not None and row.note.text() == "; ".join(f.flags)
            assert row.note.isVisibleTo(widget.legend)
    groups = [g for g, f in ((EVIDENCE, expected.evidence), (CONTEXT, expected.context),
                             (ARTEFACT, expected.possible_artefacts)) if f(4)]
    assert list(widget.legend.group_headings) == groups
    assert widget.legend.group_headings[CONTEXT].text() == "Context (anatomy)"
    assert widget.legend.group_headings[EVIDENCE].text() == "Evidence"
    assert widget.legend.basis.text() == f"Contributions: {expected.contribution_basis}"
    assert "zero-ablation" in widget.legend.basis.text()  # the tiny model has no reference eye
    assert f"{len(expected.evidence(4))} evidence, {len(expected.context(4))} context" in widget.status.text()


def test_rerun_replaces_the_evidence_of_that_scan_only(qtbot, widget, fundus, tiny_bundle, tmp_path):
    viewer = widget.viewer
    first = _add_scan(viewer, fundus, name="first")
    widget.top_k_spin.setValue(3)
    _run(qtbot, widget)
    names = [la.name for la in viewer.layers]

    widget.threshold_spin.setValue(0.6)
    _run(qtbot, widget)
    assert [la.name for la in viewer.layers] == names  # same layers, not duplicates ("[1]")
    assert re.fullmatch(r"\d+\.\d\d s", widget.time_label.text()), widget.time_label.text()  # model reused
    expected = explain(fundus.image, load_bundle(tiny_bundle))
    for layer in _evidence(viewer, REGION):  # ... showing the new run's regions, names and colours
        info = evidence_info(layer.metadata)
        assert info.threshold == pytest.approx(0.6)
        np.testing.assert_array_equal(layer.data, expected.region_on_scan(info.filter_id, 0.6))
        f = expected.filter(info.filter_id)
        assert layer.name == layer_name(f.name, f.role)
        assert layer.features["filter_id"].tolist() == [info.filter_id]
        np.testing.assert_allclose(layer.colormap.map(1)[:3], np.array(PART_COLOURS[info.part]) / 255)

    # Another model: the reused layers take the other filters' names, parts, colours and features.
    other = make_bundle(tmp_path / "other", seed=3)
    widget.model_edit.setText(str(other))
    _run(qtbot, widget)
    expected_other = explain(fundus.image, load_bundle(other))
    shown = {evidence_info(la.metadata).filter_id for la in _evidence(viewer, REGION)}
    assert shown == {f.id for f in _shown(expected_other, 3)} and len(viewer.layers) == 1 + len(shown)
    for layer in _evidence(viewer, REGION):
        info = evidence_info(layer.metadata)
        f = expected_other.filter(info.filter_id)
        assert info.model_path == str(other) and layer.name == layer_name(f.name, f.role)
        assert layer.visible is (f.role == EVIDENCE) and info.group == f.role
        assert layer.features["contribution"].tolist() == [
            round(expected_other.filter(info.filter_id).contribution, 4)
        ]
        np.testing.assert_allclose(layer.colormap.map(1)[:3], np.array(PART_COLOURS[info.part]) / 255)
        np.testing.assert_array_equal(layer.data, expected_other.region_on_scan(info.filter_id, 0.6))
    widget.model_edit.setText(str(tiny_bundle))

    widget.top_k_spin.setValue(2)
    _run(qtbot, widget)
    two = _shown(expected, 2)
    assert len(_evidence(viewer, REGION)) == len(two) and len(viewer.layers) == 1 + len(two)
    assert len(_evidence(viewer, REGION, EVIDENCE)) == 2
    from qtpy.QtWidgets import QLineEdit

    shown_edits = [e for e in widget.legend.findChildren(QLineEdit) if e.isVisibleTo(widget)]
    assert len(shown_edits) == len(widget.legend.rows) == len(two)  # no rows of earlier runs linger
    assert [la.name for la in _evidence(viewer, REGION)] == [layer_name(f.name, f.role) for f in reversed(two)]

    second = _add_scan(viewer, fundus, name="second", translate=(0, 300))
    assert widget.scan_layer is second  # the scan just opened is chosen
    _run(qtbot, widget)
    by_scan = {}
    for la in _evidence(viewer, REGION):
        by_scan.setdefault(evidence_info(la.metadata).scan, []).append(la)
    assert {str(first.unique_id): len(two), str(second.unique_id): len(two)} == {
        k: len(v) for k, v in by_scan.items()
    }
    assert widget.scan_combo.count() == 2  # evidence layers are never offered as scans


def test_heat_maps_toggle_and_legend_checkbox_drive_visibility(qtbot, widget, fundus):
    viewer = widget.viewer
    scan = _add_scan(viewer, fundus)
    widget.top_k_spin.setValue(2)
    _run(qtbot, widget)
    assert not _evidence(viewer, HEAT)

    widget.heat_check.setChecked(True)
    heats = _evidence(viewer, HEAT)
    assert len(heats) == len(_evidence(viewer, REGION)) > 2
    # shown over the scan for the evidence only: the context's stay hidden with their regions
    assert [h.visible for h in heats] == [evidence_info(h.metadata).group == EVIDENCE for h in heats]
    layers = list(viewer.layers)
    for heat in heats:  # each directly below its region, placed like the scan
        above = layers[layers.index(heat) + 1]
        assert evidence_info(above.metadata).filter_id == evidence_info(heat.metadata).filter_id
        assert above.name + " · heat map" == heat.name and evidence_info(above.metadata).role == REGION
        np.testing.assert_allclose(heat.translate, scan.translate)
        assert heat.blending == "additive"
    widget.heat_check.setChecked(False)
    assert not any(h.visible for h in heats)
    _run(qtbot, widget)  # re-run: the heat maps are refilled, still hidden, none added
    assert sorted(map(id, _evidence(viewer, HEAT))) == sorted(map(id, heats))
    assert not any(h.visible for h in heats)
    widget.heat_check.setChecked(True)

    fid, row = next(iter(widget.legend.rows.items()))
    assert row.group == EVIDENCE
    row.checkbox.setChecked(False)
    hidden = [la for la in _evidence(viewer) if evidence_info(la.metadata).filter_id == fid]
    assert len(hidden) == 2 and not any(la.visible for la in hidden)
    # Showing the layer in napari's layer list ticks the legend again.
    region = next(la for la in hidden if evidence_info(la.metadata).role == REGION)
    region.visible = True
    assert row.checkbox.isChecked()

    # Ticking a context filter draws its region and heat map over the scan.
    context = next(r for r in widget.legend.rows.values() if r.group == CONTEXT)
    assert not context.checkbox.isChecked()
    context.checkbox.setChecked(True)
    shown = [la for la in _evidence(viewer) if evidence_info(la.metadata).filter_id == context.filter_id]
    assert len(shown) == 2 and all(la.visible for la in shown)


# --------------------------------------------------------------------------- the shipped model


@pytest.mark.skipif(
    not (SHIPPED / WEIGHTS).exists(),
    reason="the shipped demo bundle (napari_icnn/models/demo) is not built yet",
)
def test_disc_filter_of_the_demo_model_covers_the_disc_in_viewer_coordinates(qtbot, widget):
    viewer = widget.viewer
    fundus = generate_fundus(21, size=512)
    scan = viewer.add_image(fundus.image, rgb=True, name="scan", scale=(0.7, 0.7), translate=(30.0, -12.0))
    widget.model_edit.setText(str(SHIPPED))
    widget.top_k_spin.setMaximum(64)
    widget.top_k_spin.setValue(64)
    _run(qtbot, widget)

    disc_layers = [la for la in _evidence(viewer, REGION) if evidence_info(la.metadata).part == "optic_disc"]
    assert disc_layers, "no filter of the demo model is named after the optic disc"
    assert all("optic disc" in la.name for la in disc_layers)
    # Sample the scan's pixels through world coordinates into each disc layer.
    rows, cols = np.mgrid[0:512:4, 0:512:4]
    truth = fundus.masks["optic_disc"][rows, cols]
    centre = np.argwhere(truth).mean(axis=0)
    radius = np.sqrt(truth.sum() / np.pi)
    placed = {}  # per layer: share of the region on the disc, share of the disc covered, centre offset
    for layer in disc_layers:
        data = np.asarray(layer.data)
        hit = np.zeros(rows.shape, bool)
        for idx in np.ndindex(rows.shape):
            world = scan.data_to_world((rows[idx], cols[idx]))
            r, c = np.round(layer.world_to_data(world)).astype(int)
            hit[idx] = 0 <= r < data.shape[0] and 0 <= c < data.shape[1] and data[r, c] == 1
        off = np.linalg.norm(np.argwhere(hit).mean(axis=0) - centre)
        # every disc region lies on the disc through the scan's scale and offset ...
        assert off <= 2 * radius, (layer.name, off, radius)
        placed[layer.name] = ((hit & truth).sum() / hit.sum(), (hit & truth).sum() / truth.sum(), off)
    # ... and one of them lies within it, centred, over a good part of it, at the widget's default region
    # threshold (a model reading 384-px photographs draws a tighter region than the disc: its core)
    assert any(inside >= 0.9 and covered >= 0.15 and off <= radius for inside, covered, off in placed.values()), placed


@pytest.mark.skipif(
    not (SHIPPED / WEIGHTS).exists(),
    reason="the shipped demo bundle (napari_icnn/models/demo) is not built yet",
)
def test_anatomy_of_a_real_photograph_is_context_and_no_lesion_filter_fires(qtbot, widget):
    import skimage.data

    viewer = widget.viewer
    pixels = np.ascontiguousarray(skimage.data.retina())
    viewer.add_image(pixels, rgb=True, name="retina")
    widget.model_edit.setText(str(SHIPPED))
    widget.top_k_spin.setValue(5)
    _run(qtbot, widget)

    expected = explain(FundusImage(pixels=pixels, source="retina"), load_bundle(SHIPPED))
    # a healthy eye: no referable DR, and none of the filters the decision is computed from (haemorrhage,
    # exudate, cotton-wool-spot filters) reaches its firing threshold
    assert expected.predicted_class == "no referable DR"
    decision_filters = [f for f in expected.filters if f.category in ("HE", "EX", "SE")]
    assert decision_filters and not any(f.fires for f in decision_filters)
    assert "haemorrhages" in widget.lesion_types_label.text()
    # the label-free (anatomy) filters have no weight in the decision, and are shown as context only
    disc = [f for f in expected.context(5) if f.category == FREE_CATEGORY]
    assert disc, "the shipped model's label-free filters are not among its top context here"
    assert all(f.contribution == 0.0 for f in expected.filters if f.category == FREE_CATEGORY)

    evidence = _evidence(viewer, REGION, EVIDENCE)
    context = _evidence(viewer, REGION, CONTEXT)
    assert sorted(la.name for la in evidence) == sorted(f.name for f in expected.evidence(5))
    for layer in evidence:
        f = expected.filter(evidence_info(layer.metadata).filter_id)
        assert f.category != FREE_CATEGORY and f.part not in ANATOMY_KEYS, layer.name
        assert "optic disc" not in layer.name and layer.visible
    assert sorted(la.name for la in context) == sorted(f"context · {f.name}" for f in expected.context(5))
    layers = list(viewer.layers)
    lowest_evidence = min(layers.index(la) for la in evidence)
    for f in disc:
        (layer,) = [la for la in context if evidence_info(la.metadata).filter_id == f.id]
        assert layer.name == f"context · {f.name}"
        assert not layer.visible and layers.index(layer) < lowest_evidence  # hidden, below the evidence
        row = widget.legend.rows[f.id]
        assert row.group == CONTEXT and not row.checkbox.isChecked()
        assert row.note is not None and "label-free filter (anatomy context)" in row.note.text()
    for layer in _evidence(viewer, REGION, ARTEFACT):
        assert layer.name.startswith("possible artefact · filter ") and not layer.visible
        assert layers.index(layer) < lowest_evidence

    headings = [h.text() for h in widget.legend.group_headings.values()]
    assert headings[:2] == ["Evidence", "Context (anatomy)"]
    assert widget.legend.basis.text() == f"Contributions: {expected.contribution_basis}"
    assert "reference eye" in widget.legend.basis.text()
    # lesion-type filters that respond nowhere on this healthy eye: no layer (nothing to draw), no legend row,
    # never a possible artefact; the legend says how many and what their silence adds to the decision
    silent = expected.silent(EVIDENCE)
    assert silent, "the shipped model's haemorrhage filters are silent on this healthy eye"
    shown_ids = {evidence_info(la.metadata).filter_id for la in viewer.layers if evidence_info(la.metadata)}
    assert not shown_ids & {f.id for f in silent} and not set(widget.legend.rows) & {f.id for f in silent}
    assert widget.legend.silent.isVisibleTo(widget) and widget.legend.silent.text().startswith(
        f"Silent: {len(silent)} evidence filters silent")
    assert f"{sum(f.contribution for f in silent):+.3f} for no referable DR" in widget.legend.silent.text()


@pytest.mark.skipif(
    not (SHIPPED / WEIGHTS).exists(),
    reason="the shipped demo bundle (napari_icnn/models/demo) is not built yet",
)
def test_the_result_panel_and_legend_follow_the_chosen_scan(qtbot, widget):
    """Two scans explained, then chosen in turn: the panel, the legend and its lines speak of the chosen one;
    a scan not yet explained, or the shown scan closed, leaves nothing of another scan behind."""
    import skimage.data

    from napari_icnn.explain import silent_summary

    viewer = widget.viewer
    widget.model_edit.setText(str(SHIPPED))
    widget.top_k_spin.setValue(3)
    bundle = load_bundle(SHIPPED)
    retina = np.ascontiguousarray(skimage.data.retina())
    sick = generate_fundus(np.random.SeedSequence([5, 1]), 384, grade=3, look="realistic").image
    expected = {}
    for name, pixels in (("retina", retina), ("grade 3", sick)):
        viewer.add_image(pixels, rgb=True, name=name)
        assert widget.scan_layer.name == name  # the scan just opened is chosen
        _run(qtbot, widget)
        expected[name] = explain(FundusImage(pixels=pixels, source=name), bundle)
    assert expected["retina"].predicted_class != expected["grade 3"].predicted_class

    def panel_speaks_of(name):
        e = expected[name]
        assert widget.results_box.title() == f"Result: {name}"
        assert widget.decision_label.text() == e.predicted_class
        assert widget.probability_label.text().startswith(f"{e.probability:.3f}")
        assert list(widget.legend.rows) == [f.id for f in _shown(e, 3)]
        assert widget.legend.basis.text() == f"Contributions: {e.contribution_basis}"
        silent = silent_summary(e)
        assert widget.legend.silent.text() == (f"Silent: {silent}" if silent else "")
        assert widget.legend.silent.isVisibleTo(widget) is bool(silent)
        assert widget.view.shown_scan == scan_key(viewer.layers[name])

    panel_speaks_of("grade 3")
    for name in ("retina", "grade 3", "retina"):
        widget.scan_combo.setCurrentIndex(widget.scan_combo.findText(name))
        panel_speaks_of(name)
    assert silent_summary(expected["retina"])  # the healthy photograph's silent line was shown, then replaced

    # a renamed filter goes into the model the chosen scan's evidence came from, and names that scan's layer
    fid = next(iter(widget.legend.rows))
    widget.rename_filter(fid, "my lesion")
    (region,) = [la for la in _evidence(viewer, REGION) if evidence_info(la.metadata).filter_id == fid
                 and evidence_info(la.metadata).scan == scan_key(viewer.layers["retina"])]
    assert region.name.endswith("my lesion")

    # a scan not explained yet: an empty panel and legend, nothing of the other scans
    viewer.add_image(retina[::2, ::2], rgb=True, name="new")
    assert widget.scan_layer.name == "new"
    assert widget.results_box.title() == "Result" and widget.decision_label.text() == "—"
    assert not widget.legend.rows and not widget.legend.silent.isVisibleTo(widget)
    assert not widget.legend.basis.isVisibleTo(widget) and widget.view.shown_scan is None

    # the explained scan closed: its outcome is forgotten, the panel follows the scan chosen instead
    widget.scan_combo.setCurrentIndex(widget.scan_combo.findText("grade 3"))
    panel_speaks_of("grade 3")
    viewer.layers.remove("grade 3")
    assert widget.scan_layer.name == "new" and widget.scan_combo.findText("grade 3") < 0
    assert widget.decision_label.text() == "—" and not widget.legend.rows and widget.view.shown_scan is None
    widget.scan_combo.setCurrentIndex(widget.scan_combo.findText("retina"))
    panel_speaks_of("retina")  # the other explained scan keeps its outcome
    widget.scan_combo.setCurrentIndex(widget.scan_combo.findText("new"))
    assert widget.decision_label.text() == "—" and not widget.legend.rows

    # a result that returns while another scan is chosen is kept for its scan, shown when that scan is chosen
    widget.scan_combo.setCurrentIndex(widget.scan_combo.findText("retina"))
    widget.side_check.setChecked(True)
    assert widget.run() is not None
    widget.scan_combo.setCurrentIndex(widget.scan_combo.findText("new"))  # before the result arrives
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.decision_label.text() == "—" and not widget.legend.rows and widget.view.shown_scan is None
    assert "Choose 'retina' to see its result" in widget.status.text()
    assert viewer.layers["retina"].metadata[GATE_KEY]["status"] == "gradable"  # stored for scripts all the same
    assert not _evidence(viewer, UNDERLAY)  # side by side has nothing to show for the chosen scan
    widget.scan_combo.setCurrentIndex(widget.scan_combo.findText("retina"))
    panel_speaks_of("retina")
    assert [evidence_info(la.metadata).scan for la in _evidence(viewer, UNDERLAY)] == [
        scan_key(viewer.layers["retina"])
    ]
    widget.side_check.setChecked(False)


# --------------------------------------------------------------------------- renaming


def test_renaming_a_filter_saves_into_a_copy_of_the_shipped_model(
    qtbot, widget, fundus, tiny_bundle, tmp_path, monkeypatch
):
    shipped = Path(shutil.copytree(tiny_bundle, tmp_path / "shipped" / "demo"))
    monkeypatch.setattr("napari_icnn.bundle.shipped_bundle_path", lambda: shipped)
    shipped_metadata = (shipped / METADATA).read_bytes()
    viewer = widget.viewer
    _add_scan(viewer, fundus)
    widget.model_edit.setText(str(shipped))
    widget.top_k_spin.setValue(3)
    widget.heat_check.setChecked(True)
    _run(qtbot, widget)

    fid, row = next(iter(widget.legend.rows.items()))
    row.name_edit.setText("  bright   lesion cluster ")
    row.name_edit.editingFinished.emit()

    copy = tmp_path / "data" / "bundles" / "demo"
    new_name = f"filter {fid} · bright lesion cluster"
    assert (shipped / METADATA).read_bytes() == shipped_metadata  # the shipped bundle is never edited
    meta = json.loads((copy / METADATA).read_text())
    assert next(f for f in meta["icnn"]["filters"] if f["id"] == fid)["name"] == "bright lesion cluster"
    assert list((copy / "configs").glob("metadata.json.bak-*"))  # a backup of the previous metadata
    assert Path(widget.model_edit.text()) == copy
    region = next(la for la in _evidence(viewer, REGION) if evidence_info(la.metadata).filter_id == fid)
    assert region.name == new_name and region.features["name"].tolist() == [new_name]
    heat = next(la for la in _evidence(viewer, HEAT) if evidence_info(la.metadata).filter_id == fid)
    assert heat.name == f"{new_name} · heat map"
    assert row.name_edit.text() == "bright lesion cluster"

    _run(qtbot, widget)  # the next explanation reads the name from the copy
    assert new_name in [la.name for la in _evidence(viewer, REGION)]
    assert load_bundle(copy).filters[fid].display_name == new_name

    row = widget.legend.rows[fid]
    row.name_edit.setText("")  # clearing gives the part's name back
    row.name_edit.editingFinished.emit()
    region = next(la for la in _evidence(viewer, REGION) if evidence_info(la.metadata).filter_id == fid)
    assert region.name == load_bundle(copy).filters[fid].display_name != new_name

    # A context filter keeps its group's prefix on the layer; the legend shows the name alone.
    cid, crow = next((i, r) for i, r in widget.legend.rows.items() if r.group == CONTEXT)
    crow.name_edit.setText("disc rim")
    crow.name_edit.editingFinished.emit()
    region = next(la for la in _evidence(viewer, REGION) if evidence_info(la.metadata).filter_id == cid)
    assert region.name == f"context · filter {cid} · disc rim" == region.features["name"].tolist()[0]
    heat = next(la for la in _evidence(viewer, HEAT) if evidence_info(la.metadata).filter_id == cid)
    assert heat.name == f"context · filter {cid} · disc rim · heat map"
    assert crow.name_edit.text() == "disc rim"
    assert load_bundle(copy).filters[cid].display_name == f"filter {cid} · disc rim"


# --------------------------------------------------------------------------- checks and errors


def test_invalid_inputs_show_their_message_and_keep_run_disabled(widget, fundus, tmp_path):
    viewer = widget.viewer
    assert not widget.run_button.isEnabled() and widget.run() is None
    assert "Open a colour fundus photograph" in widget.scan_message.text()
    assert widget.scan_message.isVisibleTo(widget)

    viewer.add_image(fundus.image[..., 1], name="green channel")
    assert "'green channel' is not an RGB colour image" in widget.scan_message.text()
    assert "lightcoral" in widget.scan_combo.styleSheet() and not widget.run_button.isEnabled()

    _add_scan(viewer, fundus)
    assert widget.scan_message.text() == "" and not widget.scan_message.isVisibleTo(widget)
    assert widget.run_button.isEnabled()

    widget.model_edit.setText(str(tmp_path / "no_such_model"))
    assert widget.model_message.text() == f"{tmp_path / 'no_such_model'}: no such model bundle"
    assert "lightcoral" in widget.model_edit.styleSheet()
    assert not widget.run_button.isEnabled() and widget.run() is None
    (tmp_path / "folder").mkdir()
    widget.model_edit.setText(str(tmp_path / "folder"))
    assert "not a model bundle (configs/metadata.json is missing)" in widget.model_message.text()
    assert not _evidence(viewer)


def test_a_second_run_while_running_is_refused(qtbot, widget, fundus):
    _add_scan(widget.viewer, fundus)
    worker = widget.run()
    assert worker is not None and widget.running
    assert not widget.run_button.isEnabled() and widget.run() is None
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.run_button.isEnabled()


def test_a_broken_model_becomes_an_error_notification(qtbot, widget, fundus, tiny_bundle, tmp_path, notes):
    broken = Path(shutil.copytree(tiny_bundle, tmp_path / "broken"))
    with open(broken / WEIGHTS, "ab") as fh:
        fh.write(b"tampered")
    _add_scan(widget.viewer, fundus)
    widget.model_edit.setText(str(broken))
    assert widget.run_button.isEnabled()  # the metadata is fine; the weights are checked on loading
    _run(qtbot, widget, ok=False)

    errors = notes.of("error")
    assert any("SHA-256 does not match" in m and "model.pt" in m for m in errors), notes.seen
    assert not any("Traceback" in m for m in errors)
    assert not _evidence(widget.viewer) and widget.run_button.isEnabled()
    assert "failed" in widget.status.text()


def test_a_declined_scan_becomes_a_warning(qtbot, widget, notes):
    noise = np.random.default_rng(0).integers(0, 256, (160, 200, 3), dtype=np.uint8)
    widget.viewer.add_image(noise, rgb=True, name="not a fundus")
    _run(qtbot, widget, ok=False)
    assert any("Explain declined the scan" in m for m in notes.of("warning")), notes.seen
    assert not _evidence(widget.viewer)


# --------------------------------------------------------------------------- side by side


def test_side_by_side_shows_the_scan_beside_its_evidence(qtbot, widget, fundus):
    viewer = widget.viewer
    scan = _add_scan(viewer, fundus)
    widget.top_k_spin.setValue(3)
    _run(qtbot, widget)
    grid = widget.view.grid  # viewer.canvas.grid from napari 0.9, viewer.grid before
    widget.side_check.setChecked(True)

    layers = list(viewer.layers)
    (underlay,) = _evidence(viewer, UNDERLAY)
    assert grid.enabled and grid.actual_shape(layers) == (1, 2)
    cell = {la.name: grid.position(i, layers) for i, la in enumerate(layers)}
    assert cell[scan.name] == (0, 1)
    assert cell[underlay.name] == (0, 0)
    assert all(cell[la.name] == (0, 0) for la in _evidence(viewer, REGION, EVIDENCE))
    # Hidden context has no cell; shown, it joins the evidence's cell and the scan stays alone beside it.
    context = _evidence(viewer, REGION, CONTEXT)
    assert context and all(cell[la.name] == (-1, -1) for la in context)
    context[0].visible = True
    assert grid.position(layers.index(context[0]), layers) == (0, 0)
    assert grid.position(layers.index(scan), layers) == (0, 1) and grid.actual_shape(layers) == (1, 2)
    context[0].visible = False
    assert underlay.data is scan.data
    np.testing.assert_allclose(underlay.scale, scan.scale)
    np.testing.assert_allclose(underlay.translate, scan.translate)

    _run(qtbot, widget)  # a re-run keeps the arrangement, with one underlay
    layers = list(viewer.layers)
    assert len(_evidence(viewer, UNDERLAY)) == 1
    assert grid.position(layers.index(scan), layers) == (0, 1)

    widget.side_check.setChecked(False)
    assert not grid.enabled and not _evidence(viewer, UNDERLAY)
    assert len(_evidence(viewer, REGION, EVIDENCE)) == 3


# --------------------------------------------------------------------------- settings and manifest


def test_settings_are_remembered_between_sessions(make_napari_viewer, tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.delenv("NAPARI_ICNN_NOPERSIST", raising=False)
    monkeypatch.setenv("NAPARI_ICNN_CONFIG_DIR", str(tmp_path / "config"))
    first = ExplainWidget(make_napari_viewer())
    first.model_edit.setText(str(tiny_bundle))
    first.top_k_spin.setValue(7)
    first.threshold_spin.setValue(0.35)
    first.heat_check.setChecked(True)

    second = ExplainWidget(make_napari_viewer())
    assert second.model_edit.text() == str(tiny_bundle)
    assert (second.top_k_spin.value(), second.threshold_spin.value(), second.heat_check.isChecked()) == (
        7,
        0.35,
        True,
    )
    saved = json.loads((tmp_path / "config" / "explain.json").read_text())
    assert saved == {"model_path": str(tiny_bundle), "top_k": 7, "threshold": 0.35, "heat_maps": True}


def test_nothing_is_remembered_with_nopersist(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_ICNN_NOPERSIST", "1")
    monkeypatch.setenv("NAPARI_ICNN_CONFIG_DIR", str(tmp_path / "config"))
    w = ExplainWidget(make_napari_viewer())
    w.top_k_spin.setValue(9)
    assert not (tmp_path / "config").exists()


def test_the_manifest_docks_a_working_widget(qtbot, make_napari_viewer, tiny_bundle, fundus):
    # napari hands plugins a proxy of the viewer that refuses private attributes: run it through that.
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-icnn", "Explain")
    assert isinstance(w, ExplainWidget)
    _add_scan(viewer, fundus)
    assert w.scan_combo.currentText() == "scan"
    w.model_edit.setText(str(tiny_bundle))
    w.top_k_spin.setValue(2)
    _run(qtbot, w)
    assert len(_evidence(viewer, REGION, EVIDENCE)) == 2 and len(w.legend.rows) == len(_evidence(viewer, REGION))
    w.side_check.setChecked(True)
    assert w.view.grid.enabled


# --------------------------------------------------------------------------- DICOM in, SEG out


def test_explain_a_dicom_scan_and_save_its_evidence_as_seg(qtbot, widget, tmp_path):
    import highdicom as hd

    from napari_icnn.dicom.op_writer import write_op

    pixels = generate_fundus(9, size=160).image
    write_op(tmp_path / "IM0001.dcm", pixels, laterality="L", transfer_syntax="explicit")
    viewer = widget.viewer
    (scan,) = viewer.open(str(tmp_path / "IM0001.dcm"), plugin="napari-icnn")
    widget.top_k_spin.setValue(2)
    _run(qtbot, widget)

    regions = _evidence(viewer, REGION)
    viewer.layers.selection = set(regions)
    written = viewer.layers.save(str(tmp_path / "evidence.dcm"), selected=True, plugin="napari-icnn")

    seg = hd.seg.segread(written[0])
    labels = {seg.get_segment_description(i).segment_label for i in range(1, seg.number_of_segments + 1)}
    assert labels == {la.name for la in regions}
    source = scan.metadata["icnn_source"]
    assert source.sop_instance_uid in {uids[2] for uids in seg.get_source_image_uids()}
    assert evidence_info(regions[0].metadata).source is source
    assert all(EVIDENCE_KEY in la.metadata for la in regions)
