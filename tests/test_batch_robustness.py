"""Every kind of bad file becomes an ``error`` or ``declined`` row with a clear reason, and the run
goes on; the good files beside them are processed."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from test_batch_data import (
    corrupt_jpeg,
    ct,
    garbage_dicom,
    header_pixel_mismatch,
    huge_header,
    huge_png,
    no_pixels,
    op,
    png,
    redfree_op,
    text_png,
    tiny_op,
    tiny_png,
    truncated,
)

from napari_icnn.batch import BatchConfig, infer

# file name -> (status, words the reason must contain)
EXPECTED = {
    "good.dcm": ("ok", ""),
    "good.png": ("ok", ""),
    "corrupt.dcm": ("error", "cannot decode"),
    "truncated.dcm": ("error", "truncated"),
    "empty.dcm": ("error", "empty file"),
    "junk.bin": ("error", "not an image or DICOM file"),
    "garbage.dcm": ("error", "header"),
    "ct": ("declined", "modality CT"),
    "no_pixels.dcm": ("declined", "no pixel data"),
    "mismatch.dcm": ("error", "fewer than the header describes"),
    "tiny.dcm": ("declined", "too small"),
    "tiny.png": ("declined", "too small"),
    "huge.dcm": ("declined", "too large"),
    "huge.png": ("declined", "too large"),
    "letter.png": ("declined", "not a colour fundus photograph"),
    "redfree.dcm": ("declined", "monochrome (red-free)"),
}


@pytest.fixture(scope="module")
def bad_archive(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    root = tmp / "archive"
    root.mkdir()
    op(root / "good.dcm", seed=1)
    png(root / "good.png", seed=2)
    corrupt_jpeg(root / "corrupt.dcm", tmp)
    truncated(root / "truncated.dcm", tmp)
    (root / "empty.dcm").write_bytes(b"")
    (root / "junk.bin").write_bytes(b"%PDF-1.4 not a scan\n" * 50)
    garbage_dicom(root / "garbage.dcm")
    ct(root / "ct")
    no_pixels(root / "no_pixels.dcm", tmp)
    header_pixel_mismatch(root / "mismatch.dcm", tmp)
    tiny_op(root / "tiny.dcm")
    tiny_png(root / "tiny.png")
    huge_header(root / "huge.dcm", tmp)
    huge_png(root / "huge.png")
    text_png(root / "letter.png")
    redfree_op(root / "redfree.dcm")
    assert sorted(p.name for p in root.iterdir()) == sorted(EXPECTED)
    return root, _digest(root)


def _digest(root: Path) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.iterdir()}


@pytest.fixture(scope="module")
def bad_run(bad_archive, tiny_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad_out") / "out"
    summary = infer(BatchConfig(inputs=(str(bad_archive[0]),), out=str(out), model=str(tiny_bundle), workers=0))
    with open(out / "summary.csv", newline="") as fh:
        rows = {Path(r["input_path"]).name: r for r in csv.DictReader(fh)}
    return summary, rows, out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_bad_file_gets_a_row_with_a_clear_reason(bad_run, name):
    _, rows, out = bad_run
    status, words = EXPECTED[name]
    row = rows[name]
    assert row["status"] == status, row
    assert words.lower() in row["reason"].lower(), row
    if status == "ok":
        assert row["reason"] == "" and 0.0 <= float(row["probability"]) <= 1.0
        assert all((out / o).is_file() for o in row["outputs"].split(";"))
    else:
        assert row["probability"] == "" and row["outputs"] == ""
        assert row["reason"] and "\n" not in row["reason"] and "Traceback" not in row["reason"]


def test_the_run_goes_on_and_exits_3(bad_run):
    summary, rows, _ = bad_run
    assert len(rows) == len(EXPECTED)
    n_error = sum(s == "error" for s, _ in EXPECTED.values())
    n_declined = sum(s == "declined" for s, _ in EXPECTED.values())
    assert (summary.counts.ok, summary.counts.error, summary.counts.declined) == (2, n_error, n_declined)
    assert summary.exit_code == 3


def test_declined_dicom_rows_name_their_instance(bad_run):
    import pydicom

    _, rows, _ = bad_run
    for name in ("ct", "redfree.dcm", "tiny.dcm"):
        path = rows[name]["input_path"]
        assert rows[name]["sop_instance_uid"] == str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_inputs_are_never_modified(bad_archive, bad_run):
    root, before = bad_archive
    assert _digest(root) == before  # same files, same bytes: nothing changed or written beside them


def test_output_folder_inside_the_input_folder_is_not_read_back(tmp_path, tiny_bundle):
    root = tmp_path / "archive"
    root.mkdir()
    op(root / "a.dcm", seed=1)
    out = root / "results"
    for _ in range(2):
        summary = infer(BatchConfig(inputs=(str(root),), out=str(out), model=str(tiny_bundle), workers=0))
    with open(out / "summary.csv", newline="") as fh:
        assert [Path(r["input_path"]).name for r in csv.DictReader(fh)] == ["a.dcm"]
    assert summary.counts.skipped == 1 and summary.exit_code == 0
