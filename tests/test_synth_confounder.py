"""Site artefacts correlated with the label (``confounder``, ``confounder_rate``): a stamp, a logo or a notch drawn on
a share of the referable eyes and the complementary share of the others, with the eye itself left alone."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_icnn.cli import main
from napari_icnn.data.synth import generate_fundus, write_cohort
from napari_icnn.data.synth.confounder import CONFOUNDER_KINDS, check_confounder
from napari_icnn.errors import ConfigError
from napari_icnn.parts import LESION_KEYS

SIZE = 256
COHORT_SEED, COHORT_N, COHORT_SIZE = 41, 24, 256
CONF_COLUMNS = ["confounder", "confounder_kind"]


def _read(root: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)) > 0


def _eroded(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        inner = out.copy()
        inner[1:] &= out[:-1]
        inner[:-1] &= out[1:]
        inner[:, 1:] &= out[:, :-1]
        inner[:, :-1] &= out[:, 1:]
        out = inner
    return out


@pytest.fixture(scope="module")
def drawn():
    """Per kind: referable-target photographs of a few seeds with the artefact at rate 1 and the same seeds at
    rate 0 (the artefact planned, its place kept clear, but not drawn on a referable eye)."""
    out = {}
    for kind in CONFOUNDER_KINDS:
        pairs = []
        for seed, grade in ((3, 3), (5, 4), (8, 3), (11, 4)):
            on = generate_fundus(seed, size=SIZE, look="realistic", grade=grade, confounder=kind, confounder_rate=1.0)
            off = generate_fundus(seed, size=SIZE, look="realistic", grade=grade, confounder=kind, confounder_rate=0.0)
            pairs.append((on, off))
        out[kind] = pairs
    return out


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """A stamp cohort at rate 0.9, the same seed without a confounder (default and explicit ``None``)."""
    root = tmp_path_factory.mktemp("confounder")
    summary = write_cohort(root / "stamp", COHORT_N, size=COHORT_SIZE, seed=COHORT_SEED, confounder="stamp",
                           confounder_rate=0.9)
    write_cohort(root / "plain", 6, size=COHORT_SIZE, seed=COHORT_SEED)
    write_cohort(root / "none", 6, size=COHORT_SIZE, seed=COHORT_SEED, confounder=None, confounder_rate=None)
    return root, summary


# ----------------------------------------------------------------------------------------- one photograph


@pytest.mark.parametrize("kind", CONFOUNDER_KINDS)
def test_rate_one_draws_the_artefact_on_every_referable_eye(drawn, kind):
    for on, off in drawn[kind]:
        lab = on.labels
        assert lab["confounder_kind"] == kind and off.labels["confounder_kind"] == kind
        assert lab["referable"] in (0, 1)
        # rate 1: on every referable eye, never on another; rate 0: the reverse
        assert lab["confounder"] == lab["referable"]
        assert off.labels["confounder"] == 1 - off.labels["referable"]
        if lab["referable"] != 1:
            continue
        m = on.artefact_masks["confounder"]
        assert m.dtype == bool and m.shape == on.image.shape[:2]
        assert m.sum() >= 50, m.sum()
        assert not off.artefact_masks["confounder"].any()  # recorded only where drawn
        assert (m & ~on.artefact_masks["artefact"]).sum() == 0
        ys, xs = np.nonzero(m)
        h, w = m.shape
        if kind in ("stamp", "logo"):
            # print: part of the burned-in text, inside the frame with a margin
            assert (m & ~on.artefact_masks["text"]).sum() == 0
            assert (m & ~off.artefact_masks["text"]).any()  # not the camera's own text
            assert ys.min() >= 1 and xs.min() >= 1 and ys.max() <= h - 2 and xs.max() <= w - 2
            # and over the retina for the most part
            assert (m & on.artefact_masks["fov"]).sum() >= 0.5 * m.sum()
        else:
            # a bite out of the field: no longer field, but field where the notch is not drawn
            assert not (m & on.artefact_masks["fov"]).any()
            assert (m & off.artefact_masks["fov"]).sum() == m.sum()
            assert np.array_equal(on.artefact_masks["fov"] | m, off.artefact_masks["fov"])
            assert not (m & on.artefact_masks["text"]).any()


def test_pixels_under_the_artefact_look_like_it(drawn):
    checked = 0
    for kind, pairs in drawn.items():
        for on, off in pairs:
            if on.labels["referable"] != 1:
                continue
            m = on.artefact_masks["confounder"]
            px = on.image[m].astype(float)
            before = off.image[m].astype(float)
            if kind == "stamp":
                r, g, b = px.mean(axis=0)
                assert r > 190 and g > 140 and r - b > 80, (r, g, b)  # yellow print
                assert px.mean() > before.mean() + 20
            elif kind == "logo":
                assert px.mean(axis=0).min() > 180, px.mean(axis=0)  # white
            else:
                # dark (JPEG ringing aside at the edges), where the retina was seen without the notch
                assert np.median(px.max(axis=1)) < 30
                core = _eroded(m, 2)
                assert core.any()
                assert on.image[core].max() < 30, on.image[core].max()
                assert off.image[m].astype(float).mean() > px.mean() + 15
            checked += 1
    assert checked >= 6


@pytest.mark.parametrize("kind", CONFOUNDER_KINDS)
def test_lesions_are_kept_clear_of_the_artefact(drawn, kind):
    lesions = 0
    for on, off in drawn[kind]:
        m = on.artefact_masks["confounder"]
        for f in (on, off):
            for k in LESION_KEYS:
                assert not (f.masks[k] & m).any(), (kind, k)
                lesions += int(f.masks[k].sum())
        # what the artefact covers is no longer seen as anatomy either
        for k in ("optic_disc", "fovea", "vessels"):
            assert not (on.masks[k] & m).any(), (kind, k)
    assert lesions > 0  # grades 3 and 4 draw lesions


@pytest.mark.parametrize("kind", CONFOUNDER_KINDS)
def test_the_eye_does_not_depend_on_the_rate(kind):
    flipped = 0
    for seed in range(6):
        fs = {rate: generate_fundus(seed, size=160, look="realistic", confounder=kind, confounder_rate=rate)
              for rate in (0.0, 0.3, 0.7, 1.0)}
        base = fs[0.0]
        for rate, f in fs.items():
            for k in LESION_KEYS:
                assert np.array_equal(f.masks[k], base.masks[k]), (seed, rate, k)
            a = {c: v for c, v in f.labels.items() if c != "confounder"}
            b = {c: v for c, v in base.labels.items() if c != "confounder"}
            assert a == b, (seed, rate)
            assert f.lesions == base.lesions
        # P and 1 - P: rates 0 and 1 put the artefact on exactly the other eyes
        assert fs[0.0].labels["confounder"] == 1 - fs[1.0].labels["confounder"]
        on = fs[0.0] if fs[0.0].labels["confounder"] else fs[1.0]
        off = fs[1.0] if on is fs[0.0] else fs[0.0]
        assert on.artefact_masks["confounder"].any() and not off.artefact_masks["confounder"].any()
        assert not np.array_equal(on.image, off.image)
        flipped += fs[0.3].labels["confounder"] != fs[0.7].labels["confounder"]
    assert flipped >= 1  # 0.3 and 0.7 differ on a draw between them (40 % of eyes)


def test_the_frame_and_anatomy_do_not_depend_on_the_confounder():
    """Not drawn, a confounder leaves the frame, the anatomy and the camera's text as without one (lesions may
    move: their place is kept clear either way)."""
    for seed in range(4):
        plain = generate_fundus(seed, size=160, look="realistic")
        for kind in CONFOUNDER_KINDS:
            f = generate_fundus(seed, size=160, look="realistic", confounder=kind, confounder_rate=0.5)
            for c in ("camera", "fov_shape", "width", "height", "n_text", "laterality", "fov_radius", "disc_x"):
                assert f.labels[c] == plain.labels[c], (seed, kind, c)
            assert "confounder" not in plain.labels and "confounder" not in plain.artefact_masks
            if f.labels["confounder"]:
                continue
            for k in ("optic_disc", "fovea", "vessels"):
                assert np.array_equal(f.masks[k], plain.masks[k]), (seed, kind, k)
            for k in ("fov", "text"):
                assert np.array_equal(f.artefact_masks[k], plain.artefact_masks[k]), (seed, kind, k)


# ---------------------------------------------------------------------------------------------- a cohort


def test_a_cohort_without_a_confounder_is_as_before(cohorts):
    root, _ = cohorts
    plain, none, stamp = root / "plain", root / "none", root / "stamp"
    cols_plain, rows_plain = _read(plain)
    cols_none, rows_none = _read(none)
    cols_stamp, _ = _read(stamp)
    assert not set(CONF_COLUMNS) & set(cols_plain)
    assert cols_none == cols_plain
    assert cols_stamp == cols_plain + CONF_COLUMNS  # no DICOM: the two columns come last
    assert (plain / "labels.csv").read_bytes() == (none / "labels.csv").read_bytes()
    for r in (plain, none):
        assert not (r / "masks" / "confounder").exists()
        meta = json.loads((r / "cohort.json").read_text())
        assert not {"confounder", "confounder_rate", "confounded"} & set(meta)
    for row in rows_plain:
        for sub in ("images", "masks/EX", "masks/artefact", "masks/text"):
            name = f"{sub}/{row['id']}.png"
            assert (plain / name).read_bytes() == (none / name).read_bytes(), name


def test_a_stamp_cohort_records_where_the_stamp_is(cohorts):
    root, summary = cohorts
    stamp = root / "stamp"
    cols, rows = _read(stamp)
    assert len(rows) == COHORT_N
    assert set(CONF_COLUMNS) <= set(cols)
    assert {r["confounder_kind"] for r in rows} == {"stamp"}
    assert {r["confounder"] for r in rows} <= {"0", "1"}
    assert sorted(p.stem for p in (stamp / "masks" / "confounder").glob("*.png")) == sorted(r["id"] for r in rows)
    carried = 0
    for r in rows:
        m = _mask(stamp / "masks" / "confounder" / f"{r['id']}.png")
        assert m.any() == (r["confounder"] == "1"), r["id"]
        if m.any():
            carried += 1
            assert m.shape == np.asarray(Image.open(stamp / r["image_path"])).shape[:2]
            assert not (m & ~_mask(stamp / "masks" / "artefact" / f"{r['id']}.png")).any()
            assert not (m & ~_mask(stamp / "masks" / "text" / f"{r['id']}.png")).any()
            for k in LESION_KEYS:
                assert not (m & _mask(stamp / "masks" / k / f"{r['id']}.png")).any(), (r["id"], k)
    assert carried >= 1
    ref = sum(1 for r in rows if r["confounder"] == "1" and r["referable"] == "1")
    other = sum(1 for r in rows if r["confounder"] == "1" and r["referable"] == "0")
    meta = json.loads((stamp / "cohort.json").read_text())
    assert meta["confounder"] == "stamp" and meta["confounder_rate"] == 0.9
    assert meta["confounded"] == {"referable": ref, "other": other}
    assert meta["complete"] is True
    assert summary.confounder == "stamp" and summary.confounder_rate == 0.9
    assert summary.confounded == (ref, other)
    text = summary.describe()
    assert "site stamp" in text.lower(), text
    n_ref = sum(1 for r in rows if r["referable"] == "1")
    assert f"on {ref} of {n_ref} referable and {other} of {COHORT_N - n_ref} other" in text, text


def test_the_same_seed_at_rates_p_and_one_minus_p_reverses_the_correlation(tmp_path):
    a = write_cohort(tmp_path / "a", 8, size=160, seed=7, confounder="logo", confounder_rate=1.0)
    b = write_cohort(tmp_path / "b", 8, size=160, seed=7, confounder="logo", confounder_rate=0.0)
    _, ra = _read(tmp_path / "a")
    _, rb = _read(tmp_path / "b")
    for x, y in zip(ra, rb, strict=True):
        assert {c: v for c, v in x.items() if c != "confounder"} == {c: v for c, v in y.items() if c != "confounder"}
        assert x["confounder"] == x["referable"] and y["confounder"] == str(1 - int(y["referable"]))
        for k in LESION_KEYS:
            name = f"masks/{k}/{x['id']}.png"
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    n_ref = sum(r["referable"] == "1" for r in ra)
    assert a.confounded == (n_ref, 0) and b.confounded == (0, 8 - n_ref)


def test_rewriting_a_cohort_without_the_confounder_drops_its_masks(tmp_path):
    write_cohort(tmp_path / "c", 3, size=160, seed=2, confounder="stamp", confounder_rate=0.9)
    write_cohort(tmp_path / "c", 3, size=160, seed=2)
    cols, _ = _read(tmp_path / "c")
    assert "confounder" not in cols
    assert not list((tmp_path / "c" / "masks" / "confounder").glob("*.png"))
    # nor does an audit take a stray confounder folder for the cohort's own
    from napari_icnn.audit.measure import _artefact_source
    from napari_icnn.data.layouts import discover

    (tmp_path / "c" / "masks" / "confounder" / "s2_00000.png").write_bytes(
        (tmp_path / "c" / "masks" / "text" / "s2_00000.png").read_bytes())
    folder, name = _artefact_source(discover(str(tmp_path / "c")), None)
    assert folder is not None and folder.name == "artefact" and "site" not in (name or "")


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"confounder": "blob", "confounder_rate": 0.5}, ["stamp", "blob"]),
        ({"confounder": "stamp", "confounder_rate": 1.5}, ["rate", "1.5"]),
        ({"confounder": "stamp", "confounder_rate": -0.1}, ["rate", "-0.1"]),
        ({"confounder": "stamp", "confounder_rate": math.nan}, ["rate", "nan"]),
        ({"confounder": "stamp", "confounder_rate": "0.5"}, ["rate"]),
        ({"confounder": "stamp", "confounder_rate": True}, ["rate"]),
        ({"confounder_rate": 0.5}, ["kind"]),
        ({"confounder": "notch"}, ["rate"]),
        ({"confounder": "logo", "confounder_rate": 0.5, "look": "clean"}, ["realistic", "clean"]),
    ],
)
def test_bad_settings_are_refused_with_a_reason(kwargs, words, tmp_path):
    kw = {"look": "realistic", **kwargs}
    with pytest.raises(ConfigError) as err:
        generate_fundus(1, size=128, **kw)
    msg = str(err.value).lower()
    assert all(w in msg for w in words), msg
    assert "confounder" in msg
    with pytest.raises(ConfigError, match="confounder"):
        write_cohort(tmp_path / "c", 2, size=128 if kw["look"] == "clean" else 160, **kw)
    assert not (tmp_path / "c").exists()  # refused before anything is written


def test_check_confounder_passes_good_settings():
    assert check_confounder(None, None, "clean") == (None, None)
    assert check_confounder(None, None, "realistic") == (None, None)
    assert check_confounder("notch", 0, "realistic") == ("notch", 0.0)
    assert check_confounder("stamp", np.float32(0.25), "realistic") == ("stamp", 0.25)
    assert check_confounder("logo", 1, "realistic") == ("logo", 1.0)


def test_the_cli_refuses_a_bad_confounder_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["synth", str(out), "--n", "2", "--confounder", "blob", "--confounder-rate", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "blob" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert main(["synth", str(out), "--n", "2", "--confounder-rate", "0.5"]) == 2
    assert not out.exists()
    assert main(["synth", str(out), "--n", "2", "--confounder", "stamp"]) == 2
    assert not out.exists()
    assert main(["synth", str(out), "--n", "2", "--confounder", "stamp", "--confounder-rate", "nan"]) == 2
    assert not out.exists()


def test_the_cli_writes_a_confounded_cohort(tmp_path, capsys):
    out = tmp_path / "c"
    code = main(["synth", str(out), "--n", "3", "--size", "160", "--seed", "4", "--confounder", "notch",
                 "--confounder-rate", "0.8"])
    assert code == 0
    assert "site notch (rate 0.8)" in capsys.readouterr().out.lower()
    cols, rows = _read(out)
    assert cols[-2:] == CONF_COLUMNS and len(rows) == 3
    assert json.loads((out / "cohort.json").read_text())["confounder_rate"] == 0.8
    assert len(list((out / "masks" / "confounder").glob("*.png"))) == 3
