"""The Audit widget in a real napari viewer (Xvfb): an audit of the shipped model on a small cohort with a site
stamp, run in the background, whose findings and per-filter table match the audit.json it wrote; a filter's
strongest scans added to the viewer as named layers; an audit folder reopened; Stop; bad input."""

from __future__ import annotations

import json

import pytest

from napari_icnn._widgets.audit_widget import LAYER_PREFIX, AuditWidget, audit_problems
from napari_icnn.bundle import default_bundle_path
from napari_icnn.data.synth import write_cohort

pytestmark = pytest.mark.gui
pytest_plugins = ["gui_support"]

WAIT_MS = 180_000


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit") / "cohort"
    write_cohort(root, 8, size=320, seed=41, confounder="stamp", confounder_rate=0.9)
    return root


@pytest.fixture
def widget(dock):
    w = dock(AuditWidget, "Audit", area="right")
    w.model_edit.setText(str(default_bundle_path()))
    return w


def test_audit_runs_shows_findings_and_a_filters_scans(qtbot, widget, cohort, tmp_path):
    w = widget
    out = tmp_path / "audit"
    w.data_edit.setText(str(cohort))
    w.out_edit.setText(str(out))
    w.gradcam_check.setChecked(False)
    assert w.run_button.isEnabled(), (w.model_message.text(), w.data_message.text(), w.out_message.text())
    worker = w.run()
    assert worker is not None and w.running
    qtbot.waitUntil(lambda: not w.running and w._worker is None, timeout=WAIT_MS)

    doc = json.loads((out / "audit.json").read_text())
    assert w.outcome == doc
    assert (out / "filters.csv").is_file() and (out / "scans.csv").is_file()
    assert doc["artefact"] == "the site stamp" and doc["places"]["artefact"]["scans"] > 0
    # the list shows the findings in the audit's order and words
    shown = [w.findings_list.item(i).text() for i in range(w.findings_list.count())]
    assert shown == [f["text"] for f in doc["findings"]] or (not doc["findings"] and shown == ["No finding."])
    assert w.filters_table.rowCount() == len(doc["filters"]) == doc["model"]["filters"]
    assert "8 scans audited" in w.status.text()

    # the filter with the largest share of the evidence is the first row; show its strongest scans
    top = max(doc["filters"], key=lambda r: r["evidence_share"])
    w.filters_table.selectRow(0)
    assert w.selected_filter() == top["filter"] and w.show_button.isEnabled()
    shower = w.show_filter(n=2)
    assert shower is not None
    qtbot.waitUntil(lambda: any(la.name.startswith(f"{LAYER_PREFIX}{top['name']}") for la in w.viewer.layers),
                    timeout=WAIT_MS)
    names = [la.name for la in w.viewer.layers]
    ids = [sid for _, sid in doc["top_images"][str(top["filter"])][:2]]
    assert names == [n for sid in ids for n in (f"{LAYER_PREFIX}{sid}", f"{LAYER_PREFIX}{top['name']} · {sid}")]
    heat = w.viewer.layers[names[1]].data
    assert heat.shape == w.viewer.layers[names[0]].data.shape[:2] and 0 <= heat.min() and heat.max() <= 1
    assert heat.max() > 0  # the filter fires on its strongest scan

    # the same folder reopened in a fresh state reads the same
    w.findings_list.clear()
    assert w.open_audit(out)
    assert w.findings_list.count() == max(1, len(doc["findings"]))


def test_audit_stop_writes_nothing(qtbot, widget, cohort, tmp_path):
    w = widget
    out = tmp_path / "stopped"
    w.data_edit.setText(str(cohort))
    w.out_edit.setText(str(out))
    w.run()
    w.stop()
    qtbot.waitUntil(lambda: not w.running and w._worker is None, timeout=WAIT_MS)
    assert not (out / "audit.json").exists()
    assert w.outcome is None and "Stopped" in w.status.text()


def test_audit_form_problems_and_bad_folder(widget, tmp_path, notes):
    w = widget
    w.data_edit.setText(str(tmp_path / "missing"))
    w.out_edit.setText("")
    assert not w.run_button.isEnabled()
    assert "no such file or folder" in w.data_message.text()
    assert "choose a folder" in w.out_message.text()
    w.model_edit.setText(str(tmp_path))
    assert "not a model bundle" in w.model_message.text()
    assert audit_problems(str(default_bundle_path()), str(tmp_path), str(tmp_path / "a")) == {}
    assert not w.open_audit(tmp_path)
    assert any("no audit here" in m for m in notes.of("warning")), notes.seen
