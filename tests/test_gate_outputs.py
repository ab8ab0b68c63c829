"""The image-quality gate in every output outside the viewer: ``icnn explain`` (printed quality, a declined
scan's JSON without a prediction, exit code), ``icnn infer`` (summary.csv's quality columns, declined rows, the
options that keep or decline) and the structured report of a scan with a verdict."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_validation import run_dciodvfy
from output_checks import check_output_folder
from PIL import Image
from scipy import ndimage
from test_batch_data import op

from napari_icnn.cli import main

GROUPS = ("evidence", "context", "possible_artefacts")


@pytest.fixture(scope="module")
def photos():
    """A sharp generated photograph and the same photograph blurred by 4 % of its field's diameter (out of
    focus: ungradeable whatever the exact limits)."""
    from napari_icnn.data.fov import find_fov
    from napari_icnn.data.synth import generate_fundus

    sharp = generate_fundus(4, size=256).image
    s = 0.04 * 2 * find_fov(sharp).radius
    return sharp, ndimage.gaussian_filter(sharp, (s, s, 0))


@pytest.fixture
def pngs(tmp_path, photos):
    sharp, blurred = photos
    Image.fromarray(sharp).save(tmp_path / "sharp.png")
    Image.fromarray(blurred).save(tmp_path / "blurred.png")
    return tmp_path / "sharp.png", tmp_path / "blurred.png"


@pytest.fixture(scope="module")
def unfamiliar_bundle(tiny_bundle, tmp_path_factory):
    """The tiny bundle with the experience of a model trained on photographs nothing like these: every scan
    lies far outside it."""
    from napari_icnn.bundle import load_bundle, set_experience
    from napari_icnn.experience import Experience

    root = shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("unfamiliar") / "bundle")
    width = load_bundle(root, "cpu").net.summary_width
    far = Experience(mean=np.full(width, 1e3), scale=np.ones(width), components=np.eye(width)[:1],
                     variances=np.ones(1), residual_variance=1.0, limit=1.0, n_train=8, n_val=8, source="elsewhere")
    set_experience(root, far.to_entry())
    return root


def _explain(capsys, image, out, *args, model=None):
    argv = ["explain", str(image), "--out", str(out), "--top-k", "2", *args]
    rc = main(argv if model is None else [*argv, "--model", str(model)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return rc, captured.out, captured.err


# --------------------------------------------------------------------------- icnn explain


def test_explain_declines_an_out_of_focus_photograph_with_the_reason(pngs, tmp_path, tiny_bundle, capsys):
    _, blurred = pngs
    out = tmp_path / "out"
    rc, stdout, stderr = _explain(capsys, blurred, out, model=tiny_bundle)
    assert rc == 3
    doc = json.loads((out / "explanation.json").read_text())
    gate = doc["gate"]
    assert gate["status"] == "ungradeable" and gate["declined"] is True and gate["kept"] is False
    assert gate["message"].startswith("ungradeable: ") and gate["message"] == gate["quality"]["verdict"]
    assert gate["quality"]["gradable"] is False and gate["quality"]["measures"]["sharpness"] >= 0
    assert doc["format_version"] == 4 and doc["source"] == str(blurred)
    assert "prediction" not in doc and not any(g in doc for g in GROUPS) and doc["overlays"] == []
    assert sorted(p.name for p in out.iterdir()) == ["explanation.json"]  # no overlays
    assert f"{blurred}: declined: {gate['message']}" in stdout.splitlines()
    assert "p =" not in stdout
    (line,) = stderr.splitlines()  # one line, naming the file and why
    assert line.startswith(f"icnn explain: {blurred}: declined: {gate['message']}; no verdict given")
    assert "--keep-ungradeable" in line


def test_explain_keeps_an_ungradeable_photograph_on_request(pngs, tmp_path, tiny_bundle, capsys):
    from napari_icnn.bundle import load_bundle
    from napari_icnn.data.image_io import load_image
    from napari_icnn.explain import explain

    _, blurred = pngs
    out = tmp_path / "out"
    rc, stdout, stderr = _explain(capsys, blurred, out, "--keep-ungradeable", model=tiny_bundle)
    assert rc == 0 and stderr == ""
    doc = json.loads((out / "explanation.json").read_text())
    assert doc["gate"]["status"] == "ungradeable" and doc["gate"]["declined"] is True and doc["gate"]["kept"] is True
    kept = explain(load_image(blurred)[0], load_bundle(tiny_bundle, "cpu"), gate=False)
    assert doc["prediction"]["probability"] == pytest.approx(kept.probability, abs=1e-6)
    assert doc["overlays"] and len(doc["overlays"]) == sum(len(doc[g]) for g in GROUPS)
    for name in doc["overlays"]:
        assert Image.open(out / name).size == (256, 256)
    assert f"p = {kept.probability:.3f}" in stdout
    assert f"  quality: {doc['gate']['message']} (declined, kept on request" in stdout


def test_explain_prints_the_quality_of_a_gradable_photograph(pngs, tmp_path, capsys):
    from napari_icnn.bundle import shipped_bundle_path

    sharp, _ = pngs
    out = tmp_path / "out"
    rc, stdout, _ = _explain(capsys, sharp, out, model=shipped_bundle_path())
    assert rc == 0
    doc = json.loads((out / "explanation.json").read_text())
    gate = doc["gate"]
    assert gate["status"] in ("gradable", "unfamiliar") and gate["declined"] is False and gate["kept"] is False
    assert gate["experience_score"] > 0 and doc["prediction"]["class"] and doc["overlays"]
    assert f"  quality: {gate['message']}" in stdout.splitlines()
    assert f"experience score {gate['experience_score']:.2f} (limit 1.00)" in stdout


def test_decline_unfamiliar_withholds_the_verdict_outside_the_models_experience(
    pngs, tmp_path, unfamiliar_bundle, capsys
):
    sharp, _ = pngs
    rc, stdout, _ = _explain(capsys, sharp, tmp_path / "warned", model=unfamiliar_bundle)
    assert rc == 0
    doc = json.loads((tmp_path / "warned" / "explanation.json").read_text())
    assert doc["gate"]["status"] == "unfamiliar" and doc["gate"]["experience_score"] > 1 and "prediction" in doc
    assert "  quality: outside the model's experience: experience score" in stdout

    rc, stdout, stderr = _explain(capsys, sharp, tmp_path / "declined", "--decline-unfamiliar",
                                  "--keep-ungradeable", model=unfamiliar_bundle)  # keeps ungradeable scans only
    assert rc == 3
    doc = json.loads((tmp_path / "declined" / "explanation.json").read_text())
    assert doc["gate"]["declined"] is True and doc["gate"]["kept"] is False and "prediction" not in doc
    (line,) = stderr.splitlines()
    assert line.startswith(f"icnn explain: {sharp}: declined: outside the model's experience")

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(sharp, src / "sharp.png")
    out = tmp_path / "batch"
    assert main(["infer", str(src), "--out", str(out), "--model", str(unfamiliar_bundle), "--workers", "0",
                 "--decline-unfamiliar"]) == 3
    (row,) = _rows(out)
    assert (row["status"], row["quality"], row["probability"], row["outputs"]) == ("declined", "unfamiliar", "", "")
    assert row["reason"] == row["quality_reason"] and row["reason"].startswith("outside the model's experience")
    assert float(row["experience_score"]) > 1


# --------------------------------------------------------------------------- icnn infer


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def folder(tmp_path, photos):
    """One sharp and one blurred photograph, as OP instances."""
    sharp, blurred = photos
    src = tmp_path / "in"
    src.mkdir()
    op(src / "sharp.dcm", pixels=sharp)
    op(src / "blurred.dcm", pixels=blurred)
    return src


def _sr_image_group(path: Path):
    import highdicom as hd

    groups = hd.sr.srread(path).content.get_image_measurement_groups()
    return next(g for g in groups if str(g.tracking_identifier).startswith("image-level result"))


def _sr_texts(ds, meaning: str) -> list[str]:
    found = []
    for item in ds.get("ContentSequence", []):
        name = item.get("ConceptNameCodeSequence")
        if item.get("ValueType") == "TEXT" and name and name[0].CodeMeaning == meaning:
            found.append(str(item.TextValue))
        found += _sr_texts(item, meaning)
    return found


def test_infer_declines_the_ungradeable_photograph_and_reports_the_gate(folder, tmp_path, capsys):
    from napari_icnn.bundle import shipped_bundle_path

    out = tmp_path / "out"
    rc = main(["infer", str(folder), "--out", str(out), "--model", str(shipped_bundle_path()), "--workers", "0"])
    assert rc == 3
    assert "1 ok, 0 error, 1 declined" in capsys.readouterr().out
    checked = check_output_folder(out, dciodvfy=True)
    by = {Path(r["input_path"]).name: r for r in _rows(out)}
    ok, declined = by["sharp.dcm"], by["blurred.dcm"]

    assert declined["status"] == "declined" and declined["quality"] == "ungradeable"
    assert declined["reason"] == declined["quality_reason"] and declined["reason"].startswith("ungradeable: ")
    assert declined["probability"] == "" and declined["outputs"] == ""
    assert declined["format_version"] == "4"
    for m in ("experience_score", "sharpness", "brightness", "coverage"):
        assert float(declined[m]) >= 0, m
    assert float(declined["sharpness"]) < float(ok["sharpness"])
    sop = pydicom.dcmread(folder / "blurred.dcm", stop_before_pixels=True).SOPInstanceUID
    assert not [p for p in out.rglob("*") if sop in p.name]  # no SEG, SR, sheet or JSON of it

    assert ok["status"] == "ok" and ok["quality"] in ("gradable", "unfamiliar") and 0 <= float(ok["probability"]) <= 1
    assert ok["reason"] == "" and (ok["quality_reason"] == "") == (ok["quality"] == "gradable")
    score = float(ok["experience_score"])
    assert score > 0 and all(0 <= float(ok[m]) <= 1 for m in ("brightness", "coverage"))
    outputs = {o.rsplit(".", 2)[-2] if o.endswith(".dcm") else o.rsplit(".", 1)[-1]: out / o
               for o in ok["outputs"].split(";")}
    assert set(outputs) == {"seg", "sr", "png", "json"} and len(checked.sr) == 1
    doc = json.loads(outputs["json"].read_text())
    assert doc["gate"]["status"] == ok["quality"] and doc["gate"]["kept"] is False
    assert doc["gate"]["experience_score"] == pytest.approx(score, abs=1e-4)
    assert doc["gate"]["quality"]["measures"]["sharpness"] == pytest.approx(float(ok["sharpness"]), abs=1e-4)

    # the SR carries the gate: image quality (coded), its reason in words, the experience score (UCUM 1)
    errors, _, report = run_dciodvfy(outputs["sr"])
    assert errors == [], report
    group = _sr_image_group(outputs["sr"])
    quality = {q.name.meaning: q.value.meaning for q in group.get_qualitative_evaluations()}
    assert quality["Image quality"] == ("Gradable" if ok["quality"] == "gradable" else
                                        "Gradable, outside the model's experience")
    measured = {m.name.meaning: m for m in group.get_measurements()}
    experience = measured["Experience score (1 = limit of the model's training data)"]
    assert experience.value == pytest.approx(score, abs=1e-4) and experience.unit.value == "1"
    (reason,) = _sr_texts(pydicom.dcmread(outputs["sr"]), "Image quality reason")
    assert reason == doc["gate"]["message"]


def test_infer_keeps_the_ungradeable_photograph_on_request_and_says_so(folder, tmp_path, tiny_bundle, capsys):
    out = tmp_path / "out"
    rc = main(["infer", str(folder), "--out", str(out), "--model", str(tiny_bundle), "--workers", "0",
               "--keep-ungradeable"])
    assert rc == 0
    check_output_folder(out, dciodvfy=True)
    by = {Path(r["input_path"]).name: r for r in _rows(out)}
    kept = by["blurred.dcm"]
    assert kept["status"] == "ok" and kept["quality"] == "ungradeable" and kept["probability"]
    assert kept["quality_reason"].startswith("ungradeable: ") and "--keep-ungradeable" in kept["reason"]
    assert kept["experience_score"] == ""  # the tiny bundle stores no experience
    assert by["sharp.dcm"]["quality"] == "gradable" and by["sharp.dcm"]["reason"] == ""

    outputs = {o.rsplit(".", 2)[-2] if o.endswith(".dcm") else o.rsplit(".", 1)[-1]: out / o
               for o in kept["outputs"].split(";")}
    assert set(outputs) == {"seg", "sr", "png", "json"}
    doc = json.loads(outputs["json"].read_text())
    assert doc["gate"]["declined"] is True and doc["gate"]["kept"] is True
    assert doc["prediction"]["probability"] == pytest.approx(float(kept["probability"]), abs=1e-6)
    group = _sr_image_group(outputs["sr"])
    assert {q.name.meaning: q.value.meaning for q in group.get_qualitative_evaluations()}["Image quality"] \
        == "Ungradeable"
    assert "Experience score (1 = limit of the model's training data)" not in \
        {m.name.meaning for m in group.get_measurements()}
    (reason,) = _sr_texts(pydicom.dcmread(outputs["sr"]), "Image quality reason")
    assert reason.startswith(kept["quality_reason"]) and "judged ungradeable" in reason

    # the same folder resumed without the option would mix two rules: refused
    assert main(["infer", str(folder), "--out", str(out), "--model", str(tiny_bundle), "--workers", "0"]) == 2
    assert "other settings" in capsys.readouterr().err
