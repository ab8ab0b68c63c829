"""The napari DICOM reader: what it accepts and declines, the layers it makes, and the same
through a real napari viewer (under Xvfb)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from napari_icnn._reader import MAX_NOTICES, layer_name, napari_get_reader, read_fundus_dicom
from napari_icnn.data.synth import generate_fundus
from napari_icnn.dicom.op_writer import write_op
from napari_icnn.image import FundusImage

# Distinctive enough that finding them anywhere in a layer name can only mean a leak.
PATIENT_NAME = "Quillfeather^Zenobia"
PATIENT_ID = "ZQ-4471-9083"
STUDY_DATE = "20240102"
NAME_PATTERN = re.compile(r"^OP [LR] 2024-01-02 · …[0-9.]{6}( f\d+)?$")


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """Three different synthetic photographs, 128 px: the frames of a multi-frame instance."""
    return np.stack([generate_fundus(seed, size=128).image for seed in (3, 5, 11)])


def _op(path: Path, pixels: np.ndarray, laterality: str = "R", **kwargs) -> Path:
    kwargs.setdefault("transfer_syntax", "explicit")
    write_op(
        path,
        pixels,
        laterality=laterality,
        patient_name=PATIENT_NAME,
        patient_id=PATIENT_ID,
        study_date=STUDY_DATE,
        **kwargs,
    )
    return path


def _ct(folder: Path, name: str = "CT_small.dcm") -> Path:
    return Path(shutil.copy(get_testdata_file("CT_small.dcm"), folder / name))


def _assert_no_phi(names: list[str]) -> None:
    for name in names:
        for part in (*PATIENT_NAME.split("^"), PATIENT_ID):
            assert part.lower() not in name.lower(), name


def _warnings_during(action):
    """Run ``action``; return its result and the napari warnings it raised."""
    from napari.utils.notifications import notification_manager

    before = len(notification_manager.records)
    result = action()
    return result, [str(n.message) for n in notification_manager.records[before:]]


# --------------------------------------------------------------------------- napari_get_reader


def test_get_reader_accepts_dicom_by_content_files_folders_and_lists(tmp_path, frames):
    single = _op(tmp_path / "eye.dcm", frames[0])
    bare = _op(tmp_path / "IM0001", frames[1])  # PACS exports often drop the extension
    nested = tmp_path / "study" / "series"
    nested.mkdir(parents=True)
    _op(nested / "IM1", frames[2])

    for path in (single, bare, str(single), tmp_path, tmp_path / "study", [single, bare]):
        assert napari_get_reader(path) is read_fundus_dicom, path


def test_get_reader_declines_what_it_cannot_read(tmp_path, frames):
    png = tmp_path / "fundus.png"
    Image.fromarray(frames[0]).save(png)
    text = tmp_path / "notes.txt"
    text.write_text("visual acuity 6/6\n")
    fake = tmp_path / "fake.dcm"
    fake.write_bytes(b"\0" * 200)
    empty = tmp_path / "empty"
    empty.mkdir()
    others = tmp_path / "others"  # DICOM, but nothing a fundus model can use
    others.mkdir()
    _ct(others)
    shutil.copy(text, others / "README")
    red_free = _op(tmp_path / "redfree.dcm", frames[0][..., 1])

    for path in (png, text, fake, empty, others, others / "CT_small.dcm", red_free, tmp_path / "missing.dcm"):
        assert napari_get_reader(path) is None, path
    assert napari_get_reader([png, text]) is None
    # The reader contract: decline, never raise.
    assert napari_get_reader(None) is None
    assert napari_get_reader(42) is None


# --------------------------------------------------------------------------- layers


def test_single_frame_layer_keeps_pixels_source_and_no_patient_data(tmp_path, frames):
    path = _op(tmp_path / "eye.dcm", frames[0], laterality="L", pixel_spacing=(0.0112, 0.0114))

    (layer,) = read_fundus_dicom(path)

    pixels, kwargs, layer_type = layer
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert layer_type == "image"
    np.testing.assert_array_equal(pixels, frames[0])
    assert kwargs["rgb"] is True and kwargs["scale"] == (1.0, 1.0)
    assert kwargs["name"] == f"OP L 2024-01-02 · …{ds.SOPInstanceUID[-6:]}"
    meta = kwargs["metadata"]
    assert meta["laterality"] == "L" and meta["study_date"] == STUDY_DATE and meta["modality"] == "OP"
    assert meta["sop_instance_uid"] == ds.SOPInstanceUID
    assert meta["study_instance_uid"] == ds.StudyInstanceUID
    assert meta["series_instance_uid"] == ds.SeriesInstanceUID
    assert meta["frame"] is None and meta["source"] == str(path)
    assert meta["pixel_spacing"] == pytest.approx((0.0112, 0.0114))
    source = meta["icnn_source"]
    assert isinstance(source, FundusImage) and source.pixels is pixels
    assert source.header.SOPInstanceUID == ds.SOPInstanceUID  # kept for SEG/SR references
    _assert_no_phi([kwargs["name"]])


def test_layer_name_leaves_out_unknowns_and_never_uses_the_file_name():
    pixels = np.zeros((64, 64, 3), np.uint8)
    named_after_patient = f"/exports/{PATIENT_NAME}/{PATIENT_ID}.dcm"
    image = FundusImage(pixels=pixels, source=named_after_patient, study_date="2024-1-2")

    name = layer_name(image)

    assert re.fullmatch(r"DICOM · #[0-9a-f]{6}", name), name
    _assert_no_phi([name])
    other = FundusImage(pixels=pixels, source=named_after_patient + "x")
    assert layer_name(other) != name  # the hash tells files apart


def test_folder_read_in_natural_order_skipping_others_with_reasons(tmp_path, frames):
    _op(tmp_path / "IM10", frames[2], sop_instance_uid="1.2.826.0.1.3680043.8.498.10")
    _op(tmp_path / "IM2", frames[1], sop_instance_uid="1.2.826.0.1.3680043.8.498.2")
    (tmp_path / "a").mkdir()
    _op(tmp_path / "a" / "IM1.dcm", frames[0], sop_instance_uid="1.2.826.0.1.3680043.8.498.1")
    ct = _ct(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes((tmp_path / "IM2").read_bytes()[:-5000])
    shutil.copy(get_testdata_file("DICOMDIR"), tmp_path / "DICOMDIR")  # an index, not an image
    shutil.copy(tmp_path / "IM2", tmp_path / "._IM2")  # macOS resource-fork litter

    layers, warnings = _warnings_during(lambda: read_fundus_dicom(tmp_path))

    uids = [kwargs["metadata"]["sop_instance_uid"] for _, kwargs, _ in layers]
    assert [u.rsplit(".", 1)[1] for u in uids] == ["1", "2", "10"]  # a/IM1, IM2, IM10
    for (pixels, _, _), expected in zip(layers, frames, strict=True):
        np.testing.assert_array_equal(pixels, expected)
    assert len(warnings) == 3, warnings
    by_file = {Path(w.split("skipped ", 1)[1].split(": ", 1)[0]).name: w for w in warnings}
    assert set(by_file) == {ct.name, notes.name, truncated.name}
    assert "modality CT" in by_file[ct.name]
    assert "not a DICOM file" in by_file[notes.name]
    assert "truncated" in by_file[truncated.name]
    _assert_no_phi(warnings)


def test_many_skipped_files_are_summed_up(tmp_path, frames):
    _op(tmp_path / "eye.dcm", frames[0])
    for i in range(MAX_NOTICES + 4):
        (tmp_path / f"page{i:02d}.txt").write_text("x")

    layers, warnings = _warnings_during(lambda: read_fundus_dicom(tmp_path))

    assert len(layers) == 1
    assert len(warnings) == MAX_NOTICES + 1
    assert "4 more files" in warnings[-1] and "4× not a DICOM file" in warnings[-1]


def test_reader_and_sample_modules_import_neither_torch_nor_napari():
    code = (
        "import sys, napari_icnn._reader, napari_icnn._sample_data; "
        "print(sorted(m for m in ('torch', 'monai', 'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide6') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# --------------------------------------------------------------------------- through napari


@pytest.mark.gui
def test_viewer_opens_single_frame_op(make_napari_viewer, tmp_path, frames):
    path = _op(tmp_path / "eye.dcm", frames[0], laterality="R")
    viewer = make_napari_viewer()

    layers = viewer.open(path, plugin="napari-icnn")

    assert len(layers) == 1 and viewer.layers[0] is layers[0]
    layer = layers[0]
    assert type(layer).__name__ == "Image" and layer.rgb
    np.testing.assert_array_equal(np.asarray(layer.data), frames[0])
    assert tuple(layer.scale) == (1.0, 1.0)
    assert NAME_PATTERN.match(layer.name), layer.name
    assert layer.metadata["laterality"] == "R" and layer.metadata["study_date"] == STUDY_DATE
    _assert_no_phi([layer.name])


@pytest.mark.gui
def test_viewer_opens_multiframe_op_one_layer_per_frame_in_order(make_napari_viewer, tmp_path, frames):
    path = _op(tmp_path / "series.dcm", frames, laterality="L", transfer_syntax="jpeg-baseline")
    viewer = make_napari_viewer()

    layers = viewer.open(path, plugin="napari-icnn")

    assert [layer.name[-3:] for layer in layers] == [" f0", " f1", " f2"]
    assert [layer.metadata["frame"] for layer in layers] == [0, 1, 2]
    for layer in layers:
        assert layer.rgb and NAME_PATTERN.match(layer.name) and layer.metadata["laterality"] == "L"
    # JPEG is lossy: each layer is close to its own frame and far from the others.
    error = np.array(
        [[np.abs(np.asarray(layer.data, float) - frame).mean() for frame in frames] for layer in layers]
    )
    assert np.all(np.diag(error) < 3.0), error
    assert np.all(error[~np.eye(3, dtype=bool)] > 10.0), error
    _assert_no_phi([layer.name for layer in layers])


@pytest.mark.gui
def test_viewer_opens_folder_reading_op_and_skipping_ct_and_text(make_napari_viewer, tmp_path, frames):
    _op(tmp_path / "left.dcm", frames[0], laterality="L")
    _op(tmp_path / "right.dcm", frames[1], laterality="R")
    ct = _ct(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("referral letter")
    viewer = make_napari_viewer()

    layers, warnings = _warnings_during(lambda: viewer.open(tmp_path, plugin="napari-icnn"))

    assert [layer.metadata["laterality"] for layer in viewer.layers] == ["L", "R"]
    assert len(layers) == 2
    for layer, expected in zip(viewer.layers, frames[:2], strict=True):
        np.testing.assert_array_equal(np.asarray(layer.data), expected)
        assert layer.metadata["study_date"] == STUDY_DATE
    assert any(str(ct) in w and "CT" in w for w in warnings), warnings
    assert any(str(notes) in w and "not a DICOM file" in w for w in warnings), warnings
    _assert_no_phi([layer.name for layer in viewer.layers] + warnings)


@pytest.mark.gui
def test_viewer_refuses_folder_without_fundus_dicom(make_napari_viewer, tmp_path):
    _ct(tmp_path)
    viewer = make_napari_viewer()

    # napari 0.9 says the reader refused the folder; napari 0.5.0, that it returned no data
    with pytest.raises(ValueError, match="refused|returned no data"):
        viewer.open(tmp_path, plugin="napari-icnn")
    assert len(viewer.layers) == 0
