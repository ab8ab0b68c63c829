"""``icnn demo``: the clinician's view first (Explain and the DICOM batch with the shipped model on a clinic's
scans), then the shipped model fine-tuned on the clinic's photographs and compared before and after on held-out
ones; ``--full`` trains from scratch (cohorts, two-stage training, evaluation, explanation, batch)."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys

import pytest

from napari_icnn.bundle import shipped_bundle_path


def _demo(*argv: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_icnn", "demo", *argv], capture_output=True, text=True,
                          timeout=timeout)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_explanation(folder, source: str | None = None) -> dict:
    doc = json.loads((folder / "explanation.json").read_text())
    assert doc["format_version"] == 4 and doc["contribution_basis"] and doc["gate"]["status"] != "ungradeable"
    reported = doc["evidence"] + doc["context"] + doc["possible_artefacts"]
    assert reported and {"id", "name", "peak_x", "peak_y", "role", "flags"} <= set(reported[0])
    assert all(f["role"] == "evidence" for f in doc["evidence"])
    assert doc["overlays"] and all((folder / name).stat().st_size > 0 for name in doc["overlays"])
    assert (folder / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if source is not None:
        assert doc["source"] == source
    return doc


@pytest.mark.slow
def test_the_quick_demo_explains_batches_and_retrains_the_shipped_model(tmp_path):
    import pydicom

    out = tmp_path / "demo"
    run = _demo("--quick", "--out", str(out), "--device", "cpu")
    assert run.returncode == 0, run.stderr[-3000:]
    test = out / "data" / "clinic-test"
    with open(test / "labels.csv", newline="") as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    assert {r["camera"] for r in rows.values()} == {"handheld"}  # the clinic's camera, one the model rarely saw
    assert json.loads((test / "cohort.json").read_text())["cameras"] == ["handheld"]

    # 2. Explain with the shipped model: a referable scan of the clinic, and the real photograph
    explained = _check_explanation(out / "explain_synthetic")
    scan_id = explained["source"].rsplit("/", 1)[-1].removesuffix(".png")
    assert rows[scan_id]["referable"] == "1"
    assert explained["model"]["sha256"] == _sha256(shipped_bundle_path() / "models" / "model.pt")
    _check_explanation(out / "explain_real_photograph", "skimage.data.retina()")
    assert str(out / "explain_synthetic" / "summary.png") in run.stdout  # the figures' paths are printed

    # 3. the DICOM batch with the shipped model: a SEG and an SR per scan that got a verdict
    with open(out / "batch" / "summary.csv", newline="") as fh:
        done = list(csv.DictReader(fh))
    assert len(done) == len(rows) and {r["status"] for r in done} <= {"ok", "declined"}
    ok = [r for r in done if r["status"] == "ok"]
    assert ok
    for r in ok:
        outputs = r["outputs"].split(";")
        seg = next(o for o in outputs if o.endswith(".seg.dcm"))
        sr = next(o for o in outputs if o.endswith(".sr.dcm"))
        assert pydicom.dcmread(out / "batch" / seg, stop_before_pixels=True).Modality == "SEG"
        assert pydicom.dcmread(out / "batch" / sr, stop_before_pixels=True).Modality == "SR"

    # 4. the fine-tuned model: a bundle of its own, started from the shipped one, with other weights
    ft = out / "model-finetuned"
    train_cfg = json.loads((ft / "configs" / "train.json").read_text())
    assert train_cfg["init"] == str(shipped_bundle_path()) and not train_cfg["ordinary"]
    assert train_cfg["data"].endswith("clinic-train") and train_cfg["val"].endswith("clinic-val")
    assert _sha256(ft / "models" / "model.pt") != _sha256(shipped_bundle_path() / "models" / "model.pt")

    # 5. before / after on the same held-out images
    doc = json.loads((out / "before_after.json").read_text())
    assert doc["held_out"]["ids"] == sorted(rows) and doc["held_out"]["images"] == len(rows)
    assert doc["held_out"]["referable"] == sum(r["referable"] == "1" for r in rows.values())
    assert doc["before"]["model"]["sha256"] == _sha256(shipped_bundle_path() / "models" / "model.pt")
    assert doc["after"]["model"]["sha256"] == _sha256(ft / "models" / "model.pt")
    for side in ("before", "after"):
        assert 0.0 <= doc[side]["auc"] <= 1.0 and 0.0 <= doc[side]["accuracy"] <= 1.0
        assert doc[side]["referable_scans"] == doc["held_out"]["referable"]
        rate = doc[side]["top_evidence_in_own_lesion_type"]
        assert rate is None or 0.0 <= rate <= 1.0
    assert set(doc["fine_tuning"]) >= {"init", "n_train", "n_val", "epochs", "lr", "best_epoch"}
    with open(out / "data" / "clinic-train" / "labels.csv", newline="") as fh:
        learnt = {r["id"] for r in csv.DictReader(fh)}
    assert learnt and not learnt & set(doc["held_out"]["ids"])  # the held-out scans are not trained on
    assert (out / "before_after.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "AUC (referable DR)" in run.stdout and "fine-tuned" in run.stdout

    # every output is described, and the demo says it completed
    listing = (out / "README.txt").read_text()
    for name in ("data/clinic-test/", "explain_synthetic/", "explain_real_photograph/", "batch/", "model-finetuned/",
                 "before_after.json", "before_after.png"):
        assert name in listing
    assert json.loads((out / "demo.json").read_text())["complete"] is True

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    run = _demo("--quick", "--out", str(foreign), timeout=300)
    assert run.returncode != 0 and "not a previous demo" in run.stderr and "Traceback" not in run.stderr
    assert (foreign / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
def test_the_full_quick_demo_trains_from_scratch_end_to_end(tmp_path):
    out = tmp_path / "demo"
    run = _demo("--full", "--quick", "--out", str(out), "--device", "cpu")
    assert run.returncode == 0, run.stderr[-3000:]
    meta = json.loads((out / "model" / "configs" / "metadata.json").read_text())
    train_cfg = json.loads((out / "model" / "configs" / "train.json").read_text())
    assert train_cfg["init"].endswith("ordinary") and not train_cfg["ordinary"]  # fine-tuned from the ordinary CNN
    assert len(meta["icnn"]["filters"]) == train_cfg["n_filters"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["auc"] <= 1.0
    model_sha = _sha256(out / "model" / "models" / "model.pt")
    for folder in ("explain_synthetic", "explain_real_photograph"):
        assert _check_explanation(out / folder)["model"]["sha256"] == model_sha
    assert (out / "batch" / "summary.csv").read_text().count("\n") >= 2
    assert "model/" in (out / "README.txt").read_text()
    assert json.loads((out / "demo.json").read_text())["mode"] == "train from scratch"
