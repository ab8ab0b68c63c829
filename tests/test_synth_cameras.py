"""A cohort restricted to some camera profiles (``cameras=``, ``icnn synth --camera``): a clinic with one kind of
camera. Only the profiles named are drawn; without the option every file is what the generator wrote before."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_icnn.cli import build_parser, main
from napari_icnn.data.synth import CAMERA_NAMES, PROFILES, generate_fundus, write_cohort
from napari_icnn.errors import ConfigError

SEED, N, SIZE = 4, 8, 128  # images 0 and 2 of seed 4 are drawn with the handheld camera anyway, 1 and 6 marker-45


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _digest(root: Path) -> str:
    """Decoded pixels of every PNG (independent of the PNG encoder's version) and labels.csv."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(str(p.relative_to(root)).encode())
        h.update(np.asarray(Image.open(p)).tobytes())
    h.update((root / "labels.csv").read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cameras")
    write_cohort(root / "all", N, size=SIZE, seed=SEED)
    write_cohort(root / "none", N, size=SIZE, seed=SEED, cameras=None)
    handheld = write_cohort(root / "handheld", N, size=SIZE, seed=SEED, cameras=("handheld",))
    write_cohort(root / "two", 16, size=SIZE, seed=SEED, cameras=("marker-45", "handheld"))
    return root, handheld


def test_only_the_named_profiles_are_drawn(cohorts):
    root, summary = cohorts
    rows = _rows(root / "handheld")
    assert len(rows) == N and {r["camera"] for r in rows} == {"handheld"}
    shape = next(p.fov_shape for p in PROFILES if p.name == "handheld")
    assert {r["fov_shape"] for r in rows} == {shape}
    assert json.loads((root / "handheld" / "cohort.json").read_text())["cameras"] == ["handheld"]
    assert summary.cameras == ("handheld",) and "camera handheld only" in summary.describe()
    # two profiles: both drawn (by their relative weights), no other; listed in PROFILES order
    two = _rows(root / "two")
    assert {r["camera"] for r in two} == {"marker-45", "handheld"}
    assert json.loads((root / "two" / "cohort.json").read_text())["cameras"] == ["marker-45", "handheld"]


def test_none_writes_exactly_the_files_of_a_cohort_without_the_option(cohorts):
    root, _ = cohorts
    default, none = _files(root / "all"), _files(root / "none")
    assert default.keys() == none.keys() and all(default[k] == none[k] for k in default)
    assert "cameras" not in json.loads(default["cohort.json"])
    assert len({r["camera"] for r in _rows(root / "all")}) > 1
    # and what the generator wrote before the option existed (decoded pixels and labels, computed then)
    assert _digest(root / "all") == "4715ceb60e50c0a1"


def test_only_the_camera_draw_changes(cohorts):
    root, _ = cohorts
    default, handheld = _rows(root / "all"), _rows(root / "handheld")
    # the eye and the target disease come from streams of their own, so they stay
    for a, b in zip(default, handheld, strict=True):
        assert (a["id"], a["laterality"], a["target_grade"]) == (b["id"], b["laterality"], b["target_grade"])
    # a photograph that was drawn with the handheld camera anyway is the very same photograph
    same = [r["id"] for r in default if r["camera"] == "handheld"]
    assert same == ["s4_00000", "s4_00002"]
    for rid in same:
        a = np.asarray(Image.open(root / "all" / "images" / f"{rid}.png"))
        b = np.asarray(Image.open(root / "handheld" / "images" / f"{rid}.png"))
        assert np.array_equal(a, b)
    assert generate_fundus(np.random.SeedSequence([SEED, 1]), SIZE, look="realistic",
                           cameras=("handheld",)).labels["camera"] == "handheld"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(cameras=("pocket",)), "unknown camera profile 'pocket'; the profiles are desktop-45, .*handheld"),
        (dict(cameras=()), "cameras must be a non-empty list of camera profile names"),
        (dict(cameras="handheld"), "cameras must be a non-empty list"),
        (dict(cameras=("handheld", 3)), "cameras must be a non-empty list"),
        (dict(cameras=("handheld",), look="clean"), "cameras applies to the realistic look only"),
    ],
)
def test_bad_camera_choices_are_refused_before_anything_is_written(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        write_cohort(tmp_path / "c", 1, size=128, **kwargs)
    assert not (tmp_path / "c").exists()
    with pytest.raises(ConfigError, match=match):
        generate_fundus(1, 128, **{"look": "realistic", **kwargs})


def test_cli_camera_option(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["synth", str(out), "--n", "3", "--size", "128", "--seed", "2", "--camera", "widefield", "--camera",
            "handheld"]
    assert main(argv) == 0
    assert "cameras widefield, handheld only" in capsys.readouterr().out
    assert {r["camera"] for r in _rows(out)} <= {"widefield", "handheld"}
    for extra, says in (
        (["--camera", "pocket"], "unknown camera profile 'pocket'"),
        (["--camera", "handheld", "--look", "clean"], "--camera applies to the realistic look only"),
    ):
        assert main(["synth", str(tmp_path / "bad"), "--n", "1", "--size", "128", *extra]) == 2  # a usage error
        err = capsys.readouterr().err
        assert err.startswith("icnn synth: error:") and says in err, err
    assert not (tmp_path / "bad").exists()
    # the help names every profile, in their order
    synth = build_parser()._subparsers._group_actions[0].choices["synth"]  # type: ignore[union-attr]
    camera = next(a for a in synth._actions if "--camera" in a.option_strings)
    assert camera.help is not None and ", ".join(CAMERA_NAMES) in camera.help
