"""``icnn demo --quick``: the demo's whole chain (cohorts, two-stage training, evaluation, explanation, batch)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_the_quick_demo_runs_end_to_end_and_refuses_a_foreign_folder(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "napari_icnn", "demo", "--quick", "--out", str(out), "--device", "cpu"],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    meta = json.loads((out / "model" / "configs" / "metadata.json").read_text())
    train_cfg = json.loads((out / "model" / "configs" / "train.json").read_text())
    assert train_cfg["init"].endswith("ordinary") and not train_cfg["ordinary"]  # fine-tuned from the ordinary CNN
    assert len(meta["icnn"]["filters"]) == train_cfg["n_filters"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["auc"] <= 1.0
    for folder in ("explain_synthetic", "explain_real_photograph"):
        doc = json.loads((out / folder / "explanation.json").read_text())
        assert doc["format_version"] == 3 and doc["contribution_basis"] and doc["gate"]["status"] != "ungradeable"
        reported = doc["evidence"] + doc["context"] + doc["possible_artefacts"]
        assert reported and {"id", "name", "peak_x", "peak_y", "role", "flags"} <= set(reported[0])
        assert all(f["role"] == "evidence" for f in doc["evidence"])
    assert (out / "batch" / "summary.csv").read_text().count("\n") >= 2

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    run = subprocess.run([sys.executable, "-m", "napari_icnn", "demo", "--quick", "--out", str(foreign)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "not a previous demo" in run.stderr and "Traceback" not in run.stderr
    assert (foreign / "notes.txt").read_text() == "keep me"
