"""Tolerant DICOM reading: every encoding, vendor quirks, multi-frame, declines and bad files."""

from __future__ import annotations

import os
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
import skimage.data
from pydicom.data import get_testdata_file
from pydicom.pixels import convert_color_space, get_decoder
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGLosslessSV1

from napari_icnn.dicom.op_writer import TRANSFER_SYNTAXES, write_op
from napari_icnn.dicom.read import check_supported, is_dicom, iter_frames, read_dicom, read_header
from napari_icnn.errors import DeclinedInput, InputError

# The colour bars of pydicom's SC_rgb* test images: (row, column 50) -> RGB, from pydicom's
# own pixel reference tests.
COLOUR_BARS = {
    5: (255, 0, 0),
    15: (255, 128, 128),
    25: (0, 255, 0),
    35: (128, 255, 128),
    45: (0, 0, 255),
    55: (128, 128, 255),
    65: (0, 0, 0),
    75: (64, 64, 64),
    85: (192, 192, 192),
    95: (255, 255, 255),
}
MF_TRUE_COLOUR_SC = "1.2.840.10008.5.1.4.1.1.7.4"


@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    return np.ascontiguousarray(skimage.data.retina()[::8, ::8])


@pytest.fixture
def op_file(tmp_path, retina):
    """A lossless 8-bit OP file of the real retina, left eye."""
    path = tmp_path / "op.dcm"
    write_op(path, retina, laterality="L", transfer_syntax="explicit", pixel_spacing=(0.011, 0.012))
    return path


def _edit(src: Path, dst: Path, **changes) -> Path:
    """Copy a DICOM file with attributes changed (``None`` deletes)."""
    ds = pydicom.dcmread(src)
    for keyword, value in changes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(dst)
    return dst


def _as_colour_sc(name: str, dst: Path) -> Path:
    """A pydicom test file relabelled as a colour Secondary Capture (its pixels untouched)."""
    return _edit(Path(get_testdata_file(name)), dst, SOPClassUID=MF_TRUE_COLOUR_SC, Modality="OT")


def _assert_colour_bars(pixels: np.ndarray, tolerance: int) -> None:
    for row, rgb in COLOUR_BARS.items():
        got = pixels[row, 50].astype(int)
        assert np.abs(got - rgb).max() <= tolerance, (row, tuple(got), rgb)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    ("transfer_syntax", "bits"),
    [
        pytest.param(ts, b, id=f"{ts}-{b}")
        for ts in TRANSFER_SYNTAXES
        for b in (8, 16)
        if (ts, b) != ("jpeg-baseline", 16)
    ],
)
def test_op_round_trip_every_encoding(tmp_path, retina, transfer_syntax, bits):
    path = tmp_path / "op.dcm"
    source = retina if bits == 8 else retina.astype(np.uint16) * 257
    ds = write_op(path, source, laterality="R", transfer_syntax=transfer_syntax, pixel_spacing=(0.01, 0.02))
    (image,) = read_dicom(path)
    assert image.pixels.dtype == np.uint8 and image.pixels.shape == retina.shape
    error = np.abs(image.pixels.astype(int) - retina)
    if transfer_syntax in ("jpeg-baseline", "jpeg2000"):
        assert error.mean() < 4
    else:
        assert error.max() == 0  # 16-bit v*257 scales back to exactly v
    assert image.laterality == "R" and image.frame is None and image.modality == "OP"
    assert image.sop_instance_uid == ds.SOPInstanceUID and image.sop_class_uid == ds.SOPClassUID
    assert image.study_instance_uid == ds.StudyInstanceUID
    assert image.series_instance_uid == ds.SeriesInstanceUID
    assert image.study_date == ds.StudyDate
    assert image.pixel_spacing == (0.01, 0.02)
    assert image.bits_stored == bits
    assert image.source == str(path)
    assert "PixelData" not in image.header and image.header.SOPInstanceUID == ds.SOPInstanceUID


def test_16bit_is_scaled_by_bits_stored_not_by_65535(tmp_path, retina):
    twelve = ((retina.astype(np.uint32) * 4095 + 127) // 255).astype(np.uint16)  # 12 bits in 16-bit words
    path = tmp_path / "op16.dcm"
    write_op(path, twelve, laterality="L", transfer_syntax="explicit")
    _edit(path, path, BitsStored=12, HighBit=11)
    (image,) = read_dicom(path)
    expected = np.round(twelve * (255 / 4095))
    assert np.abs(image.pixels - expected).max() <= 1
    assert image.bits_stored == 12
    assert image.pixels.mean() > 0.9 * retina.mean()  # scaling by 65535 would leave it near black


@pytest.mark.filterwarnings("ignore:.*contains a JFIF APP marker:UserWarning")
def test_jfif_stream_labelled_rgb_is_still_decoded_as_ycbcr(tmp_path, retina):
    """A known vendor bug: a JFIF (YCbCr) JPEG stream whose header says RGB."""
    path = tmp_path / "vendor.dcm"
    write_op(path, retina, laterality="L", transfer_syntax="jpeg-baseline")
    _edit(path, path, PhotometricInterpretation="RGB")
    (image,) = read_dicom(path)
    assert np.abs(image.pixels.astype(int) - retina).mean() < 4


def test_uncompressed_ybr_full(tmp_path, retina):
    path = tmp_path / "ybr.dcm"
    write_op(path, retina, laterality="L", transfer_syntax="explicit")
    ybr = convert_color_space(retina, "RGB", "YBR_FULL")
    _edit(
        path,
        path,
        PhotometricInterpretation="YBR_FULL",
        PixelData=ybr.tobytes(),
        SOPClassUID=MF_TRUE_COLOUR_SC,
    )
    (image,) = read_dicom(path)
    assert np.abs(image.pixels.astype(int) - retina).max() <= 3


def test_deflated_and_preamble_less_files(tmp_path, op_file, retina):
    deflated = tmp_path / "deflated.dcm"
    ds = pydicom.dcmread(op_file)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(deflated)
    np.testing.assert_array_equal(read_dicom(deflated)[0].pixels, retina)

    bare = tmp_path / "bare"
    ds = pydicom.dcmread(op_file)
    del ds.file_meta
    ds.preamble = None
    ds.save_as(bare, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert open(bare, "rb").read(132)[128:] != b"DICM"
    assert is_dicom(bare)
    (image,) = read_dicom(bare)
    np.testing.assert_array_equal(image.pixels, retina)
    assert image.laterality == "L"


# --------------------------------------------------------------------------- multi-frame


@pytest.mark.parametrize("transfer_syntax", ["jpeg-baseline", "explicit", "rle", "jpeg2000-lossless"])
def test_multiframe_frames_come_out_in_order(tmp_path, retina, transfer_syntax):
    sources = [retina, retina[::-1], np.roll(retina, 40, axis=1) // 2]
    path = tmp_path / "mf.dcm"
    write_op(path, np.stack(sources), laterality="B", transfer_syntax=transfer_syntax)
    images = read_dicom(path)
    assert [im.frame for im in images] == [0, 1, 2]
    assert len({id(im.header) for im in images}) == 1  # one shared header, no per-frame copies
    for i, image in enumerate(images):
        diffs = [np.abs(image.pixels.astype(float) - src).mean() for src in sources]
        assert int(np.argmin(diffs)) == i and diffs[i] < 4, diffs
        assert image.laterality == "B"


def _decode_peak(path: Path) -> tuple[int, int]:
    """Frames decoded and the peak of traced memory while streaming them one by one."""
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_frames(path))
        return count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("transfer_syntax", ["explicit", "jpeg-baseline", "rle"])
def test_multiframe_decoding_keeps_memory_flat(tmp_path, transfer_syntax):
    """Streaming 32 frames must not take more memory than streaming 4 of the same frames."""
    frames = np.random.default_rng(0).integers(0, 256, (32, 128, 128, 3), dtype=np.uint8)
    few, many = tmp_path / "few.dcm", tmp_path / "many.dcm"
    write_op(few, frames[:4], laterality="L", transfer_syntax=transfer_syntax, jpeg_quality=50)
    write_op(many, frames, laterality="L", transfer_syntax=transfer_syntax, jpeg_quality=50)
    _decode_peak(few)  # first use imports decoders; keep that out of the measurement
    n_few, peak_few = _decode_peak(few)
    n_many, peak_many = _decode_peak(many)
    assert (n_few, n_many) == (4, 32)
    # Loading the whole file at once would add 28 frames (and their encoded bytes) to the peak.
    assert peak_many - peak_few < 4 * frames[0].nbytes, (peak_few, peak_many)


# --------------------------------------------------------------------------- laterality


@pytest.mark.parametrize(
    ("image_laterality", "series_laterality", "expected"),
    [
        pytest.param("L", None, "L", id="image"),
        pytest.param(None, "R", "R", id="series-fallback"),
        pytest.param("R", "L", "R", id="image-wins"),
        pytest.param("l", None, "L", id="lower-case"),
        pytest.param("OS", None, "L", id="OS"),
        pytest.param("OD", None, "R", id="OD"),
        pytest.param("U", "left", "L", id="unknown-then-series"),
        pytest.param("U", None, None, id="unknown"),
        pytest.param(None, None, None, id="absent"),
    ],
)
@pytest.mark.filterwarnings(
    "ignore:Invalid value for VR CS:UserWarning"
)  # "l", "left" are written on purpose
def test_laterality_from_image_then_series(tmp_path, op_file, image_laterality, series_laterality, expected):
    path = _edit(
        op_file, tmp_path / "lat.dcm", ImageLaterality=image_laterality, Laterality=series_laterality
    )
    assert read_dicom(path)[0].laterality == expected


# --------------------------------------------------------------------------- third-party files


@pytest.mark.parametrize(
    ("name", "tolerance"),
    [
        pytest.param("SC_rgb_jpeg_dcmtk.dcm", 8, id="jpeg-ybr_full"),
        pytest.param("SC_rgb_dcmtk_+eb+cy+np.dcm", 8, id="jpeg-ybr_full_422-411"),
        pytest.param("SC_rgb_dcmtk_+eb+cy+s2.dcm", 8, id="jpeg-ybr_full_422-422"),
        pytest.param("SC_rgb_dcmtk_+eb+cr.dcm", 8, id="jpeg-rgb"),
        pytest.param("SC_ybr_full_422_uncompressed.dcm", 5, id="native-ybr_full_422"),
        pytest.param("SC_rgb_rle.dcm", 0, id="rle"),
        pytest.param("SC_rgb_rle_16bit.dcm", 0, id="rle-16bit"),
        pytest.param("SC_rgb_gdcm_KY.dcm", 3, id="jpeg2000"),
        pytest.param("SC_rgb_jls_lossy_line.dcm", 6, id="jpeg-ls-near-lossless"),
    ],
)
def test_pydicom_colour_test_files(name, tolerance):
    (image,) = read_dicom(get_testdata_file(name))
    assert image.pixels.shape == (100, 100, 3) and image.modality in ("OT", None)
    _assert_colour_bars(image.pixels, tolerance)


def test_two_frame_rle_second_frame_is_inverted():
    first, second = read_dicom(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    _assert_colour_bars(first.pixels, 0)
    _assert_colour_bars(255 - second.pixels.astype(int), 1)


def test_jpeg2000_with_jp2_header_and_ybr_rct():
    (image,) = read_dicom(get_testdata_file("GDCMJ2K_TextGBR.dcm"))
    assert tuple(image.pixels[45, 140]) == (223, 32, 32)
    assert tuple(image.pixels[46, 140]) == (255, 0, 0)
    assert tuple(image.pixels[350, 195]) == (128, 128, 128)


def test_multiframe_jpeg_ybr_file_matches_a_whole_array_decode(tmp_path):
    """examples_ybr_color.dcm: 30 JPEG YBR_FULL_422 frames (ultrasound, relabelled as colour SC)."""
    original = get_testdata_file("examples_ybr_color.dcm")
    with pytest.raises(DeclinedInput, match=r"modality US \(Ultrasound Multi-frame Image Storage\)"):
        read_dicom(original)
    images = read_dicom(_as_colour_sc("examples_ybr_color.dcm", tmp_path / "sc.dcm"))
    reference = pydicom.dcmread(original).pixel_array
    assert len(images) == 30 and [im.frame for im in images] == list(range(30))
    for image, expected in zip(images, reference, strict=True):
        np.testing.assert_array_equal(image.pixels, expected)
    assert np.abs(images[0].pixels.astype(int) - images[29].pixels).mean() > 1  # distinct frames


def test_jpeg2000_ybr_rct_file(tmp_path):
    original = get_testdata_file("examples_jpeg2k.dcm")
    with pytest.raises(DeclinedInput, match="modality US"):
        read_dicom(original)
    (image,) = read_dicom(_as_colour_sc("examples_jpeg2k.dcm", tmp_path / "sc.dcm"))
    reference = pydicom.dcmread(original).pixel_array
    np.testing.assert_array_equal(image.pixels, reference)
    assert image.pixels.shape == (480, 640, 3)


def test_palette_colour(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("examples_palette.dcm"))
    rgb16 = pydicom.pixels.apply_color_lut(ds.pixel_array, ds).astype(float)
    (image,) = read_dicom(_as_colour_sc("examples_palette.dcm", tmp_path / "sc.dcm"))
    assert image.pixels.shape == (350, 800, 3)
    assert np.abs(image.pixels - rgb16 * 255 / 65535).max() <= 0.5 + 1e-9


def test_jpeg_lossless_is_declined_with_the_remedy_unless_a_decoder_exists():
    path = get_testdata_file("SC_rgb_jpeg_gdcm.dcm")
    if get_decoder(JPEGLosslessSV1).is_available:
        _assert_colour_bars(read_dicom(path)[0].pixels, 0)
    else:
        with pytest.raises(DeclinedInput, match="pylibjpeg-libjpeg or python-gdcm"):
            read_dicom(path)


# --------------------------------------------------------------------------- declined


@pytest.mark.parametrize(
    ("name", "match"),
    [
        pytest.param(
            "CT_small.dcm", r"modality CT \(CT Image Storage\) is not a colour fundus photograph", id="CT"
        ),
        pytest.param("MR_small.dcm", r"modality MR \(MR Image Storage\)", id="MR"),
        pytest.param("test-SR.dcm", r"modality SR \(Comprehensive SR Storage\)", id="SR"),
        pytest.param("liver_1frame.dcm", r"modality SEG \(Segmentation Storage\)", id="SEG"),
        pytest.param("SC_rgb_small_odd.dcm", "3×3 px: too small", id="tiny"),
    ],
)
def test_pydicom_files_that_are_declined(name, match):
    path = get_testdata_file(name)
    assert is_dicom(path)
    with pytest.raises(DeclinedInput, match=match) as info:
        read_dicom(path)
    assert info.value.path == str(path)
    with pytest.raises(DeclinedInput, match=match):
        check_supported(read_header(path), path)  # the same decision from the header alone


def test_monochrome_red_free_is_declined(tmp_path, retina):
    path = tmp_path / "redfree.dcm"
    write_op(path, np.ascontiguousarray(retina[..., 1]), laterality="L")
    with pytest.raises(DeclinedInput, match=r"monochrome \(red-free\) photograph: the models need colour"):
        read_dicom(path)


def test_huge_image_declined_from_header(tmp_path, op_file):
    path = _edit(op_file, tmp_path / "huge.dcm", Rows=30000, Columns=25000)
    with pytest.raises(DeclinedInput, match="25000×30000 px"):
        check_supported(read_header(path), path)


def test_no_pixel_data_is_declined(tmp_path, op_file):
    path = _edit(op_file, tmp_path / "nopix.dcm", PixelData=None)
    assert is_dicom(path)
    header = read_header(path)
    with pytest.raises(DeclinedInput, match="no pixel data"):
        check_supported(header, path)
    with pytest.raises(DeclinedInput, match="no pixel data"):
        read_dicom(path)


def test_supported_header_passes_the_check(op_file):
    header = read_header(op_file)
    assert "PixelData" not in header and header.Modality == "OP"
    check_supported(header, op_file)


# --------------------------------------------------------------------------- bad input


def _truncate(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.mark.parametrize(
    ("kind", "match", "dicom"),
    [
        ("empty", "empty file", False),
        ("random-bytes", "not a DICOM file", False),
        ("png-renamed", "not a DICOM file", False),
        ("truncated-native", "truncated", True),
        ("truncated-jpeg", "cannot decode|truncated|frames are present", True),
        ("rows-too-many", "fewer than the header describes", True),
        ("rows-too-few", "more than the header describes", True),
        ("rows-too-many-jpeg", "does not match the header's 177×187 px", True),
        ("undecodable-jpeg", "cannot decode", True),
        ("no-rows", "missing required pixel attribute.*Rows", True),
        ("truncated-in-value", "truncated: the header ends inside", True),
        ("truncated-in-tag", "truncated: 3 stray bytes", True),
    ],
)
def test_bad_files_raise_input_error_naming_the_file(tmp_path, retina, kind, match, dicom):
    identity = {"patient_name": "Doe^Jane", "patient_id": "PID-4711", "laterality": "L"}
    op = tmp_path / "src.dcm"
    write_op(op, retina, transfer_syntax="explicit", **identity)
    jpeg = tmp_path / "src_jpeg.dcm"
    write_op(jpeg, retina, transfer_syntax="jpeg-baseline", **identity)
    path = tmp_path / f"{kind}.dcm"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random-bytes":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "png-renamed":
        from PIL import Image

        Image.fromarray(retina).save(tmp_path / "x.png")
        shutil.copy(tmp_path / "x.png", path)
    elif kind == "truncated-native":
        _truncate(op, path, 0.6)
    elif kind == "truncated-jpeg":
        _truncate(jpeg, path, 0.6)
    elif kind == "rows-too-many":
        _edit(op, path, Rows=retina.shape[0] + 10)
    elif kind == "rows-too-many-jpeg":
        _edit(jpeg, path, Rows=retina.shape[0] + 10)
    elif kind == "rows-too-few":
        _edit(op, path, Rows=retina.shape[0] - 10)
    elif kind == "undecodable-jpeg":
        ds = pydicom.dcmread(jpeg)
        frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
        ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8" + bytes(len(frame) - 2)])
        ds.save_as(path)
    elif kind == "no-rows":
        _edit(op, path, Rows=None)
    elif kind.startswith("truncated-in-"):
        data = op.read_bytes()
        value_start = data.index(b"PID-4711")  # the PatientID element's value; its tag sits 8 bytes before
        path.write_bytes(data[: value_start + 3 if kind == "truncated-in-value" else value_start - 5])
    assert is_dicom(path) is dicom
    with pytest.raises(InputError, match=match) as info:
        read_dicom(path)
    message = str(info.value)
    assert info.value.path == str(path) and str(path) in message
    assert "Doe" not in message and "PID-4711" not in message  # no patient data in messages
    if not dicom:
        with pytest.raises(InputError):
            read_header(path)


def test_errors_for_paths_that_are_not_files(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_dicom(tmp_path / "missing.dcm")
    with pytest.raises(InputError, match="folder"):
        read_header(tmp_path)
    assert not is_dicom(tmp_path) and not is_dicom(tmp_path / "missing.dcm")
    assert not is_dicom(os.devnull)
