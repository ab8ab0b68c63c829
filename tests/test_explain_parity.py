"""``icnn explain`` and the Explain widget refuse the same bad model bundle in the same words.

Both call :func:`napari_icnn.bundle.check_model` before anything is read; what that check cannot see
without loading (weights tampered with, pickle-bearing or of another network) both learn from
:func:`napari_icnn.bundle.load_bundle`, and say as it says."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from conftest import make_bundle
from PIL import Image

from napari_icnn._widgets.explain_widget import ExplainWidget
from napari_icnn.bundle import METADATA, WEIGHTS, sha256_file
from napari_icnn.cli import main
from napari_icnn.data.synth import generate_fundus

pytestmark = pytest.mark.gui
pytest_plugins = ["gui_support"]

WAIT_MS = 60_000


@pytest.fixture(scope="module")
def fundus():
    return generate_fundus(4, size=160)


@pytest.fixture
def image(tmp_path, fundus):
    path = tmp_path / "scan.png"
    Image.fromarray(fundus.image).save(path)
    return path


@pytest.fixture
def widget(dock, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_ICNN_DATA_DIR", str(tmp_path / "data"))
    return dock(ExplainWidget, "Explain")


def _copy(tiny_bundle, tmp_path, name):
    return shutil.copytree(tiny_bundle, tmp_path / name)


def _rewrite_metadata(root, text: str | bytes):
    path = root / METADATA
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


# Each case makes a bad model "folder" (a path as the user would type it) from a good bundle.
BAD_FOLDERS = {
    "empty text": lambda good, tmp: "",
    "blank text": lambda good, tmp: "   ",
    "missing folder": lambda good, tmp: str(tmp / "no such model"),
    "a file, not a folder": lambda good, tmp: str(_file(tmp / "model.pt")),
    "folder without metadata": lambda good, tmp: str(_folder(tmp / "empty")),
    "folder without models/model.pt": lambda good, tmp: str(_without_weights(_copy(good, tmp, "no_weights"))),
    "corrupt metadata JSON": lambda good, tmp: str(_with_metadata(_copy(good, tmp, "corrupt"), '{"icnn": {')),
    "metadata not UTF-8": lambda good, tmp: str(_with_metadata(_copy(good, tmp, "latin"), b'{"name": "\xe9"}')),
    "metadata of another kind": lambda good, tmp: str(
        _with_metadata(_copy(good, tmp, "monai"), json.dumps({"name": "spleen_ct_segmentation"}))
    ),
    "metadata without filters": lambda good, tmp: str(
        _with_metadata(_copy(good, tmp, "no_filters"), json.dumps({"icnn": {"network": {}}}))
    ),
}


def _file(path):
    path.write_bytes(b"not a bundle")
    return path


def _folder(path):
    path.mkdir()
    return path


def _without_weights(root):
    (root / WEIGHTS).unlink()
    return root


def _with_metadata(root, text):
    _rewrite_metadata(root, text)
    return root


def _cli_error(capsys, image, model, out):
    capsys.readouterr()  # what the viewer printed before is not the command's
    rc = main(["explain", str(image), "--model", model, "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 1 and captured.out == "", (rc, captured.out)
    prefix = "icnn explain: error: "
    assert captured.err.startswith(prefix) and captured.err.endswith("\n"), captured.err
    assert not out.exists()  # refused before anything was written
    return captured.err[len(prefix):-1]


@pytest.mark.parametrize("case", list(BAD_FOLDERS))
def test_cli_and_widget_refuse_a_bad_model_folder_in_the_same_words(
    case, widget, fundus, image, tiny_bundle, tmp_path, capsys
):
    model = BAD_FOLDERS[case](tiny_bundle, tmp_path)
    widget.viewer.add_image(fundus.image, rgb=True, name="scan")
    widget.model_edit.setText(str(tiny_bundle))
    assert widget.run_button.isEnabled(), widget.model_message.text()

    widget.model_edit.setText(model)
    shown = widget.model_message.text()
    assert shown and widget.model_message.isVisibleTo(widget)
    assert not widget.run_button.isEnabled() and widget.run() is None
    assert _cli_error(capsys, image, model, tmp_path / "out") == shown


def _tampered(root):
    with open(root / WEIGHTS, "ab") as fh:
        fh.write(b"tampered")
    return root


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _pickle_bearing(root):
    state = torch.load(root / WEIGHTS, weights_only=True)
    state["evil"] = _Payload()
    torch.save(state, root / WEIGHTS)
    return _record_checksum(root)


def _other_network(root, tmp):
    other = make_bundle(tmp / "four_filters", n_filters=4)
    (root / WEIGHTS).write_bytes((other / WEIGHTS).read_bytes())
    return _record_checksum(root)


def _record_checksum(root):
    meta = json.loads((root / METADATA).read_text())
    meta["icnn"]["model_sha256"] = sha256_file(root / WEIGHTS)
    _rewrite_metadata(root, json.dumps(meta))
    return root


# Bundles whose folder passes the check; only loading the weights refuses them.
BAD_WEIGHTS = {
    "tampered weights": lambda good, tmp: _tampered(_copy(good, tmp, "tampered")),
    "pickle-bearing weights": lambda good, tmp: _pickle_bearing(_copy(good, tmp, "pickled")),
    "weights of another network": lambda good, tmp: _other_network(_copy(good, tmp, "other"), tmp),
}


@pytest.mark.parametrize("case", list(BAD_WEIGHTS))
def test_cli_and_widget_refuse_bad_weights_in_the_same_words(
    case, qtbot, widget, fundus, image, tiny_bundle, tmp_path, capsys, notes
):
    model = BAD_WEIGHTS[case](tiny_bundle, tmp_path)
    widget.viewer.add_image(fundus.image, rgb=True, name="scan")
    widget.model_edit.setText(str(model))
    assert widget.model_message.text() == "" and widget.run_button.isEnabled()
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    errors = notes.of("error")
    assert len(errors) == 1 and errors[0].startswith("Explain failed: "), notes.seen
    assert len(widget.viewer.layers) == 1  # nothing was added

    assert _cli_error(capsys, image, str(model), tmp_path / "out") == errors[0][len("Explain failed: "):]
