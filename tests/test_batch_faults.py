"""A batch whose output disk fills up: the run stops at the first write that fails, with one line
naming the folder and exit code 4, leaves nothing corrupt under a final name and no torn summary
row, and a run with space finishes the job, every input ``ok`` exactly once."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from full_disk import FullDisk, full_disk  # noqa: F401 - the fixture
from output_checks import check_output_folder, summary_rows
from test_batch_data import op, png

from napari_icnn.atomic import DiskFull
from napari_icnn.batch.summary import Row, SummaryFile

N_OP, N_PNG = 6, 2


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "in"
    root.mkdir()
    for i in range(N_OP):
        op(root / f"op{i}.dcm", seed=50 + i, size=160)
    for i in range(N_PNG):
        png(root / f"p{i}.png", seed=60 + i, size=160)
    return root


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("icnn infer: error:")]


@pytest.mark.parametrize("formats", [None, "seg,sr"], ids=["all-formats", "dicom-results-only"])
def test_a_full_disk_stops_the_run_cleanly_and_a_run_with_space_finishes(full_disk, inputs, tiny_bundle,  # noqa: F811
                                                                         formats):
    out = full_disk.root / "out"
    args = ["infer", str(inputs), "--out", str(out), "--model", str(tiny_bundle), "--batch", "2",
            "--workers", "0" if full_disk.in_process else "1"] + (["--formats", formats] if formats else [])

    def two_rows_in() -> bool:
        csv = out / "summary.csv"
        return csv.exists() and csv.read_bytes().count(b"\n") >= 3

    first = full_disk.run_cli(args, fill_when=two_rows_in)
    assert full_disk.filled, f"the run ended before the disk filled: {first.stderr}"
    assert first.returncode == 4, (full_disk.method, first.stdout, first.stderr)
    errors = _error_lines(first.stderr)
    assert len(errors) == 1, first.stderr
    assert str(out) in errors[0] and "disk full" in errors[0], errors[0]
    if full_disk.method != "rlimit":  # EFBIG is worded for what it is
        assert "no space left on device" in errors[0]
    assert "Traceback" not in first.stderr
    assert first.stdout.strip() == ""  # no tally: the run did not complete
    # A full disk is the run's failure, not one row per remaining file.
    rows = summary_rows(out)
    assert 2 <= len(rows) < N_OP + N_PNG
    assert {r["status"] for r in rows} == {"ok"}, rows
    checked = check_output_folder(out)
    assert checked.temporary == []  # every interrupted write removed its temporary file

    full_disk.free()
    second = full_disk.run_cli(args)
    assert second.returncode == 0, second.stderr
    assert f"{N_OP + N_PNG - len(rows)} ok, 0 error, 0 declined, {len(rows)} skipped" in second.stdout
    done = check_output_folder(out, dciodvfy=True)
    assert sorted(Path(r["input_path"]).name for r in done.rows) == sorted(p.name for p in inputs.iterdir())
    assert {r["status"] for r in done.rows} == {"ok"}
    assert len(done.seg) == len(done.sr) == N_OP
    assert len(done.png) == len(done.json) == (0 if formats else N_OP + N_PNG)
    assert done.temporary == [] and done.unlisted == []


def test_a_run_into_a_disk_that_is_already_full_stops_at_once(tmp_path, inputs, tiny_bundle, monkeypatch, capsys):
    disk = FullDisk("inject", tmp_path, monkeypatch, capsys)
    disk.fill(slack=0)
    out = tmp_path / "out"
    args = ["infer", str(inputs), "--out", str(out), "--model", str(tiny_bundle), "--workers", "0"]
    first = disk.run_cli(args)
    assert first.returncode == 4 and len(_error_lines(first.stderr)) == 1, first.stderr
    assert str(out) in first.stderr and "Traceback" not in first.stderr
    assert [p.name for p in out.rglob("*") if p.is_file()] == [".icnn-batch.lock"]  # nothing half-written
    disk.free()
    second = disk.run_cli(args)
    assert second.returncode == 0, second.stderr
    assert len(check_output_folder(out).rows) == N_OP + N_PNG


def _frames(path: str, n: int) -> list[Row]:
    return [Row(path, i, f"1.2.3.{i}", "ok", "", 0.5, (f"x/{i}.json",)) for i in range(n)]


def test_a_summary_append_cut_short_by_a_full_disk_is_taken_back(tmp_path, monkeypatch):
    """The rows of a multi-frame file cut after a complete line would record it as finished with a
    frame missing: the append is taken back whole."""
    path = tmp_path / "summary.csv"
    with SummaryFile(path) as summary:
        summary.append(_frames("/in/a.dcm", 1))
        before = path.read_bytes()
        group = _frames("/in/b.dcm", 2)
        first_line = len(",".join(group[0].fields()).encode()) + 1
        real_write = os.write
        calls = []

        def full_after_one_line(fd, data):
            if fd != summary._fd:
                return real_write(fd, data)
            calls.append(len(data))
            if len(calls) == 1:
                return real_write(fd, bytes(data)[:first_line])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "write", full_after_one_line)
        with pytest.raises(DiskFull) as caught:
            summary.append(group)
        assert caught.value.folder == str(tmp_path) and caught.value.errno == errno.ENOSPC
        assert len(calls) == 2  # a line of the group did reach the file, and was taken back
        assert path.read_bytes() == before
        monkeypatch.setattr(os, "write", real_write)
        summary.append(group)  # space again: the same rows, whole
    again = SummaryFile(path)
    again.close()
    assert {k: v.n_rows for k, v in again.done.items()} == {"/in/a.dcm": 1, "/in/b.dcm": 2}


def test_disk_full_is_one_line_that_names_the_folder_and_crosses_processes():
    import pickle

    for code, words in ((errno.ENOSPC, "no space left on device"), (errno.EDQUOT, "disk quota exceeded"),
                        (errno.EFBIG, "file size limit")):
        err = pickle.loads(pickle.dumps(DiskFull("/results/x", code)))
        text = str(err)
        assert text.startswith("/results/x: disk full (") and words in text and "\n" not in text
        assert err.errno == code and err.folder == "/results/x"


def test_a_full_staging_disk_ends_the_retrieval_and_then_the_run(tmp_path, monkeypatch, capsys):
    """A PACS run stages what it retrieves in the output folder: the first instance that finds no
    room ends the retrieval (the others are not tried and not recorded as failed) and the batch
    reading the staged files gets the same run-level error once it has the ones staged before."""
    import pydicom

    from napari_icnn.atomic import atomic_write
    from napari_icnn.pacs import RetryPolicy
    from napari_icnn.pacs.remote import InstanceRef
    from napari_icnn.pacs.source import StagedSource

    source = pydicom.dcmread(op(tmp_path / "source.dcm", seed=80, size=96))
    root = tmp_path / "disk"
    root.mkdir()
    disk = FullDisk("inject", root, monkeypatch, capsys)
    calls = []

    class Remote:
        url = "dicomweb+http://127.0.0.1:1/dicom-web"

        def retrieve(self, ref, target):  # as the DICOMweb client stores what it gets
            calls.append(ref.sop_instance_uid)
            if len(calls) == 3:
                disk.fill(slack=1000)  # room for a header, not for the pixels
            source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = ref.sop_instance_uid
            atomic_write(target, lambda fh: pydicom.dcmwrite(fh, source))

        def close(self):
            pass

    refs = [InstanceRef("1.2", "1.2.3", f"1.2.3.{i}", source.SOPClassUID) for i in range(6)]
    staging = root / "out" / "pacs-staging"
    pulled = StagedSource(lambda: Remote(), refs, staging, retry=RetryPolicy(retries=0), ahead=1)
    got = []
    with pytest.raises(DiskFull) as caught:
        for path in pulled:
            got.append(path)
    pulled.close()
    assert caught.value.folder == str(staging) and caught.value.errno == errno.ENOSPC
    assert len(got) == 2 and calls == ["1.2.3.0", "1.2.3.1", "1.2.3.2"] and pulled.failed == {}
    staged = sorted(p for p in staging.rglob("*") if p.is_file())
    assert [p.name for p in staged] == ["1.2.3.0.dcm", "1.2.3.1.dcm"]  # no part of the third one
    for p in staged:
        assert pydicom.dcmread(p).pixel_array.shape == (96, 96, 3)
