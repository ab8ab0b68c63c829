"""The interpretability study's driver, on its tiny preset: every step runs and the report is written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_tiny_experiment_writes_tables_figures_and_resumes(tmp_path):
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "napari_icnn", "experiment", "--out", str(out), "--preset", "tiny"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    kinds = {(r["model"], r["explainer"]) for r in doc["records"]}
    assert kinds == {("ordinary", "icnn"), ("icnn", "icnn"), ("ordinary", "gradcam"), ("ordinary", "occlusion")}
    for r in doc["records"]:
        m = r["metrics"]
        for key in ("auc", "part_interpretability", "location_instability", "pointing_hit_rate"):
            assert key in m
    md = (out / "results.md").read_text()
    for heading in ("Part interpretability", "Location instability", "Pointing game", "Classification", "Bars"):
        assert heading in md
    assert (out / "figures" / "iou_histogram.png").stat().st_size > 1000
    assert (out / "figures" / "montage.png").stat().st_size > 1000
    # the test cohort was never used for training
    train_ids = set((out / "data" / "seed0" / "train" / "labels.csv").read_text().split())
    test_ids = (out / "data" / "seed0" / "test" / "labels.csv").read_text().splitlines()[1:]
    assert not any(line.split(",")[0] in train_ids for line in test_ids)
    # a second run resumes: nothing is trained again
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    assert "epoch 1/" not in again.stdout + again.stderr


def test_unknown_preset_is_a_usage_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "napari_icnn", "experiment", "--out", str(tmp_path / "x"),
                           "--preset", "huge"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--preset" in proc.stderr and "Traceback" not in proc.stderr


def test_a_bad_free_fraction_is_refused_before_any_work(tmp_path):
    out = tmp_path / "x"
    proc = subprocess.run([sys.executable, "-m", "napari_icnn", "experiment", "--out", str(out), "--preset", "tiny",
                           "--free-fraction", "1.5"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--free-fraction" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "data").exists()
