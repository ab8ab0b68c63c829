"""Tolerant reading, strict writing: every header attribute a run reads may be absent, empty,
multi-valued, mistyped or full of forbidden characters, and the run still ends ``ok`` with SEG and
SR that dciodvfy accepts and that reference the source — unless the pixel module itself is lost.

The list of attributes the mutations cover is checked against what a real run reads (recorded on
the headers it opens), so an attribute a writer starts to read is caught here.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pydicom
import pytest
from dicom_validation import run_dciodvfy
from header_access import recording_header_access
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from orthanc import make_study, orthanc  # noqa: F401 - the fixture
from quirk_files import EXTRA_ELEMENTS, MUTATIONS, PATIENT_ID, PIXEL_MODULE, SEED_KINDS, mutate, seed_file
from test_pacs_dicomweb import check_results_reference_their_sources, read_summary, run_cli

from napari_icnn.batch import BatchConfig, infer
from napari_icnn.batch.outputs import OutputSpec
from napari_icnn.batch.privacy import PHI_KEYWORDS
from napari_icnn.batch.work import ClusterJob, GateRule, process_file
from napari_icnn.dicom.carry import CARRIED, IDENTITY, source_uid, text_value
from napari_icnn.dicom.uids import ModelInfo

HEADER = tuple(dict.fromkeys((
    *IDENTITY, *CARRIED, *PHI_KEYWORDS, "ImageLaterality", "Laterality", "PixelSpacing", "PatientOrientation",
    "Modality", "SpecificCharacterSet", "MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID",
)))
"""Attributes outside the pixel module that a run reads or copies: every mutation below applies to each."""
PIXEL = tuple(sorted(PIXEL_MODULE - {"PixelData", "TransferSyntaxUID"})) + ("PixelData",)
COVERED = frozenset(HEADER) | PIXEL_MODULE

# pydicom warns about every invalid value these tests write on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[tuple[str, str], Path]:
    folder = tmp_path_factory.mktemp("quirk-seeds")
    return {(k, ts): seed_file(folder / f"{k}-{ts}.dcm", k, ts, seed=i) for i, (k, ts) in enumerate(SEED_KINDS)}


@pytest.fixture(scope="module")
def job(tiny_bundle, tmp_path_factory) -> ClusterJob:
    from napari_icnn.bundle import load_bundle

    model = load_bundle(str(tiny_bundle), "cpu")
    out = tmp_path_factory.mktemp("quirk-out")
    spec = OutputSpec(out=str(out), model=ModelInfo(model.name, model.version, model.sha256), top_k=1)
    # header handling is what these files test: 80-px photographs sit at the image-quality gate's limit, so the
    # gate's verdict is kept rather than declining some of them
    return ClusterJob(str(tiny_bundle), model.sha256, "cpu", 4, spec, GateRule(keep_ungradeable=True))


def test_a_run_reads_no_header_attribute_the_mutations_leave_out(seeds, tiny_bundle, tmp_path):
    folder = next(iter(seeds.values())).parent
    with recording_header_access(folder) as seen:
        result = infer(BatchConfig(inputs=(str(folder),), out=str(tmp_path / "out"), model=str(tiny_bundle),
                                   workers=0, batch=4, keep_ungradeable=True))
    assert result.exit_code == 0
    assert {"PatientName", "StudyInstanceUID", "PixelData", "Rows"} <= seen  # the recorder sees the reads
    assert seen <= COVERED, f"read but never mutated: {sorted(seen - COVERED)}"
    assert len(seen) >= 30


def _rows(path: Path, job: ClusterJob) -> list:
    rows = process_file(str(path), job)
    assert rows, path
    return rows


def _check_ok(rows, job: ClusterJob, source: Path) -> None:
    """Every row ok; every DICOM output dciodvfy-clean, referencing the source, carrying its patient."""
    src = pydicom.dcmread(source, stop_before_pixels=True)
    for row in rows:
        assert row.status == "ok", (source.name, row.reason)
        dicom = [o for o in row.outputs if o.endswith(".dcm")]
        for rel in dicom:
            path = Path(job.spec.out) / rel
            errors, _, report = run_dciodvfy(path)
            assert errors == [], f"{source.name} → {rel}:\n" + "\n".join(errors)
            out = pydicom.dcmread(path, stop_before_pixels=True)
            assert str(out.StudyInstanceUID) == source_uid(src, "StudyInstanceUID")
            assert source_uid(src, "SOPInstanceUID") in _referenced(out)
            for kw in CARRIED:
                _check_carried(kw, src, out)
        if not dicom:  # only where the source cannot be referenced
            assert "cannot reference it" in row.reason, row.reason


def _referenced(ds) -> set[str]:
    found: set[str] = set()
    for elem in ds.iterall():
        if elem.keyword == "ReferencedSOPInstanceUID":
            found.add(str(elem.value))
    return found


def _check_carried(kw: str, src, out) -> None:
    """Carried unchanged when the source's value is usable, else empty (Type 2) or absent; never invented."""
    source_value = text_value(src, kw)
    written = out.get(kw)
    if isinstance(source_value, str) and source_value and str(written or "") != "":
        assert str(written) == source_value, kw
    elif written not in (None, ""):
        pytest.fail(f"{kw} written as {written!r} although the source's value was not usable")


@pytest.mark.parametrize("how", sorted(MUTATIONS))
def test_every_header_attribute_mutated_still_ends_ok_with_valid_outputs(how, seeds, job, tmp_path):
    kinds = list(seeds)
    for i, kw in enumerate(HEADER):
        kind = kinds[i % len(kinds)]  # every attribute meets several kinds and encodings across mutations
        path = mutate(seeds[kind], tmp_path / f"{kw}-{how}.dcm", [(kw, how)])
        _check_ok(_rows(path, job), job, path)


@pytest.mark.parametrize("how", sorted(MUTATIONS))
def test_pixel_module_mutations_end_with_a_reason_never_an_exception(how, seeds, job, tmp_path):
    kinds = list(seeds)
    for i, kw in enumerate(PIXEL):
        path = mutate(seeds[kinds[i % len(kinds)]], tmp_path / f"{kw}-{how}.dcm", [(kw, how)])
        for row in _rows(path, job):
            assert row.status in ("ok", "declined", "error")
            assert "unexpected failure" not in row.reason, (kw, how, row.reason)
            if row.status != "ok":
                assert row.reason, (kw, how)


@pytest.mark.parametrize("extra", sorted(EXTRA_ELEMENTS))
def test_private_retired_and_functional_group_elements_are_harmless(extra, seeds, job, tmp_path):
    for kind, path in seeds.items():
        mutated = mutate(path, tmp_path / f"{extra}-{kind[0]}-{kind[1]}.dcm", [], (extra,))
        _check_ok(_rows(mutated, job), job, mutated)


def test_the_reported_cases_write_seg_and_sr(seeds, job, tmp_path):
    """A single-frame OP without Number of Frames, a patient name holding the value separator."""
    ds = pydicom.dcmread(seeds[("op", "jpeg-baseline")])
    del ds.NumberOfFrames
    ds.PatientName = "DOE\\JOHN"
    path = tmp_path / "quirky.dcm"
    ds.save_as(path)
    rows = _rows(path, job)
    assert [r.status for r in rows] == ["ok"]
    assert sorted(o.rsplit(".", 2)[-2] if o.endswith(".dcm") else o.rsplit(".", 1)[-1] for o in rows[0].outputs) == [
        "json", "png", "seg", "sr"]
    assert "PatientName" in rows[0].reason  # the row says what was left out, never the value
    assert "DOE" not in rows[0].reason
    _check_ok(rows, job, path)
    for rel in rows[0].outputs:
        if rel.endswith(".dcm"):
            out = pydicom.dcmread(Path(job.spec.out) / rel)
            assert out.PatientName == "" and out.PatientID == PATIENT_ID


def test_identifiers_are_copied_byte_exact(seeds, job):
    """UTF-8 source, non-ASCII name: the same bytes in SEG and SR as in the source."""
    source = seeds[("op", "explicit")]
    rows = _rows(source, job)
    raw_src = _raw(source, 0x00100010)
    assert "ü".encode() in raw_src
    for rel in rows[0].outputs:
        if rel.endswith(".dcm"):
            assert _raw(Path(job.spec.out) / rel, 0x00100010).rstrip(b" ") == raw_src.rstrip(b" ")
            assert _raw(Path(job.spec.out) / rel, 0x00100020).rstrip(b" ") == _raw(source, 0x00100020).rstrip(b" ")


def _raw(path: Path, tag: int) -> bytes:
    from pydicom.filereader import read_partial

    with open(path, "rb") as fh:
        ds = read_partial(fh, stop_when=lambda t, vr, length: t.group > 0x0010)
    return ds._dict[tag].value  # the stored bytes, not yet decoded


@settings(max_examples=40, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    kind=st.sampled_from(SEED_KINDS),
    changes=st.lists(st.tuples(st.sampled_from(HEADER), st.sampled_from(sorted(MUTATIONS))), min_size=1, max_size=6),
    extras=st.lists(st.sampled_from(sorted(EXTRA_ELEMENTS)), unique=True, max_size=2),
)
def test_any_combination_of_header_quirks_ends_ok(kind, changes, extras, seeds, job, tmp_path):
    path = mutate(seeds[kind], tmp_path / "combined.dcm", changes, tuple(extras))
    rows = _rows(path, job)
    _check_ok(rows, job, path)


def test_summary_and_json_never_hold_identifiers_from_odd_values(seeds, tiny_bundle, tmp_path):
    """A path-like Study Instance UID and SOP Instance UID: names come from hashes, the summary says why."""
    folder = tmp_path / "in"
    folder.mkdir()
    mutate(seeds[("xc", "explicit")], folder / "a.dcm", [("StudyInstanceUID", "odd-text"),
                                                         ("SOPInstanceUID", "odd-text"),
                                                         ("MediaStorageSOPInstanceUID", "odd-text")])
    out = tmp_path / "out"
    result = infer(BatchConfig(inputs=(str(folder),), out=str(out), model=str(tiny_bundle), workers=0,
                               keep_ungradeable=True))
    assert result.exit_code == 0
    rows = list(csv.DictReader(open(out / "summary.csv", newline="")))
    assert [r["status"] for r in rows] == ["ok"] and rows[0]["sop_instance_uid"] == ""
    assert "cannot reference it" in rows[0]["reason"]
    names = [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()]
    assert not any("passwd" in n or ".." in n for n in names)
    assert not any(n.endswith(".dcm") for n in names)


def _latin1_name(ds) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Zoë"


def _no_frame_count(ds) -> None:
    del ds.NumberOfFrames


def _separator_in_name(ds) -> None:
    ds.PatientName = "DOE\\JOHN"


def _archive_quirks(ds) -> None:
    MUTATIONS["multi"](ds, "StudyDate")
    MUTATIONS["wrong-vr"](ds, "ReferringPhysicianName")
    MUTATIONS["odd-text"](ds, "AccessionNumber")
    EXTRA_ELEMENTS["private"](ds)
    EXTRA_ELEMENTS["retired"](ds)


def test_quirky_sources_pulled_from_a_pacs_get_valid_seg_and_sr_stored(orthanc, tmp_path, tiny_bundle, capsys):  # noqa: F811
    quirks = (_no_frame_count, _separator_in_name, _archive_quirks, _latin1_name)
    study = make_study(orthanc, tmp_path / "s", seeds=(31, 32, 33, 34), quirks=quirks)
    out = tmp_path / "out"
    url = orthanc.dicomweb_url
    code, stdout, stderr = run_cli(["--from", url, "--study", study.uid, "--store-to", url, "--out", str(out),
                                    "--model", str(tiny_bundle), "--workers", "0", "--top-k", "2"],
                                   orthanc.env, capsys)
    assert code == 0, stderr
    assert "4 ok, 0 error, 0 declined" in stdout and "8 results stored" in stdout
    check_results_reference_their_sources(orthanc, study, out)
    for path in out.rglob("*.dcm"):
        errors, _, _ = run_dciodvfy(path)
        assert errors == [], f"{path.name}:\n" + "\n".join(errors)
    latin = orthanc.dataset(study.op[3])
    seg_uid = next(r["outputs"] for r in read_summary(out) if r["sop_instance_uid"] == study.op[3])
    seg = pydicom.dcmread(out / next(o for o in seg_uid.split(";") if o.endswith(".seg.dcm")))
    assert str(seg.PatientName) == str(latin.PatientName) == "Müller^Zoë"  # same characters, now in UTF-8
