"""``icnn infer`` end to end: outputs that read back and match the model, summary.csv, resume,
exit codes, and no patient attribute in names, logs or console."""

from __future__ import annotations

import csv
import fcntl
import json
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_validation import run_dciodvfy
from test_batch_data import PATIENT_ID, PATIENT_NAME, ct, fundus, jpeg, op, png, redfree_op, truncated

from napari_icnn.batch import COLUMNS, BatchConfig, infer
from napari_icnn.cli import main
from napari_icnn.explain import silent_summary

COLUMN_LINE = ("input_path,frame,sop_instance_uid,status,reason,probability,outputs,"
               "quality,quality_reason,experience_score,sharpness,brightness,coverage,format_version")
GROUPS = ("evidence", "context", "possible_artefacts")


def read_summary(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def kind(output: str) -> str:
    return next(k for k in ("seg.dcm", "sr.dcm", "png", "json") if output.endswith("." + k))


def run(inputs, out, bundle, **kw):
    kw.setdefault("workers", 0)
    return infer(BatchConfig(inputs=tuple(str(i) for i in inputs), out=str(out), model=str(bundle), **kw))


@pytest.fixture
def archive(tmp_path):
    """A small export: single- and multi-frame OP (one frame not a fundus), PNG, JPEG, a CT."""
    root = tmp_path / "export"
    (root / "study1").mkdir(parents=True)
    (root / "misc").mkdir()
    op(root / "study1" / "IM0001", seed=1)  # no suffix: found by content
    op(root / "study1" / "IM0002.dcm", seed=2, laterality="R", transfer_syntax="rle")
    white = np.full((256, 256, 3), 255, np.uint8)
    op(root / "study1" / "multi.dcm", pixels=np.stack([fundus(3), white, fundus(4)]), transfer_syntax="explicit")
    png(root / "misc" / "photo.png", seed=5)
    jpeg(root / "misc" / "photo.jpg", seed=6)
    ct(root / "misc" / "ct_slice")
    return root


def test_every_input_gets_rows_and_outputs_that_read_back(archive, tmp_path, tiny_bundle):
    import highdicom as hd

    from napari_icnn.bundle import load_bundle
    from napari_icnn.data.image_io import load_image
    from napari_icnn.explain import explain

    out = tmp_path / "results"
    summary = run([archive], out, tiny_bundle, top_k=3)
    assert (out / "summary.csv").read_text().splitlines()[0] == COLUMN_LINE
    assert tuple(COLUMN_LINE.split(",")) == COLUMNS
    rows = read_summary(out)
    by = {(Path(r["input_path"]).name, r["frame"]): r for r in rows}
    assert sorted(by) == sorted(
        [("IM0001", ""), ("IM0002.dcm", ""), ("multi.dcm", "0"), ("multi.dcm", "1"), ("multi.dcm", "2"),
         ("photo.png", ""), ("photo.jpg", ""), ("ct_slice", "")]
    )
    assert all(os.path.isabs(r["input_path"]) for r in rows)
    assert by[("ct_slice", "")]["status"] == "declined" and "CT" in by[("ct_slice", "")]["reason"]
    assert by[("multi.dcm", "1")]["status"] == "declined" and by[("multi.dcm", "1")]["reason"]
    assert by[("ct_slice", "")]["quality"] == by[("multi.dcm", "1")]["quality"] == ""  # the model never ran
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 6
    assert (summary.counts.ok, summary.counts.declined, summary.counts.error, summary.counts.skipped) == (6, 2, 0, 0)
    assert summary.exit_code == 3 and summary.images_per_second > 0

    model = load_bundle(tiny_bundle, "cpu")
    for r in ok:
        outputs = r["outputs"].split(";")
        dicom = not r["input_path"].endswith((".png", ".jpg"))
        assert [kind(o) for o in outputs] == (["seg.dcm", "sr.dcm", "png", "json"] if dicom else ["png", "json"])
        for o in outputs:
            assert not os.path.isabs(o) and (out / o).resolve().is_relative_to(out.resolve()) and (out / o).stat().st_size > 0
        frame = int(r["frame"]) if r["frame"] else 0
        image = load_image(r["input_path"])[frame]
        expected = explain(image, model)
        prob = float(r["probability"])
        assert prob == pytest.approx(expected.probability, abs=2e-6)
        doc = json.loads((out / outputs[-1]).read_text())
        assert doc["prediction"]["probability"] == pytest.approx(prob, abs=2e-6)
        assert doc["format_version"] == 4 and r["format_version"] == "4"
        assert r["quality"] == doc["gate"]["status"] == "gradable" and r["quality_reason"] == ""
        assert r["experience_score"] == "" and doc["gate"]["experience_score"] is None  # the tiny bundle has none
        for m in ("sharpness", "brightness", "coverage"):
            assert float(r[m]) == pytest.approx(doc["gate"]["quality"]["measures"][m], abs=1e-4)
        assert doc["contribution_basis"] == expected.contribution_basis
        for group in GROUPS:
            assert [f["id"] for f in doc[group]] == [f.id for f in getattr(expected, group)(3)]
        reported = expected.evidence(3) + expected.context(3) + expected.possible_artefacts(3)
        assert doc["input"]["frame"] == image.frame and "source" not in doc
        if dicom:
            assert r["sop_instance_uid"] == image.sop_instance_uid
            seg = hd.seg.segread(out / outputs[0])
            assert [u[2] for u in seg.get_source_image_uids()] == [image.sop_instance_uid]
            assert seg.number_of_segments == len(reported)
            numbers = list(range(1, len(reported) + 1))  # a silent filter's empty frame is not stored
            if image.frame is None:
                px = seg.get_pixels_by_source_instance([image.sop_instance_uid], segment_numbers=numbers,
                                                       rescale_fractional=True)[0]
            else:
                px = seg.get_pixels_by_source_frame(image.sop_instance_uid, source_frame_numbers=[image.frame + 1],
                                                    segment_numbers=numbers, rescale_fractional=True)[0]
            for k, f in enumerate(reported):
                desc = seg.SegmentSequence[k].SegmentDescription
                assert desc.startswith(f"Interpretable CNN filter {f.id};") and f"; role: {f.role}" in desc
                np.testing.assert_allclose(px[..., k], expected.map_on_scan(f.id), atol=1 / 255 + 1e-4)
            sr = pydicom.dcmread(out / outputs[1])
            assert sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0] \
                .ReferencedSOPSequence[0].ReferencedSOPInstanceUID == image.sop_instance_uid
            assert _sr_numbers(sr, "Probability") == [pytest.approx(prob, abs=2e-6)]
    multi_seg = next(out / o for r in ok if r["frame"] == "2" for o in r["outputs"].split(";") if o.endswith(".seg.dcm"))
    assert multi_seg.name.endswith("_f0002.seg.dcm")
    for path in (multi_seg, next(out.rglob("*.sr.dcm"))):
        errors, _, report = run_dciodvfy(path)
        assert errors == [], report


def _sr_numbers(ds, meaning: str) -> list[float]:
    found = []
    for item in ds.get("ContentSequence", []):
        name = item.get("ConceptNameCodeSequence")
        if item.get("ValueType") == "NUM" and name and name[0].CodeMeaning == meaning:
            found.append(float(item.MeasuredValueSequence[0].NumericValue))
        found += _sr_numbers(item, meaning)
    return found


def test_no_patient_attribute_in_names_logs_console_or_tables(tmp_path, tiny_bundle, capsys):
    src = tmp_path / "in"
    src.mkdir()
    op(src / "a.dcm", seed=1)
    op(src / "b.dcm", seed=2, transfer_syntax="jpeg2000-lossless")
    redfree_op(src / "redfree.dcm")
    truncated(src / "cut.dcm", tmp_path)
    out = tmp_path / "out"
    code = main(["infer", str(src), "--out", str(out), "--model", str(tiny_bundle), "--workers", "0"])
    assert code == 3
    console = capsys.readouterr()
    texts = [console.out, console.err, (out / "summary.csv").read_text()]
    texts += [p.read_text() for p in out.rglob("*.json")]
    texts += [str(p.relative_to(out)) for p in out.rglob("*")]
    secrets = [PATIENT_NAME, *PATIENT_NAME.split("^"), PATIENT_ID]
    for text in texts:
        for secret in secrets:
            assert secret.lower() not in text.lower()
    # ... while the DICOM results do carry the patient, as a PACS needs to file them
    seg = next(out.rglob("*.seg.dcm"))
    assert str(pydicom.dcmread(seg).PatientName) == PATIENT_NAME
    assert "2 ok, 1 error, 1 declined" in console.out


def test_rerun_skips_finished_inputs_and_adds_only_new_ones(tmp_path, tiny_bundle):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        png(src / f"p{i}.png", seed=i)
    ct(src / "ct")
    out = tmp_path / "out"
    first = run([src], out, tiny_bundle)
    before = (out / "summary.csv").read_bytes()
    assert (first.counts.ok, first.counts.declined, first.exit_code) == (3, 1, 3)

    png(src / "p_new.png", seed=9)
    second = run([src], out, tiny_bundle)
    after = (out / "summary.csv").read_bytes()
    assert after.startswith(before)
    added = read_summary(out)[4:]
    assert [Path(r["input_path"]).name for r in added] == ["p_new.png"]
    assert (second.counts.ok, second.counts.skipped, second.counts.skipped_not_ok) == (1, 4, 1)
    assert second.exit_code == 3  # the CT declined earlier still stands

    third = run([src, src / "p0.png"], out, tiny_bundle)
    assert third.counts.rows == 0 and third.counts.skipped == 5
    assert (out / "summary.csv").read_bytes() == after
    names = [r["input_path"] for r in read_summary(out)]
    assert len(names) == len(set(names)) == 5


def test_torn_last_line_is_repaired_and_that_input_redone(tmp_path, tiny_bundle):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        png(src / f"p{i}.png", seed=i)
    out = tmp_path / "out"
    run([src], out, tiny_bundle)
    text = (out / "summary.csv").read_text()
    lines = text.splitlines(keepends=True)
    torn = "".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2]  # a kill in the middle of the last append
    (out / "summary.csv").write_text(torn)
    again = run([src], out, tiny_bundle)
    assert (again.counts.ok, again.counts.skipped) == (1, 2)
    rows = read_summary(out)
    assert sorted(Path(r["input_path"]).name for r in rows) == ["p0.png", "p1.png", "p2.png"]
    assert (out / "summary.csv").read_text() == text


def test_all_ok_exits_0_and_prints_a_summary_line(tmp_path, tiny_bundle, capsys):
    src = tmp_path / "in"
    src.mkdir()
    png(src / "a.png", seed=1)
    op(src / "b.dcm", seed=2)
    out = tmp_path / "out"
    code = main(["infer", str(src), "--out", str(out), "--model", str(tiny_bundle), "--workers", "0",
                 "--formats", "json,sr", "--top-k", "2"])
    assert code == 0
    assert "2 ok, 0 error, 0 declined" in capsys.readouterr().out
    rows = read_summary(out)
    kinds = {Path(r["input_path"]).name: [kind(o) for o in r["outputs"].split(";")] for r in rows}
    assert kinds == {"a.png": ["json"], "b.dcm": ["sr.dcm", "json"]}  # SR for the DICOM input only
    assert not list(out.rglob("*.png")) and not list(out.rglob("*.seg.dcm"))
    doc = json.loads((out / rows[0]["outputs"].split(";")[-1]).read_text())
    assert all(len(doc[group]) <= 2 for group in GROUPS) and sum(len(doc[group]) for group in GROUPS) > 0


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_usage_errors_exit_2_with_one_line(tmp_path, tiny_bundle, capsys):
    src = tmp_path / "in"
    src.mkdir()
    png(src / "a.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "a_file").write_text("x")
    base = ["--model", str(tiny_bundle), "--workers", "0"]
    cases = [
        ([str(src), "--out", str(tmp_path / "o1"), "--model", str(tmp_path / "no_model")], "no such model bundle"),
        ([str(src), "--out", str(tmp_path / "a_file"), *base], "not a folder"),
        ([str(src), "--out", str(tmp_path / "a_file" / "sub"), *base], "cannot create"),
        ([str(empty), "--out", str(tmp_path / "o2"), *base], "no input files found"),
        ([str(tmp_path / "missing"), "--out", str(tmp_path / "o3"), *base], "no such file or folder"),
        ([str(src), "--out", str(tmp_path / "o4"), "--formats", "seg,dicomweb", *base], "unknown format"),
        ([str(src), "--out", str(tmp_path / "o5"), "--batch", "0", *base], "--batch"),
    ]
    for args, message in cases:
        assert main(["infer", *args]) == 2, args
        assert message in _one_line_error(capsys)
    assert not (tmp_path / "o1").exists()  # nothing is created when the model is unusable


def test_a_folder_of_results_of_format_1_is_refused_with_one_line(tmp_path, tiny_bundle, capsys):
    src = tmp_path / "in"
    src.mkdir()
    png(src / "a.png")
    png(src / "b.png", seed=2)
    out = tmp_path / "out"
    out.mkdir()
    old = ",".join(COLUMNS[:7]) + f"\n{src / 'a.png'},,,ok,,0.500000,images/0123.png\n"
    (out / "summary.csv").write_text(old)
    assert main(["infer", str(src), "--out", str(out), "--model", str(tiny_bundle), "--workers", "0"]) == 2
    err = _one_line_error(capsys)
    assert "format version 1" in err and "version 4" in err and "--out" in err
    assert (out / "summary.csv").read_text() == old and not list(out.glob("images/*"))


def test_a_folder_of_results_of_format_2_is_refused_with_one_line(tmp_path, tiny_bundle, capsys):
    src = tmp_path / "in"
    src.mkdir()
    png(src / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    old = ",".join((*COLUMNS[:7], "format_version")) + f"\n{src / 'a.png'},,,ok,,0.500000,images/0123.png,2\n"
    (out / "summary.csv").write_text(old)
    assert main(["infer", str(src), "--out", str(out), "--model", str(tiny_bundle), "--workers", "0"]) == 2
    err = _one_line_error(capsys)
    assert "format version 2" in err and "version 4" in err and "--out" in err
    assert (out / "summary.csv").read_text() == old and not list(out.glob("images/*"))


def test_a_folder_of_results_of_format_3_is_refused_with_one_line(tmp_path, tiny_bundle, capsys):
    """Version 3 has this version's columns; its JSON listed silent filters among the roles, so a folder of it
    is not mixed with version 4's results either."""
    src = tmp_path / "in"
    src.mkdir()
    png(src / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    old = ",".join(COLUMNS) + f"\n{src / 'a.png'},,,ok,,0.500000,images/0123.png,gradable,,0.5,0.1,0.5,0.9,3\n"
    (out / "summary.csv").write_text(old)
    assert main(["infer", str(src), "--out", str(out), "--model", str(tiny_bundle), "--workers", "0"]) == 2
    err = _one_line_error(capsys)
    assert "format version 3" in err and "version 4" in err and "--out" in err
    assert (out / "summary.csv").read_text() == old and not list(out.glob("images/*"))


def _sr_filter_roles(ds) -> list[tuple[str, str]]:
    """(tracking identifier, "Filter role" meaning) of each filter group of an SR, in document order."""
    found = []
    for item in ds.get("ContentSequence", []):
        children = item.get("ContentSequence", [])
        ident = [str(c.TextValue) for c in children
                 if c.get("ValueType") == "TEXT" and c.ConceptNameCodeSequence[0].CodeMeaning == "Tracking Identifier"]
        role = [c.ConceptCodeSequence[0].CodeMeaning for c in children
                if c.get("ValueType") == "CODE" and c.ConceptNameCodeSequence[0].CodeValue == "FILTROLE"]
        if ident and role:
            found.append((ident[0], role[0]))
        found += _sr_filter_roles(item)
    return found


def test_a_real_run_reports_evidence_context_and_artefacts_apart(tmp_path, monkeypatch):
    """The shipped model on the photograph scikit-image ships, as an OP instance: its anatomy filters
    (label-free, or trained for a lesion type but matched to the disc or fovea) are context in every output,
    never evidence."""
    import skimage.data
    from PIL import Image

    from napari_icnn.batch.outputs import sheet_array
    from napari_icnn.bundle import default_bundle_path, load_bundle
    from napari_icnn.data.image_io import load_image
    from napari_icnn.dicom.op_writer import write_op
    from napari_icnn.dicom.seg import fit_text, segment_label
    from napari_icnn.dicom.sr import CODES, ROLE_CODES
    from napari_icnn.explain import explain
    from napari_icnn.render import ROLE_COLOURS

    src = tmp_path / "in"
    src.mkdir()
    write_op(src / "retina.dcm", skimage.data.retina(), laterality="L")
    out = tmp_path / "out"
    summary = infer(BatchConfig(inputs=(str(src),), out=str(out), workers=0, top_k=3))  # the shipped model
    assert summary.counts.ok == 1
    (row,) = read_summary(out)
    assert row["format_version"] == "4" and row["quality"] in ("gradable", "unfamiliar")
    assert float(row["experience_score"]) > 0  # the shipped model stores its experience
    seg_path, sr_path, png_path, json_path = (out / o for o in row["outputs"].split(";"))
    image = load_image(src / "retina.dcm")[0]
    expected = explain(image, load_bundle(default_bundle_path(), "cpu"))
    reported = expected.evidence(3) + expected.context(3) + expected.possible_artefacts(3)
    assert {"evidence", "context"} <= {f.role for f in reported}

    doc = json.loads(json_path.read_text())
    assert doc["format_version"] == 4 and doc["contribution_basis"] == expected.contribution_basis
    assert doc["gate"]["status"] == row["quality"] and doc["gate"]["kept"] is False
    assert doc["contribution_basis"].startswith("against a reference eye")
    for group, role in (("evidence", "evidence"), ("context", "context"), ("possible_artefacts", "possible artefact")):
        assert [f["id"] for f in doc[group]] == [f.id for f in getattr(expected, group)(3)]
        assert all(f["role"] == role for f in doc[group])
    # the filters silent on this healthy eye (no response anywhere): listed apart without a peak, in no group,
    # and with no segment, point or panel of their own
    assert [f["id"] for f in doc["silent"]] == [f.id for f in expected.silent()] and doc["silent"]
    assert all("peak_x" not in f and f["activation"] == 0 for f in doc["silent"])
    assert not {f["id"] for f in doc["silent"]} & {f.id for f in reported}
    anatomy = {f.id for f in expected.filters if f.category == "free" or f.part in ("optic_disc", "fovea", "vessels")}
    assert anatomy and all(expected.filter(i).role in ("context", "possible artefact") for i in anatomy)
    # the label-free filters carry no weight in the lesion-type model's decision, and are shown as context
    assert all(f.contribution == 0.0 for f in expected.filters if f.category == "free")
    assert not anatomy & {f["id"] for f in doc["evidence"]} and anatomy & {f["id"] for f in doc["context"]}
    assert all(f["category"] != "free" and f["part"] not in ("optic_disc", "fovea", "vessels") for f in doc["evidence"])

    seg = pydicom.dcmread(seg_path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [fit_text(segment_label(f.name, f.role))
                                                               for f in reported]
    for s, f in zip(seg.SegmentSequence, reported, strict=True):
        assert s.SegmentDescription.startswith(f"Interpretable CNN filter {f.id};")
        assert f"; role: {f.role}" in s.SegmentDescription and all(flag in s.SegmentDescription for flag in f.flags)
    n_evidence, n_context = len(doc["evidence"]), len(doc["context"])
    context = seg.SegmentSequence[n_evidence : n_evidence + n_context]
    assert context and all(s.SegmentLabel.startswith("[context] ") for s in context)

    sr = pydicom.dcmread(sr_path)
    assert _sr_filter_roles(sr) == [(f.name, CODES[ROLE_CODES[f.role]][2]) for f in reported]  # evidence first
    # the silent evidence filters, in words, in the image-level group (they have no peak, so no group of their own)
    silent_texts = [str(i.TextValue) for i in _sr_items(sr) if i.get("ValueType") == "TEXT"
                    and i.ConceptNameCodeSequence[0].CodeMeaning == CODES["silent_filters"][2]]
    assert silent_texts == [silent_summary(expected)] and "for no referable DR" in silent_texts[0]
    for path in (seg_path, sr_path):
        errors, _, report = run_dciodvfy(path)
        assert errors == [], report

    sheet = np.asarray(Image.open(png_path).convert("RGB"))
    tile = sheet.shape[1] // 4
    assert sheet.shape[:2] == ((len(reported) + 4) // 4 * tile, 4 * tile)  # the scan and the filters, four a row
    for i, f in enumerate(reported, start=1):  # each tile's label bar in its role's colour (black: evidence)
        y, x = (i // 4) * tile, (i % 4) * tile
        assert tuple(sheet[y + 1, x + 1]) == ROLE_COLOURS.get(f.role, (0, 0, 0)), (i, f.role)
    seen = {}
    monkeypatch.setattr("napari_icnn.render.evidence_sheet",
                        lambda rgb, panels, title, tile: seen.update(panels=panels, title=title) or rgb)
    sheet_array(image, expected, reported)
    assert seen["title"].splitlines()[-1] == "contributions vs healthy eye"
    prefixes = {"evidence": "filter ", "context": "[context] filter ", "possible artefact": "[possible artefact] filter "}
    assert all(p[0].startswith(prefixes[f.role]) for p, f in zip(seen["panels"], reported, strict=True))


def test_unwritable_output_folder_exits_2(tmp_path, tiny_bundle, capsys):
    import shutil
    import subprocess

    src = tmp_path / "in"
    src.mkdir()
    png(src / "a.png")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    immutable = False
    if os.geteuid() == 0:  # permissions do not bind root; an immutable folder does
        chattr = shutil.which("chattr")
        immutable = bool(chattr) and subprocess.run([chattr, "+i", str(locked)], capture_output=True).returncode == 0
        if not immutable:
            pytest.skip("running as root without chattr: cannot make an unwritable folder")
    try:
        assert main(["infer", str(src), "--out", str(locked), "--model", str(tiny_bundle)]) == 2
        assert "not writable" in _one_line_error(capsys)
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(locked)], check=True)


def test_other_settings_or_a_concurrent_run_are_refused(tmp_path, tiny_bundle, capsys):
    src = tmp_path / "in"
    src.mkdir()
    png(src / "a.png")
    out = tmp_path / "out"
    args = ["infer", str(src), "--out", str(out), "--model", str(tiny_bundle), "--workers", "0"]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--top-k", "3"]) == 2
    assert "other settings" in _one_line_error(capsys)
    assert main([*args, "--keep-ungradeable"]) == 2  # rows declined by the gate would stand beside kept ones
    assert "keep_ungradeable False" in _one_line_error(capsys)
    with open(out / ".icnn-batch.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        assert main(args) == 2
        assert "another icnn infer run" in _one_line_error(capsys)
    assert main(args) == 0  # lock released: resumes (nothing left to do)


def _sr_items(ds):
    """Every content item of an SR's tree, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _sr_items(item)
