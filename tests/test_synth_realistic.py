"""The generator's looks: ``clean`` reproduces version 1 byte for byte; ``realistic`` draws varied
cameras (field-of-view shapes, frames, burned-in text, photographic artefacts) independently of the
labels, records them per image, and keeps every mask exact."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage, stats

from napari_icnn.cli import main
from napari_icnn.data.synth import (
    ARTEFACT_KEYS,
    CAMERA_COLUMNS,
    FOV_SHAPES,
    PROFILES,
    generate_fundus,
    write_cohort,
)
from napari_icnn.data.synth.grading import findings_from, icdr_grade, is_referable
from napari_icnn.errors import ConfigError
from napari_icnn.parts import LESION_KEYS, PART_KEYS

EIGHT = np.ones((3, 3), dtype=bool)
# The labels.csv columns of generator version 1, whose values the clean look must keep.
V1_COLUMNS = (
    "id", "laterality", "grade", "referable", "dme", "n_MA", "n_HE", "n_EX", "n_SE", "n_NV",
    "disc_x", "disc_y", "fovea_x", "fovea_y", "fov_x", "fov_y", "fov_radius", "disc_diameter", "disc_height",
    "target_grade", "n_preretinal", "he_sn", "he_st", "he_in", "he_it", "vessel_fraction", "jpeg_quality",
    "seed", "index", "image_path",
)  # fmt: skip
# Columns that describe the camera and its artefacts: functions of the seed alone.
ARTEFACT_COLUMNS = tuple(c for c in CAMERA_COLUMNS if c not in ("treated", "n_drusen", "n_pigment", "n_laser"))


def _digest(f) -> str:
    h = hashlib.sha256()
    h.update(f.image.tobytes())
    h.update(str(f.image.shape).encode())
    for k in PART_KEYS:
        h.update(np.packbits(f.masks[k]).tobytes())
    h.update(json.dumps({k: f.labels[k] for k in V1_COLUMNS}, sort_keys=True).encode())
    return h.hexdigest()[:16]


# -------------------------------------------------------------------------------- clean look


# Computed with generator version 1 (before the looks existed) for these arguments.
V1_DIGESTS = [
    (0, 64, None, None, "d34a75c14005ab55"),
    (3, 128, None, None, "d9b9d0b6541df5b6"),
    (7, 200, 2, "L", "75352d32e556e8d4"),
    (11, 256, 4, None, "1ca7752f9f9b2b44"),
    (19, 160, 3, "R", "34ba698ead4c3b36"),
    ((5, 3), 96, None, None, "cfe8fcc7ff14e72a"),
]


@pytest.mark.parametrize("seed, size, grade, eye, digest", V1_DIGESTS)
def test_the_clean_look_draws_exactly_what_version_1_drew(seed, size, grade, eye, digest):
    s = np.random.SeedSequence(list(seed)) if isinstance(seed, tuple) else seed
    f = generate_fundus(s, size, grade=grade, laterality=eye, look="clean")
    assert _digest(f) == digest
    assert f.labels["look"] == "clean" and f.labels["camera"] == "clean"
    assert (f.labels["width"], f.labels["height"]) == (size, size)
    assert set(f.artefact_masks) == set(ARTEFACT_KEYS)
    assert not f.artefact_masks["text"].any() and not f.artefact_masks["artefact"].any()
    assert f.artefact_masks["fov"].any() and f.labels["fov_shape"] in ("circle", "notched")
    assert _digest(generate_fundus(s, size, grade=grade, laterality=eye)) == digest  # clean is the default here


def test_a_clean_cohort_has_version_1_files_plus_the_new_masks_and_columns(tmp_path):
    root = tmp_path / "c"
    write_cohort(root, 4, size=96, seed=2, look="clean")
    paths = sorted(p for folder in ("images", *(f"masks/{k}" for k in PART_KEYS)) for p in (root / folder).glob("*.png"))
    pixels, files = hashlib.sha256(), {}
    for p in paths:
        rel = str(p.relative_to(root))
        pixels.update(rel.encode())
        pixels.update(np.asarray(Image.open(p)).tobytes())
        files[rel] = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    assert pixels.hexdigest()[:16] == "6b37814708744e0d"  # the decoded PNGs of version 1
    # and the very bytes, with the Pillow the reference was written with (level-1 RLE zlib)
    if Image.__version__ == "13.0.0":
        assert hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16] == "b2d64e9ca1e1d66e"
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    old = [{k: r[k] for k in V1_COLUMNS} for r in rows]
    assert hashlib.sha256(json.dumps(old).encode()).hexdigest()[:16] == "7917b964f6e6bf93"
    assert all(r["look"] == "clean" and r["n_text"] == "0" and r["treated"] == "0" for r in rows)
    for r in rows:
        fov = np.asarray(Image.open(root / "masks" / "fov" / f"{r['id']}.png")) > 0
        yy, xx = np.mgrid[:96, :96]
        circle = np.hypot(xx - float(r["fov_x"]), yy - float(r["fov_y"])) <= float(r["fov_radius"]) - 1
        assert fov[circle].all()
        assert not np.asarray(Image.open(root / "masks" / "text" / f"{r['id']}.png")).any()
    meta = json.loads((root / "cohort.json").read_text())
    assert meta["look"] == "clean" and meta["generator_version"] == "2"


# ---------------------------------------------------------------------------- realistic look


@pytest.fixture(scope="module")
def realistic():
    return [generate_fundus(np.random.SeedSequence([31, i]), 128, look="realistic") for i in range(72)]


def test_every_camera_profile_and_field_shape_occurs(realistic):
    names = {f.labels["camera"] for f in realistic}
    shapes = {f.labels["fov_shape"] for f in realistic}
    assert names == {p.name for p in PROFILES}
    assert shapes == set(FOV_SHAPES)
    sizes = {(f.labels["width"], f.labels["height"]) for f in realistic}
    assert {w for w, _ in sizes} == {128} and len(sizes) >= 3  # a fixed width, several frame shapes
    assert {f.labels["cast"] for f in realistic} == {"none", "yellow", "green"}
    assert {f.labels["blur"] for f in realistic} == {"none", "defocus", "motion"}
    assert {f.labels["reflection"] for f in realistic} == {"none", "arc", "haze"}
    assert min(f.labels["exposure"] for f in realistic) < 0.85 < 1.2 < max(f.labels["exposure"] for f in realistic)
    assert any(f.labels["dust"] for f in realistic) and any(f.labels["n_text"] for f in realistic)
    assert any(f.labels["n_drusen"] for f in realistic) and any(f.labels["n_pigment"] for f in realistic)
    assert len({f.labels["jpeg_quality"] for f in realistic}) > 10


def test_realistic_masks_are_exact_and_labels_follow_the_drawn_lesions(realistic):
    for f in realistic:
        lab = f.labels
        h, w = lab["height"], lab["width"]
        assert f.image.shape == (h, w, 3) and f.image.dtype == np.uint8
        assert tuple(f.masks) == PART_KEYS and tuple(f.artefact_masks) == ARTEFACT_KEYS
        for m in (*f.masks.values(), *f.artefact_masks.values()):
            assert m.shape == (h, w) and m.dtype == bool
        fov = f.artefact_masks["fov"]
        for key in LESION_KEYS:
            n_regions = ndimage.label(f.masks[key], structure=EIGHT)[1]
            assert n_regions == lab[f"n_{key}"] == sum(1 for i in f.lesions if i.kind == key), (lab["id"], key)
            assert not (f.masks[key] & ~fov).any()
            assert not (f.masks[key] & f.artefact_masks["artefact"]).any()  # lesions are never under artefacts
        assert not (f.masks["vessels"] & ~fov).any() and not (f.masks["vessels"] & f.artefact_masks["text"]).any()
        fnd = findings_from(f.lesions, f.masks["EX"], lab["fovea_x"], lab["fovea_y"], lab["disc_diameter"],
                            lab["laterality"], LESION_KEYS)  # fmt: skip
        assert lab["grade"] == icdr_grade(fnd) and lab["dme"] == int(fnd.dme)
        assert lab["referable"] == int(is_referable(lab["grade"], fnd.dme))
        assert lab["treated"] == int(lab["n_laser"] > 0)
        if lab["treated"]:
            assert lab["target_grade"] == 4


def _circle(lab: dict) -> np.ndarray:
    yy, xx = np.mgrid[: lab["height"], : lab["width"]]
    return np.hypot(xx - lab["fov_x"], yy - lab["fov_y"]) / lab["fov_radius"]


def test_the_fov_mask_matches_each_frame_shape(realistic):
    for f in realistic:
        lab, fov = f.labels, f.artefact_masks["fov"]
        r = _circle(lab)
        shape = lab["fov_shape"]
        if shape == "rimless":
            assert fov.all()
            continue
        assert fov[r <= 0.99].all() and not fov[r >= 1.2].any(), lab["id"]
        if shape == "notched":
            assert (fov & (r > 1.01)).any()  # the marker tab beyond the circle
        else:
            assert not (fov & (r > 1.01)).any()
        rows = fov.any(axis=1)
        cols = fov.any(axis=0)
        if shape == "clipped":
            assert rows[0] and rows[-1] and not cols[0] and not cols[-1]  # cut at top and bottom only
        # outside the field the photograph is the dark surround (burned-in text aside)
        outside = ~ndimage.binary_dilation(fov, iterations=3) & ~ndimage.binary_dilation(
            f.artefact_masks["text"], iterations=3
        )
        if outside.any():
            assert f.image[outside].mean() < 25, lab["id"]


def test_burned_in_text_is_masked_exactly_when_drawn_and_changes_the_pixels(realistic):
    seen = 0
    for f in realistic:
        text = f.artefact_masks["text"]
        assert bool(text.any()) == (f.labels["n_text"] > 0), f.labels["id"]
        assert not (text & ~f.artefact_masks["artefact"]).any()
        if not text.any():
            continue
        seen += 1
        ring = ndimage.binary_dilation(text, iterations=3) & ~ndimage.binary_dilation(text, iterations=1)
        # every text colour (white, yellow, green) is far brighter in green than fundus or surround
        g = f.image[..., 1].astype(float)
        assert g[text].mean() > g[ring].mean() + 25, f.labels["id"]
    assert seen > 20


def test_the_camera_and_artefacts_do_not_depend_on_the_grade():
    for i in range(6):
        ss = np.random.SeedSequence([77, i])
        fs = [generate_fundus(ss, 128, grade=g, look="realistic") for g in range(5)]
        for f in fs[1:]:
            assert {c: f.labels[c] for c in ARTEFACT_COLUMNS} == {c: fs[0].labels[c] for c in ARTEFACT_COLUMNS}
            assert f.labels["n_drusen"] == fs[0].labels["n_drusen"]
            assert f.labels["n_pigment"] == fs[0].labels["n_pigment"]
            for k in ARTEFACT_KEYS:
                assert np.array_equal(f.artefact_masks[k], fs[0].artefact_masks[k]), k
        assert all(f.labels["n_laser"] == 0 for f in fs[:4])  # laser scars only on target grade 4


def test_artefact_statistics_are_alike_in_referable_and_other_eyes(realistic):
    ref = [f.labels for f in realistic if f.labels["referable"]]
    non = [f.labels for f in realistic if not f.labels["referable"]]
    assert len(ref) > 15 and len(non) > 15
    for col in ("n_text", "cast", "blur", "reflection", "fov_shape", "dust"):
        values = sorted({str(x[col]) for x in (*ref, *non)})
        table = np.array([[sum(str(x[col]) == v for x in grp) for v in values] for grp in (ref, non)])
        table = table[:, table.sum(axis=0) > 0]
        if table.shape[1] > 1:
            assert stats.chi2_contingency(table)[1] > 0.001, col
    for col in ("exposure", "illumination", "blur_px", "jpeg_quality"):
        p = stats.mannwhitneyu([x[col] for x in ref], [x[col] for x in non]).pvalue
        assert p > 0.001, col


def test_distractors_and_laser_scars_leave_the_grade_alone():
    found_drusen = found_laser = False
    for i in range(40):
        ss = np.random.SeedSequence([91, i])
        healthy = generate_fundus(ss, 160, grade=0, look="realistic")
        assert healthy.labels["grade"] == 0 and healthy.labels["referable"] == 0
        found_drusen |= healthy.labels["n_drusen"] > 0 or healthy.labels["n_pigment"] > 0
        if i < 16:
            sick = generate_fundus(ss, 160, grade=4, look="realistic")
            if sick.labels["treated"]:
                found_laser = True
                assert sick.labels["n_laser"] > 0 and sick.labels["referable"] == 1
        if found_drusen and found_laser:
            break
    assert found_drusen and found_laser


def test_sizes_are_drawn_from_the_range_unless_fixed():
    widths = [generate_fundus(np.random.SeedSequence([5, i]), None, look="realistic", size_range=(100, 140))
              .labels["width"] for i in range(6)]  # fmt: skip
    assert all(100 <= w <= 140 for w in widths) and len(set(widths)) > 2
    a = generate_fundus(8, 150, look="realistic")
    b = generate_fundus(8, 150, look="realistic")
    assert np.array_equal(a.image, b.image) and a.labels == b.labels


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(look="fancy"), "look must be one of realistic, clean"),
        (dict(look="realistic", size=64), "at least 96"),
        (dict(look="clean", size=None), "size must be given"),
        (dict(look="realistic", size=None, size_range=(50, 100)), "size_range"),
        (dict(look="realistic", size=None, size_range=(300, 200)), "size_range"),
    ],
)
def test_bad_look_options_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        generate_fundus(1, **kwargs)


# ---------------------------------------------------------------------------- cohort and CLI


def _read(root: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def test_a_realistic_cohort_writes_and_reads_back_its_masks_and_columns(tmp_path):
    root = tmp_path / "r"
    summary = write_cohort(root, 4, size=128, seed=12)  # realistic is the default here
    assert summary.look == "realistic" and "realistic look" in summary.describe()
    columns, rows = _read(root)
    assert set(CAMERA_COLUMNS) <= set(columns)
    meta = json.loads((root / "cohort.json").read_text())
    assert meta["look"] == "realistic" and meta["generator_version"] == "2" and "treated" in meta["rules"]
    for i, row in enumerate(rows):
        direct = generate_fundus(np.random.SeedSequence([12, i]), 128, look="realistic")
        image = np.asarray(Image.open(root / row["image_path"]))
        assert np.array_equal(image, direct.image)
        assert (int(row["width"]), int(row["height"])) == image.shape[1::-1]
        assert row["look"] == "realistic" and row["fov_shape"] in FOV_SHAPES
        for key, mask in {**direct.masks, **direct.artefact_masks}.items():
            on_disk = np.asarray(Image.open(root / "masks" / key / f"{row['id']}.png")) > 0
            assert np.array_equal(on_disk, mask), key
        for c in CAMERA_COLUMNS:
            assert row[c] == str(direct.labels[c]), c
    # a smaller cohort in the same folder leaves no stale files in the new mask folders
    write_cohort(root, 2, size=128, seed=12)
    for key in ARTEFACT_KEYS:
        assert sorted(p.name for p in (root / "masks" / key).iterdir()) == ["s12_00000.png", "s12_00001.png"]


def test_realistic_cohorts_are_byte_identical_for_any_worker_count(tmp_path):
    write_cohort(tmp_path / "one", 4, size=None, size_range=(96, 160), seed=3)
    write_cohort(tmp_path / "two", 4, size=None, size_range=(96, 160), seed=3, workers=2)

    def files(root):
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    a, b = files(tmp_path / "one"), files(tmp_path / "two")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)


def test_cli_look_option(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["synth", str(out), "--n", "2", "--size", "128", "--seed", "4"]) == 0
    assert "realistic look" in capsys.readouterr().out
    _, rows = _read(out)
    assert {r["look"] for r in rows} == {"realistic"}
    assert all((out / "masks" / k / f"{r['id']}.png").is_file() for k in ARTEFACT_KEYS for r in rows)
    clean = tmp_path / "clean"
    assert main(["synth", str(clean), "--n", "1", "--look", "clean", "--size", "96"]) == 0
    _, rows = _read(clean)
    assert rows[0]["look"] == "clean" and rows[0]["width"] == "96"
    capsys.readouterr()
    for argv, says in (
        (["--look", "fancy"], "--look must be one of realistic, clean; got 'fancy'"),
        (["--look", "clean", "--size-range", "200", "400"], "--size-range applies to the realistic look only"),
        (["--size", "128", "--size-range", "200", "400"], "either --size"),
        (["--size", "50"], "size (realistic look) must be an integer >= 96"),
    ):
        assert main(["synth", str(tmp_path / "bad"), "--n", "1", *argv]) == 2  # a usage error
        err = capsys.readouterr().err
        assert err.startswith("icnn synth: error:") and says in err and err.count("\n") == 1, err
    assert not (tmp_path / "bad").exists()


def test_realistic_moderate_npdr_is_often_a_few_faint_haemorrhages():
    """Half the grade-2 eyes of the realistic look carry only 1-3 faint dot haemorrhages beside their
    microaneurysms (the hard referable eyes of screening); the clean look keeps its fuller grade-2 eyes."""
    mild = full = 0
    for i in range(24):
        f = generate_fundus(np.random.SeedSequence([4040, i]), 400, grade=2, look="realistic")
        lab = f.labels
        assert lab["grade"] == icdr_grade(findings_from(
            f.lesions, f.masks["EX"], lab["fovea_x"], lab["fovea_y"], lab["disc_diameter"], lab["laterality"],
            ("MA", "HE", "EX", "SE", "NV")))
        if 1 <= lab["n_HE"] <= 3 and lab["n_EX"] == lab["n_SE"] == 0:
            mild += 1
            assert lab["grade"] == 2 and lab["referable"] == 1
        else:
            full += 1
    assert 6 <= mild <= 18 and full >= 6, (mild, full)
