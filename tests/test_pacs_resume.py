"""Interrupted PACS runs against a real Orthanc: the PACS going down after the first stored result,
a stop request, the local disk filling up, local results stored alone; each re-run finishes the job
without retrieving, processing or storing anything twice, and no interruption leaves a file
under a final name that is not whole."""

from __future__ import annotations

import json

import pydicom
from full_disk import full_disk  # noqa: F401 - the fixture
from orthanc import USER, make_study, orthanc, private_orthanc  # noqa: F401 - the fixtures
from output_checks import check_output_folder
from test_pacs_dicomweb import check_results_reference_their_sources, read_summary

from napari_icnn.batch import BatchConfig
from napari_icnn.errors import Cancelled
from napari_icnn.pacs import (
    Credentials,
    PacsJob,
    PacsSettings,
    Query,
    RetryPolicy,
    pacs_infer,
    parse_pacs_url,
)
from napari_icnn.progress import Message, Progress


def _job(server, study_uid, **kw) -> PacsJob:
    url = parse_pacs_url(server.dicomweb_url)
    settings = PacsSettings(credentials=Credentials(USER, server.password),
                            retry=RetryPolicy(retries=1, backoff=0.05), timeout=5)
    return PacsJob(source=url, query=Query(studies=(study_uid,)), store_to=url, settings=settings, **kw)


def _cfg(out, bundle) -> BatchConfig:
    return BatchConfig(inputs=("pacs",), out=str(out), model=str(bundle), workers=0, batch=1, formats=("seg", "sr"))


def test_pacs_down_after_the_first_store_then_back_resumes_without_duplicates(
    private_orthanc, tmp_path, tiny_bundle  # noqa: F811
):
    server = private_orthanc
    study = make_study(server, tmp_path / "s", seeds=(21, 22, 23, 24, 25))
    out = tmp_path / "out"
    job = _job(server, study.uid, ahead=1)
    messages = []

    def stop_after_first_store(event):
        if isinstance(event, Message):
            messages.append(event.text)
        if isinstance(event, Progress) and event.stage == "store" and server.running:
            server.kill()  # gone at once, as in a crash

    first = pacs_infer(job, _cfg(out, tiny_bundle), on_event=stop_after_first_store)
    assert not server.running
    assert first.exit_code == 3
    assert first.n_stored == 1 and first.n_not_stored >= 1
    assert any("stopped storing" in m and "run stores them" in m for m in messages)
    processed = {r["sop_instance_uid"] for r in read_summary(out)}
    staged = list((out / "pacs-staging").rglob("*.dcm"))
    assert first.n_retrieved == len(processed) + len(staged)
    assert first.n_not_retrieved == 5 - first.n_retrieved
    state = json.loads((out / "pacs_state.json").read_text())
    assert len(state["stored"][str(job.store_to)]) == 1
    assert len(state["not_retrieved"].get(str(job.source), {})) == first.n_not_retrieved
    assert first.n_not_stored == 2 * len(processed) - 1
    killed = check_output_folder(out)  # results, staged instances and state whole despite the outage
    assert killed.temporary == [] and len(killed.seg) == len(killed.sr) == len(processed)
    assert len(killed.staged) == len(staged)

    server.start()  # same storage (recovered after the kill), same ports
    second = pacs_infer(job, _cfg(out, tiny_bundle))
    assert second.exit_code == 0, second.describe()
    assert second.batch.n_skipped == len(processed) and second.batch.n_ok == 5 - len(processed)
    assert second.n_retrieved == 5 - len(processed) - len(staged)  # finished and staged ones are not fetched again
    assert second.n_stored == 10 - 1 and second.n_present == 0 and second.n_not_stored == 0
    assert len(server.sop_uids(study.uid)) == 5 + 10  # every result once
    check_results_reference_their_sources(server, study, out)
    assert json.loads((out / "pacs_state.json").read_text())["not_retrieved"] == {}
    assert not (out / "pacs-staging").exists()
    done = check_output_folder(out, dciodvfy=True)
    assert len(done.seg) == len(done.sr) == 5 and done.unlisted == [] and done.temporary == []


def test_pacs_down_before_retrieving_is_recorded_and_the_rerun_fetches_everything(
    private_orthanc, tmp_path, tiny_bundle  # noqa: F811
):
    server = private_orthanc
    study = make_study(server, tmp_path / "s", seeds=(26, 27, 28))
    out = tmp_path / "out"
    job = _job(server, study.uid)

    def kill_once_listed(event):
        if isinstance(event, Message) and "3 instances in 1 study" in event.text:
            server.kill()

    first = pacs_infer(job, _cfg(out, tiny_bundle), on_event=kill_once_listed)
    assert first.exit_code == 3 and first.n_instances == 3
    assert (first.n_retrieved, first.n_not_retrieved) == (0, 3)
    assert first.batch.n_processed == 0 and first.n_stored == 0
    not_retrieved = json.loads((out / "pacs_state.json").read_text())["not_retrieved"][str(job.source)]
    assert sorted(not_retrieved) == sorted(study.op)
    assert "connection refused" in not_retrieved[study.op[0]]

    check_output_folder(out)

    server.start()
    second = pacs_infer(job, _cfg(out, tiny_bundle))
    assert second.exit_code == 0 and second.n_retrieved == 3 and second.n_stored == 6
    assert json.loads((out / "pacs_state.json").read_text())["not_retrieved"] == {}
    check_results_reference_their_sources(server, study, out)
    done = check_output_folder(out, dciodvfy=True)
    assert len(done.seg) == len(done.sr) == 3 and done.unlisted == []


def test_a_full_local_disk_stops_the_run_and_a_run_with_space_finishes_it(
    orthanc, full_disk, tmp_path, tiny_bundle, monkeypatch  # noqa: F811
):
    study = make_study(orthanc, tmp_path / "s", seeds=(71, 72, 73, 74, 75))
    out = full_disk.root / "out"
    for name, value in orthanc.env.items():
        monkeypatch.setenv(name, value)
    args = ["infer", "--from", orthanc.dicomweb_url, "--study", study.uid, "--store-to", orthanc.dicomweb_url,
            "--out", str(out), "--model", str(tiny_bundle), "--formats", "seg,sr", "--batch", "1",
            "--workers", "0" if full_disk.in_process else "1"]

    def one_row_in() -> bool:
        csv = out / "summary.csv"
        return csv.exists() and csv.read_bytes().count(b"\n") >= 2

    first = full_disk.run_cli(args, fill_when=one_row_in)
    assert full_disk.filled, first.stderr
    assert first.returncode == 4, (full_disk.method, first.stdout, first.stderr)
    errors = [line for line in first.stderr.splitlines() if line.startswith("icnn infer: error:")]
    assert len(errors) == 1 and str(out) in errors[0] and "disk full" in errors[0], first.stderr
    assert "Traceback" not in first.stderr and orthanc.password not in first.stderr
    stopped = check_output_folder(out)
    assert 1 <= len(stopped.rows) < 5 and {r["status"] for r in stopped.rows} == {"ok"}
    assert stopped.temporary == []
    assert len(orthanc.sop_uids(study.uid)) <= 5 + 2 * len(stopped.rows)  # only finished results stored

    full_disk.free()
    second = full_disk.run_cli(args)
    assert second.returncode == 0, second.stderr
    assert len(orthanc.sop_uids(study.uid)) == 5 + 10  # every result once
    check_results_reference_their_sources(orthanc, study, out)
    done = check_output_folder(out, dciodvfy=True)
    assert len(done.seg) == len(done.sr) == 5 and done.unlisted == [] and done.temporary == []
    assert not (out / "pacs-staging").exists()


def test_a_stopped_run_keeps_its_work_and_a_rerun_finishes_it(orthanc, tmp_path, tiny_bundle):  # noqa: F811
    study = make_study(orthanc, tmp_path / "s", seeds=(31, 32, 33, 34))
    out = tmp_path / "out"
    job = _job(orthanc, study.uid, ahead=2)
    seen = []

    def stop_after_one():
        return any(isinstance(e, Progress) and e.stage == "infer" and e.done >= 1 for e in seen)

    try:
        pacs_infer(job, _cfg(out, tiny_bundle), on_event=seen.append, should_stop=stop_after_one)
    except Cancelled:
        pass
    else:
        raise AssertionError("the run did not stop")
    processed = {r["sop_instance_uid"] for r in read_summary(out)}
    assert 1 <= len(processed) < 4
    stored = json.loads((out / "pacs_state.json").read_text())["stored"].get(str(job.store_to), {})
    assert len(stored) == 2 * len(processed)  # each finished result was stored as it was written
    staged = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
              for p in (out / "pacs-staging").rglob("*.dcm")}
    assert not staged & processed  # processed photographs are deleted at once

    again = pacs_infer(job, _cfg(out, tiny_bundle))
    assert again.exit_code == 0
    assert again.n_retrieved == 4 - len(processed) - len(staged)
    assert again.n_stored == 8 - len(stored) and again.n_present == 0
    assert len(orthanc.sop_uids(study.uid)) == 4 + 8
    check_results_reference_their_sources(orthanc, study, out)


def test_store_to_alone_stores_the_results_of_local_files(orthanc, tmp_path, tiny_bundle):  # noqa: F811
    from pydicom.uid import generate_uid
    from test_batch_data import op

    src = tmp_path / "in"
    src.mkdir()
    study = str(generate_uid())
    files = [op(src / f"im{i}.dcm", seed=40 + i, size=192, study_instance_uid=study) for i in range(2)]
    uids = [str(pydicom.dcmread(f).SOPInstanceUID) for f in files]
    url = parse_pacs_url(orthanc.dimse_url)
    job = PacsJob(store_to=url)
    cfg = BatchConfig(inputs=(str(src),), out=str(tmp_path / "out"), model=str(tiny_bundle), workers=0)
    summary = pacs_infer(job, cfg)
    assert summary.exit_code == 0 and summary.n_stored == 4 and summary.n_instances == 0
    on_pacs = [orthanc.dataset(u) for u in orthanc.sop_uids(study)]  # results only: the sources stayed local
    assert sorted(d.Modality for d in on_pacs) == ["SEG", "SEG", "SR", "SR"]
    assert {d.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
            for d in on_pacs if d.Modality == "SEG"} == set(uids)
    assert pacs_infer(job, cfg).n_stored == 0 and len(orthanc.sop_uids(study)) == 4
