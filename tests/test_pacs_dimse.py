"""``icnn infer --from/--store-to dimse://AET@HOST:PORT`` against a real Orthanc's DICOM port:
C-FIND + C-GET in, C-STORE out, nothing stored twice, and an unknown AE title refused in one line."""

from __future__ import annotations

import json

import pydicom
import pytest
from orthanc import OUR_AET, make_study, orthanc  # noqa: F401 - the fixture
from test_pacs_dicomweb import check_results_reference_their_sources, read_summary, run_cli


def test_pull_infer_store_over_dimse_then_a_rerun_adds_nothing(orthanc, tmp_path, tiny_bundle, capsys):  # noqa: F811
    a = make_study(orthanc, tmp_path / "a", seeds=(11, 12))
    b = make_study(orthanc, tmp_path / "b", seeds=(13,), with_other=True)
    before = {s.uid: orthanc.sop_uids(s.uid) for s in (a, b)}
    out = tmp_path / "out"
    url = orthanc.dimse_url
    args = ["--from", url, "--study", a.uid, "--study", b.uid, "--store-to", url, "--out", str(out),
            "--model", str(tiny_bundle), "--workers", "1", "--keep-staging"]
    code, stdout, stderr = run_cli(args, {"ICNN_PACS_AET": OUR_AET}, capsys)
    assert code == 0, stderr
    assert "3 ok, 0 error, 0 declined" in stdout and "6 results stored" in stdout
    results = {**check_results_reference_their_sources(orthanc, a, out),
               **check_results_reference_their_sources(orthanc, b, out)}
    for s in (a, b):
        added = sorted(set(orthanc.sop_uids(s.uid)) - set(before[s.uid]))
        assert added == sorted(u for src in s.op for u in results[src])
    # C-GET delivered each photograph as stored, byte for byte in its pixel data (no transcoding)
    staged = sorted((out / "pacs-staging").rglob("*.dcm"))
    assert len(staged) == 3
    for path in staged:
        mine = pydicom.dcmread(path)
        theirs = orthanc.dataset(mine.SOPInstanceUID)
        assert mine.file_meta.TransferSyntaxUID == theirs.file_meta.TransferSyntaxUID
        assert mine.PixelData == theirs.PixelData
    assert len(json.loads((out / "pacs_state.json").read_text())["stored"][url]) == 6

    counts = {s.uid: orthanc.sop_uids(s.uid) for s in (a, b)}
    (out / "pacs_state.json").unlink()  # forget what was stored: the C-FIND before each store still finds it
    code, stdout, _ = run_cli(args, {"ICNN_PACS_AET": OUR_AET}, capsys)
    assert code == 0
    assert "3 skipped" in stdout and "0 results stored, 6 already there" in stdout
    assert {s.uid: orthanc.sop_uids(s.uid) for s in (a, b)} == counts


def test_pull_over_dimse_and_store_over_dicomweb(orthanc, tmp_path, tiny_bundle, capsys):  # noqa: F811
    study = make_study(orthanc, tmp_path / "s", seeds=(14,))
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(
        ["--from", orthanc.dimse_url, "--study", study.uid, "--store-to", orthanc.dicomweb_url, "--out", str(out),
         "--model", str(tiny_bundle), "--workers", "0"], orthanc.env, capsys)
    assert code == 0, stderr
    assert "2 results stored" in stdout
    check_results_reference_their_sources(orthanc, study, out)
    assert [r["status"] for r in read_summary(out)] == ["ok"]


def test_since_over_dimse_pulls_studies_of_that_date_or_later(orthanc, tmp_path, tiny_bundle, capsys):  # noqa: F811
    old = make_study(orthanc, tmp_path / "old", seeds=(16,), study_date="19990102")
    new = make_study(orthanc, tmp_path / "new", seeds=(17,), study_date="20990102")
    out = tmp_path / "out"
    code, _, stderr = run_cli(["--from", orthanc.dimse_url, "--since", "20990101", "--out", str(out),
                               "--model", str(tiny_bundle), "--workers", "0", "--formats", "sr"], {}, capsys)
    assert code == 0, stderr
    pulled = {r["sop_instance_uid"] for r in read_summary(out)}
    assert set(new.op) <= pulled and not set(old.op) & pulled


def test_an_ae_title_the_pacs_does_not_know_is_refused_in_one_line(orthanc, tmp_path, tiny_bundle, capsys):  # noqa: F811
    study = make_study(orthanc, tmp_path / "s", seeds=(15,))
    code, _, err = run_cli(["--from", orthanc.dimse_url, "--study", study.uid, "--out", str(tmp_path / "out"),
                            "--model", str(tiny_bundle)], {"ICNN_PACS_AET": "STRANGER"}, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "STRANGER" in err and "--from" in err
    assert not (tmp_path / "out").exists()


@pytest.fixture(autouse=True)
def _no_pacs_environment(monkeypatch):
    for name in ("ICNN_PACS_USER", "ICNN_PACS_PASSWORD", "ICNN_PACS_TOKEN", "ICNN_PACS_AET"):
        monkeypatch.delenv(name, raising=False)
