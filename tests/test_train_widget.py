"""The Train widget in a real napari viewer (Xvfb): a form made from TrainConfig, input checks that
block Train, a short run whose live plot gets the engine's epoch metrics and whose bundle Explain
then uses, Stop keeping the last checkpoint, Resume finishing the run, errors as notifications."""

from __future__ import annotations

import json
import threading
from dataclasses import MISSING, fields
from pathlib import Path

import numpy as np
import pytest
import torch
from qtpy.QtWidgets import QCheckBox, QLabel, QLineEdit
from test_train_preflight import PARITY, WIDGET_CANNOT, cli_error, parity_case, write_cohorts

from napari_icnn._widgets.explain_widget import ExplainWidget
from napari_icnn._widgets.train_widget import TrainWidget, explain_widgets, train_job
from napari_icnn.bundle import WEIGHTS, load_bundle, sha256_file
from napari_icnn.config import ARCHS, DEVICES, TASKS, TrainConfig, config_help, settings
from napari_icnn.data.synth import generate_fundus, write_cohort
from napari_icnn.devices import describe_device
from napari_icnn.engine.run_folder import inspect_output
from napari_icnn.layer_data import filter_name_of
from napari_icnn.progress import EpochEnd

WAIT_MS = 240_000  # training on a shared 2-core machine: generous, the runs themselves take ~10-30 s
SHORT = dict(size=64, epochs=2, warmup_epochs=1, batch=8)
pytest_plugins = ["gui_support"]


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohorts")
    write_cohort(root / "train", 24, size=96, seed=11, look="clean")
    write_cohort(root / "val", 8, size=96, seed=12, look="clean")
    return root


@pytest.fixture
def widget(dock, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_ICNN_DATA_DIR", str(tmp_path / "user-data"))
    return dock(TrainWidget, "Train", area="right")


def _fill(w, cohorts, out, **kw):
    w.set_values(data=str(cohorts / "train"), val=str(cohorts / "val"), out=str(out), **{**SHORT, **kw})


def _wait_idle(qtbot, w):
    qtbot.waitUntil(lambda: not w.running and w._worker is None, timeout=WAIT_MS)


# --------------------------------------------------------------------------- the form


@pytest.mark.gui
def test_form_is_made_from_train_config(widget):
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        if f.name == "resume":  # the Resume button
            continue
        editor = widget.field(f.name)
        assert editor.toolTip() == config_help(f.name)
        expected = getattr(defaults, f.name) if f.default is not MISSING else None
        assert widget.values()[f.name] == (
            pytest.approx(expected) if isinstance(expected, float) else expected
        )
    combos = {
        name: [widget.field(name).itemText(i) for i in range(widget.field(name).count())]
        for name in ("task", "arch", "device")
    }
    assert combos == {"task": list(TASKS), "arch": list(ARCHS), "device": list(DEVICES)}
    # labels, placeholders and box limits are TrainConfig's metadata too
    labels = {label.text() for label in widget.findChildren(QLabel)}
    for s in settings():
        if s.name == "resume":
            continue
        editor = widget.field(s.name)
        if isinstance(editor, QCheckBox):
            assert editor.text() == s.label
        else:
            assert s.label in labels, s.name
        if isinstance(editor, QLineEdit):
            assert editor.placeholderText() == s.placeholder
        if s.bounds is not None:
            shown = 10.0 ** -getattr(editor, "decimals", lambda: 0)()  # a box rounds its limits as it shows them
            assert (editor.minimum(), editor.maximum()) == pytest.approx(s.bounds, abs=shown), s.name
    assert widget.config() == TrainConfig()  # an untouched form is the engine's default run
    assert not widget.start_button.isEnabled() and not widget.stop_button.isEnabled()


@pytest.mark.gui
def test_invalid_inputs_block_train_with_a_message_next_to_the_field(widget, cohorts, tmp_path):
    w = widget
    _fill(w, cohorts, tmp_path / "new")
    assert w.start_button.isEnabled(), {n: w.message(n) for n in w.values() if w.message(n)}
    assert w.message("data").startswith("24 photographs · synth layout")

    missing = tmp_path / "no such folder"
    w.set_values(data=str(missing))
    assert not w.start_button.isEnabled() and w.start() is None
    assert str(missing) in w.message("data") and "no such file or folder" in w.message("data")
    assert w.field("data").styleSheet()  # the field is marked

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not a data set")
    w.set_values(data=str(junk))
    assert "unknown data layout" in w.message("data")

    w.set_values(data=str(cohorts / "train"), task="lesions")
    assert w.start_button.isEnabled(), w.message("data")  # the synthetic cohort has lesion labels

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "precious.txt").write_text("keep")
    w.set_values(out=str(busy))
    assert not w.start_button.isEnabled() and not w.resume_button.isEnabled()
    assert "not empty" in w.message("out") and str(busy) in w.message("out")
    assert (busy / "precious.txt").read_text() == "keep"

    w.set_values(out=str(tmp_path / "new"), epochs=3, warmup_epochs=3)
    assert "--warmup-epochs" in w.message("warmup_epochs") and not w.start_button.isEnabled()
    w.set_values(warmup_epochs=1, init=str(tmp_path / "no bundle"))
    assert "no bundle" in w.message("init") and not w.start_button.isEnabled()
    w.set_values(init=None)
    if not torch.cuda.is_available():
        w.set_values(device="cuda")
        assert "no CUDA device" in w.message("device") and not w.start_button.isEnabled()
        assert w.device_badge.text() == "no GPU"
        w.set_values(device="auto")
    assert w.start_button.isEnabled()
    assert not any(w.message(n) for n in ("out", "init", "device", "warmup_epochs"))


@pytest.mark.gui
def test_auto_fields_show_the_values_the_engine_will_use(widget, cohorts, tmp_path):
    w = widget
    assert w.field("warmup_epochs").text() == "auto" and w.field("batch").text() == "auto"
    w.set_values(data=str(cohorts / "train"), val=None, out=str(tmp_path / "new"), size=64, epochs=4)
    assert w.message("warmup_epochs").startswith("auto: 2 (half of 4 epochs")
    assert w.message("epochs") == ""  # given, so not derived
    # 24 images, 5 held out for validation: a batch of the 16 default fits the 19 left
    assert w.message("batch").startswith("auto: 16") and w.start_button.isEnabled()
    w.set_values(epochs=1)
    assert w.message("warmup_epochs").startswith("auto: 0") and w.start_button.isEnabled()
    w.set_values(batch=20)  # more than the training images: the form says so, naming the flag
    assert w.message("batch").startswith("--batch 20:") and "19 training images" in w.message("batch")
    assert not w.start_button.isEnabled()
    w.set_values(batch=None, warmup_epochs=1)  # explicit and in conflict with the explicit epochs
    assert "--warmup-epochs 1" in w.message("warmup_epochs") and "--epochs (1)" in w.message("warmup_epochs")
    assert not w.start_button.isEnabled()
    w.set_values(warmup_epochs=None, max_train_images=1)  # a message is placed by the field it names
    assert w.message("max_train_images").startswith("--max-train-images: must be at least 2")
    assert not w.start_button.isEnabled()
    w.set_values(max_train_images=None)
    assert w.config() == TrainConfig(data=str(cohorts / "train"), out=str(tmp_path / "new"), size=64, epochs=1)
    assert w.start_button.isEnabled()


@pytest.mark.gui
def test_device_badge_says_what_auto_resolves_to(widget):
    info = describe_device("auto")
    if torch.cuda.is_available():
        assert info.kind == "gpu" and info.text == f"GPU · {torch.cuda.get_device_name(0)}"
    else:
        assert info.kind == "cpu" and info.text == "CPU" and info.problem is None
        assert ("CPU-only build" in info.detail) == (torch.version.cuda is None)
    assert widget.device_badge.text() == info.text and widget.device_badge.toolTip() == info.detail


@pytest.mark.gui
def test_the_widget_shows_what_icnn_train_prints(widget, tmp_path_factory, tmp_path, capsys):
    """One table of bad inputs: the message under the field is the CLI's error, word for word."""
    data = write_cohorts(tmp_path_factory.mktemp("parity"))
    w = widget
    touched = {name for _, overrides, _ in PARITY for name in overrides}
    untouched = {name: w.values()[name] for name in touched}
    for what, overrides, field in PARITY:
        if field in WIDGET_CANNOT or (field == "device" and torch.cuda.is_available()):
            continue
        values = parity_case(overrides, data, tmp_path)
        w.set_values(**{**untouched, **values})
        assert not w.start_button.isEnabled(), what
        assert w.message(field) == cli_error(capsys, values), what
    w.set_values(**{**untouched, **parity_case({}, data, tmp_path)})
    assert w.start_button.isEnabled(), {n: w.message(n) for n in w.values() if w.message(n)}


# --------------------------------------------------------------------------- running


@pytest.mark.gui
def test_short_run_plots_epochs_and_hands_the_bundle_to_explain(qtbot, widget, cohorts, tmp_path, notes):
    w = widget
    out = tmp_path / "model"
    _fill(w, cohorts, out)
    assert w.start() is not None
    assert w.running and not w.start_button.isEnabled() and w.stop_button.isEnabled()
    assert not w.form_box.isEnabled()
    _wait_idle(qtbot, w)

    outcome = w.outcome
    assert outcome is not None and not outcome.stopped and outcome.epochs_done == 2
    assert outcome.bundle == out and (out / WEIGHTS).is_file() and outcome.best_epoch == 2
    # The plot holds exactly the engine's epoch metrics (the history it wrote beside the model).
    history = json.loads((out / "checkpoints" / "history.json").read_text())
    series = w.plot.series
    for key in ("cls_loss", "val_loss", "val_auc"):
        assert series[key] == [(h["epoch"], pytest.approx(h[key])) for h in history]
    assert len(w.plot.loss_ax.lines) == 2 and len(w.plot.auc_ax.lines) == 2  # + the chance line
    assert w.progress.value() == w.progress.maximum()
    assert w.epoch_label.text().startswith("Epoch 2/2 · train loss")
    assert "Finished 2 epochs" in w.status.text() and str(out) in w.status.text()
    assert any("Training finished" in m for m in notes.of("info")), notes.seen
    # Idle again; the folder now holds a finished run, so a new run needs a new folder.
    assert w.form_box.isEnabled() and not w.stop_button.isEnabled() and not w.start_button.isEnabled()
    assert "finished run" in w.message("out") and not w.resume_button.isEnabled()

    # Hand-over: no Explain widget is docked yet, so one is docked, pointed at the new model.
    assert w.explain_button.isEnabled() and not explain_widgets(w.viewer)
    w.explain_button.click()
    docked = explain_widgets(w.viewer)
    assert len(docked) == 1
    explain = docked[0]
    assert Path(explain.model_edit.text()) == out and explain.model_message.text() == ""
    fundus = generate_fundus(5, size=128)
    w.viewer.add_image(fundus.image, rgb=True, name="scan")
    assert explain.run() is not None
    qtbot.waitUntil(lambda: not explain.running, timeout=WAIT_MS)
    assert str(out) in explain.model_label.toolTip()
    assert sha256_file(out / WEIGHTS) in explain.model_label.toolTip()
    regions = [la for la in w.viewer.layers if type(la).__name__ == "Labels"]
    # every layer is a named filter, the context's and possible artefacts' behind their group's prefix
    assert regions and all(filter_name_of(la.name).startswith("filter ") for la in regions)
    # A second hand-over reuses the docked Explain widget.
    assert w.use_in_explain(out) is explain and len(explain_widgets(w.viewer)) == 1


@pytest.mark.gui
def test_stop_keeps_the_checkpoint_and_resume_finishes_the_run(qtbot, widget, cohorts, tmp_path, notes):
    w = widget
    out = tmp_path / "run"
    _fill(w, cohorts, out, epochs=3, warmup_epochs=1, batch=4)  # 6 batches an epoch: room to stop in one
    w.start()
    qtbot.waitUntil(lambda: w.progress.format().startswith("epoch 2/3 · batch"), timeout=WAIT_MS)
    w.stop()
    assert w.stop_button.text() == "Stopping…" and not w.stop_button.isEnabled()
    assert "checkpoint" in w.status.text()
    _wait_idle(qtbot, w)

    outcome = w.outcome
    done = outcome.epochs_done
    assert (
        outcome.stopped and w.form_box.isEnabled() and any("Training stopped" in m for m in notes.of("info"))
    )
    saved = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert saved["epoch"] == done
    if done == 1:  # stopped in epoch 2: epoch 1 was warm-up, so there is no interpretable model yet ...
        assert outcome.bundle is None and not (out / WEIGHTS).exists()
        assert "no model yet" in w.status.text()  # ... and the user is told
        assert not w.explain_button.isEnabled()
    else:  # a fast machine finished epoch 2 before the stop reached it: its model is kept
        assert done == 2 and outcome.bundle == out and outcome.best_epoch == 2
        assert "best epoch so far (2)" in w.status.text() and w.explain_button.isEnabled()
    assert f"Stopped after epoch {done} of 3" in w.status.text() and "Resume" in w.status.text()
    assert w.resume_button.isEnabled() and not w.start_button.isEnabled()
    assert f"stopped after epoch {done} of 3" in w.message("out")

    w.resume_button.click()
    assert w.running and w.plot.series["val_auc"][0][0] == 1  # the earlier epoch stays on the plot
    _wait_idle(qtbot, w)
    outcome = w.outcome
    assert not outcome.stopped and outcome.epochs_done == 3 and outcome.bundle == out
    history = json.loads((out / "checkpoints" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert [e for e, _ in w.plot.series["val_auc"]] == [1, 2, 3]
    assert load_bundle(out, device="cpu").net.interpretable


def test_stop_after_an_interpretable_epoch_leaves_a_model(cohorts, tmp_path):
    """The job without a GUI: stopped in epoch 2, the bundle of epoch 1 is there and loads."""
    stop = threading.Event()
    out = tmp_path / "m"
    cfg = TrainConfig(
        data=str(cohorts / "train"),
        val=str(cohorts / "val"),
        out=str(out),
        size=64,
        epochs=4,
        warmup_epochs=0,
        batch=8,
    )
    job = train_job(cfg, stop)
    events = []
    try:
        while True:
            event = next(job)
            events.append(event)
            if isinstance(event, EpochEnd):
                stop.set()
    except StopIteration as done:
        outcome = done.value
    assert [e.epoch for e in events if isinstance(e, EpochEnd)] == [1]
    assert outcome.stopped and outcome.epochs_done == 1 and outcome.best_epoch == 1 and outcome.bundle == out
    assert "best epoch so far (1)" in outcome.describe() and "Resume" in outcome.describe()
    assert load_bundle(out, device="cpu").net.interpretable
    state = inspect_output(str(out))
    assert state.can_resume and (state.epochs_done, state.epochs) == (1, 4)


@pytest.mark.gui
def test_a_failing_run_becomes_an_error_notification(qtbot, widget, cohorts, tmp_path, notes):
    w = widget
    data = tmp_path / "data"
    write_cohort(data, 12, size=96, seed=21, look="clean")
    broken = sorted((data / "images").iterdir())[3]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(40)))  # a PNG cut short after its signature
    w.set_values(data=str(data), val=None, out=str(tmp_path / "out"), **SHORT)
    assert w.start_button.isEnabled(), w.message("data")  # the layout is fine; the pixels are not
    w.start()
    _wait_idle(qtbot, w)
    errors = notes.of("error")
    assert any(m.startswith("Training failed") and broken.name in m for m in errors), notes.seen
    assert w.outcome is None and "Training failed" in w.status.text() and w.progress.format() == "failed"
    assert w.form_box.isEnabled() and not w.stop_button.isEnabled()
    assert np.all([not (tmp_path / "out" / WEIGHTS).exists()])


@pytest.mark.gui
def test_form_remembers_the_settings_of_the_last_run(qtbot, dock, cohorts, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_ICNN_DATA_DIR", str(tmp_path / "user-data"))
    monkeypatch.delenv("NAPARI_ICNN_NOPERSIST", raising=False)
    config = tmp_path / "config"
    monkeypatch.setenv("NAPARI_ICNN_CONFIG_DIR", str(config))
    w = dock(TrainWidget, "Train", area="right")
    assert w.values()["epochs"] == TrainConfig().epochs  # nothing remembered yet
    _fill(w, cohorts, tmp_path / "first", arch="resnet", lr=0.002, free_fraction=0.5, augment=False, epochs=30)
    assert w.start() is not None
    w.stop()
    _wait_idle(qtbot, w)
    saved = json.loads((config / "train.json").read_text())
    assert saved["data"] == str(cohorts / "train") and saved["epochs"] == 30 and "out" not in saved

    restored = dock(TrainWidget, "Train", area="right")
    again = restored.values()
    for name in ("data", "val", "arch", "lr", "free_fraction", "augment", "epochs", "size", "batch"):
        assert again[name] == w.values()[name], name
    assert again["out"] == "" and again["arch"] == "resnet" and again["augment"] is False  # a run needs a new folder
    # restored advanced values (learning rate, label-free share, augmentation) are shown, not hidden
    assert restored.advanced_toggle.isChecked() and restored.advanced.isVisibleTo(restored)

    # a damaged or foreign file is read value by value: what still fits its field is kept, the rest defaulted
    (config / "train.json").write_text(json.dumps(
        {"epochs": "many", "lr": 0.005, "augment": "no", "arch": "alexnet", "n_filters": 2.5, "val": None,
         "bogus": 1, "out": "/somewhere"}))
    mixed = dock(TrainWidget, "Train", area="right").values()
    default = TrainConfig()
    assert mixed["lr"] == pytest.approx(0.005) and mixed["val"] is None and again["val"] is not None
    assert (mixed["epochs"], mixed["augment"], mixed["arch"], mixed["n_filters"], mixed["out"]) == (
        default.epochs, default.augment, default.arch, default.n_filters, "")
    (config / "train.json").write_text("[not json")
    fresh = dock(TrainWidget, "Train", area="right")
    assert fresh.values()["lr"] == pytest.approx(default.lr) and not fresh.advanced_toggle.isChecked()


@pytest.mark.gui
def test_closing_the_widget_stops_its_run(qtbot, make_napari_viewer, cohorts, tmp_path):
    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    _fill(w, cohorts, tmp_path / "closed", epochs=50)
    worker = w.start()
    stop = w._stop
    finished = []
    worker.finished.connect(lambda: finished.append(True))
    w.deleteLater()
    del w
    qtbot.waitUntil(lambda: bool(finished), timeout=WAIT_MS)
    assert stop.is_set()
    hist = tmp_path / "closed" / "checkpoints" / "history.json"
    assert not hist.exists() or len(json.loads(hist.read_text())) < 50


@pytest.mark.gui
def test_explain_widgets_finds_docked_explain(make_napari_viewer, tiny_bundle):
    viewer = make_napari_viewer()
    assert explain_widgets(viewer) == []
    e = ExplainWidget(viewer)
    viewer.window.add_dock_widget(e, name="Explain")
    assert explain_widgets(viewer) == [e]


@pytest.mark.gui
def test_manifest_offers_the_train_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-icnn", "Train")
    assert isinstance(getattr(widget, "native", widget), TrainWidget)
