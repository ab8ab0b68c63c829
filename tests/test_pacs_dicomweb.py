"""``icnn infer --from/--store-to`` over DICOMweb against a real Orthanc: results stored beside
their sources and referencing them, nothing stored twice, non-photographs passed over or
declined, refused credentials a one-line set-up error that never shows the password."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from orthanc import PATIENT_NAME, USER, make_study, orthanc  # noqa: F401 - the fixture

from napari_icnn.cli import main


def run_cli(args, env, capsys=None):
    """``icnn infer ARGS`` in this process with the PACS environment set; (exit code, out, err)."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        code = main(["infer", *args])
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    cap = capsys.readouterr() if capsys is not None else None
    return code, (cap.out if cap else ""), (cap.err if cap else "")


def read_summary(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def all_text(folder: Path) -> bytes:
    """Every byte of every file under ``folder``."""
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def check_results_reference_their_sources(server, study, out: Path) -> dict[str, tuple[str, str]]:
    """Every OP instance of ``study`` has a SEG and an SR on the PACS, in the same study, each
    referencing it; returns source SOP UID → (SEG, SR) SOP UIDs."""
    rows = [r for r in read_summary(out) if r["sop_instance_uid"] in study.op]
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted(study.op)
    assert all(r["status"] == "ok" for r in rows), rows
    found = {}
    for row in rows:
        source = row["sop_instance_uid"]
        outputs = row["outputs"].split(";")
        seg_file = next(o for o in outputs if o.endswith(".seg.dcm"))
        sr_file = next(o for o in outputs if o.endswith(".sr.dcm"))
        import pydicom

        seg_uid = str(pydicom.dcmread(out / seg_file, stop_before_pixels=True).SOPInstanceUID)
        sr_uid = str(pydicom.dcmread(out / sr_file, stop_before_pixels=True).SOPInstanceUID)
        seg, sr = server.dataset(seg_uid), server.dataset(sr_uid)
        assert seg.Modality == "SEG" and sr.Modality == "SR"
        assert seg.StudyInstanceUID == sr.StudyInstanceUID == study.uid  # shown beside the original
        refs = [i.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence]
        assert refs == [source]
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
        assert evidence.StudyInstanceUID == study.uid
        assert [i.ReferencedSOPInstanceUID for s in evidence.ReferencedSeriesSequence
                for i in s.ReferencedSOPSequence] == [source]
        found[source] = (seg_uid, sr_uid)
    return found


def test_pull_infer_store_then_a_rerun_adds_nothing(orthanc, tmp_path, tiny_bundle, capsys, caplog):  # noqa: F811
    a = make_study(orthanc, tmp_path / "a", seeds=(1, 2))
    b = make_study(orthanc, tmp_path / "b", seeds=(3,), with_other=True)  # a CT and a text report mixed in
    before = {s.uid: orthanc.sop_uids(s.uid) for s in (a, b)}
    out = tmp_path / "out"
    url = orthanc.dicomweb_url
    args = ["--from", url, "--study", a.uid, "--study", b.uid, "--store-to", url, "--out", str(out),
            "--model", str(tiny_bundle), "--workers", "0", "--top-k", "3"]
    caplog.set_level(logging.DEBUG)  # whatever the libraries log must not hold the password either
    code, stdout, stderr = run_cli(args, orthanc.env, capsys)
    assert code == 0, stderr
    assert "3 ok, 0 error, 0 declined" in stdout and "6 results stored" in stdout
    assert "passed over 2 series of other modalities" in stderr  # the CT and the report
    results = {**check_results_reference_their_sources(orthanc, a, out),
               **check_results_reference_their_sources(orthanc, b, out)}
    for s in (a, b):
        added = sorted(set(orthanc.sop_uids(s.uid)) - set(before[s.uid]))
        assert added == sorted(u for src in s.op for u in results[src])  # exactly one SEG and one SR each
    state = json.loads((out / "pacs_state.json").read_text())
    assert len(state["stored"][url]) == 6 and {e["how"] for e in state["stored"][url].values()} == {"stored"}
    assert not (out / "pacs-staging").exists()  # retrieved photographs are not kept
    for text in (stdout, stderr, caplog.text):
        assert orthanc.password not in text and PATIENT_NAME not in text and "QUIRINA" not in text
    assert orthanc.password.encode() not in all_text(out)
    assert not [p for p in out.rglob("*") if "QUIRINA" in p.name]

    counts = {s.uid: orthanc.sop_uids(s.uid) for s in (a, b)}
    code, stdout, _ = run_cli(args, orthanc.env, capsys)
    assert code == 0
    assert "0 ok, 0 error, 0 declined, 3 skipped" in stdout and "0 retrieved" in stdout
    assert "0 results stored" in stdout
    assert {s.uid: orthanc.sop_uids(s.uid) for s in (a, b)} == counts  # nothing added, nothing twice


def test_every_modality_pulls_the_ct_which_is_declined_not_fatal(orthanc, tmp_path, tiny_bundle, capsys):  # noqa: F811
    study = make_study(orthanc, tmp_path / "s", seeds=(4,), with_other=True)
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(
        ["--from", orthanc.dicomweb_url, "--study", study.uid, "--modality", "all", "--store-to", orthanc.dicomweb_url,
         "--out", str(out), "--model", str(tiny_bundle), "--workers", "0"], orthanc.env, capsys)
    assert code == 3  # a declined input, as the batch job counts it
    assert "1 ok, 0 error, 1 declined" in stdout and "2 results stored" in stdout
    assert "passed over 1 instance without an image" in stderr  # the text report is never retrieved
    rows = {r["sop_instance_uid"]: r for r in read_summary(out)}
    ct_uid, report_uid = study.other
    assert rows[ct_uid]["status"] == "declined" and "CT" in rows[ct_uid]["reason"]
    assert report_uid not in rows
    check_results_reference_their_sources(orthanc, study, out)


def test_since_pulls_studies_of_that_date_or_later(orthanc, tmp_path, tiny_bundle, capsys):  # noqa: F811
    old = make_study(orthanc, tmp_path / "old", seeds=(5,), study_date="19990101")
    new = make_study(orthanc, tmp_path / "new", seeds=(6,), study_date="20990101")
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["--from", orthanc.dicomweb_url, "--since", "20981231", "--out", str(out),
                                    "--model", str(tiny_bundle), "--workers", "0", "--formats", "sr"],
                                   orthanc.env, capsys)
    assert code == 0, stderr
    pulled = {r["sop_instance_uid"] for r in read_summary(out)}
    assert set(new.op) <= pulled and not set(old.op) & pulled
    assert "state:" in stdout and "results stored" not in stdout  # nothing was to be stored


def test_refused_credentials_exit_2_in_one_line_without_the_password(orthanc, tmp_path, tiny_bundle):  # noqa: F811
    study = make_study(orthanc, tmp_path / "s", seeds=(7,))
    wrong = "Wrong-" + orthanc.password[::-1]
    out = tmp_path / "out"
    env = {**os.environ, "ICNN_PACS_USER": USER, "ICNN_PACS_PASSWORD": wrong}
    cmd = [sys.executable, "-m", "napari_icnn", "infer", "--from", orthanc.dicomweb_url, "--study", study.uid,
           "--out", str(out), "--model", str(tiny_bundle)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "refused the credentials" in err and "HTTP 401" in err and "ICNN_PACS_USER" in err
    assert wrong not in proc.stdout + proc.stderr and orthanc.password not in proc.stdout + proc.stderr
    assert not out.exists()  # nothing started

    # the same through a settings file others may read: refused before anything is sent
    cfg = tmp_path / "pacs.json"
    cfg.write_text(json.dumps({"user": USER, "password": orthanc.password}))
    cfg.chmod(0o644)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICNN_PACS_")}
    proc = subprocess.run([*cmd, "--pacs-config", str(cfg)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "chmod 600" in proc.stderr
    assert orthanc.password not in proc.stdout + proc.stderr


def test_a_study_the_pacs_does_not_hold_is_a_set_up_error(orthanc, tmp_path, tiny_bundle, capsys):  # noqa: F811
    code, _, err = run_cli(["--from", orthanc.dicomweb_url, "--study", "1.2.826.0.1.3680043.8.498.1", "--out",
                            str(tmp_path / "out"), "--model", str(tiny_bundle)], orthanc.env, capsys)
    assert code == 2 and "no such study" in err and len(err.strip().splitlines()) == 1


def test_storing_an_existing_instance_again_creates_no_duplicate(orthanc, tmp_path):  # noqa: F811
    from napari_icnn.pacs import load_settings, parse_pacs_url
    from napari_icnn.pacs.dicomweb import DicomWebRemote

    study = make_study(orthanc, tmp_path / "s", seeds=(8,))
    remote = DicomWebRemote(parse_pacs_url(orthanc.dicomweb_url), load_settings(env=orthanc.env).credentials)
    series = remote.find_series(study.uid)
    (ref,) = remote.find_instances(series[0])
    assert remote.exists(ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid)
    assert not remote.exists(ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid + ".1")
    remote.retrieve(ref, tmp_path / "again.dcm")
    before = orthanc.count()
    remote.store(tmp_path / "again.dcm")
    remote.store(tmp_path / "again.dcm")
    assert orthanc.count() == before and orthanc.sop_uids(study.uid) == list(study.op)
    remote.close()


@pytest.fixture(autouse=True)
def _no_pacs_environment(monkeypatch):
    """Credentials only where a test sets them."""
    for name in ("ICNN_PACS_USER", "ICNN_PACS_PASSWORD", "ICNN_PACS_TOKEN", "ICNN_PACS_AET"):
        monkeypatch.delenv(name, raising=False)


def test_a_study_address_fetches_its_photographs_for_a_viewer(orthanc, tmp_path):  # noqa: F811
    import pydicom

    from napari_icnn.data.image_io import iter_images
    from napari_icnn.pacs import load_settings
    from napari_icnn.pacs.study import fetch_study, is_study_address

    study = make_study(orthanc, tmp_path / "s", seeds=(9, 10), with_other=True)
    address = f"{orthanc.dicomweb_url}/studies/{study.uid}"
    assert is_study_address(address) and not is_study_address(orthanc.dicomweb_url)
    assert not is_study_address(Path("/data/studies/1.2.3"))
    paths = fetch_study(address, settings=load_settings(env=orthanc.env))
    try:
        assert oct(paths[0].parent.parent.stat().st_mode & 0o777) == "0o700"  # patient data: private
        assert sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in paths) == sorted(study.op)  # no CT, no report
        originals = {str(pydicom.dcmread(f).SOPInstanceUID): f for f in (tmp_path / "s").glob("op*.dcm")}
        for path in paths:
            mine = next(iter_images(str(path)))
            expected = next(iter_images(str(originals[mine.sop_instance_uid])))
            assert (mine.pixels == expected.pixels).all() and mine.laterality == expected.laterality
    finally:
        import shutil

        shutil.rmtree(paths[0].parent.parent)
