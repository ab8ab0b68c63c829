"""DICOM SR (TID 1500) of a prediction: conformance (dciodvfy), read-back with highdicom
and pydicom, per-filter points on the source grid, deterministic UIDs."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_validation import run_dciodvfy
from pydicom.sr.codedict import codes
from test_dicom_seg import COLS, MODEL, OTHER_MODEL, ROWS, make_maps, make_source, needs_dciodvfy

from napari_icnn.dicom.seg import build_seg
from napari_icnn.dicom.sr import build_sr, write_sr
from napari_icnn.errors import InputError

FILTERS = [
    {"id": 17, "name": "filter 17 · hard exudates", "part": "EX", "peak_x": 7, "peak_y": 5,
     "activation": 3.25, "contribution": 0.8125},
    {"id": 4, "name": "filter 4 · optic disc", "part": "optic_disc", "peak_x": COLS - 1, "peak_y": ROWS - 1,
     "activation": 1.5, "contribution": -0.125},
    {"id": 23, "name": "filter 23 · unnamed", "part": None, "peak_x": 100.25, "peak_y": 60.75,
     "activation": 0.5, "contribution": 0.015625},
]  # fmt: skip


def _sr(source, probability=0.87, threshold=0.5, model=MODEL, filters=FILTERS):
    return build_sr(
        source,
        probability=probability,
        predicted_class="referable",
        threshold=threshold,
        model=model,
        filters=filters,
    )


def _report(sr):
    """The measurement report as a reader sees it, after encoding and decoding."""
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return hd.sr.srread(buffer).content


@needs_dciodvfy
@pytest.mark.parametrize("kind", ["op-jpeg", "op-3frame", "op-16bit", "op-widefield", "xc", "sc"])
def test_sr_is_conformant_and_reads_back(tmp_path, kind):
    source = make_source(tmp_path, kind)
    out = write_sr(tmp_path / "sr.dcm", source, probability=0.87, predicted_class="referable", threshold=0.5,
                   model=MODEL, filters=FILTERS)  # fmt: skip

    errors, warnings, _ = run_dciodvfy(out)
    print(f"\n[{kind}] dciodvfy: {len(errors)} errors, {len(warnings)} warnings", *warnings, sep="\n  ")
    assert errors == []
    # The only warnings left are dciodvfy not knowing the declared private coding scheme.
    assert all("99ICNN" in w for w in warnings)

    header = source.header
    frame_number = None if source.frame is None else source.frame + 1
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert ds.StudyInstanceUID == header.StudyInstanceUID and ds.PatientID == header.PatientID
    assert str(ds.PatientName) == str(header.PatientName)  # Latin-1 names (xc) re-encoded in UTF-8
    assert ds.SeriesInstanceUID != header.SeriesInstanceUID
    assert "not for clinical use" in ds.SeriesDescription
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99ICNN"
    evidence = (
        ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    )
    assert evidence.ReferencedSOPInstanceUID == header.SOPInstanceUID

    sr = hd.sr.srread(out)
    (image_group,) = sr.content.get_image_measurement_groups()
    assert image_group.finding_type.value == "4855003"  # Diabetic retinopathy
    values = {m.name.value: (m.value, m.unit.value) for m in image_group.get_measurements()}
    assert values["122157"] == (pytest.approx(0.87), "1")  # Probability, UCUM "1"
    assert values["122411"] == (pytest.approx(0.5), "1")  # Threshold Value
    (referable,) = image_group.get_qualitative_evaluations()
    assert (referable.name.value, referable.value.value) == ("RDR", "52101004")  # present
    (image_ref,) = image_group.source_images
    assert image_ref.referenced_sop_instance_uid == header.SOPInstanceUID
    assert image_ref.referenced_frame_numbers == (None if frame_number is None else [frame_number])

    rois = sr.content.get_planar_roi_measurement_groups()
    assert [str(g.tracking_identifier) for g in rois] == [f["name"] for f in FILTERS]
    for group, f in zip(rois, FILTERS, strict=True):
        region = group.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues.POINT
        # Pixel (row y, column x) has its centre at DICOM image coordinates (x + .5, y + .5).
        np.testing.assert_allclose(region.value, [[f["peak_x"] + 0.5, f["peak_y"] + 0.5]], atol=1e-4)
        (selected_from,) = region.ContentSequence  # the IMAGE item the point is SELECTED FROM
        assert selected_from.referenced_sop_instance_uid == header.SOPInstanceUID
        assert selected_from.referenced_frame_numbers == (None if frame_number is None else [frame_number])
        measured = {m.name.value: m.value for m in group.get_measurements()}
        assert measured == {
            "FILTACT": pytest.approx(f["activation"]),
            "FILTCONTRIB": pytest.approx(f["contribution"]),
        }
    assert rois[0].finding_type.value == "52988006"  # the matched lesion part
    assert rois[2].finding_type is None  # no part, no finding claimed


def _device(tmp_path, kind):
    folder = tmp_path / kind
    folder.mkdir()
    out = write_sr(folder / "sr.dcm", make_source(folder, kind), probability=0.3, predicted_class="non-referable",
                   threshold=0.5, model=MODEL, filters=FILTERS[:1])  # fmt: skip
    (context,) = hd.sr.srread(out).content.get_observer_contexts(observer_type=codes.DCM.Device)
    return context.observer_identifying_attributes


def test_device_observer_is_the_model(tmp_path):
    device = _device(tmp_path, "op-jpeg")
    assert device.name == MODEL.name and device.serial_number == MODEL.sha256
    assert device.uid == _device(tmp_path, "xc").uid  # the same weights are the same device


@pytest.mark.parametrize(
    "probability, expected", [(0.49, "272519000"), (0.5, "52101004"), (0.51, "52101004")]
)
def test_referable_follows_the_threshold(tmp_path, probability, expected):
    sr = _sr(make_source(tmp_path, "op-jpeg"), probability=probability, threshold=0.5)
    (group,) = _report(sr).get_image_measurement_groups()
    assert group.get_qualitative_evaluations()[0].value.value == expected


def test_uids_are_deterministic_and_link_to_the_seg(tmp_path):
    source = make_source(tmp_path, "op-3frame")
    a, b = _sr(source), _sr(source, probability=0.2)
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    other = _sr(source, model=OTHER_MODEL)
    assert other.SOPInstanceUID != a.SOPInstanceUID and other.SeriesInstanceUID != a.SeriesInstanceUID

    seg = build_seg(source, make_maps(), MODEL)
    assert seg.SOPInstanceUID != a.SOPInstanceUID and seg.SeriesInstanceUID != a.SeriesInstanceUID
    # The SR group and the SEG segment of one filter share a tracking UID.
    seg_tracking = {int(s.SegmentLabel.split()[1]): s.TrackingUID for s in seg.SegmentSequence}
    for group, f in zip(_report(a).get_planar_roi_measurement_groups(), FILTERS, strict=True):
        assert group.tracking_uid == seg_tracking[f["id"]]


def test_bad_inputs_name_the_file_and_the_problem(tmp_path):
    source = make_source(tmp_path, "op-jpeg")
    outside = [dict(FILTERS[0], peak_x=COLS + 3)]
    with pytest.raises(InputError, match=r"peak of filter 17 .* outside the 128x96 image") as info:
        _sr(source, filters=outside)
    assert source.source in str(info.value)
    with pytest.raises(ValueError, match="lacks contribution"):
        _sr(source, filters=[{k: v for k, v in FILTERS[0].items() if k != "contribution"}])
    with pytest.raises(ValueError, match="probability must be a number in"):
        _sr(source, probability=1.5)
    with pytest.raises(ValueError, match="unique"):
        _sr(source, filters=FILTERS + FILTERS[:1])


def test_an_existing_other_file_is_not_overwritten(tmp_path):
    source = make_source(tmp_path, "op-jpeg")
    target = tmp_path / "op-jpeg.dcm"
    before = target.read_bytes()
    with pytest.raises(InputError, match="not overwritten"):
        write_sr(target, source, probability=0.9, predicted_class="referable", threshold=0.5, model=MODEL,
                 filters=FILTERS)  # fmt: skip
    assert target.read_bytes() == before


ROLED = [
    dict(FILTERS[1], role="context"),  # given first: the report puts the evidence first
    {"id": 30, "name": "filter 30 · haemorrhages", "part": "HE", "peak_x": 2, "peak_y": 3,
     "activation": 2.0, "contribution": -0.25, "role": "possible artefact"},
    dict(FILTERS[0], role="possible artefact", peak_x=COLS + 40),  # in the padding beyond the photograph
    dict(FILTERS[2], role="evidence"),
]  # fmt: skip


def _tracking_ids(ds) -> list[str]:
    found = []
    for item in ds.get("ContentSequence", []):
        name = item.get("ConceptNameCodeSequence")
        if item.get("ValueType") == "TEXT" and name and name[0].CodeMeaning == "Tracking Identifier":
            found.append(str(item.TextValue))
        found += _tracking_ids(item)
    return found


@needs_dciodvfy
def test_roles_are_recorded_evidence_first(tmp_path):
    source = make_source(tmp_path, "op-jpeg")
    out = write_sr(tmp_path / "sr.dcm", source, probability=0.3, predicted_class="no referable DR", threshold=0.5,
                   model=MODEL, filters=ROLED)  # fmt: skip
    errors, warnings, report = run_dciodvfy(out)
    assert errors == [], report
    assert all("99ICNN" in w for w in warnings)

    ds = pydicom.dcmread(out)
    names = [f["name"] for f in (ROLED[3], ROLED[0], ROLED[1], ROLED[2])]
    assert _tracking_ids(ds)[1:] == names  # after the image-level group; evidence, context, artefacts
    content = hd.sr.srread(out).content
    rois = {str(g.tracking_identifier): g for g in content.get_planar_roi_measurement_groups()}
    whole_frame = {str(g.tracking_identifier): g for g in content.get_image_measurement_groups()}
    assert set(rois) == set(names[:3]) and names[3] in whole_frame  # no point beyond the photograph
    expected = {names[0]: "EVIDENCE", names[1]: "CONTEXT", names[2]: "POSSARTEFACT", names[3]: "POSSARTEFACT"}
    for name, value in expected.items():
        (role,) = {**rois, **whole_frame}[name].get_qualitative_evaluations()
        assert (role.name.value, role.name.scheme_designator, role.value.value) == ("FILTROLE", "99ICNN", value)
    assert rois[names[1]].finding_sites[0].value.value == "81016008"  # context keeps its anatomy (optic nerve head)
    for artefact in (rois[names[2]], whole_frame[names[3]]):
        assert artefact.finding_type is None and not artefact.finding_sites  # an artefact is no finding
    assert [m.name.value for m in whole_frame[names[3]].get_measurements()] == ["FILTACT", "FILTCONTRIB"]


def test_filters_without_a_role_are_reported_as_before(tmp_path):
    rois = _report(_sr(make_source(tmp_path, "op-jpeg"))).get_planar_roi_measurement_groups()
    assert [str(g.tracking_identifier) for g in rois] == [f["name"] for f in FILTERS]
    assert all(not g.get_qualitative_evaluations() for g in rois)


def test_an_unknown_role_is_refused(tmp_path):
    with pytest.raises(ValueError, match="role must be one of"):
        _sr(make_source(tmp_path, "op-jpeg"), filters=[dict(FILTERS[0], role="lesion")])


def _image_text(ds, meaning: str) -> list[str]:
    """TEXT values named ``meaning`` anywhere in an SR's content tree."""
    found = []
    for item in ds.get("ContentSequence", []):
        name = item.get("ConceptNameCodeSequence")
        if item.get("ValueType") == "TEXT" and name and name[0].CodeMeaning == meaning:
            found.append(str(item.TextValue))
        found += _image_text(item, meaning)
    return found


KEPT_GATE = {"status": "ungradeable", "declined": True, "kept": True, "experience_score": 1.6,
             "message": "ungradeable: out of focus (sharpness 0.006, gradable from 0.020)"}


@needs_dciodvfy
@pytest.mark.parametrize("gate, quality, score", [
    ({"status": "gradable", "message": "gradable · experience score 0.74 (limit 1.00)", "experience_score": 0.74},
     "GRADABLE", 0.74),
    ({"status": "unfamiliar", "experience_score": 1.31,
      "message": "outside the model's experience: experience score 1.31 (limit 1.00); its probability may not hold"},
     "UNFAMILIAR", 1.31),
    (KEPT_GATE, "UNGRADEABLE", 1.6),
    ({"status": "gradable", "experience_score": None,
      "message": "gradable · the model stores no statistics of its training photographs"}, "GRADABLE", None),
])  # fmt: skip
def test_the_image_quality_gate_is_recorded_in_the_image_group(tmp_path, gate, quality, score):
    source = make_source(tmp_path, "op-jpeg")
    out = write_sr(tmp_path / "sr.dcm", source, probability=0.7, predicted_class="referable DR", threshold=0.5,
                   model=MODEL, filters=FILTERS[:1], gate=gate)  # fmt: skip
    errors, warnings, report = run_dciodvfy(out)
    assert errors == [], report
    assert all("99ICNN" in w for w in warnings)

    (group,) = hd.sr.srread(out).content.get_image_measurement_groups()
    evaluations = {q.name.value: q for q in group.get_qualitative_evaluations()}
    assert set(evaluations) == {"RDR", "IMGQUAL"}
    assert evaluations["IMGQUAL"].name.meaning == "Image quality"
    assert (evaluations["IMGQUAL"].value.value, evaluations["IMGQUAL"].value.scheme_designator) == (quality, "99ICNN")
    measured = {m.name.value: m for m in group.get_measurements()}
    if score is None:
        assert set(measured) == {"122157", "122411"}  # no statistics, no score
    else:
        experience = measured["EXPSCORE"]
        assert experience.name.meaning == "Experience score (1 = limit of the model's training data)"
        assert experience.value == pytest.approx(score) and experience.unit.value == "1"
        assert experience.unit.scheme_designator == "UCUM"
    (reason,) = _image_text(pydicom.dcmread(out), "Image quality reason")
    assert reason.startswith(gate["message"])
    assert ("given on request although the photograph was judged ungradeable" in reason) == bool(gate.get("kept"))


def test_without_a_gate_the_report_is_as_before(tmp_path):
    sr = _sr(make_source(tmp_path, "op-jpeg"))
    (group,) = _report(sr).get_image_measurement_groups()
    assert [q.name.value for q in group.get_qualitative_evaluations()] == ["RDR"]
    assert _image_text(sr, "Image quality reason") == []
    assert _image_text(sr, "Evidence filters silent on this image") == []  # none given, none written


@pytest.mark.parametrize("gate, message", [
    (dict(KEPT_GATE, status="blurry"), "gate status must be one of"),
    (dict(KEPT_GATE, experience_score=-1.0), "non-negative"),
    (dict(KEPT_GATE, experience_score="high"), "must be a number"),
])  # fmt: skip
def test_a_bad_gate_is_refused(tmp_path, gate, message):
    with pytest.raises(ValueError, match=message):
        build_sr(make_source(tmp_path, "op-jpeg"), probability=0.5, predicted_class="x", threshold=0.5, model=MODEL,
                 filters=FILTERS[:1], gate=gate)
