"""The Batch widget in a real napari viewer (Xvfb): a folder of generated OP DICOM files plus a junk
file and a red-free photograph run through the batch engine with the tiny bundle; running counts
that match summary.csv, the last rows, Stop then resume, input checks and errors as notifications."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_icnn._widgets.batch_widget import BatchWidget
from napari_icnn.batch import BatchConfig, BatchCounts
from napari_icnn.batch.summary import last_rows
from napari_icnn.bundle import WEIGHTS, default_bundle_path
from napari_icnn.data.synth import generate_fundus
from napari_icnn.dicom.op_writer import write_op
from napari_icnn.progress import Progress

pytestmark = pytest.mark.gui
pytest_plugins = ["gui_support"]

WAIT_MS = 180_000
N_MANY = 30
"""Inputs of the Stop test: enough that a stop lands mid-run on a fast machine too."""


def _op_folder(root: Path, n: int, size: int = 160, seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = generate_fundus(seed + i, size=size).image
        write_op(root / f"IM{i:04d}", image, laterality="LR"[i % 2])
    return root


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Four OP photographs, one red-free (monochrome) OP and one junk file, names without suffixes."""
    root = _op_folder(tmp_path_factory.mktemp("export") / "study", 4)
    grey = generate_fundus(9, size=160).image[..., 1]
    write_op(root / "IM0100", grey, laterality="R")
    (root / "IM0200").write_bytes(np.random.default_rng(0).bytes(3000))
    return root


@pytest.fixture
def widget(dock, tiny_bundle):
    w = dock(BatchWidget, "Batch", area="right")
    w.model_edit.setText(str(tiny_bundle))
    return w


def _summary(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _run(qtbot, w):
    assert w.run_button.isEnabled(), (w.inputs_message.text(), w.out_message.text(), w.model_message.text())
    worker = w.run()
    assert worker is not None and w.running
    live = []
    worker.yielded.connect(
        lambda e: live.append(BatchCounts.from_progress(e)) if isinstance(e, Progress) else None
    )
    qtbot.waitUntil(lambda: not w.running and w._worker is None, timeout=WAIT_MS)
    return [c for c in live if c is not None]


def test_batch_shows_running_counts_that_match_the_summary(
    qtbot, widget, archive, tmp_path, notes, monkeypatch
):
    w = widget
    out = tmp_path / "results"
    w.add_inputs([archive])
    w.out_edit.setText(str(out))
    w.workers_spin.setValue(1)  # a worker process decodes and writes while the network runs here
    live = _run(qtbot, w)

    rows = _summary(out)
    by_status = {s: sum(r["status"] == s for r in rows) for s in ("ok", "error", "declined")}
    assert by_status == {"ok": 4, "error": 1, "declined": 1}, rows
    outcome = w.outcome
    assert not outcome.stopped and outcome.exit_code == 3
    assert (w.counts.ok, w.counts.error, w.counts.declined) == (4, 1, 1)
    assert [w.count_labels[s].text() for s in ("ok", "error", "declined")] == [
        "● 4 ok",
        "● 1 error",
        "● 1 declined",
    ]
    # The counts were live: they grew with the files done and ended where the summary ends.
    assert live and live[-1] == BatchCounts(4, 1, 1, 6, 6)
    assert all(a.files_done <= b.files_done for a, b in zip(live, live[1:]))
    assert w.progress.value() == w.progress.maximum() and "done · 6 files" == w.progress.format()
    assert any("some inputs were not processed" in m for m in notes.of("warning")), notes.seen
    junk = next(r for r in rows if r["input_path"].endswith("IM0200"))
    assert junk["status"] == "error" and junk["reason"]
    for r in rows:
        if r["status"] == "ok":  # every listed output exists
            assert all((out / o).is_file() for o in r["outputs"].split(";"))

    w.rows_button.click()
    table = w.rows_table
    assert table.isVisibleTo(w) and table.rowCount() == 6
    shown = sorted(table.item(i, 0).text() for i in range(table.rowCount()))
    assert shown == sorted(r["status"] for r in rows)
    junk_row = next(i for i in range(6) if table.item(i, 1).text() == "IM0200")
    assert table.item(junk_row, 3).text() == junk["reason"] and table.item(junk_row, 2).text() == ""
    assert [r.input_path for r in last_rows(out / "summary.csv", 2)] == [r["input_path"] for r in rows[-2:]]

    opened = []
    from qtpy.QtGui import QDesktopServices

    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toLocalFile()) or True)
    w.open_button.click()
    assert opened == [str(out)]

    # Running again into the same folder skips everything: nothing is processed twice.
    assert "earlier run" in w.out_message.text()
    _run(qtbot, w)
    assert w.outcome.counts.skipped == 6 and w.outcome.counts.rows == 0
    assert len(_summary(out)) == 6


def test_stop_keeps_finished_rows_and_a_rerun_completes(qtbot, widget, tmp_path, notes):
    w = widget
    inputs = _op_folder(tmp_path / "many", N_MANY, size=128, seed=40)
    out = tmp_path / "results"
    w.add_inputs([inputs])
    w.out_edit.setText(str(out))
    w.workers_spin.setValue(0)
    w.batch_spin.setValue(2)
    for name, box in w.format_checks.items():  # lighter outputs: PNG + JSON only
        box.setChecked(name in ("png", "json"))
    assert w.formats() == ("png", "json") and w.config().formats == ("png", "json")
    worker = w.run()
    qtbot.waitUntil(lambda: w.counts.files_done >= 1, timeout=WAIT_MS)
    w.stop()
    assert w.stop_button.text() == "Stopping…" and not w.stop_button.isEnabled()
    qtbot.waitUntil(lambda: not w.running and w._worker is None, timeout=WAIT_MS)
    assert worker is not None

    outcome = w.outcome
    assert outcome.stopped
    rows = _summary(out)
    assert 1 <= len(rows) < N_MANY and outcome.counts.ok == len(rows) == outcome.counts.files_done
    assert "Stopped after" in w.status.text() and "run again" in w.status.text()
    assert any("Batch stopped" in m for m in notes.of("info"))
    assert w.run_button.isEnabled() and w.form_box.isEnabled()

    _run(qtbot, w)
    counts = w.outcome.counts
    assert not w.outcome.stopped and counts.skipped == len(rows) and counts.ok == N_MANY - len(rows)
    final = _summary(out)
    assert len(final) == N_MANY and len({r["input_path"] for r in final}) == N_MANY
    assert all(r["outputs"].endswith(".json") for r in final)


def test_invalid_inputs_block_run(widget, tmp_path, tiny_bundle):
    w = widget
    assert not w.run_button.isEnabled() and w.run() is None
    assert "no INPUT given" in w.inputs_message.text()
    assert "an output folder is required" in w.out_message.text()

    missing = tmp_path / "nowhere"
    w.add_inputs([missing])
    assert str(missing) in w.inputs_message.text() and "no such file" in w.inputs_message.text()
    w.inputs_list.setCurrentRow(0)
    w.remove_button.click()
    assert w.inputs == []

    src = _op_folder(tmp_path / "in", 1)
    w.add_inputs([src, src])
    assert w.inputs == [str(src)]  # each input once
    (tmp_path / "a file").write_text("x")
    w.out_edit.setText(str(tmp_path / "a file"))
    assert "not a folder" in w.out_message.text() and not w.run_button.isEnabled()
    w.out_edit.setText(str(tmp_path / "results"))
    not_a_bundle = tmp_path / "model"
    not_a_bundle.mkdir()
    w.model_edit.setText(str(not_a_bundle))
    assert str(not_a_bundle) in w.model_message.text() and not w.run_button.isEnabled()
    w.model_default.click()
    assert w.model_edit.text() == str(default_bundle_path())
    w.model_edit.setText(str(tiny_bundle))
    assert w.model_message.text() == "" and w.run_button.isEnabled()
    for box in w.format_checks.values():
        box.setChecked(False)
    assert not w.validate() and "--formats" in w.status.text()


def test_a_broken_model_becomes_an_error_notification(qtbot, widget, archive, tiny_bundle, tmp_path, notes):
    w = widget
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    (broken / WEIGHTS).write_bytes(b"not the weights")  # present, so the form accepts it
    w.model_edit.setText(str(broken))
    w.add_inputs([archive])
    w.out_edit.setText(str(tmp_path / "results"))
    _run(qtbot, w)
    errors = notes.of("error")
    assert any(m.startswith("Batch failed") and "model.pt" in m for m in errors), notes.seen
    assert w.outcome is None and w.progress.format() == "failed" and w.run_button.isEnabled()
    assert not (tmp_path / "results" / "summary.csv").exists()


def test_scheduler_field_checks_the_address_and_replaces_local_workers(widget, archive, tmp_path):
    w = widget
    w.add_inputs([archive])
    w.out_edit.setText(str(tmp_path / "results"))
    assert w.run_button.isEnabled() and w.config().scheduler is None and w.workers_spin.isEnabled()
    w.scheduler_edit.setText("not an address!")
    assert "not a scheduler address" in w.scheduler_message.text() and not w.run_button.isEnabled()
    w.scheduler_edit.setText("tcp://10.0.0.5:8786")
    assert w.scheduler_message.text() == "" and w.run_button.isEnabled()
    assert w.config().scheduler == "tcp://10.0.0.5:8786" and not w.workers_spin.isEnabled()
    w.scheduler_edit.setText("  ")
    assert w.config().scheduler is None and w.workers_spin.isEnabled()


def test_the_device_is_checked_here_only_when_the_batch_runs_here(widget, archive, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    w = widget
    w.add_inputs([archive])
    w.out_edit.setText(str(tmp_path / "results"))
    w.device_combo.setCurrentText("cuda")
    assert "no CUDA device" in w.device_message.text() and not w.run_button.isEnabled()
    w.scheduler_edit.setText("tcp://10.0.0.5:8786")  # the cluster's workers resolve it
    assert w.device_message.text() == "" and w.run_button.isEnabled()


def test_a_run_on_a_dask_cluster_gives_the_rows_of_a_local_run(qtbot, widget, archive, tmp_path, notes):
    distributed = pytest.importorskip("distributed")
    w = widget
    w.add_inputs([archive])
    w.out_edit.setText(str(tmp_path / "local"))
    _run(qtbot, w)
    local = sorted((r["input_path"], r["status"], r["probability"]) for r in _summary(tmp_path / "local"))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        w.scheduler_edit.setText(cluster.scheduler_address)
        w.out_edit.setText(str(tmp_path / "cluster"))
        _run(qtbot, w)
    on_cluster = sorted((r["input_path"], r["status"], r["probability"]) for r in _summary(tmp_path / "cluster"))
    assert on_cluster == local and len(local) == 6
    assert (w.counts.ok, w.counts.error, w.counts.declined) == (4, 1, 1)

    w.scheduler_edit.setText("tcp://127.0.0.1:9")  # nothing listens there
    w.out_edit.setText(str(tmp_path / "nowhere"))
    from napari_icnn.batch import cluster as cluster_module

    cluster_module.CONNECT_TIMEOUT_S, saved = 2, cluster_module.CONNECT_TIMEOUT_S
    try:
        _run(qtbot, w)
    finally:
        cluster_module.CONNECT_TIMEOUT_S = saved
    assert any(m.startswith("Batch failed") and "cannot connect to the Dask scheduler" in m
               for m in notes.of("error")), notes.seen
    assert not (tmp_path / "nowhere" / "summary.csv").exists()


def test_config_uses_batch_config_defaults(widget):
    defaults = BatchConfig(inputs=("x",), out="y")
    w = widget
    assert (
        w.device_combo.currentText(),
        w.batch_spin.value(),
        w.workers_spin.value(),
        w.top_k_spin.value(),
    ) == (defaults.device, defaults.batch, defaults.workers, defaults.top_k)
    assert w.formats() is None
    # the gate's two settings, off by default as on the command line, reach the run's configuration
    assert {n: b.isChecked() for n, b in w.gate_checks.items()} == {
        "keep_ungradeable": defaults.keep_ungradeable, "decline_unfamiliar": defaults.decline_unfamiliar}
    w.add_inputs(["x"])
    w.out_edit.setText("y")
    w.gate_checks["keep_ungradeable"].setChecked(True)
    assert w.config().keep_ungradeable and not w.config().decline_unfamiliar


def test_manifest_offers_the_batch_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-icnn", "Batch inference")
    assert isinstance(getattr(widget, "native", widget), BatchWidget)
