"""The synthetic fundus generator: anatomy calibrated to a real photograph, exact masks,
labels that follow the ICDR rules, reproducible cohorts on disk, and ``icnn synth``."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from napari_icnn.cli import main
from napari_icnn.data.synth import (
    LABEL_COLUMNS,
    CohortSummary,
    generate_cohort,
    generate_fundus,
    write_cohort,
)
from napari_icnn.errors import ConfigError, InputError
from napari_icnn.parts import LESION_KEYS, PART_KEYS
from napari_icnn.progress import Progress

EIGHT = np.ones((3, 3), dtype=bool)
FIRST_COLUMNS = (
    "id", "laterality", "grade", "referable", "dme", "n_MA", "n_HE", "n_EX", "n_SE", "n_NV",
    "disc_x", "disc_y", "fovea_x", "fovea_y",
)  # fmt: skip


def _fov_mask(labels: dict, size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return np.hypot(xx - labels["fov_x"], yy - labels["fov_y"]) <= labels["fov_radius"]


def _regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    return ndimage.label(mask, structure=EIGHT)


# ---------------------------------------------------------------------------------------- masks


@pytest.mark.parametrize("seed, grade", [(1, 0), (2, 1), (3, 2), (4, 3), (5, 4), (6, None), (7, None)])
def test_masks_match_the_lesion_counts(seed, grade):
    f = generate_fundus(seed, 256, grade=grade)
    assert f.image.shape == (256, 256, 3) and f.image.dtype == np.uint8
    assert set(f.masks) == set(PART_KEYS)
    for key, mask in f.masks.items():
        assert mask.shape == (256, 256) and mask.dtype == bool, key
    for key in ("optic_disc", "fovea", "vessels"):
        assert f.masks[key].any(), key
    assert all(type(v) in (str, int, float) for v in f.labels.values()), f.labels  # plain Python scalars
    for key in LESION_KEYS:
        n = f.labels[f"n_{key}"]
        assert (n > 0) == bool(f.masks[key].any()), key
        # Every drawn instance is one separate 8-connected region of its mask.
        assert _regions(f.masks[key])[1] == n, key
        assert sum(1 for les in f.lesions if les.kind == key) == n


def test_lesions_are_drawn_where_their_masks_are():
    f = generate_fundus(11, 256, grade=3)
    ref = generate_fundus(11, 256, grade=0)  # same eye, no disease
    diff = np.abs(f.image.astype(int) - ref.image.astype(int)).sum(axis=2)
    he = f.masks["HE"]
    assert diff[he].mean() > 40  # haemorrhages change the pixels under their masks...
    far = ~ndimage.binary_dilation(np.logical_or.reduce([f.masks[k] for k in LESION_KEYS]), iterations=3)
    far &= _fov_mask(f.labels, 256)
    assert np.median(diff[far]) < 8  # ...and leave the rest of the eye alone (noise aside)
    green = f.image[..., 1].astype(float)
    lesions = np.logical_or.reduce([f.masks[k] for k in (*LESION_KEYS, "vessels")])
    ring = ndimage.binary_dilation(he, iterations=3) & ~ndimage.binary_dilation(he) & ~lesions
    assert green[he].mean() < 0.8 * green[ring].mean()


# --------------------------------------------------------------------------------------- grading


def _rule_grade(labels: dict, he_mask: np.ndarray) -> tuple[int, dict[str, int]]:
    """ICDR grade from the labels' counts and the haemorrhage mask, written out independently."""
    fx, fy = labels["fovea_x"], labels["fovea_y"]
    quads = {"he_sn": 0, "he_st": 0, "he_in": 0, "he_it": 0}
    lab, n = _regions(he_mask)
    for cy, cx in ndimage.center_of_mass(he_mask, lab, range(1, n + 1)):
        nasal = (cx >= fx) == (labels["laterality"] == "R")
        quads[f"he_{'s' if cy < fy else 'i'}{'n' if nasal else 't'}"] += 1
    if labels["n_NV"] > 0 or labels["n_preretinal"] > 0:
        return 4, quads
    if all(v > 20 for v in quads.values()):
        return 3, quads
    if labels["n_HE"] + labels["n_EX"] + labels["n_SE"] > 0:
        return 2, quads
    return (1 if labels["n_MA"] > 0 else 0), quads


def test_grade_dme_and_referable_follow_the_rules_from_the_drawn_lesions():
    targets = []
    for seed in range(20, 40):
        f = generate_fundus(seed, 256, grade=seed % 5)
        lab = f.labels
        grade, quads = _rule_grade(lab, f.masks["HE"])
        assert lab["grade"] == grade, (seed, lab)
        if lab["n_preretinal"] == 0:
            assert {q: lab[q] for q in quads} == quads
        ys, xs = np.nonzero(f.masks["EX"])
        dme = bool(
            ((xs - lab["fovea_x"]) ** 2 + (ys - lab["fovea_y"]) ** 2 <= lab["disc_diameter"] ** 2).any()
        )
        assert lab["dme"] == int(dme)
        assert lab["referable"] == int(grade >= 2 or dme)
        targets.append(lab["grade"] == lab["target_grade"])
    # The lesions drawn for a target grade nearly always earn that grade.
    assert np.mean(targets) >= 0.9


def test_severe_grade_has_more_than_20_haemorrhages_in_every_quadrant():
    f = generate_fundus(41, 384, grade=3)
    assert f.labels["grade"] == 3
    assert min(f.labels[q] for q in ("he_sn", "he_st", "he_in", "he_it")) > 20


def test_default_grade_mix_makes_about_half_referable():
    grades = [generate_fundus(np.random.SeedSequence([9, i]), 64).labels for i in range(60)]
    counts = np.bincount([g["target_grade"] for g in grades], minlength=5)
    assert counts[0] > counts[4] and counts.min() > 0
    assert 0.3 <= np.mean([g["referable"] for g in grades]) <= 0.7


# -------------------------------------------------------------------------------------- anatomy


@pytest.mark.parametrize("seed, eye", [(1, "L"), (2, "R"), (3, "L"), (4, "R"), (5, None), (6, None)])
def test_geometry_is_within_the_anatomical_ranges(seed, eye):
    f = generate_fundus(seed, 512, laterality=eye, grade=0)
    lab = f.labels
    if eye:
        assert lab["laterality"] == eye
    diameter = 2 * lab["fov_radius"]
    assert 0.92 * 512 <= diameter <= 512
    # FOV as seen in the pixels: the dark surround is dim but not exactly zero.
    fov = _fov_mask(lab, 512)
    outside = ~ndimage.binary_dilation(fov, iterations=6)
    assert 0 < f.image[outside].mean() < 10 and np.percentile(f.image[outside], 99) <= 14
    lit = f.image.max(axis=2) > 25
    assert (lit & fov).sum() / fov.sum() > 0.97 and (lit & outside).sum() < 0.005 * outside.sum()
    # Optic disc: 0.12-0.15 of the FOV wide, on the image side of its eye, 5-8° above the fovea.
    ys, xs = np.nonzero(f.masks["optic_disc"])
    assert 0.12 <= (xs.max() - xs.min() + 1) / diameter <= 0.15
    assert (ys.max() - ys.min()) > (xs.max() - xs.min())  # slightly vertically oval
    fy, fx = np.argwhere(f.masks["fovea"]).mean(axis=0)
    dy, dx = ys.mean(), xs.mean()
    assert (dx < fx) == (lab["laterality"] == "L")
    assert 0.30 <= math.hypot(dx - fx, dy - fy) / diameter <= 0.34
    assert 5.0 <= math.degrees(math.atan2(fy - dy, abs(dx - fx))) <= 8.0
    assert abs(fx / 512 - 0.5) <= 0.05 and abs(fy / 512 - 0.5) <= 0.05
    assert abs(fx - lab["fovea_x"]) < 0.5 and abs(dx - lab["disc_x"]) < 1.0
    # Fovea mask: the disc of radius 0.5 DD around the fovea centre.
    area = f.masks["fovea"].sum()
    assert abs(area - math.pi * (0.5 * lab["disc_diameter"]) ** 2) < 0.05 * area
    # Disc: yellow-white with red near saturation (real centre ≈ (254, 203, 140)); fovea dark
    # and brown (real ≈ (185, 45, 21)).
    disc_rgb = np.percentile(f.image[f.masks["optic_disc"]], 90, axis=0)
    fovea_rgb = np.median(f.image[f.masks["fovea"]], axis=0)
    assert disc_rgb[0] >= 245 and 150 <= disc_rgb[1] <= 235 and 90 <= disc_rgb[2] <= 190
    assert fovea_rgb[1] < 0.45 * disc_rgb[1] and fovea_rgb[0] > 2.5 * fovea_rgb[1]


def _vignetting_drop(f, channel: int, sectors: int = 24) -> float:
    """Brightness lost from r/R = 0.5 to r/R = 0.95, per angular sector, away from vessels and the disc."""
    lab = f.labels
    size = f.image.shape[0]
    yy, xx = np.mgrid[:size, :size]
    dx, dy = xx - lab["fov_x"], yy - lab["fov_y"]
    r = np.hypot(dx, dy) / lab["fov_radius"]
    sector = ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * sectors).astype(int) % sectors
    skip = ndimage.binary_dilation(f.masks["vessels"], iterations=3)
    skip |= ndimage.binary_dilation(f.masks["optic_disc"], iterations=int(0.3 * lab["disc_diameter"]))
    plane = f.image[..., channel].astype(float)
    mid, rim = [], []
    for s in range(sectors):
        a = (np.abs(r - 0.5) < 0.02) & ~skip & (sector == s)
        b = (np.abs(r - 0.95) < 0.02) & ~skip & (sector == s)
        if a.sum() > 10 and b.sum() > 10:
            mid.append(plane[a].mean())
            rim.append(plane[b].mean())
    return 1.0 - np.mean(rim) / np.mean(mid)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_vignetting_drops_15_to_20_percent_from_mid_field_to_rim(seed):
    f = generate_fundus(seed, 512, grade=0)
    for channel in (0, 1):
        assert 0.15 <= _vignetting_drop(f, channel) <= 0.20


@pytest.fixture(scope="module")
def real_percentiles():
    skdata = pytest.importorskip("skimage.data")
    real = skdata.retina()
    fov = ndimage.binary_erosion(real.max(axis=2) > 20, iterations=10)
    return np.percentile(real[fov], 5, axis=0), np.percentile(real[fov], 95, axis=0)


def test_mean_colour_inside_the_fov_stays_within_the_real_photographs_percentiles(real_percentiles):
    lo, hi = real_percentiles
    means = []
    for seed in range(24):
        f = generate_fundus(np.random.SeedSequence([77, seed]), 192)
        means.append(f.image[_fov_mask(f.labels, 192)].mean(axis=0))
    means = np.array(means)
    assert (means >= lo).all() and (means <= hi).all(), (means.min(axis=0), means.max(axis=0), lo, hi)
    assert (means.std(axis=0) > 2).all()  # colour varies from eye to eye


def test_vessels_cover_8_to_13_percent_with_contrast_mostly_in_green():
    fractions, ratios = [], []
    for seed in range(6):
        f = generate_fundus(seed, 512, grade=0)
        fov = _fov_mask(f.labels, 512)
        v = f.masks["vessels"] & ~ndimage.binary_dilation(f.masks["optic_disc"], iterations=4)
        fractions.append(f.masks["vessels"][fov].mean())
        around = ndimage.binary_dilation(v, iterations=3) & ~ndimage.binary_dilation(v) & fov
        ratios.append(f.image[v].mean(axis=0) / f.image[around].mean(axis=0))
    assert 0.075 <= np.mean(fractions) <= 0.13 and min(fractions) > 0.06
    r, g, b = np.mean(ratios, axis=0)
    assert 0.7 <= g <= 0.85 and g < b < r  # real photograph: R 0.96, G 0.77, B 0.86


def test_lesion_sizes_scale_with_the_image():
    small, large = generate_fundus(8, 256, grade=3), generate_fundus(8, 512, grade=3)
    disc_ratio = large.masks["optic_disc"].sum() / small.masks["optic_disc"].sum()
    he_ratio = np.median([les.area for les in large.lesions if les.kind == "HE"]) / np.median(
        [les.area for les in small.lesions if les.kind == "HE"]
    )
    assert 3.6 < disc_ratio < 4.4
    assert 2.5 < he_ratio < 6.0


def test_another_grade_keeps_the_same_eye():
    healthy, sick = generate_fundus(12, 256, grade=0), generate_fundus(12, 256, grade=4)
    for key in ("optic_disc", "fovea", "vessels"):
        assert np.array_equal(healthy.masks[key], sick.masks[key])
    assert sick.labels["grade"] == 4 and healthy.labels["grade"] == 0
    assert sick.labels["n_NV"] + sick.labels["n_preretinal"] > 0


def test_same_seed_same_image_other_seeds_differ():
    a, b = generate_fundus(5, 128), generate_fundus(np.random.SeedSequence([5, 0]), 128)
    assert np.array_equal(a.image, b.image) and a.labels == b.labels
    assert a.labels["id"] == "s5_00000"
    others = [generate_fundus(s, 128).image for s in (6, 7)]
    assert all(np.abs(o.astype(int) - a.image.astype(int)).mean() > 5 for o in others)
    # Anatomy varies: disc and fovea move between eyes, so positions cannot be memorised.
    xs = [generate_fundus(s, 128, laterality="L").labels["fovea_x"] for s in range(8)]
    assert np.std(xs) > 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seed=1, size=32), "size"),
        (dict(seed=1, grade=5), "grade"),
        (dict(seed=1, laterality="left"), "laterality"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        generate_fundus(**kwargs)


# --------------------------------------------------------------------------------------- cohorts


def _read_labels(root: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cohort_layout_labels_and_masks_on_disk(tmp_path):
    out = tmp_path / "cohort"
    events = []
    gen = generate_cohort(out, 5, size=128, seed=4, look="clean")
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            summary = stop.value
            break
    assert isinstance(summary, CohortSummary) and summary.n == 5 and sum(summary.grade_counts) == 5
    done = [e.done for e in events if isinstance(e, Progress)]
    assert done[-1] == 5 and done == sorted(done)

    columns, rows = _read_labels(out)
    assert tuple(columns[: len(FIRST_COLUMNS)]) == FIRST_COLUMNS == LABEL_COLUMNS
    for extra in ("fov_x", "fov_y", "fov_radius", "disc_diameter", "seed", "image_path"):
        assert extra in columns
    assert [r["id"] for r in rows] == [f"s4_{i:05d}" for i in range(5)]
    for i, row in enumerate(rows):
        image = np.asarray(Image.open(out / row["image_path"]))
        direct = generate_fundus(np.random.SeedSequence([4, i]), 128)
        assert np.array_equal(image, direct.image)
        assert row["laterality"] in ("L", "R") and row["referable"] in ("0", "1") and row["dme"] in ("0", "1")
        for part in PART_KEYS:
            with Image.open(out / "masks" / part / f"{row['id']}.png") as im:
                assert im.mode == "L"
                mask = np.asarray(im)
            assert set(np.unique(mask)) <= {0, 255}
            assert np.array_equal(mask > 0, direct.masks[part])
            if part in LESION_KEYS:
                assert _regions(mask > 0)[1] == int(row[f"n_{part}"])
    meta = json.loads((out / "cohort.json").read_text())
    assert meta["complete"] is True and (meta["n"], meta["size"], meta["seed"]) == (5, 128, 4)
    assert "generator_version" in meta and "grade" in meta["rules"]
    assert not list(out.rglob("*.tmp"))
    assert "images/s" in summary.describe() and "referable" in summary.describe()


def test_cohorts_are_byte_identical_for_a_seed_and_any_worker_count(tmp_path):
    one = write_cohort(tmp_path / "one", 4, size=96, seed=2, look="clean")
    two = write_cohort(tmp_path / "two", 4, size=96, seed=2, workers=2, look="clean")
    assert one.grade_counts == two.grade_counts
    a, b = _all_bytes(tmp_path / "one"), _all_bytes(tmp_path / "two")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    write_cohort(tmp_path / "other", 4, size=96, seed=3, look="clean")
    c = _all_bytes(tmp_path / "other")
    assert not set(a) & set(c) - {"labels.csv", "cohort.json"}  # ids differ across seeds
    first_a = np.asarray(Image.open(tmp_path / "one" / "images" / "s2_00000.png"))
    first_c = np.asarray(Image.open(tmp_path / "other" / "images" / "s3_00000.png"))
    assert not np.array_equal(first_a, first_c)


def test_a_non_empty_foreign_folder_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(InputError) as err:
        write_cohort(out, 2, size=64, look="clean")
    assert str(out) in str(err.value) and "not empty" in str(err.value)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    write_cohort(out, 2, size=64, overwrite=True, look="clean")
    assert (out / "notes.txt").read_text() == "precious" and (out / "labels.csv").is_file()
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        write_cohort(afile, 1, size=64, look="clean")


def test_a_previous_cohort_is_replaced_without_leftovers(tmp_path):
    pytest.importorskip("napari_icnn.dicom.op_writer")
    out = tmp_path / "c"
    write_cohort(out, 4, size=64, seed=1, dicom=True, look="clean")
    assert len(list((out / "dicom").glob("*.dcm"))) == 4
    (out / "README.txt").write_text("kept")
    write_cohort(out, 2, size=64, seed=1, look="clean")
    assert not list((out / "dicom").glob("*.dcm"))
    _, rows = _read_labels(out)
    assert [r["id"] for r in rows] == ["s1_00000", "s1_00001"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["s1_00000.png", "s1_00001.png"]
    assert sorted(p.name for p in (out / "masks" / "HE").iterdir()) == ["s1_00000.png", "s1_00001.png"]
    assert (out / "README.txt").read_text() == "kept"


@pytest.mark.parametrize("kwargs", [dict(n=0), dict(n=2, size=10), dict(n=2, workers=0), dict(n=2, seed=-3)])
def test_cohort_arguments_are_checked_before_anything_is_written(tmp_path, kwargs):
    n = kwargs.pop("n")
    with pytest.raises(ConfigError):
        write_cohort(tmp_path / "x", n, **kwargs, look="clean")
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------- CLI


def test_cli_writes_a_cohort_and_summarises_it(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["synth", str(out), "--n", "3", "--size", "96", "--seed", "5"])
    assert code == 0
    text = capsys.readouterr()
    assert "Wrote 3 synthetic fundus photographs" in text.out and "images/s" in text.out
    assert "synth: 3/3" in text.err
    assert len(list((out / "images").glob("s5_*.png"))) == 3
    assert all(len(list((out / "masks" / p).glob("*.png"))) == 3 for p in PART_KEYS)


def test_cli_refuses_a_foreign_folder_with_a_clear_message(tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "scan.jpg").write_bytes(b"not a cohort")
    code = main(["synth", str(out), "--n", "2", "--size", "64", "--look", "clean"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("icnn synth: error:") and str(out) in err and "--overwrite" in err
    assert "Traceback" not in err
    assert (out / "scan.jpg").read_bytes() == b"not a cohort"


# ----------------------------------------------------------------------------------------- DICOM


def test_dicom_copies_read_back_with_laterality_size_and_stable_uids(tmp_path):
    pytest.importorskip("napari_icnn.dicom.op_writer")
    pydicom = pytest.importorskip("pydicom")
    write_cohort(tmp_path / "a", 3, size=128, seed=6, dicom=True, look="clean")
    write_cohort(tmp_path / "b", 3, size=128, seed=6, dicom=True, look="clean")
    columns, rows = _read_labels(tmp_path / "a")
    assert {"dicom_path", "sop_instance_uid"} <= set(columns)
    for i, row in enumerate(rows):
        ds = pydicom.dcmread(tmp_path / "a" / row["dicom_path"])
        assert ds.Modality == "OP" and ds.ImageLaterality == row["laterality"]
        assert (ds.Rows, ds.Columns) == (128, 128) and ds.pixel_array.shape == (128, 128, 3)
        assert ds.SOPInstanceUID == row["sop_instance_uid"] and ds.PatientID == f"SYNTH-6-{i}"
        png = np.asarray(Image.open(tmp_path / "a" / row["image_path"])).astype(int)
        assert np.abs(ds.pixel_array.astype(int) - png).mean() < 3  # the same photograph, JPEG-coded
        same = (tmp_path / "b" / row["dicom_path"]).read_bytes()
        assert (tmp_path / "a" / row["dicom_path"]).read_bytes() == same
    assert len({r["sop_instance_uid"] for r in rows}) == 3
