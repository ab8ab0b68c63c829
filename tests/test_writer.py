"""Writers of the evidence layers: DICOM SEG referencing the source instance (read back with
highdicom), PNG/TIFF masks + JSON for any scan, never replacing foreign files; also through
napari's own save path with the plugin's manifest."""

from __future__ import annotations

import json

import highdicom as hd
import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_icnn._writer import EVIDENCE_FORMAT, write_evidence_masks, write_evidence_seg
from napari_icnn.bundle import load_bundle
from napari_icnn.data.synth import generate_fundus
from napari_icnn.dicom.op_writer import write_op
from napari_icnn.dicom.read import read_dicom
from napari_icnn.errors import InputError
from napari_icnn.explain import explain
from napari_icnn.image import FundusImage
from napari_icnn.layer_data import EVIDENCE_KEY, evidence_layers


@pytest.fixture(scope="module")
def model(tiny_bundle):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def dicom_scan(tmp_path_factory) -> FundusImage:
    """A right-eye OP instance (lossless, so the pixels are the generator's) read back as a frame."""
    folder = tmp_path_factory.mktemp("op")
    pixels = np.ascontiguousarray(np.pad(generate_fundus(3, size=144).image, ((0, 0), (8, 24), (0, 0))))
    write_op(folder / "IM0001", pixels, laterality="R", transfer_syntax="explicit")
    (image,) = read_dicom(folder / "IM0001")
    return image


@pytest.fixture(scope="module")
def dicom_layers(dicom_scan, model):
    expl = explain(dicom_scan, model)
    return expl, evidence_layers(expl, scan="scan", top_k=3, source=dicom_scan, model_path="bundle")


def _labels(layers):
    return [ld for ld in layers if ld[2] == "labels"]


# --------------------------------------------------------------------------- DICOM SEG


def test_seg_from_evidence_layers_reads_back_with_highdicom(tmp_path, dicom_scan, dicom_layers):
    expl, layers = dicom_layers
    scan_layer = (dicom_scan.pixels, {"name": "OP R", "metadata": {"icnn_source": dicom_scan}}, "image")
    # A clinician renamed one layer in napari: the segment label follows the layer's name.
    renamed = [
        (d, dict(kw, name="filter X · my lesion") if i == 0 else kw, t)
        for i, (d, kw, t) in enumerate(_labels(layers))
    ]

    written = write_evidence_seg(str(tmp_path / "evidence.dcm"), [scan_layer, *renamed])

    assert written == [str(tmp_path / "evidence.dcm")]
    seg = hd.seg.segread(written[0])
    labels = [kw["name"] for _, kw, _ in renamed]
    assert [seg.get_segment_description(i + 1).segment_label for i in range(len(labels))] == labels
    refs = seg.get_source_image_uids()
    assert (
        dicom_scan.study_instance_uid,
        dicom_scan.series_instance_uid,
        dicom_scan.sop_instance_uid,
    ) in refs
    assert seg.SegmentationType == "FRACTIONAL"
    # Each segment is the filter's map on the scan's own pixel grid (stored in 1/255 steps). Read by
    # segment number: a silent filter's all-zero frame is left out of the SEG, so frames do not line up
    # with segments.
    for number, (_, kw, _) in enumerate(renamed, start=1):
        fid = kw["metadata"][EVIDENCE_KEY].filter_id
        frame = seg.get_pixels_by_source_instance([dicom_scan.sop_instance_uid], segment_numbers=[number])[0, ..., 0]
        assert frame.shape == dicom_scan.shape
        np.testing.assert_allclose(frame, expl.map_on_scan(fid), atol=0.5 / 255 + 1e-6)


def test_seg_refuses_a_scan_that_is_not_dicom(tmp_path, model):
    pixels = generate_fundus(4, size=128).image
    plain = FundusImage(pixels=pixels, source="photo.png")
    layers = evidence_layers(explain(plain, model), scan="s", top_k=2, source=plain)
    with pytest.raises(InputError, match=r"not read from DICOM.*\.json") as err:
        write_evidence_seg(str(tmp_path / "x.dcm"), layers)
    assert str(tmp_path / "x.dcm") in str(err.value)
    assert not (tmp_path / "x.dcm").exists()


def test_seg_refuses_labels_that_are_not_evidence(tmp_path, dicom_layers):
    _, layers = dicom_layers
    disc = (
        np.zeros((10, 10), np.uint8),
        {"name": "optic disc", "metadata": {"part_key": "optic_disc"}},
        "labels",
    )
    with pytest.raises(InputError, match="'optic disc' is not evidence"):
        write_evidence_seg(str(tmp_path / "x.dcm"), [*_labels(layers), disc])
    with pytest.raises(InputError, match="no evidence layers selected"):
        write_evidence_seg(str(tmp_path / "x.dcm"), [ld for ld in layers if ld[2] == "image"])


def test_seg_refuses_evidence_of_two_scans(tmp_path, dicom_scan, model):
    expl = explain(dicom_scan, model)
    a = evidence_layers(expl, scan="a", top_k=1, source=dicom_scan)
    b = evidence_layers(expl, scan="b", top_k=1, source=dicom_scan)
    with pytest.raises(InputError, match="different scans"):
        write_evidence_seg(str(tmp_path / "x.dcm"), _labels(a) + _labels(b))


# --------------------------------------------------------------------------- masks + JSON


def test_masks_and_json_for_a_plain_photograph(tmp_path, model):
    pixels = np.ascontiguousarray(np.pad(generate_fundus(6, size=128).image, ((10, 0), (0, 30), (0, 0))))
    plain = FundusImage(pixels=pixels, source="photo.png")
    expl = explain(plain, model)
    layers = evidence_layers(expl, scan="s", top_k=3, threshold=0.6, source=plain)
    labels = _labels(layers)
    # A region edited by hand in napari is written as edited.
    edited = labels[0][0].copy()
    edited[:5, :5] = 1
    labels[0] = (edited, labels[0][1], "labels")

    written = write_evidence_masks(
        str(tmp_path / "evidence.json"), [*labels, *(ld for ld in layers if ld[2] == "image")]
    )

    doc = json.loads((tmp_path / "evidence.json").read_text())
    assert written[0] == str(tmp_path / "evidence.json") and len(written) == 1 + 2 * len(labels)
    assert doc["format"] == EVIDENCE_FORMAT and "Not for clinical use" in doc["note"]
    assert doc["model"] == {
        "name": expl.model_name,
        "version": expl.model_version,
        "sha256": expl.model_sha256,
    }
    assert doc["prediction"]["class"] == expl.predicted_class
    assert doc["scan"]["shape"] == list(plain.shape)
    assert [e["layer"] for e in doc["filters"]] == [kw["name"] for _, kw, _ in labels]
    for entry, (data, kw, _) in zip(doc["filters"], labels, strict=True):
        info = kw["metadata"][EVIDENCE_KEY]
        f = expl.filter(info.filter_id)
        assert entry["filter_id"] == f.id and entry["part"] == f.part
        assert entry["contribution"] == pytest.approx(f.contribution, abs=1e-6)
        mask = np.asarray(Image.open(tmp_path / entry["mask"]))
        np.testing.assert_array_equal(mask, (data > 0).astype(np.uint8) * 255)
        assert entry["pixels"] == int((data > 0).sum())
        np.testing.assert_array_equal(tifffile.imread(tmp_path / entry["map"]), expl.map_on_scan(f.id))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_masks_writer_replaces_its_own_export_but_not_foreign_files(tmp_path, model):
    plain = FundusImage(pixels=generate_fundus(6, size=128).image, source="photo.png")
    expl = explain(plain, model)
    first = _labels(evidence_layers(expl, scan="s", top_k=3, source=plain))
    second = _labels(evidence_layers(expl, scan="s", top_k=1, source=plain))
    target = tmp_path / "evidence.json"

    assert len(second) < len(first)
    write_evidence_masks(str(target), first)
    write_evidence_masks(str(target), second)
    assert len(json.loads(target.read_text())["filters"]) == len(second)
    assert len(list((tmp_path / "evidence_masks").glob("*.png"))) == len(second)

    foreign = tmp_path / "notes.json"
    foreign.write_text('{"my": "notes"}')
    with pytest.raises(InputError, match="not written by napari-icnn"):
        write_evidence_masks(str(foreign), second)
    assert foreign.read_text() == '{"my": "notes"}'
    (tmp_path / "other_masks").mkdir()
    with pytest.raises(InputError, match="other_masks: already exists"):
        write_evidence_masks(str(tmp_path / "other.json"), second)
    assert not (tmp_path / "other.json").exists()


# --------------------------------------------------------------------------- through napari


def test_napari_saves_selected_evidence_with_the_plugin_writers(tmp_path, dicom_scan, dicom_layers):
    from napari.layers import Layer
    from napari.plugins.io import save_layers
    from npe2 import PluginManager

    PluginManager.instance().discover()  # what napari does at start-up
    _, layers = dicom_layers
    napari_layers = [Layer.create(data, kw, kind) for data, kw, kind in layers]

    seg_paths = save_layers(str(tmp_path / "ev.dcm"), napari_layers, plugin="napari-icnn")
    json_paths = save_layers(str(tmp_path / "ev.json"), napari_layers, plugin="napari-icnn")

    assert seg_paths == [str(tmp_path / "ev.dcm")]
    seg = hd.seg.segread(seg_paths[0])
    assert seg.number_of_segments == len(_labels(layers))
    assert dicom_scan.sop_instance_uid in {uids[2] for uids in seg.get_source_image_uids()}
    assert json_paths[0] == str(tmp_path / "ev.json")
    assert (
        json.loads((tmp_path / "ev.json").read_text())["scan"]["sop_instance_uid"]
        == dicom_scan.sop_instance_uid
    )


def test_napari_save_of_a_non_dicom_scan_as_seg_notifies_the_reason(tmp_path, model):
    from napari.layers import Layer
    from napari.plugins.io import save_layers
    from napari.utils.notifications import notification_manager
    from npe2 import PluginManager

    PluginManager.instance().discover()
    plain = FundusImage(pixels=generate_fundus(4, size=128).image, source="photo.png")
    layers = [
        Layer.create(*ld) for ld in evidence_layers(explain(plain, model), scan="s", top_k=1, source=plain)
    ]
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        with pytest.warns(UserWarning, match="did not return any written paths"):
            written = save_layers(str(tmp_path / "ev.dcm"), layers, plugin="napari-icnn")
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
    assert written == [] and not (tmp_path / "ev.dcm").exists()
    assert any("not read from DICOM" in str(n.message) and str(n.severity) == "error" for n in seen)
