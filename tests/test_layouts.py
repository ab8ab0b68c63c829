"""Data-set layouts: detection, reading and the errors for bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_icnn.config import FORMATS, TARGET_SETS
from napari_icnn.data.layouts import DataSpec, Record, discover, task_targets
from napari_icnn.data.synth import generate_fundus, write_cohort
from napari_icnn.data.transforms import read_mask
from napari_icnn.dicom.op_writer import write_op
from napari_icnn.errors import ConfigError, InputError
from napari_icnn.parts import PART_KEYS

SEG = "A. Segmentation"
SEG_IMAGES = f"{SEG}/1. Original Images/a. Training Set"
SEG_MASKS = f"{SEG}/2. All Segmentation Groundtruths/a. Training Set"
SEG_FOLDERS = {"MA": "1. Microaneurysms", "HE": "2. Haemorrhages", "EX": "3. Hard Exudates",
               "SE": "4. Soft Exudates", "OD": "5. Optic Disc"}  # fmt: skip


def _png(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _red_mask(path: Path, shape: tuple[int, int], box: tuple[int, int, int, int]) -> Path:
    rgb = np.zeros((*shape, 3), np.uint8)
    y0, y1, x0, x1 = box
    rgb[y0:y1, x0:x1, 0] = 255  # IDRiD: red on black
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format="TIFF")
    return path


def write_idrid_seg(root: Path, with_se: tuple[bool, ...] = (True, False, True)) -> None:
    shape = (60, 90)
    for k, se in enumerate(with_se, start=1):
        stem = f"IDRiD_{k:02d}"
        Image.fromarray(generate_fundus(k, size=90).image[15:75]).save(
            _mkdir(root / SEG_IMAGES) / f"{stem}.jpg"
        )
        for suffix, folder in SEG_FOLDERS.items():
            if suffix == "SE" and not se:
                continue  # IDRiD leaves out the file of a lesion the image does not show
            _red_mask(root / SEG_MASKS / folder / f"{stem}_{suffix}.tif", shape, (10 + k, 20 + k, 30, 40))


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


# -- the formats --------------------------------------------------------------------------------


def test_synth_layout(tmp_path):
    write_cohort(tmp_path, 4, size=64, seed=0, look="clean")
    spec = discover(tmp_path)
    assert isinstance(spec, DataSpec)
    assert spec.format == "synth" and spec.root == str(tmp_path.resolve())
    assert spec.has_masks and spec.mask_parts == PART_KEYS
    with open(tmp_path / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r.id for r in spec.records] == [row["id"] for row in rows]
    for r, row in zip(spec.records, rows, strict=True):
        for key in ("grade", "referable", "dme"):
            assert r.labels[key] == int(row[key])
        for lesion in ("MA", "HE", "EX", "SE"):
            assert r.labels[lesion] == int(float(row[f"n_{lesion}"]) > 0)
        assert r.landmarks["optic_disc"] == (float(row["disc_x"]), float(row["disc_y"]))
        assert r.landmarks["fovea"] == (float(row["fovea_x"]), float(row["fovea_y"]))
        assert r.laterality == row["laterality"]
        assert r.image == str(tmp_path / "images" / f"{r.id}.png")
        assert set(r.masks) == set(PART_KEYS)
        disc = np.asarray(Image.open(r.masks["optic_disc"])) > 0
        assert np.array_equal(read_mask(r.masks["optic_disc"]), disc) and disc.any()
    assert discover(tmp_path, "synth") == spec


def test_idrid_segmentation_layout(tmp_path):
    write_idrid_seg(tmp_path)
    (tmp_path / "readme.txt").write_text("IDRiD")
    spec = discover(tmp_path)
    assert spec.format == "idrid-seg"
    assert [r.id for r in spec.records] == ["IDRiD_01", "IDRiD_02", "IDRiD_03"]
    assert spec.mask_parts == ("optic_disc", "MA", "HE", "EX", "SE") and spec.has_lesion_masks
    second = spec.records[1]
    assert second.labels == {"MA": 1, "HE": 1, "EX": 1, "SE": 0}  # its SE file is missing
    assert "SE" not in second.masks and second.masks["optic_disc"].endswith("IDRiD_02_OD.tif")
    assert spec.records[0].labels["SE"] == 1
    assert "grade" not in second.labels and "referable" not in second.labels
    # Red-on-black masks come back as their drawn boxes.
    ex = read_mask(second.masks["EX"])
    assert ex.sum() == 10 * 10 and ex[12:22, 30:40].all()
    assert discover(tmp_path / SEG, "idrid-seg").records == spec.records


def test_idrid_segmentation_errors(tmp_path):
    write_idrid_seg(tmp_path)
    od = tmp_path / SEG_MASKS / SEG_FOLDERS["OD"] / "IDRiD_03_OD.tif"
    od.unlink()
    with pytest.raises(InputError, match="no optic-disc mask IDRiD_03_OD.tif") as info:
        discover(tmp_path)
    assert info.value.path.endswith("IDRiD_03.jpg")
    _red_mask(od, (60, 90), (0, 5, 0, 5))
    orphan = _red_mask(tmp_path / SEG_MASKS / SEG_FOLDERS["HE"] / "IDRiD_09_HE.tif", (60, 90), (0, 5, 0, 5))
    with pytest.raises(InputError, match="no photograph IDRiD_09.jpg") as info:
        discover(tmp_path)
    assert info.value.path == str(orphan)


def test_idrid_grading_layout_with_stray_spaces(tmp_path):
    images = _mkdir(tmp_path / "B. Disease Grading" / "1. Original Images" / "a. Training Set")
    for k in (1, 2, 3, 4):
        Image.fromarray(generate_fundus(k, size=64).image).save(images / f"IDRiD_{k:03d}.jpg")
    labels = (
        tmp_path / "B. Disease Grading" / "2. Groundtruths" / "a. IDRiD_Disease Grading_Training Labels.csv"
    )
    labels.parent.mkdir(parents=True)
    # As published: a trailing space in a header and empty trailing columns.
    labels.write_text(
        "Image name,Retinopathy grade,Risk of macular edema ,,\n"
        "IDRiD_001,1,2,,\nIDRiD_002,2,0,,\nIDRiD_003,1,1,,\nIDRiD_004,0,0,,\n,,,,\n"
    )
    spec = discover(tmp_path)
    assert spec.format == "idrid-grading" and not spec.has_masks and not spec.has_lesion_masks
    got = {r.id: r.labels for r in spec.records}
    assert got == {
        "IDRiD_001": {"grade": 1, "dme": 2, "referable": 1},  # DME risk 2 alone is referable
        "IDRiD_002": {"grade": 2, "dme": 0, "referable": 1},
        "IDRiD_003": {"grade": 1, "dme": 1, "referable": 0},
        "IDRiD_004": {"grade": 0, "dme": 0, "referable": 0},
    }
    assert spec.records[0].image.endswith("IDRiD_001.jpg")
    assert discover(labels).format == "idrid-grading"


def test_csv_layout(tmp_path):
    a = _png(tmp_path / "photos" / "left" / "001.png", generate_fundus(1, size=64).image)
    b = _png(tmp_path / "elsewhere" / "002.png", generate_fundus(2, size=64).image)
    table = _write_csv(
        tmp_path / "photos" / "labels.csv",
        ["path", "label", "grade", "MA", "laterality", "disc_x", "disc_y"],
        [["left/001.png", 1, 3, 1, "OS", 10.5, 20], [str(b), "0", "", "", "", "", ""]],
    )
    for target in (table, table.parent):
        spec = discover(target)
        assert spec.format == "csv"
        first, second = spec.records
        assert (first.id, first.image) == ("left/001", str(a))
        assert first.labels == {"referable": 1, "grade": 3, "MA": 1}
        assert first.laterality == "L" and first.landmarks == {"optic_disc": (10.5, 20.0)}
        assert second.image == str(b) and second.labels == {"referable": 0} and second.laterality is None


def test_dicom_layout_with_a_multi_frame_file(tmp_path):
    img = generate_fundus(3, size=64).image
    single = write_op(_mkdir(tmp_path / "pacs" / "a") / "IM0001", img, laterality="L")
    multi = write_op(tmp_path / "pacs" / "IM0002", np.stack([img, img // 2, img // 3]), laterality="R")
    uid1, uid2 = str(single.SOPInstanceUID), str(multi.SOPInstanceUID)
    _write_csv(
        tmp_path / "pacs" / "labels.csv", ["sop_instance_uid", "label", "HE"], [[uid1, 1, 1], [uid2, 0, 0]]
    )
    spec = discover(tmp_path / "pacs")
    assert spec.format == "dicom"
    ids = [r.id for r in spec.records]
    assert ids == [uid1, f"{uid2}_f0", f"{uid2}_f1", f"{uid2}_f2"]
    assert spec.records[0].frame is None and [r.frame for r in spec.records[1:]] == [0, 1, 2]
    assert spec.records[0].labels == {"referable": 1, "HE": 1}
    assert spec.records[0].laterality == "L" and spec.records[2].laterality == "R"
    assert spec.records[1].image == str(tmp_path / "pacs" / "IM0002")
    # One frame chosen in the CSV, the CSV given directly.
    table = _write_csv(
        tmp_path / "pacs" / "labels.csv", ["sop_instance_uid", "label", "frame"], [[uid2, 1, 2]]
    )
    spec = discover(table)
    assert [(r.id, r.frame, r.labels) for r in spec.records] == [(f"{uid2}_f2", 2, {"referable": 1})]


def test_dicom_folder_without_csv_is_unlabelled(tmp_path):
    write_op(tmp_path / "x.dcm", generate_fundus(1, size=64).image, laterality="R")
    spec = discover(tmp_path)
    assert spec.format == "dicom" and spec.records[0].labels == {}
    with pytest.raises(ConfigError, match=f"record '{spec.records[0].id}'.*no referable label"):
        task_targets(spec.records[0], "referable")


def test_a_dicom_folder_reports_the_files_it_could_not_read(tmp_path):
    from napari_icnn.data.preflight import check_data

    good = write_op(tmp_path / "a.dcm", generate_fundus(1, size=64).image, laterality="R")
    (tmp_path / "junk.dcm").write_bytes(b"not a DICOM file at all" * 10)
    (tmp_path / "notes.md").write_text("not named as DICOM: not expected to be read")
    spec = discover(tmp_path)
    assert [r.id for r in spec.records] == [str(good.SOPInstanceUID)]
    assert spec.skipped == (f"{tmp_path / 'junk.dcm'}: not a DICOM file",)
    assert "1 file(s) left out, unreadable (junk.dcm" in check_data(str(tmp_path)).summary
    _write_csv(tmp_path / "labels.csv", ["sop_instance_uid", "label"], [[str(good.SOPInstanceUID), 1]])
    assert discover(tmp_path).skipped == spec.skipped  # a labelled folder says the same
    write_cohort(tmp_path / "synth", 1, size=64, look="clean")
    assert discover(tmp_path / "synth").skipped == ()
    (tmp_path / "only-junk" / "day1").mkdir(parents=True)
    (tmp_path / "only-junk" / "day1" / "x.DCM").write_bytes(b"junk")
    with pytest.raises(InputError, match=r"1 file\(s\) named as DICOM are not DICOM, e.g. day1/x.DCM"):
        discover(tmp_path / "only-junk")


def test_explicit_format_is_honoured(tmp_path):
    write_cohort(tmp_path, 1, size=64, look="clean")
    with pytest.raises(InputError, match="IDRiD masks"):
        discover(tmp_path, "idrid-seg")
    with pytest.raises(ConfigError, match="unknown data format 'idrid'.*synth, idrid-seg"):
        discover(tmp_path, "idrid")
    assert FORMATS == ("synth", "idrid-seg", "idrid-grading", "csv", "dicom")


# -- bad input ----------------------------------------------------------------------------------


def test_missing_and_empty_and_unknown(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        discover(tmp_path / "nope")
    empty = _mkdir(tmp_path / "empty")
    with pytest.raises(InputError, match="empty") as info:
        discover(empty)
    assert info.value.path == str(empty)
    odd = _mkdir(tmp_path / "odd")
    (odd / "notes.txt").write_text("hello")
    _png(odd / "photo.png", generate_fundus(1, size=64).image)
    with pytest.raises(InputError, match="unknown data layout"):
        discover(odd)
    strange = _write_csv(tmp_path / "strange.csv", ["file", "diagnosis"], [["a.png", 1]])
    with pytest.raises(InputError, match="unknown CSV layout.*found file, diagnosis"):
        discover(strange)


def test_csv_missing_column_names_column_and_file(tmp_path):
    write_cohort(tmp_path, 1, size=64, look="clean")
    table = _write_csv(tmp_path / "t.csv", ["path", "grade"], [["images/s0_00000.png", 1]])
    with pytest.raises(InputError, match="missing column 'label'") as info:
        discover(table, "csv")
    assert info.value.path == str(table)
    grading = _write_csv(tmp_path / "g.csv", ["Image name", "Retinopathy grade"], [["s0_00000", 1]])
    with pytest.raises(
        InputError, match="missing column 'Risk of macular edema'.*found: Image name, Retinopathy grade"
    ) as info:
        discover(grading, "idrid-grading")
    assert info.value.path == str(grading)


@pytest.mark.parametrize("bad", ["2", "yes", "0.5", "-1"])
def test_label_that_is_not_binary_names_file_and_line(tmp_path, bad):
    for name in ("a.png", "b.png"):
        _png(tmp_path / name, generate_fundus(1, size=64).image)
    table = _write_csv(tmp_path / "t.csv", ["path", "label"], [["a.png", 1], ["b.png", bad]])
    with pytest.raises(InputError, match=f"line 3: 'label' must be 0 or 1; got '{bad}'") as info:
        discover(table)
    assert info.value.path == str(table)


def test_listed_image_missing_is_named(tmp_path):
    _png(tmp_path / "a.png", generate_fundus(1, size=64).image)
    table = _write_csv(tmp_path / "t.csv", ["path", "label"], [["a.png", 1], ["gone/b.png", 0]])
    with pytest.raises(InputError, match="line 3: photograph 'gone/b.png' not found"):
        discover(table)
    write_cohort(tmp_path / "s", 2, size=64, look="clean")
    (tmp_path / "s" / "images" / "s0_00001.png").unlink()
    with pytest.raises(InputError, match="line 3: photograph for id 's0_00001' not found"):
        discover(tmp_path / "s")


def test_duplicate_ids_are_refused(tmp_path):
    _png(tmp_path / "a.png", generate_fundus(1, size=64).image)
    table = _write_csv(tmp_path / "t.csv", ["path", "label"], [["a.png", 1], ["a.png", 0]])
    with pytest.raises(InputError, match="line 3: duplicate id 'a' \\(first at line 2\\)"):
        discover(table)
    write_cohort(tmp_path / "s", 1, size=64, look="clean")
    with open(tmp_path / "s" / "labels.csv") as f:
        lines = f.read().splitlines()
    (tmp_path / "s" / "labels.csv").write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(InputError, match="duplicate id 's0_00000'"):
        discover(tmp_path / "s")
    img = generate_fundus(3, size=64).image
    ds = write_op(_mkdir(tmp_path / "d") / "one.dcm", img, laterality="L")
    _write_csv(
        tmp_path / "d" / "l.csv",
        ["sop_instance_uid", "label"],
        [[ds.SOPInstanceUID, 1], [ds.SOPInstanceUID, 1]],
    )
    with pytest.raises(InputError, match="duplicate id"):
        discover(tmp_path / "d")


def test_dicom_csv_naming_an_unknown_instance(tmp_path):
    write_op(tmp_path / "one.dcm", generate_fundus(3, size=64).image, laterality="L")
    table = _write_csv(tmp_path / "l.csv", ["sop_instance_uid", "label"], [["1.2.3.4", 1]])
    with pytest.raises(InputError, match="line 2: no DICOM file with SOPInstanceUID 1.2.3.4") as info:
        discover(tmp_path)
    assert info.value.path == str(table)


# -- records and targets -------------------------------------------------------------------------


def test_task_targets():
    r = Record("a", "a.png", labels={"referable": 1, "MA": 1, "HE": 0, "EX": 1, "SE": 0})
    np.testing.assert_array_equal(task_targets(r, "referable"), np.array([1], np.float32))
    out = task_targets(r, "lesions")
    assert out.dtype == np.float32 and out.tolist() == [1, 0, 1, 0]
    assert TARGET_SETS["lesions"] == ("MA", "HE", "EX", "SE")
    with pytest.raises(ConfigError, match="record 'b' .*no SE label"):
        task_targets(Record("b", "b.png", labels={"MA": 1, "HE": 0, "EX": 1}), "lesions")
    with pytest.raises(ConfigError, match="unknown task 'grading'"):
        task_targets(r, "grading")


def test_record_validates():
    with pytest.raises(ValueError, match="label grade must be an integer 0..4"):
        Record("a", "a.png", labels={"grade": 5})
    with pytest.raises(ValueError, match="unknown part 'disc'"):
        Record("a", "a.png", masks={"disc": "d.png"})
    with pytest.raises(ValueError, match="unknown landmark"):
        Record("a", "a.png", landmarks={"macula": (1, 2)})
    with pytest.raises(ValueError, match="non-empty"):
        Record("", "a.png")
    labels = {"referable": 1}
    r = Record("a", "a.png", labels=labels)
    labels["referable"] = 0
    assert r.labels == {"referable": 1}  # a record keeps its own copy
