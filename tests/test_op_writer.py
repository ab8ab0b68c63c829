"""The Ophthalmic Photography writer: conformance (dciodvfy), attributes and pixel fidelity."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import skimage.data
from dicom_validation import run_dciodvfy

from napari_icnn.dicom.op_writer import OP_8BIT_SOP_CLASS, OP_16BIT_SOP_CLASS, TRANSFER_SYNTAXES, write_op
from napari_icnn.errors import ConfigError, InputError

LOSSLESS = ["jpeg2000-lossless", "rle", "explicit", "jpeg-ls-lossless"]
LOSSY = {"jpeg-baseline": "ISO_10918_1", "jpeg2000": "ISO_15444_1"}
PHOTOMETRIC = {
    "jpeg-baseline": "YBR_FULL_422",
    "jpeg2000-lossless": "YBR_RCT",
    "jpeg2000": "YBR_ICT",
    "rle": "RGB",
    "explicit": "RGB",
    "jpeg-ls-lossless": "RGB",
}
VARIANTS = [
    pytest.param(ts, bits, id=f"{ts}-{bits}bit")
    for ts in TRANSFER_SYNTAXES
    for bits in (8, 16)
    if not (ts == "jpeg-baseline" and bits == 16)
]


@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    """The real fundus photograph scikit-image ships (a left eye), downscaled for speed."""
    return np.ascontiguousarray(skimage.data.retina()[::8, ::8])


def _pixels(retina: np.ndarray, bits: int) -> np.ndarray:
    # Spread 8-bit values over the full 16-bit range (v * 257) so scaling errors would show.
    return retina if bits == 8 else retina.astype(np.uint16) * 257


@pytest.mark.parametrize(("transfer_syntax", "bits"), VARIANTS)
def test_every_variant_is_conformant_and_round_trips(tmp_path, retina, transfer_syntax, bits):
    path = tmp_path / "op.dcm"
    source = _pixels(retina, bits)
    written = write_op(
        path, source, laterality="L", transfer_syntax=transfer_syntax, pixel_spacing=(0.01, 0.0125)
    )

    errors, _, output = run_dciodvfy(path)
    assert errors == [], output

    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == (OP_8BIT_SOP_CLASS if bits == 8 else OP_16BIT_SOP_CLASS)
    assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[transfer_syntax].uid
    assert ds.SOPInstanceUID == written.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert ds.Modality == "OP"
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "", "COLOR"]
    assert ds.PhotometricInterpretation == PHOTOMETRIC[transfer_syntax]
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == ((8, 8, 7) if bits == 8 else (16, 16, 15))
    assert ds.SamplesPerPixel == 3 and ds.PlanarConfiguration == 0 and ds.NumberOfFrames == 1
    assert ds.ImageLaterality == "L"
    assert "FrameOfReferenceUID" not in ds
    assert [float(v) for v in ds.PixelSpacing] == [0.01, 0.0125]
    assert ds.AnatomicRegionSequence[0].CodeValue == "81745001"
    assert ds.AcquisitionDeviceTypeCodeSequence[0].CodeValue == "409898007"
    assert float(ds.HorizontalFieldOfView) == 45.0

    decoded = ds.pixel_array
    assert decoded.shape == source.shape
    if transfer_syntax in LOSSY:
        assert ds.LossyImageCompression == "01"
        assert ds.LossyImageCompressionMethod == LOSSY[transfer_syntax]
        assert float(ds.LossyImageCompressionRatio) > 2
        scale = 1 if bits == 8 else 257
        assert np.abs(decoded.astype(float) - source).mean() / scale < 4
    else:
        assert ds.LossyImageCompression == "00"
        assert "LossyImageCompressionRatio" not in ds
        np.testing.assert_array_equal(decoded, source)


def test_default_file_has_no_validator_warnings(tmp_path, retina):
    path = tmp_path / "op.dcm"
    write_op(path, retina, laterality="R")
    errors, warnings, output = run_dciodvfy(path)
    assert errors == [] and warnings == [], output
    assert "PixelSpacing" not in pydicom.dcmread(path, stop_before_pixels=True)


def test_multiframe_keeps_frame_order(tmp_path, retina):
    frames = np.stack([retina, retina[::-1], np.roll(retina, 40, axis=1)])
    path = tmp_path / "mf.dcm"
    write_op(path, frames, laterality="B", transfer_syntax="jpeg-baseline")
    errors, _, output = run_dciodvfy(path)
    assert errors == [], output
    ds = pydicom.dcmread(path)
    assert ds.NumberOfFrames == 3
    assert ds.FrameIncrementPointer == 0x00181063
    decoded = ds.pixel_array.astype(float)
    for i in range(len(frames)):
        diffs = [np.abs(decoded[i] - other).mean() for other in frames]
        assert int(np.argmin(diffs)) == i and diffs[i] < 4


@pytest.mark.parametrize("transfer_syntax", ["jpeg-baseline", "explicit", "rle", "jpeg-ls-lossless"])
def test_monochrome_is_a_redfree_photograph(tmp_path, retina, transfer_syntax):
    green = np.ascontiguousarray(retina[..., 1])
    path = tmp_path / "redfree.dcm"
    write_op(path, green, laterality="R", transfer_syntax=transfer_syntax)
    errors, _, output = run_dciodvfy(path)
    assert errors == [], output
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert ds.SamplesPerPixel == 1 and "PlanarConfiguration" not in ds
    assert ds.ImageType[3] == "REDFREE"
    assert ds.PresentationLUTShape == "IDENTITY"
    tolerance = 4 if transfer_syntax == "jpeg-baseline" else 0
    assert np.abs(ds.pixel_array.astype(float) - green).mean() <= tolerance


def test_planar_configuration_1_is_written_by_plane(tmp_path, retina):
    path = tmp_path / "planar.dcm"
    write_op(path, retina, laterality="L", transfer_syntax="explicit", planar_configuration=1)
    ds = pydicom.dcmread(path)
    assert ds.PlanarConfiguration == 1
    plane_r = np.frombuffer(ds.PixelData, np.uint8)[: retina.shape[0] * retina.shape[1]]
    np.testing.assert_array_equal(plane_r, retina[..., 0].ravel())
    np.testing.assert_array_equal(ds.pixel_array, retina)
    # The OP Image module defines colour-by-pixel only: by-plane is the one deviation it reports.
    errors, _, output = run_dciodvfy(path)
    assert len(errors) == 1 and "Planar Configuration" in errors[0], output


def test_given_identifiers_are_used(tmp_path, retina):
    uids = {
        "study_instance_uid": "1.2.3.4.5",
        "series_instance_uid": "1.2.3.4.6",
        "sop_instance_uid": "1.2.3.4.7",
    }
    path = tmp_path / "op.dcm"
    write_op(
        path,
        retina,
        laterality="left",
        study_date="20240229",
        patient_id="P7",
        patient_name="Doe^Jane",
        **uids,
    )
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == tuple(uids.values())
    assert ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4.7"
    assert ds.StudyDate == "20240229" and ds.PatientID == "P7" and str(ds.PatientName) == "Doe^Jane"
    assert ds.ImageLaterality == "L"


def test_writes_atomically_and_never_overwrites_by_default(tmp_path, retina):
    path = tmp_path / "op.dcm"
    first = write_op(path, retina, laterality="L")
    with pytest.raises(InputError, match="already exists"):
        write_op(path, retina, laterality="R")
    assert pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID == first.SOPInstanceUID
    second = write_op(path, retina, laterality="R", overwrite=True)
    assert pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID == second.SOPInstanceUID
    assert sorted(p.name for p in tmp_path.iterdir()) == ["op.dcm"]  # no temporary files left


@pytest.mark.parametrize(
    ("kwargs", "pixels", "match"),
    [
        pytest.param({}, "float", "uint8 or uint16", id="float-pixels"),
        pytest.param({}, "4d-grey", "shape", id="bad-shape"),
        pytest.param({"transfer_syntax": "jpeg-baseline"}, "uint16", "8-bit", id="16bit-jpeg"),
        pytest.param({"transfer_syntax": "png"}, "uint8", "transfer_syntax", id="unknown-syntax"),
        pytest.param(
            {"transfer_syntax": "rle", "planar_configuration": 1}, "uint8", "planar", id="planar-rle"
        ),
        pytest.param({"laterality": None}, "uint8", "laterality is required", id="no-laterality"),
        pytest.param({"laterality": "up"}, "uint8", "laterality", id="bad-laterality"),
        pytest.param({"study_date": "2024-01-01"}, "uint8", "YYYYMMDD", id="bad-date"),
        pytest.param({"pixel_spacing": (0.01, -1.0)}, "uint8", "pixel_spacing", id="bad-spacing"),
    ],
)
def test_invalid_arguments_are_refused_before_writing(tmp_path, retina, kwargs, pixels, match):
    arrays = {
        "float": retina.astype(np.float32),
        "4d-grey": np.zeros((2, 2, 70, 70), np.uint8),
        "uint16": retina.astype(np.uint16),
        "uint8": retina,
    }
    args = {"laterality": "L", **kwargs}
    with pytest.raises(ConfigError, match=match):
        write_op(tmp_path / "op.dcm", arrays[pixels], **args)
    assert list(tmp_path.iterdir()) == []
