"""Ungradeable photographs (``ungradeable_share``): a share of a realistic cohort defocused, under- or
over-exposed or obscured, chosen by the seed alone, with labels and masks left as drawn."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from napari_icnn.cli import main
from napari_icnn.data.synth import generate_fundus, write_cohort
from napari_icnn.data.synth.degrade import COVER_RANGE, DEFOCUS_RANGE, UNGRADEABLE_KINDS, plan_degradation
from napari_icnn.errors import ConfigError
from napari_icnn.parts import PART_KEYS

SEED, N, SIZE = 17, 20, 288
QUALITY_COLUMNS = ("gradable", "ungradeable")
# labels.csv columns that existed before ungradeable photographs (every one must keep its values)
OLD_COLUMNS = (
    "id,laterality,grade,referable,dme,n_MA,n_HE,n_EX,n_SE,n_NV,disc_x,disc_y,fovea_x,fovea_y,fov_x,fov_y,fov_radius,"
    "disc_diameter,disc_height,target_grade,n_preretinal,he_sn,he_st,he_in,he_it,vessel_fraction,jpeg_quality,seed,"
    "index,image_path,look,camera,fov_shape,width,height,n_text,cast,exposure,illumination,vignetting,blur,blur_px,"
    "dust,reflection,sheen,treated,n_drusen,n_pigment,n_laser"
).split(",")


def _read(root: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """The same seed written plainly and with half the photographs made ungradeable (DICOM copies too)."""
    root = tmp_path_factory.mktemp("ungradeable")
    try:
        import napari_icnn.dicom.op_writer  # noqa: F401

        dicom = True
    except ImportError:
        dicom = False
    write_cohort(root / "plain", N, size=SIZE, seed=SEED)
    summary = write_cohort(root / "failed", N, size=SIZE, seed=SEED, ungradeable_share=0.5, dicom=dicom)
    return root / "plain", root / "failed", summary


@pytest.fixture(scope="module")
def pairs():
    """``(undegraded, ungradeable)`` photographs of the same seeds."""
    out = []
    for i in range(32):
        ss = np.random.SeedSequence([23, i])
        out.append((generate_fundus(ss, 256, look="realistic"),
                    generate_fundus(ss, 256, look="realistic", ungradeable_share=1.0)))  # fmt: skip
    return out


# ------------------------------------------------------------------------------ who is degraded


def test_the_share_is_honoured_and_the_kinds_are_drawn_uniformly():
    fov = np.ones((8, 8), dtype=bool)
    plans = {
        share: [plan_degradation(np.random.default_rng([4, i]), share, fov, (4.0, 4.0), 4.0) for i in range(4000)]
        for share in (0.0, 0.3, 0.6, 1.0)
    }
    assert all(p.gradable for p in plans[0.0]) and not any(p.gradable for p in plans[1.0])
    assert abs(np.mean([not p.gradable for p in plans[0.3]]) - 0.3) < 0.03
    kinds = [p.kind for p in plans[1.0]]
    assert all(abs(kinds.count(k) / len(kinds) - 0.25) < 0.03 for k in UNGRADEABLE_KINDS)
    # a higher share only adds failures: whatever fails at 0.3 fails the same way at 0.6 and 1
    for low, high, full in zip(plans[0.3], plans[0.6], plans[1.0], strict=True):
        if not low.gradable:
            assert low.kind == high.kind == full.kind
        if not high.gradable:
            assert high.kind == full.kind


def test_a_cohort_has_about_the_share_recorded_per_image_and_in_cohort_json(cohorts):
    plain, failed, summary = cohorts
    columns, rows = _read(failed)
    assert columns[: len(OLD_COLUMNS)] == list(OLD_COLUMNS)  # every earlier column, in its order
    assert columns[len(OLD_COLUMNS) : len(OLD_COLUMNS) + 2] == list(QUALITY_COLUMNS)
    bad = [r for r in rows if r["gradable"] == "0"]
    assert 5 <= len(bad) <= 15, len(bad)  # about half of 20
    assert all(r["ungradeable"] in UNGRADEABLE_KINDS for r in bad)
    assert all(r["ungradeable"] == "" for r in rows if r["gradable"] == "1")
    _, plain_rows = _read(plain)
    assert {(r["gradable"], r["ungradeable"]) for r in plain_rows} == {("1", "")}  # share 0: every one gradable
    meta = json.loads((failed / "cohort.json").read_text())
    assert meta["ungradeable_share"] == 0.5 and "ungradeable" in meta["rules"]
    assert sum(meta["ungradeable_counts"].values()) == len(bad) == summary.n_ungradeable
    assert f"ungradeable {len(bad)}" in summary.describe()
    assert json.loads((plain / "cohort.json").read_text())["ungradeable_share"] == 0.0


def test_every_kind_occurs_and_the_decision_ignores_the_grade(pairs):
    kinds = [b.labels["ungradeable"] for _, b in pairs]
    assert all(b.labels["gradable"] == 0 for _, b in pairs)
    assert all(kinds.count(k) >= 3 for k in UNGRADEABLE_KINDS), kinds
    for i in range(8):
        ss = np.random.SeedSequence([29, i])
        fs = [generate_fundus(ss, 128, grade=g, look="realistic", ungradeable_share=0.5) for g in (0, 4)]
        assert fs[0].labels["grade"] != fs[1].labels["grade"]
        assert [f.labels["ungradeable"] for f in fs] == [fs[0].labels["ungradeable"]] * 2
        assert np.array_equal(fs[0].artefact_masks["artefact"], fs[1].artefact_masks["artefact"])


# -------------------------------------------------------------------------- the truth stays drawn


def test_labels_masks_and_gradable_photographs_are_those_of_the_undegraded_cohort(cohorts):
    plain, failed, _ = cohorts
    _, before = _read(plain)
    _, after = _read(failed)
    covers = 0
    for old, new in zip(before, after, strict=True):
        assert {c: new[c] for c in OLD_COLUMNS} == {c: old[c] for c in OLD_COLUMNS}  # grade, n_*, camera …
        rid = new["id"]
        for part in (*PART_KEYS, "fov", "text"):
            name = f"masks/{part}/{rid}.png"
            assert (failed / name).read_bytes() == (plain / name).read_bytes(), name
        same_image = (failed / new["image_path"]).read_bytes() == (plain / old["image_path"]).read_bytes()
        assert same_image == (new["gradable"] == "1"), rid
        art_old, art_new = (_png(root / "masks" / "artefact" / f"{rid}.png") > 0 for root in (plain, failed))
        if new["ungradeable"] != "obscured":
            assert np.array_equal(art_old, art_new), rid
            continue
        covers += 1
        fov = _png(failed / "masks" / "fov" / f"{rid}.png") > 0
        cover = art_new & ~art_old
        assert not (art_old & ~art_new).any() and not (cover & ~fov).any()
        share, added = (art_new & fov).sum() / fov.sum(), cover.sum() / fov.sum()
        assert COVER_RANGE[0] - 0.01 <= share and added <= COVER_RANGE[1] + 0.01, (rid, share, added)
    assert covers >= 1


def test_the_obscured_cover_is_in_the_field_and_covers_half_to_four_fifths_of_it(pairs):
    for a, b in pairs:
        fov = b.artefact_masks["fov"]
        cover = b.artefact_masks["artefact"] & ~a.artefact_masks["artefact"]
        if b.labels["ungradeable"] != "obscured":
            assert np.array_equal(a.artefact_masks["artefact"], b.artefact_masks["artefact"])
            continue
        assert not (cover & ~fov).any()
        assert COVER_RANGE[0] - 0.01 <= (b.artefact_masks["artefact"] & fov).sum() / fov.sum()
        assert cover.sum() / fov.sum() <= COVER_RANGE[1] + 0.01
        for k in PART_KEYS:
            assert np.array_equal(a.masks[k], b.masks[k]), k


# --------------------------------------------------------------------------- what each kind does


def _core(f) -> np.ndarray:
    """The field away from its rim and from burned-in text."""
    lab = f.labels
    yy, xx = np.mgrid[: lab["height"], : lab["width"]]
    inner = np.hypot(xx - lab["fov_x"], yy - lab["fov_y"]) < 0.84 * lab["fov_radius"]
    return inner & f.artefact_masks["fov"] & ~ndimage.binary_dilation(f.artefact_masks["text"], iterations=4)


def _band(image: np.ndarray) -> np.ndarray:
    """The green channel band-passed to vessel and lesion scale (above the sensor grain)."""
    g = image[..., 1].astype(np.float32)
    return ndimage.gaussian_filter(g, 1.0) - ndimage.gaussian_filter(g, 4.0)


def _detail(image: np.ndarray, where: np.ndarray) -> float:
    """Energy of :func:`_band` inside ``where``."""
    return float((_band(image)[where] ** 2).mean())


def test_each_kind_does_what_it_says_on_the_pixels(pairs):
    seen = dict.fromkeys(UNGRADEABLE_KINDS, 0)
    for a, b in pairs:
        kind, core, fov = b.labels["ungradeable"], _core(b), b.artefact_masks["fov"]
        before, after = a.image.astype(np.float32), b.image.astype(np.float32)
        seen[kind] += 1
        if kind == "defocus":
            # vessels unreadable: the detail inside the field drops by more than an order of magnitude
            assert _detail(a.image, core) / _detail(b.image, core) > 10, b.labels["id"]
        elif kind == "underexposed":
            assert after[fov].mean() < 0.2 * before[fov].mean(), b.labels["id"]
            assert after[core].max(axis=1).mean() > 3  # dark, but not pure black
            assert _detail(b.image, core) < 0.1 * _detail(a.image, core)
        elif kind == "overexposed":
            clipped = (b.image[fov] >= 245).all(axis=1).mean()
            spread = after[..., 1][core].std() / before[..., 1][core].std()
            assert clipped > 0.5 or spread < 0.3, (b.labels["id"], clipped, spread)
            assert _detail(b.image, core) < 0.25 * _detail(a.image, core)
        else:
            cover = b.artefact_masks["artefact"] & ~a.artefact_masks["artefact"]
            deep = ndimage.binary_erosion(cover, iterations=int(0.05 * b.labels["fov_radius"])) & core
            # a dark lid or a milky haze: far darker or far brighter than the eye it hides, whose vessels
            # and lesions no longer show through (their detail is all but uncorrelated with the eye's)
            assert abs(after[deep].mean() - before[deep].mean()) > 40, b.labels["id"]
            assert np.corrcoef(_band(a.image)[deep], _band(b.image)[deep])[0, 1] < 0.4, b.labels["id"]
    assert all(seen.values()), seen


def test_the_ordinary_blur_stays_far_below_a_missed_focus(pairs):
    ordinary = [a.labels["blur_px"] / (2 * a.labels["fov_radius"]) for a, _ in pairs if a.labels["blur"] == "defocus"]
    assert ordinary and max(ordinary) < 0.01 < DEFOCUS_RANGE[0] / 2
    fov = np.ones((64, 64), dtype=bool)
    sigmas = []
    for i in range(400):
        plan = plan_degradation(np.random.default_rng([6, i]), 1.0, fov, (32.0, 32.0), 30.0)
        if plan.kind == "defocus":
            sigmas.append(plan.sigma / 60.0)
    assert DEFOCUS_RANGE[0] <= min(sigmas) and max(sigmas) <= DEFOCUS_RANGE[1]


def test_the_dicom_copy_is_the_degraded_photograph(cohorts):
    pydicom = pytest.importorskip("pydicom")
    _, failed, summary = cohorts
    if not summary.dicom:
        pytest.skip("no DICOM writer")
    _, rows = _read(failed)
    row = next(r for r in rows if r["gradable"] == "0")
    png = _png(failed / row["image_path"]).astype(int)
    pixels = pydicom.dcmread(failed / row["dicom_path"]).pixel_array.astype(int)
    assert np.abs(pixels - png).mean() < 3


# ------------------------------------------------------------------------- nothing else changes


# Decoded pixels of every image and mask, and the labels of every earlier column, written by the
# generator before ungradeable photographs existed (same Pillow-independent digest as below).
BEFORE = {
    (21, None, 6): "99aef4938b578a51",
    (4, 256, 3): "50b7b5358ca3b6e7",
}


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(str(p.relative_to(root)).encode())
        h.update(_png(p).tobytes())
    _, rows = _read(root)
    h.update(json.dumps([{k: r[k] for k in OLD_COLUMNS} for r in rows]).encode())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("seed, size, n", list(BEFORE))
def test_share_zero_writes_what_the_generator_wrote_before(tmp_path, seed, size, n):
    default, zero = tmp_path / "default", tmp_path / "zero"
    write_cohort(default, n, size=size, size_range=(96, 200), seed=seed)
    write_cohort(zero, n, size=size, size_range=(96, 200), seed=seed, ungradeable_share=0.0)
    assert _digest(default) == BEFORE[(seed, size, n)]
    files = sorted(p.relative_to(default) for p in default.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(zero) for p in zero.rglob("*") if p.is_file())
    assert all((default / f).read_bytes() == (zero / f).read_bytes() for f in files)


# ------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ungradeable_share=1.5), "ungradeable_share must be a number from 0 to 1; got 1.5"),
        (dict(ungradeable_share=-0.1), "ungradeable_share must be a number from 0 to 1"),
        (dict(ungradeable_share=math.nan), "ungradeable_share must be a number from 0 to 1"),
        (dict(ungradeable_share=True), "ungradeable_share must be a number from 0 to 1"),
        (dict(ungradeable_share="0.5"), "ungradeable_share must be a number from 0 to 1"),
        (dict(ungradeable_share=0.2, look="clean"), "ungradeable_share applies to the realistic look only"),
    ],
)
def test_bad_shares_are_refused(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        write_cohort(tmp_path / "c", 1, size=128, **kwargs)
    assert not (tmp_path / "c").exists()
    with pytest.raises(ConfigError, match=match):
        generate_fundus(1, 128, **{"look": "realistic", **kwargs})


def test_cli_ungradeable_share(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["synth", str(out), "--n", "3", "--size", "128", "--seed", "2", "--ungradeable-share", "1"]) == 0
    assert "ungradeable 3" in capsys.readouterr().out
    _, rows = _read(out)
    assert [r["gradable"] for r in rows] == ["0"] * 3 and all(r["ungradeable"] in UNGRADEABLE_KINDS for r in rows)
    for argv, says in (
        (["--ungradeable-share", "1.5"], "--ungradeable-share must be a share from 0 to 1; got 1.5"),
        (["--ungradeable-share", "-0.2"], "--ungradeable-share must be a share from 0 to 1"),
        (["--ungradeable-share", "nan"], "--ungradeable-share must be a share from 0 to 1"),
        (["--look", "clean", "--size", "96", "--ungradeable-share", "0.3"], "--ungradeable-share applies to the realistic look only"),
    ):
        assert main(["synth", str(tmp_path / "bad"), "--n", "1", *argv]) == 2  # a usage error
        err = capsys.readouterr().err
        assert err.startswith("icnn synth: error:") and says in err and err.count("\n") == 1, err
    assert not (tmp_path / "bad").exists()
