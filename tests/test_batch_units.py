"""Parts of the batch: the batched explanation, summary.csv, output names, configuration, the
input walk, keeping patient attributes out of reasons, one failing output format."""

from __future__ import annotations

import os

import numpy as np
import pytest
from test_batch_data import PATIENT_ID, PATIENT_NAME, fundus, op, png

from napari_icnn.batch import BatchConfig
from napari_icnn.batch.inputs import iter_input_files
from napari_icnn.batch.outputs import output_stem
from napari_icnn.batch.summary import COLUMNS, Row, SummaryFile, read_rows
from napari_icnn.errors import ConfigError


@pytest.fixture(scope="module")
def model(tiny_bundle):
    from napari_icnn.bundle import load_bundle

    return load_bundle(tiny_bundle, "cpu")


# --------------------------------------------------------------------------- explain_batch


def _same(a, b, exact: bool) -> None:
    check = (lambda x, y: x == y) if exact else (lambda x, y: x == pytest.approx(y, rel=1e-5, abs=1e-6))
    assert (a.source, a.scan_shape, a.class_index, a.predicted_class, a.frame) == \
        (b.source, b.scan_shape, b.class_index, b.predicted_class, b.frame)
    assert check(a.probabilities, b.probabilities)
    assert a.geometry == b.geometry
    fa, fb = sorted(a.filters, key=lambda f: f.id), sorted(b.filters, key=lambda f: f.id)
    for x, y in zip(fa, fb, strict=True):
        assert (x.id, x.name, x.part, x.peak_x, x.peak_y) == (y.id, y.name, y.part, y.peak_x, y.peak_y)
        assert check(x.activation, y.activation) and check(x.contribution, y.contribution)
        if exact:
            np.testing.assert_array_equal(x.map, y.map)
        else:
            np.testing.assert_allclose(x.map, y.map, rtol=1e-5, atol=1e-6)


def test_explain_batch_gives_what_explain_gives(model):
    from napari_icnn.explain import explain, explain_batch
    from napari_icnn.image import FundusImage

    images = [FundusImage(pixels=fundus(s, 192 + 32 * s), source=f"scan{s}", frame=s) for s in range(3)]
    singles = [explain(im, model) for im in images]
    _same(explain_batch(images[:1], model)[0], singles[0], exact=True)
    for got, want in zip(explain_batch(images, model), singles, strict=True):
        _same(got, want, exact=False)
    assert explain_batch([], model) == []


def test_explain_batch_declines_what_explain_declines(model):
    from napari_icnn.errors import DeclinedInput
    from napari_icnn.explain import explain_batch

    grey = np.repeat(fundus(1)[..., 1:2], 3, axis=2)
    with pytest.raises(DeclinedInput, match="greyscale"):
        explain_batch([fundus(0), grey], model)


# --------------------------------------------------------------------------- summary.csv


def test_rows_survive_paths_with_commas_quotes_and_newlines(tmp_path):
    rows = [
        Row('/data/a, "b"\nc.dcm', None, "1.2.3", "error", "reason, with comma"),
        Row("/data/m.dcm", 2, "1.2.4", "ok", "", 0.25, ("x/1.2.4_f0002.png", "x/1.2.4_f0002.json"),
            "unfamiliar", "outside the model's experience: experience score 1.25 (limit 1.00)", 1.25, 0.05, 0.8, 0.4),
    ]
    with SummaryFile(tmp_path / "summary.csv") as s:
        s.append(rows)
    text = (tmp_path / "summary.csv").read_text()
    assert text.splitlines()[0] == ",".join(COLUMNS) and len(text.splitlines()) == 3
    back = list(read_rows(tmp_path / "summary.csv"))
    assert back[0].input_path == '/data/a, "b"\\nc.dcm'  # one line per row: control characters escaped
    assert back[1] == rows[1]


def test_torn_append_is_cut_and_its_input_forgotten(tmp_path):
    path = tmp_path / "summary.csv"
    with SummaryFile(path) as s:
        s.append([Row("/a.png", None, "", "ok", "", 0.5, ("images/1.png",))])
        s.append([Row("/m.dcm", 0, "9", "ok", "", 0.5), Row("/m.dcm", 1, "9", "declined", "grey")])
    whole = path.read_bytes()
    path.write_bytes(whole[:-7])
    s = SummaryFile(path)
    assert set(s.done) == {"/a.png", "/m.dcm"} and s.done["/m.dcm"].n_rows == 1
    s.close()
    path.write_bytes(b"input_path,fra")  # torn inside the header
    with SummaryFile(path) as s:
        assert s.done == {}
    assert path.read_text() == ",".join(COLUMNS) + "\n"


def test_a_foreign_summary_csv_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "summary.csv"
    path.write_text("patient,score\nx,1\n")
    with pytest.raises(ConfigError, match="not a batch summary"):
        SummaryFile(path)
    assert path.read_text() == "patient,score\nx,1\n"


V1_HEADER = "input_path,frame,sop_instance_uid,status,reason,probability,outputs\n"


V2_HEADER = "input_path,frame,sop_instance_uid,status,reason,probability,outputs,format_version\n"


V3_HEADER = ",".join(COLUMNS) + "\n"
"""Version 3 had this version's columns; its JSON listed silent filters among the roles."""


def test_every_row_carries_the_format_version(tmp_path):
    from napari_icnn.explain import FORMAT_VERSION

    path = tmp_path / "summary.csv"
    with SummaryFile(path) as s:
        s.append([Row("/a.png", None, "", "ok", "", 0.5, ("images/1.png",))])
    assert COLUMNS[-1] == "format_version" and FORMAT_VERSION == 4
    assert COLUMNS[7:-1] == ("quality", "quality_reason", "experience_score", "sharpness", "brightness", "coverage")
    assert path.read_text().splitlines()[1].endswith(",images/1.png,,,,,,,4")
    with pytest.raises(ValueError, match="format version 4"):
        Row.from_fields(["/a.png", "", "", "ok", "", "0.5", "images/1.png"])  # a version 1 line
    with pytest.raises(ValueError, match="format version 4"):
        Row.from_fields(["/a.png", "", "", "ok", "", "0.5", "images/1.png", "2"])  # a version 2 line
    with pytest.raises(ValueError, match="format version 4"):  # a version 3 line: the same columns
        Row.from_fields(["/a.png", "", "", "ok", "", "0.5", "images/1.png", "", "", "", "", "", "", "3"])
    with pytest.raises(ValueError, match="format version 4"):
        Row.from_fields(["/a.png", "", "", "ok", "", "0.5", "images/1.png", "", "", "", "", "", "", "5"])


@pytest.mark.parametrize("version, header", [("1", V1_HEADER), ("2", V2_HEADER), ("3", V3_HEADER)])
def test_a_summary_of_another_format_is_refused_and_left_alone(tmp_path, version, header):
    path = tmp_path / "summary.csv"
    tail = {"1": "", "2": ",2", "3": ",,,,,,,3"}[version]
    old = header + "/a.png,,,ok,,0.500000,images/1.png" + tail + "\n"
    path.write_text(old)
    with pytest.raises(ConfigError, match=rf"format version {version}, and this icnn writes version 4") as info:
        SummaryFile(path)
    assert len(str(info.value).splitlines()) == 1 and "--out" in str(info.value)
    assert path.read_text() == old
    newer = ",".join(COLUMNS) + "\n/a.png,,,ok,,0.500000,images/1.png,,,,,,,5\n"
    path.write_text(newer)
    with pytest.raises(ConfigError, match="format version 5"):
        SummaryFile(path)
    assert path.read_text() == newer


@pytest.mark.parametrize("header", [V1_HEADER, V2_HEADER])
def test_an_older_summary_without_rows_starts_again_in_this_format(tmp_path, header):
    path = tmp_path / "summary.csv"
    path.write_text(header)
    with SummaryFile(path) as s:
        assert s.done == {}
        s.append([Row("/a.png", None, "", "ok", "", 0.5)])
    assert path.read_text().splitlines() == [",".join(COLUMNS), "/a.png,,,ok,,0.500000,,,,,,,,4"]


def test_row_refuses_unknown_status_quality_and_bad_numbers():
    with pytest.raises(ValueError):
        Row("/a", None, "", "failed")
    with pytest.raises(ValueError):
        Row("/a", None, "", "ok", "", 1.5)
    with pytest.raises(ValueError, match="quality"):
        Row("/a", None, "", "ok", "", 0.5, quality="blurry")
    with pytest.raises(ValueError, match="sharpness"):
        Row("/a", None, "", "ok", "", 0.5, quality="gradable", sharpness=float("nan"))


# --------------------------------------------------------------------------- names


def test_output_names_come_from_uids_and_hashes_only(tmp_path):
    from napari_icnn.image import FundusImage

    px = np.zeros((8, 8, 3), np.uint8)
    dicom = FundusImage(px, "/p/DOE_JOHN/1.dcm", frame=3, sop_instance_uid="1.2.3.4", study_instance_uid="1.2.3",
                        header=object())
    stem = output_stem(dicom, "/p/DOE_JOHN/1.dcm")
    assert stem.endswith("/1.2.3.4_f0003") and "DOE" not in stem and len(stem.split("/")[0]) == 16
    evil = FundusImage(px, "/p/x", sop_instance_uid="../../etc/passwd", study_instance_uid="1.2", header=object())
    assert "/" not in output_stem(evil, "/p/x").split("/", 1)[1] and ".." not in output_stem(evil, "/p/x")
    plain = FundusImage(px, "/p/DOE_JOHN/eye.png")
    a, b = output_stem(plain, "/p/DOE_JOHN/eye.png"), output_stem(plain, "/p/DOE_JANE/eye.png")
    assert a.startswith("images/") and a != b and "DOE" not in a


def test_one_failing_format_is_an_error_row_listing_the_others(tmp_path, model):
    from napari_icnn.batch.outputs import OutputSpec
    from napari_icnn.batch.work import Prepared, prepare_file, write_frame
    from napari_icnn.dicom.uids import ModelInfo
    from napari_icnn.explain import explain_batch

    src = op(tmp_path / "a.dcm", seed=1)
    (p,) = prepare_file(str(src), model.size)
    assert isinstance(p, Prepared)
    out = tmp_path / "out"
    spec = OutputSpec(str(out), ModelInfo(model.name, model.version, model.sha256), top_k=2)
    stem = output_stem(p.image, str(src))
    (out / f"{stem}.seg.dcm").mkdir(parents=True)  # something in the way that must not be replaced
    expl = explain_batch([p.image], model, prepared=[(p.x, p.geometry)])[0]
    row = write_frame(spec, p, expl)
    assert row.status == "error" and row.reason.startswith("could not write seg:") and "folder" in row.reason
    assert [o.rsplit(".", 2)[-1] for o in row.outputs] == ["dcm", "png", "json"]
    assert row.probability == pytest.approx(expl.probability) and (out / f"{stem}.seg.dcm").is_dir()


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"inputs": ()}, "no INPUT"),
        ({"out": ""}, "--out"),
        ({"device": "tpu"}, "--device"),
        ({"batch": 0}, "--batch"),
        ({"workers": -1}, "--workers"),
        ({"top_k": 0}, "--top-k"),
        ({"formats": ("seg", "dicomweb")}, "unknown format"),
        ({"formats": ""}, "at least one"),
        ({"scheduler": " "}, "--scheduler"),
    ],
)
def test_config_refuses_bad_values(kw, message):
    args = {"inputs": ("a",), "out": "o", **kw}
    with pytest.raises(ConfigError, match=message):
        BatchConfig(**args)


def test_config_normalises_lists_and_format_order():
    cfg = BatchConfig(inputs=["a", "b"], out="o", formats="json,seg")
    assert cfg.inputs == ("a", "b") and cfg.formats == ("seg", "json")
    assert cfg.formats_for(is_dicom=False) == ("json",)
    assert BatchConfig(inputs=("a",), out="o").formats_for(is_dicom=True) == ("seg", "sr", "png", "json")


# --------------------------------------------------------------------------- the walk


def test_walk_is_stable_complete_and_skips_output_hidden_and_repeats(tmp_path):
    root = tmp_path / "in"
    (root / "b").mkdir(parents=True)
    (root / "a").mkdir()
    for rel in ("b/2", "b/1", "a/z.dcm", "top.png", ".DS_Store", "a/.hidden"):
        (root / rel).write_bytes(b"x")
    (root / "out").mkdir()
    (root / "out" / "result.png").write_bytes(b"x")
    (root / "b" / "loop").symlink_to(root)  # a link back up the tree
    (root / "broken").symlink_to(root / "nowhere")
    got = list(iter_input_files([str(root), str(root / "top.png"), str(root / "top.png")], exclude=root / "out"))
    names = [os.path.relpath(p, root) for p in got]
    assert names == ["a/z.dcm", "b/1", "b/2", "broken", "top.png"]
    assert all(os.path.isabs(p) for p in got)


# --------------------------------------------------------------------------- privacy


def test_reasons_never_quote_patient_attributes(tmp_path):
    import pydicom

    from napari_icnn.batch.privacy import phi_values, scrub
    from napari_icnn.batch.work import _reason

    ds = pydicom.dcmread(op(tmp_path / "a.dcm"), stop_before_pixels=True)
    values = phi_values(ds)
    assert PATIENT_ID in values and PATIENT_NAME in values and "ZYXWVUT" in values
    text = scrub(f"bad value 'quixotica^zyxwvut' for {PATIENT_ID}", values)
    assert "quixotica" not in text.lower() and PATIENT_ID not in text and text.count("[redacted]") == 2
    _, reason = _reason(ValueError(f"odd tag for {PATIENT_NAME}\nsecond line"), values, "reading the file")
    assert "QUIXOTICA" not in reason and "\n" not in reason and "[redacted]" in reason


def test_prepare_file_never_raises(tmp_path):
    from napari_icnn.batch.work import Prepared, prepare_file

    png(tmp_path / "ok.png")
    (tmp_path / "folder").mkdir()
    for path, status in ((tmp_path / "ok.png", None), (tmp_path / "missing", "error"), (tmp_path / "folder", "error")):
        (item,) = prepare_file(str(path), 64)
        assert isinstance(item, Prepared) if status is None else item.status == status


def test_requested_formats_that_do_not_apply_leave_a_note(tmp_path, tiny_bundle):
    from napari_icnn.batch import infer

    png(tmp_path / "a.png")
    s = infer(BatchConfig(inputs=(str(tmp_path / "a.png"),), out=str(tmp_path / "out"), model=str(tiny_bundle),
                          workers=0, formats=("seg",)))
    (row,) = read_rows(tmp_path / "out" / "summary.csv")
    assert s.exit_code == 0 and row.status == "ok" and row.outputs == () and "DICOM" in row.reason
