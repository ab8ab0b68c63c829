"""``icnn infer`` and the Batch widget refuse the same set-ups in the same words: a table of bad set-ups,
each given to the command line (its one stderr line) and to the widget (the message under the field,
or, for what only the run can find, the error notification), in a real napari viewer (Xvfb)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_batch_data import png

from napari_icnn._widgets.batch_widget import BatchWidget
from napari_icnn.cli import main

pytestmark = pytest.mark.gui
pytest_plugins = ["gui_support"]

CLI_PREFIX = "icnn infer: error: "
WAIT_MS = 120_000


@pytest.fixture
def place(tmp_path):
    """A folder holding one photograph, a file, an empty folder and a folder that is not a bundle."""
    (tmp_path / "in").mkdir()
    png(tmp_path / "in" / "a.png", size=160)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "not_a_bundle").mkdir()
    return tmp_path


def _cases():
    """(name, inputs, out, options, the widget's field) with paths relative to the ``place``; ``{bundle}``
    is the tiny bundle."""
    ok_in, ok_out = ["in"], "results"
    return [
        ("output folder is a file", ok_in, "a_file", {}, "out"),
        ("output folder under a file", ok_in, "a_file/sub", {}, "out"),
        ("no output folder", ok_in, "", {}, "out"),
        ("malformed scheduler address", ok_in, ok_out, {"scheduler": "tcp://nohost:notaport"}, "scheduler"),
        ("scheduler of another protocol", ok_in, ok_out, {"scheduler": "http://host:8786"}, "scheduler"),
        ("no inputs", [], ok_out, {}, "inputs"),
        ("a missing input path", ["in", "nowhere"], ok_out, {}, "inputs"),
        ("a folder that is not a model bundle", ok_in, ok_out, {"model": "not_a_bundle"}, "model"),
        ("a model bundle that does not exist", ok_in, ok_out, {"model": "no_model"}, "model"),
        ("cuda on a machine without it", ok_in, ok_out, {"device": "cuda"}, "device"),
    ]


def _resolve(place: Path, tiny_bundle: Path, inputs, out, options):
    inputs = [str(place / i) for i in inputs]
    out = str(place / out) if out else ""
    model = str(place / options["model"]) if "model" in options else str(tiny_bundle)
    return inputs, out, model, options.get("device", "auto"), options.get("scheduler")


def _cli_error(capsys, inputs, out, model, device, scheduler) -> str:
    args = ["infer", *inputs, "--out", out, "--model", model, "--device", device, "--workers", "0"]
    if scheduler:
        args += ["--scheduler", scheduler]
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(CLI_PREFIX), err
    return err[len(CLI_PREFIX):]


def _fill(w: BatchWidget, inputs, out, model, device, scheduler) -> None:
    w.add_inputs(inputs)
    w.out_edit.setText(out)
    w.model_edit.setText(model)
    w.device_combo.setCurrentText(device)
    w.scheduler_edit.setText(scheduler or "")


@pytest.mark.parametrize("name, inputs, out, options, field", _cases(), ids=[c[0] for c in _cases()])
def test_the_form_refuses_what_the_command_line_refuses_in_its_words(
    name, inputs, out, options, field, place, tiny_bundle, dock, capsys
):
    if field == "device":
        import torch

        if torch.cuda.is_available():
            pytest.skip("needs a machine without CUDA")
    values = _resolve(place, tiny_bundle, inputs, out, options)
    cli = _cli_error(capsys, *values)

    w = dock(BatchWidget, "Batch", area="right")
    _fill(w, *values)
    labels = {"inputs": w.inputs_message, "out": w.out_message, "model": w.model_message,
              "device": w.device_message, "scheduler": w.scheduler_message}
    assert not w.run_button.isEnabled() and w.run() is None
    assert labels[field].text() == cli, name
    others = [f for f, label in labels.items() if f != field and label.text()]
    assert not others, [labels[f].text() for f in others]
    assert not (place / "results").exists()  # neither created anything


def _run_level_cases():
    return [
        ("no input files in the folder", ["empty"], "results", {}),
        ("a scheduler nobody answers at", ["in"], "results", {"scheduler": "tcp://127.0.0.1:9"}),
    ]


@pytest.mark.parametrize("name, inputs, out, options", _run_level_cases(), ids=[c[0] for c in _run_level_cases()])
def test_what_only_the_run_finds_is_reported_in_the_same_words(
    name, inputs, out, options, place, tiny_bundle, dock, capsys, notes, qtbot, monkeypatch
):
    if "scheduler" in options:
        pytest.importorskip("distributed")
        from napari_icnn.batch import cluster

        monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 2)
    values = _resolve(place, tiny_bundle, inputs, out, options)
    cli = _cli_error(capsys, *values)

    w = dock(BatchWidget, "Batch", area="right")
    _fill(w, *values)
    assert w.run_button.isEnabled(), (w.inputs_message.text(), w.scheduler_message.text())
    assert w.run() is not None
    qtbot.waitUntil(lambda: not w.running and w._worker is None, timeout=WAIT_MS)
    errors = notes.of("error")
    assert errors == [f"Batch failed: {cli}"], (name, errors, cli)
