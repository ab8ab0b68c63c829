"""The shortcut audit (``icnn audit``): where a model's evidence lies on a cohort, and whether it leans on a site
artefact."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_icnn.audit.measure import (
    FORMAT_VERSION,
    NON_EYE,
    PLACES,
    SHORTCUT_EXCESS,
    AuditResult,
    Finding,
    _findings,
    _mass_by_place,
    audit_iter,
)
from napari_icnn.audit.report import write_audit
from napari_icnn.bundle import default_bundle_path
from napari_icnn.cli import main
from napari_icnn.data.synth import write_cohort
from napari_icnn.errors import InputError
from napari_icnn.progress import Message, drain

N, SIZE, SEED = 10, 384, 5
A = PLACES.index("artefact")
RETINA = PLACES.index("retina")


def _csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A stamp cohort (rate 0.9) and a copy of it with no artefact masks at all."""
    root = tmp_path_factory.mktemp("audit")
    write_cohort(root / "stamp", N, size=SIZE, seed=SEED, confounder="stamp", confounder_rate=0.9)
    shutil.copytree(root / "stamp", root / "bare")
    shutil.rmtree(root / "bare" / "masks" / "confounder")
    shutil.rmtree(root / "bare" / "masks" / "artefact")
    return root


@pytest.fixture(scope="module")
def audited(cohort):
    return drain(audit_iter(str(default_bundle_path()), str(cohort / "stamp"), device="cpu"))


# ------------------------------------------------------------------------------------------ the cells


def test_mass_by_place_shares_the_thresholded_mass_over_the_places():
    place = np.full((4, 4), RETINA, dtype=np.int8)
    place[0, 0] = A
    place[0, 1] = PLACES.index("rim")
    place[3, 3] = PLACES.index("HE")
    maps = np.zeros((4, 4, 4), np.float32)
    maps[0, 0, 0] = 3.0  # artefact
    maps[0, 3, 3] = 1.0  # HE
    maps[0, 2, 2] = 0.2  # below 0.3 of the peak: not in the region
    maps[1, 0, 1] = 2.0  # all on the rim
    maps[1, 1, 1] = -5.0  # negative activation counts for nothing
    # maps[2] silent
    maps[3] = 1.0  # flat: every cell in the region
    m = _mass_by_place(maps, place, 0.3)
    assert m.shape == (4, len(PLACES))
    assert m[0, A] == pytest.approx(0.75) and m[0, PLACES.index("HE")] == pytest.approx(0.25)
    assert m[0, RETINA] == 0.0  # the 0.2 cell lies below the threshold
    assert m[1, PLACES.index("rim")] == pytest.approx(1.0)
    assert np.all(m[2] == 0.0)
    assert m[3, A] == pytest.approx(1 / 16) and m[3, RETINA] == pytest.approx(13 / 16)
    assert np.allclose(m[[0, 1, 3]].sum(axis=1), 1.0)
    # a lower threshold takes the weak cell in
    low = _mass_by_place(maps[:1], place, 0.05)
    assert low[0, RETINA] == pytest.approx(0.2 / 4.2)


# ------------------------------------------------------------------------------------ end to end


def test_the_audit_of_a_stamp_cohort(audited, cohort):
    res = audited
    _, rows = _csv(cohort / "stamp" / "labels.csv")
    assert isinstance(res, AuditResult)
    assert len(res.ids) == N and res.ids == [r["id"] for r in rows]
    assert res.artefact_name == "the site stamp"
    assert Path(res.data["artefact_masks"]) == cohort / "stamp" / "masks" / "confounder"
    assert res.labels.tolist() == [int(r["referable"]) for r in rows]
    assert res.present.shape == res.area.shape == res.evidence.shape == (N, len(PLACES))
    # evidence: shares of the positive contributions, only on places the scan has
    assert np.all(res.evidence >= 0) and np.all(res.evidence.sum(axis=1) <= 1 + 1e-6)
    assert np.all(res.evidence[~res.present] == 0)
    assert np.allclose(res.area.sum(axis=1), 1.0)
    assert np.all((res.area > 0) == res.present)
    # the artefact place is where the stamp was drawn, and only there
    stamped = np.array([r["confounder"] == "1" for r in rows])
    assert stamped.any() and np.array_equal(res.present[:, A], stamped)
    assert res.present[:, PLACES.index("outside")].any() and res.present[:, PLACES.index("rim")].any()
    assert res.gradcam is not None and res.gradcam.shape == (N, len(PLACES))
    assert np.all((res.gradcam >= 0) & (res.gradcam <= 1 + 1e-9))
    assert np.all(res.gradcam.sum(axis=1) <= 1 + 1e-6)
    assert np.all((res.probs >= 0) & (res.probs <= 1))
    # shares of the whole: the filters' evidence shares add up to one
    assert len(res.filter_rows) == res.model["filters"]
    assert sum(r["evidence_share"] for r in res.filter_rows) == pytest.approx(1.0, abs=1e-2)
    share = res.share("artefact")
    assert 0 <= share <= 1 and share == pytest.approx(res.evidence[stamped, A].mean())
    for f in res.findings:
        assert f.kind in ("shortcut", "location")
    assert [f.kind for f in res.findings] == sorted((f.kind for f in res.findings), key=lambda k: k != "shortcut")


def test_the_audit_serialises_and_writes_its_folder(audited, tmp_path, cohort):
    res = audited
    doc = res.to_json()
    doc = json.loads(json.dumps(doc, allow_nan=False))  # plain JSON, no NaN
    assert doc["format_version"] == FORMAT_VERSION
    assert list(doc["places"]) == list(PLACES)
    _, rows = _csv(cohort / "stamp" / "labels.csv")
    assert doc["places"]["artefact"]["scans"] == sum(r["confounder"] == "1" for r in rows)
    assert doc["places"]["artefact"]["name"] == "the site stamp"
    assert doc["artefact"] == "the site stamp"
    assert all("gradcam_share" in p for p in doc["places"].values())

    out = write_audit(res, tmp_path / "audit", figures=1)
    assert out == tmp_path / "audit"
    written = json.loads((out / "audit.json").read_text())
    assert written["format_version"] == FORMAT_VERSION and written["places"] == doc["places"]
    assert len(written["figures"]) <= 1
    for fig in written["figures"]:
        assert (out / fig).is_file()
    cols, filters = _csv(out / "filters.csv")
    assert len(filters) == res.model["filters"] == len(res.filter_rows)
    assert [int(r["filter"]) for r in filters] == list(range(len(filters)))
    assert {"peaks_on_artefact", "evidence_share", "peaks_mostly_on", "mass_on_artefact"} <= set(cols)
    cols, scans = _csv(out / "scans.csv")
    assert [r["id"] for r in scans] == res.ids
    assert {"evidence_on_artefact", "probability", "referable", "gradcam_on_artefact"} <= set(cols)
    for r, lab in zip(scans, rows, strict=True):
        assert (r["evidence_on_artefact"] != "") == (lab["confounder"] == "1")
        assert r["referable"] == lab["referable"]


def test_a_cohort_without_artefact_masks_still_audits(cohort):
    res = drain(audit_iter(str(default_bundle_path()), str(cohort / "bare"), gradcam=False, device="cpu"))
    assert len(res.ids) == N
    assert res.artefact_name is None and res.data["artefact_masks"] is None
    assert res.gradcam is None
    assert not res.present[:, A].any()
    assert res.present[:, PLACES.index("rim")].any() and res.present[:, PLACES.index("outside")].any()
    assert np.all(res.evidence >= 0) and np.all(res.evidence.sum(axis=1) <= 1 + 1e-6)
    assert math.isnan(res.share("artefact"))
    doc = json.loads(json.dumps(res.to_json(), allow_nan=False))
    assert doc["places"]["artefact"]["scans"] == 0 and doc["places"]["artefact"]["evidence_share"] is None
    assert "gradcam_share" not in doc["places"]["rim"]


def test_missing_artefact_masks_are_named(cohort, tmp_path, capsys):
    missing = tmp_path / "no-such-masks"
    with pytest.raises(InputError) as err:
        drain(audit_iter(str(default_bundle_path()), str(cohort / "stamp"), gradcam=False,
                         artefact_masks=str(missing), device="cpu"))
    assert str(missing) in str(err.value)
    capsys.readouterr()
    out = tmp_path / "out"
    code = main(["audit", "--data", str(cohort / "stamp"), "--out", str(out), "--artefact-masks", str(missing),
                 "--no-gradcam", "--device", "cpu"])
    assert code not in (0, 3)
    err_text = capsys.readouterr().err
    lines = [line for line in err_text.splitlines() if line.strip()]
    assert len(lines) == 1 and str(missing) in lines[0], err_text
    assert "Traceback" not in err_text
    assert not out.exists()


def test_the_audit_command(cohort, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["audit", "--model", str(default_bundle_path()), "--data", str(cohort / "stamp"), "--out", str(out),
                 "--no-gradcam", "--figures", "1", "--device", "cpu"])
    assert code in (0, 3)
    printed = capsys.readouterr().out
    assert "the site stamp" in printed
    assert f"{N} scans audited" in printed
    assert ("No shortcut finding." in printed) == (code == 0)
    for name in ("audit.json", "filters.csv", "scans.csv"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "audit.json").read_text())
    assert "gradcam_share" not in doc["places"]["artefact"]
    assert (code == 3) == any(f["kind"] == "shortcut" for f in doc["findings"])
    assert len(list(out.glob("figures/*.png"))) == len(doc["figures"]) <= 1


def test_bad_audit_options_are_usage_errors(cohort, tmp_path):
    assert main(["audit", "--data", str(cohort / "stamp"), "--out", str(tmp_path / "o"), "--batch", "0"]) == 2
    assert main(["audit", "--data", str(cohort / "stamp"), "--out", str(tmp_path / "o"), "--figures", "-1"]) == 2
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ findings


def _result(evidence_on_artefact: float, carrying: int = 4, n: int = 6, c: int = 4):
    """A hand-built audit of ``n`` scans and ``c`` filters: the first ``carrying`` scans carry the artefact (3 % of
    the cells) with ``evidence_on_artefact`` of their evidence on it, carried by filter 1 (filter 3 on it too, but
    against the decision)."""
    p = len(PLACES)
    present = np.zeros((n, p), bool)
    area = np.zeros((n, p))
    evidence = np.zeros((n, p))
    present[:, RETINA] = True
    present[:, PLACES.index("rim")] = True
    area[:, PLACES.index("rim")] = 0.2
    area[:, RETINA] = 0.8
    present[:carrying, A] = True
    area[:carrying, A] = 0.03
    area[:carrying, RETINA] = 0.77
    evidence[:carrying, A] = evidence_on_artefact
    evidence[:carrying, RETINA] = 1 - evidence_on_artefact
    evidence[carrying:, RETINA] = 1.0
    contrib = np.tile(np.array([0.0, 2.0, 1.0, -1.0]), (n, 1))[:, :c]
    mass = np.zeros((n, c, p), np.float32)
    mass[:, :, RETINA] = 1.0
    mass[:carrying, 1, :] = 0.0
    mass[:carrying, 1, A] = 1.0
    mass[:carrying, 3, :] = 0.0
    mass[:carrying, 3, A] = 1.0
    rows = [{"filter": f, "name": f"filter {f} · test", "peaks_mostly_on": "", "peaks_mostly_on_share": 0.0,
             "active_share": 1.0, "evidence_share": 0.0} for f in range(c)]
    labels = np.array([1, 1, 1, 0, 1, 0][:n], np.int8)
    res = AuditResult(
        model={"filters": c}, data={}, artefact_name="the site stamp", ids=[f"s0_{i:05d}" for i in range(n)],
        labels=labels, probs=labels.astype(float), present=present, area=area, evidence=evidence, gradcam=None,
        filter_rows=rows, findings=[], top_images={},
    )
    return res, contrib, mass


def test_a_shortcut_finding_names_the_artefact_and_its_filters():
    res, contrib, mass = _result(0.6)
    found = _findings(res, contrib, mass)
    shortcuts = [f for f in found if f.kind == "shortcut"]
    assert len(shortcuts) == 1
    f = shortcuts[0]
    assert f.place == "artefact" and f.filters == (1,)
    assert "the site stamp" in f.text and "filter 1 · test" in f.text
    assert "filter 3" not in f.text and "filter 2" not in f.text  # against the decision, or elsewhere
    assert f.numbers["evidence_share"] == pytest.approx(0.6) and f.numbers["cells"] == pytest.approx(0.03)
    assert f.numbers["scans"] == 4
    # referable scans 0, 1, 2 and 4: three of four have more than half of their evidence on the stamp
    assert f.numbers["referable_scans_mostly_on_it"] == pytest.approx(0.75)
    assert "60 %" in f.text and "75 %" in f.text
    json.dumps(f.to_json())


def test_no_shortcut_finding_below_the_threshold_or_on_too_few_scans():
    res, contrib, mass = _result(0.1)
    assert not [f for f in _findings(res, contrib, mass) if f.kind == "shortcut"]
    # just under and just over the fixed excess over the cells' share
    res, contrib, mass = _result(0.03 + SHORTCUT_EXCESS - 0.01)
    assert not [f for f in _findings(res, contrib, mass) if f.kind == "shortcut"]
    res, contrib, mass = _result(0.03 + SHORTCUT_EXCESS + 0.01)
    assert [f.place for f in _findings(res, contrib, mass) if f.kind == "shortcut"] == ["artefact"]
    # two scans are too few to call a shortcut
    res, contrib, mass = _result(0.9, carrying=2)
    assert not [f for f in _findings(res, contrib, mass) if f.kind == "shortcut"]


def test_location_findings_follow_the_shortcut():
    res, contrib, mass = _result(0.6)
    res.filter_rows[2].update(peaks_mostly_on="artefact", peaks_mostly_on_share=0.8, active_share=0.5,
                              evidence_share=0.3)
    res.filter_rows[0].update(peaks_mostly_on="retina", peaks_mostly_on_share=1.0)  # plain retina: no finding
    res.filter_rows[3].update(peaks_mostly_on="rim", peaks_mostly_on_share=0.4)  # below LOCATION_SHARE
    found = _findings(res, contrib, mass)
    assert [f.kind for f in found] == ["shortcut", "location"]
    loc = found[1]
    assert loc.place == "artefact" and loc.filters == (2,)
    assert "filter 2 · test" in loc.text and "the site stamp" in loc.text and "80 %" in loc.text


def test_every_non_eye_place_can_raise_a_shortcut():
    for place in NON_EYE:
        res, contrib, mass = _result(0.6)
        k = PLACES.index(place)
        if k != A:  # move the artefact's numbers to this place
            for arr in (res.present, res.area, res.evidence):
                arr[:, [A, k]] = arr[:, [k, A]]
            mass[:, :, [A, k]] = mass[:, :, [k, A]]
        found = [f for f in _findings(res, contrib, mass) if f.kind == "shortcut"]
        assert [f.place for f in found] == [place], place


def test_an_unreadable_scan_is_left_out_and_named(cohort, tmp_path, capsys):
    """One broken photograph in the cohort: the audit goes on without it and says which and why."""
    broken = tmp_path / "broken"
    shutil.copytree(cohort / "stamp", broken)
    _, rows = _csv(broken / "labels.csv")
    victim = rows[2]["id"]
    (broken / "images" / f"{victim}.png").write_bytes(b"not a png at all")
    events = []
    res = drain(audit_iter(str(default_bundle_path()), str(broken), gradcam=False, device="cpu"), events.append)
    assert victim not in res.ids and len(res.ids) == N - 1
    assert res.ids == [r["id"] for r in rows if r["id"] != victim]  # the others keep their order and labels
    assert list(res.labels) == [int(r["referable"]) for r in rows if r["id"] != victim]
    left = res.data["left_out"]
    assert [x["id"] for x in left] == [victim] and f"{victim}.png" in left[0]["reason"]
    assert any(isinstance(e, Message) and e.level == "warning" and victim in e.text for e in events)
    code = main(["audit", "--data", str(broken), "--out", str(tmp_path / "out"), "--no-gradcam", "--figures", "0"])
    assert code in (0, 3)
    assert "1 left out" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "audit.json").read_text())["data"]["left_out"][0]["id"] == victim


def test_a_dicom_file_the_layout_cannot_read_is_left_out_and_named(tmp_path):
    """A .dcm file that is not DICOM, in a site's DICOM export: audited without it, and named in the report."""
    from napari_icnn.data.synth import generate_fundus
    from napari_icnn.dicom.op_writer import write_op

    for i in range(2):
        write_op(tmp_path / "pacs" / f"IM{i}.dcm", generate_fundus(i, size=128).image, laterality="R")
    (tmp_path / "pacs" / "IM9.dcm").write_bytes(b"\x00" * 200)
    events = []
    res = drain(audit_iter(str(default_bundle_path()), str(tmp_path / "pacs"), gradcam=False, device="cpu"),
                events.append)
    assert len(res.ids) == 2 and res.data["format"] == "dicom"
    assert res.data["left_out"] == [{"id": "", "path": str(tmp_path / "pacs" / "IM9.dcm"),
                                     "reason": "not a DICOM file"}]
    assert any(isinstance(e, Message) and e.level == "warning" and "IM9.dcm" in e.text for e in events)


def test_a_cohort_of_unreadable_scans_is_refused(cohort, tmp_path):
    broken = tmp_path / "all-broken"
    shutil.copytree(cohort / "stamp", broken)
    for png in (broken / "images").glob("*.png"):
        png.write_bytes(b"junk")
    with pytest.raises(InputError, match="no scan that could be audited"):
        drain(audit_iter(str(default_bundle_path()), str(broken), gradcam=False, device="cpu"))


def test_a_folder_of_unlabelled_photographs_is_audited(cohort, tmp_path, capsys):
    """A site's export: photographs in subfolders, no CSV, no masks. Audited without labels (no AUC), on the places
    found in the pixels; a figure can be drawn from it; a missing or empty folder is named."""
    site = tmp_path / "site"
    for i, png in enumerate(sorted((cohort / "stamp" / "images").glob("*.png"))[:4]):
        (site / f"day{i % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(png, site / f"day{i % 2}" / png.name)
    (site / "notes.txt").write_text("not a photograph")
    events = []
    res = drain(audit_iter(str(default_bundle_path()), str(site), gradcam=False, device="cpu"), events.append)
    assert sorted(res.ids) == sorted(f"day{i % 2}/{p.stem}" for i, p in
                                     enumerate(sorted((cohort / "stamp" / "images").glob("*.png"))[:4]))
    assert res.auc is None and (res.labels == -1).all() and res.data["format"] == "images"
    assert not res.present[:, A].any() and res.present[:, PLACES.index("rim")].all()
    assert any(isinstance(e, Message) and "without labels" in e.text for e in events)
    res.findings.insert(0, Finding("shortcut", "text", "forced", (0,)))  # a flagged filter, to draw its figure
    out = write_audit(res, tmp_path / "audit", figures=1)
    assert (out / "figures" / "filter_0.png").is_file()
    assert main(["audit", "--data", str(site), "--out", str(tmp_path / "cli"), "--no-gradcam", "--figures", "0",
                 "--format", "images"]) in (0, 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no photograph"):
        drain(audit_iter(str(default_bundle_path()), str(tmp_path / "empty"), gradcam=False, device="cpu"))


def test_the_audit_reports_what_the_gate_says_of_each_scan(cohort, tmp_path):
    """An out-of-focus photograph is audited like the others (nothing left out) and listed as ungradeable, as the
    product would decline it; the sharp ones are not listed."""
    from PIL import Image
    from scipy import ndimage as ndi

    site = tmp_path / "site"
    site.mkdir()
    pngs = sorted((cohort / "stamp" / "images").glob("*.png"))[:3]
    for png in pngs:
        shutil.copy(png, site / png.name)
    rgb = np.asarray(Image.open(pngs[0]).convert("RGB"))
    sigma = 0.04 * min(rgb.shape[:2])
    blurred = np.stack([ndi.gaussian_filter(rgb[..., k], sigma) for k in range(3)], axis=-1)
    Image.fromarray(blurred).save(site / "blurred.png")
    res = drain(audit_iter(str(default_bundle_path()), str(site), gradcam=False, device="cpu"))
    assert len(res.ids) == 4 and res.gate[res.ids.index("blurred")] == "ungradeable"
    assert all(res.gate[res.ids.index(p.stem)] != "ungradeable" for p in pngs)
    doc = res.to_json()
    assert doc["gate"]["ungradeable"] == ["blurred"]
    out = write_audit(res, tmp_path / "audit", figures=0)
    _, rows = _csv(out / "scans.csv")
    assert {r["id"]: r["gate"] for r in rows}["blurred"] == "ungradeable"
