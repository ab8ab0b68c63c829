"""DICOM SEG of the evidence maps: conformance (dciodvfy), read-back with highdicom and
pydicom, pixel-exact overlay on the source grid, deterministic UIDs, safe writing."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_validation import run_dciodvfy
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from napari_icnn.dicom.op_writer import write_op
from napari_icnn.dicom.read import read_dicom
from napari_icnn.dicom.seg import EvidenceMap, ModelInfo, build_seg, write_seg
from napari_icnn.dicom.uids import source_ref, tracking_uid
from napari_icnn.errors import InputError
from napari_icnn.image import FundusImage

ROWS, COLS = 96, 128  # not square, so a transposed grid cannot pass
MODEL = ModelInfo(name="icnn-resnet18-dr", version="1.2.0", sha256="0123456789abcdef" * 4, description="test")
OTHER_MODEL = ModelInfo(name="icnn-resnet18-dr", version="1.2.0", sha256="fedcba9876543210" * 4)
# (filter id, part key, bright pixel (row, col))
FILTERS = [(17, "EX", (5, 7)), (4, "optic_disc", (60, 100)), (23, None, (90, 3))]

needs_dciodvfy = pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy) not installed"
)


# --------------------------------------------------------------------------- sources


def _rgb(frames: int | None = None, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:ROWS, :COLS]
    base = np.stack([xx * 2, yy * 2, (xx + yy)], axis=-1) % 256
    n = frames or 1
    out = np.stack([(base + 40 * i + rng.integers(0, 8, base.shape)) % 256 for i in range(n)]).astype(
        np.float64
    )
    if dtype == np.uint16:
        out = out * 257
    out = out.astype(dtype)
    return out if frames else out[0]


def _minimal_dataset(sop_class: str, modality: str, charset: str, patient_name: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = charset
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, "PID-42", "", ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = (
        "20240102", "101010", "1", "", "")  # fmt: skip
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 3, 1
    ds.Manufacturer = "LegacyCam"
    ds.PatientOrientation = ""
    ds.ContentDate, ds.ContentTime = "20240102", "101010"
    rgb = _rgb()
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns = ROWS, COLS
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = rgb.tobytes()
    return ds


def write_xc(path: Path, *, charset: str = "ISO_IR 100", patient_name: str = "Müller^Jürgen") -> Path:
    """A VL Photographic Image (XC) as low-cost cameras export, with a Latin-1 patient name."""
    ds = _minimal_dataset("1.2.840.10008.5.1.4.1.1.77.1.4", "XC", charset, patient_name)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ImageLaterality = "R"
    ds.AcquisitionContextSequence = []
    ds.LossyImageCompression = "00"
    eye = Dataset()
    eye.CodeValue, eye.CodingSchemeDesignator, eye.CodeMeaning = "81745001", "SCT", "Eye"
    ds.AnatomicRegionSequence = [eye]
    ds.PixelSpacing = [0.012, 0.011]
    ds.save_as(path, enforce_file_format=True)
    return path


def write_sc(path: Path) -> Path:
    """A Secondary Capture of a fundus photograph: no laterality, no spacing."""
    ds = _minimal_dataset("1.2.840.10008.5.1.4.1.1.7", "OT", "ISO_IR 192", "Doe^Jane")
    ds.ConversionType = "WSD"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.save_as(path, enforce_file_format=True)
    return path


SOURCE_KINDS = ["op-jpeg", "op-rgb", "op-16bit", "op-3frame", "op-nospacing", "op-widefield", "xc", "sc"]


def make_source(tmp_path: Path, kind: str) -> FundusImage:
    """Write a source of ``kind`` and read it back as the batch does (frame 2 of 3-frame files)."""
    path = tmp_path / f"{kind}.dcm"
    when = dt.datetime(2024, 1, 2, 10, 10, 10)
    if kind == "op-jpeg":
        write_op(path, _rgb(), laterality="L", pixel_spacing=(0.0085, 0.0085), acquired=when)
    elif kind == "op-rgb":
        write_op(
            path,
            _rgb(),
            laterality="R",
            transfer_syntax="explicit",
            pixel_spacing=(0.01, 0.012),
            acquired=when,
        )
    elif kind == "op-16bit":
        write_op(path, _rgb(dtype=np.uint16), laterality="L", transfer_syntax="rle", pixel_spacing=(0.01, 0.01),
                 acquired=when)  # fmt: skip
    elif kind == "op-3frame":
        write_op(path, _rgb(frames=3), laterality="R", pixel_spacing=(0.0085, 0.0085), acquired=when)
    elif kind == "op-nospacing":
        write_op(path, _rgb(), laterality="L", pixel_spacing=None, acquired=when)
    elif kind == "op-widefield":
        # Wide-field OP (stereographic projection) mandates a Frame of Reference.
        write_op(path, _rgb(), laterality="R", pixel_spacing=None, acquired=when)
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.5.5"
        ds.FrameOfReferenceUID = generate_uid()
        ds.save_as(path, enforce_file_format=True)
    elif kind == "xc":
        write_xc(path)
    elif kind == "sc":
        write_sc(path)
    else:  # pragma: no cover
        raise AssertionError(kind)
    images = read_dicom(path)
    return images[1] if kind == "op-3frame" else images[0]


def make_maps(shape: tuple[int, int] = (ROWS, COLS)) -> list[EvidenceMap]:
    """Smooth fractional maps, each with one full-strength pixel at a distinct place."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    maps = []
    for i, (fid, part, (r, c)) in enumerate(FILTERS):
        p = 0.6 * np.exp(-((yy - 40 - 10 * i) ** 2 + (xx - 30 - 30 * i) ** 2) / (2 * 12.0**2))
        p = p.astype(np.float32)
        p[r, c] = 1.0
        name = f"filter {fid} · " + (
            {"EX": "hard exudates", "optic_disc": "optic disc"}.get(part or "", "unnamed")
        )
        maps.append(EvidenceMap(filter_id=fid, name=name, part_key=part, probability=p))
    return maps


def _segment_pixels(seg: hd.seg.Segmentation, ref_uid: str, frame_number: int | None, n: int) -> np.ndarray:
    numbers = list(range(1, n + 1))
    if frame_number is None:
        px = seg.get_pixels_by_source_instance([ref_uid], segment_numbers=numbers, rescale_fractional=True)
    else:
        px = seg.get_pixels_by_source_frame(
            ref_uid, source_frame_numbers=[frame_number], segment_numbers=numbers, rescale_fractional=True
        )
    return px[0]


# --------------------------------------------------------------------------- tests


@needs_dciodvfy
@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_seg_is_conformant_and_overlays_pixel_exactly(tmp_path, kind):
    source = make_source(tmp_path, kind)
    maps = make_maps()
    out = write_seg(tmp_path / "seg.dcm", source, maps, MODEL)

    errors, warnings, _ = run_dciodvfy(out)
    print(f"\n[{kind}] dciodvfy: {len(errors)} errors, {len(warnings)} warnings", *warnings, sep="\n  ")
    assert errors == []

    header = source.header
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SegmentationType == "FRACTIONAL"
    assert ds.SegmentationFractionalType == "PROBABILITY" and ds.MaximumFractionalValue == 255
    assert (ds.Rows, ds.Columns) == (ROWS, COLS) == source.shape
    assert ds.file_meta.TransferSyntaxUID.is_compressed  # lossless compression of the maps
    assert ds.StudyInstanceUID == header.StudyInstanceUID
    assert ds.PatientID == header.PatientID and ds.PatientName == header.PatientName
    assert ds.SeriesInstanceUID != header.SeriesInstanceUID
    assert "not for clinical use" in ds.SeriesDescription
    assert "FrameOfReferenceUID" not in ds

    # References: the source instance, and its frame where it has several.
    frame_number = None if source.frame is None else source.frame + 1
    assert kind != "op-3frame" or frame_number == 2
    ref_item = ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert ref_item.ReferencedSOPInstanceUID == header.SOPInstanceUID
    assert ref_item.ReferencedSOPClassUID == header.SOPClassUID
    for item in ds.PerFrameFunctionalGroupsSequence:
        src = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert (src.ReferencedSOPInstanceUID, src.ReferencedSOPClassUID) == (
            header.SOPInstanceUID,
            header.SOPClassUID,
        )
        assert src.get("ReferencedFrameNumber") == frame_number
        assert src.SpatialLocationsPreserved == "YES"
    for src in ds.get("SourceImageSequence", []):
        assert (src.ReferencedSOPInstanceUID, src.get("ReferencedFrameNumber")) == (
            header.SOPInstanceUID,
            frame_number,
        )

    # Spacing copied where the source states one, absent (not invented) where it does not.
    shared = ds.SharedFunctionalGroupsSequence[0]
    if source.pixel_spacing is None:
        assert "PixelMeasuresSequence" not in shared
    else:
        assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == pytest.approx(
            source.pixel_spacing
        )

    seg = hd.seg.segread(out)
    assert seg.number_of_segments == len(maps)
    for number, m in enumerate(maps, start=1):
        desc = seg.get_segment_description(number)
        assert desc.segment_label == m.name
        assert f"filter {m.filter_id}" in desc.SegmentDescription
        assert desc.algorithm_identification[0].AlgorithmName == MODEL.name
        assert desc.algorithm_identification[0].AlgorithmVersion == MODEL.version
        category, prop = desc.segmented_property_category, desc.segmented_property_type
        if m.part_key == "EX":
            assert (category.value, prop.value) == ("49755003", "52988006")  # abnormal structure / lesion
        elif m.part_key == "optic_disc":
            assert (category.value, prop.value) == ("91723000", "81016008")  # anatomy / optic nerve head
        else:
            assert (category.value, prop.value) == ("309825002", "130404")  # spatial concept / saliency
        assert desc.tracking_uid == tracking_uid(source_ref(source), MODEL, m.filter_id)

    back = _segment_pixels(seg, header.SOPInstanceUID, frame_number, len(maps))
    assert back.shape == (ROWS, COLS, len(maps))
    for k, (m, (_, _, (r, c))) in enumerate(zip(maps, FILTERS, strict=True)):
        assert np.abs(back[..., k] - m.probability).max() <= 1 / 255 + 1e-6
        assert np.unravel_index(np.argmax(back[..., k]), back.shape[:2]) == (r, c)
        assert back[r, c, k] == 1.0

    # pydicom alone sees the same stored fractions (no highdicom in the loop).
    raw = ds.pixel_array.reshape(-1, ROWS, COLS)
    for item, frame in zip(ds.PerFrameFunctionalGroupsSequence, raw, strict=True):
        k = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber - 1
        assert np.abs(frame / 255.0 - maps[k].probability).max() <= 1 / 255 + 1e-6


def test_laterality_is_a_modifier_of_the_segmented_property(tmp_path):
    source = make_source(tmp_path, "op-jpeg")
    assert source.laterality == "L"
    seg = build_seg(source, make_maps(), MODEL)
    by_label = {s.SegmentLabel: s for s in seg.SegmentSequence}
    disc = by_label["filter 4 · optic disc"].SegmentedPropertyTypeCodeSequence[0]
    assert disc.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "7771000"  # Left
    unmatched = by_label["filter 23 · unnamed"].SegmentedPropertyTypeCodeSequence[0]
    assert "SegmentedPropertyTypeModifierCodeSequence" not in unmatched


def test_non_ascii_names_survive_in_utf8(tmp_path):
    source = make_source(tmp_path, "xc")  # Latin-1 source with an accented patient name
    maps = make_maps()
    maps[1] = EvidenceMap(4, "filter 4 · Papille (Dr. Müller)", "optic_disc", maps[1].probability)
    out = write_seg(tmp_path / "seg.dcm", source, maps, MODEL)
    ds = pydicom.dcmread(out)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Müller^Jürgen" == str(source.header.PatientName)
    assert ds.SegmentSequence[1].SegmentLabel == "filter 4 · Papille (Dr. Müller)"


def test_long_display_name_is_truncated_to_the_vr_limit(tmp_path):
    source = make_source(tmp_path, "sc")
    long_name = "filter 9 · " + "very long clinician name " * 6
    maps = [EvidenceMap(9, long_name, None, make_maps()[0].probability)]
    seg = build_seg(source, maps, MODEL)
    label = seg.SegmentSequence[0].SegmentLabel
    assert len(label.encode()) <= 64 and label.startswith("filter 9 · very long")


@needs_dciodvfy
def test_roles_are_in_labels_and_descriptions(tmp_path):
    source = make_source(tmp_path, "op-jpeg")
    ex, disc, unnamed = make_maps()
    long_name = "filter 23 · " + "very long clinician name " * 6
    maps = [
        EvidenceMap(23, long_name, None, unnamed.probability, "evidence"),
        EvidenceMap(4, disc.name, "optic_disc", disc.probability, "context", ("label-free filter (anatomy context)",)),
        EvidenceMap(17, ex.name, "EX", ex.probability, "possible artefact", ("peak on the field-of-view rim",)),
    ]
    out = write_seg(tmp_path / "seg.dcm", source, maps, MODEL)
    errors, _, report = run_dciodvfy(out)
    assert errors == [], report
    segments = pydicom.dcmread(out).SegmentSequence
    labels = [s.SegmentLabel for s in segments]
    assert labels[0].startswith("filter 23 · very long") and all(len(v.encode()) <= 64 for v in labels)
    assert labels[1:] == ["[context] filter 4 · optic disc", "[possible artefact] filter 17 · hard exudates"]
    assert [s.SegmentDescription for s in segments] == [
        "Interpretable CNN filter 23; no matched part; role: evidence",
        "Interpretable CNN filter 4; matched part: optic disc (optic_disc); role: context "
        "(label-free filter (anatomy context))",
        "Interpretable CNN filter 17; matched part: hard exudates (EX); role: possible artefact "
        "(peak on the field-of-view rim)",
    ]
    codes = [(s.SegmentedPropertyCategoryCodeSequence[0].CodeValue, s.SegmentedPropertyTypeCodeSequence[0].CodeValue)
             for s in segments]
    # the context keeps its anatomy; a possible artefact is filed as a saliency map, never as a lesion
    assert codes[1:] == [("91723000", "81016008"), ("309825002", "130404")]
    with pytest.raises(ValueError, match="role must be one of"):
        EvidenceMap(4, disc.name, "optic_disc", disc.probability, "anatomy")


def test_uids_are_deterministic_per_source_frame_and_model(tmp_path):
    source = make_source(tmp_path, "op-3frame")
    maps = make_maps()
    a, b = build_seg(source, maps, MODEL), build_seg(source, maps, MODEL)
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    assert a.SegmentSequence[0].TrackingUID == b.SegmentSequence[0].TrackingUID
    other = build_seg(source, maps, OTHER_MODEL)
    assert other.SOPInstanceUID != a.SOPInstanceUID and other.SeriesInstanceUID != a.SeriesInstanceUID
    frames = read_dicom(Path(source.source))
    first = build_seg(frames[0], maps, MODEL)
    assert first.SOPInstanceUID != a.SOPInstanceUID
    for uid in (a.SOPInstanceUID, a.SeriesInstanceUID, other.SOPInstanceUID):
        assert len(uid) <= 64 and pydicom.uid.UID(uid).is_valid


def test_empty_map_keeps_its_segment(tmp_path):
    source = make_source(tmp_path, "op-jpeg")
    maps = make_maps()
    maps[2] = EvidenceMap(23, "filter 23 · unnamed", None, np.zeros((ROWS, COLS), np.float32))
    out = write_seg(tmp_path / "seg.dcm", source, maps, MODEL)
    seg = hd.seg.segread(out)
    assert seg.number_of_segments == 3
    back = _segment_pixels(seg, source.header.SOPInstanceUID, None, 3)
    assert back[..., 2].max() == 0 and back[..., 0].max() == 1.0


def test_rewriting_the_same_result_replaces_it_but_other_files_are_never_overwritten(tmp_path):
    source = make_source(tmp_path, "op-jpeg")
    maps = make_maps()
    out = tmp_path / "seg.dcm"
    write_seg(out, source, maps, MODEL)
    write_seg(out, source, maps, MODEL)  # a re-run: same SOP Instance UID, replaced in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["op-jpeg.dcm", "seg.dcm"]  # no temporary left

    src_path = Path(source.source)
    before = src_path.read_bytes()
    with pytest.raises(InputError, match="not overwritten") as info:
        write_seg(src_path, source, maps, MODEL)
    assert str(src_path) in str(info.value)
    assert src_path.read_bytes() == before
    with pytest.raises(InputError, match="not overwritten"):
        write_seg(out, source, maps, OTHER_MODEL)  # another model's result is another object


def test_bad_inputs_name_the_file_and_the_problem(tmp_path):
    source = make_source(tmp_path, "op-jpeg")
    wrong = [EvidenceMap(1, "filter 1 · x", None, np.zeros((ROWS // 2, COLS // 2), np.float32))]
    with pytest.raises(InputError, match=r"48x64 but the image is 96x128") as info:
        build_seg(source, wrong, MODEL)
    assert source.source in str(info.value)
    assert str(source.header.PatientName) not in str(info.value)

    plain = FundusImage(pixels=source.pixels, source="photo.png")
    with pytest.raises(InputError, match="photo.png: not a DICOM image"):
        build_seg(plain, make_maps(), MODEL)
    with pytest.raises(ValueError, match="two evidence maps for filter 17"):
        build_seg(source, make_maps() + make_maps()[:1], MODEL)
    with pytest.raises(ValueError, match="at least one"):
        build_seg(source, [], MODEL)


@pytest.mark.parametrize(
    "values, message",
    [
        (np.full((4, 4), np.nan, np.float32), "NaN"),
        (np.full((4, 4), 1.5, np.float32), r"\[0, 1\]"),
        (np.zeros((2, 4, 4), np.float32), "2-D float"),
        (np.zeros((4, 4), np.uint8), "2-D float"),
    ],
)
def test_evidence_map_is_valid_once_built(values, message):
    with pytest.raises(ValueError, match=message):
        EvidenceMap(3, "filter 3 · x", None, values)
    ok = EvidenceMap(3, "filter 3 · x", None, np.full((4, 4), 1.0 + 1e-7, np.float64))
    assert ok.probability.dtype == np.float32 and ok.probability.max() == 1.0
    assert not ok.probability.flags.writeable
    mine = np.zeros((4, 4), np.float32)
    EvidenceMap(3, "filter 3 · x", None, mine)
    mine[0, 0] = 0.5  # the caller's buffer is neither frozen nor shared


def test_model_info_is_valid_once_built():
    with pytest.raises(ValueError, match="64 hex"):
        ModelInfo("m", "1", "abc")
    assert ModelInfo("m", "1", "AB" * 32).sha256 == "ab" * 32
