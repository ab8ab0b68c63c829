"""DICOM Structured Report of a prediction: a TID 1500 Measurement Report with one
image-level group (referable diabetic retinopathy, and the image-quality gate's outcome: the
photograph's image quality, why, and the model's experience score) and one group per reported filter
(its peak as a point on the source frame, its activation and contribution, and its role: evidence,
anatomy context or possible artefact; evidence first).

Concepts without a standard code use the private coding scheme ``99ICNN``, declared in the
document's Coding Scheme Identification Sequence; everything else is SNOMED CT or DCM.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_icnn.dicom.seg import (
    CHARACTER_SET,
    LATERALITY_CODES,
    MANUFACTURER,
    fit_text,
    save_atomic,
    series_description,
    software_versions,
)
from napari_icnn.dicom.uids import ModelInfo, SourceRef, derived_uids, device_uid, source_ref, tracking_uid
from napari_icnn.errors import InputError
from napari_icnn.parts import PARTS
from napari_icnn.roles import ARTEFACT, CONTEXT, EVIDENCE, ROLES

if TYPE_CHECKING:
    import highdicom as hd

    from napari_icnn.image import FundusImage

__all__ = ["build_sr", "write_sr", "PRIVATE_SCHEME", "CODES", "FILTER_KEYS", "ROLE_CODES", "QUALITY_CODES"]

PRIVATE_SCHEME = "99ICNN"
FILTER_KEYS = ("id", "name", "part", "peak_x", "peak_y", "activation", "contribution")
"""Keys every filter entry of :func:`build_sr` has; ``role`` is optional."""

CODES: dict[str, tuple[str, str, str]] = {
    # Verified in the DICOM-bundled SNOMED CT / DCM subsets unless noted.
    "diabetic_retinopathy": ("4855003", "SCT", "Diabetic retinopathy"),
    "probability": ("122157", "DCM", "Probability"),
    "threshold": ("122411", "DCM", "Threshold Value"),
    "present": ("52101004", "SCT", "Present"),  # CID 240 Present-Absent
    "absent": ("272519000", "SCT", "Absent"),
    "retina": ("5665001", "SCT", "Retina"),
    # The eCQM value set "Retinal or Dilated Eye Exam" (OID 2.16.840.1.113883.3.464.1003.115.12.1088).
    "fundus_photography": ("20067007", "SCT", "Ocular fundus photography"),
    # "Referable" (ICDR moderate NPDR or worse) is a screening-programme threshold, not a
    # SNOMED CT disorder; Present/Absent qualify it.
    "referable_dr": ("RDR", PRIVATE_SCHEME, "Referable diabetic retinopathy"),
    "activation": ("FILTACT", PRIVATE_SCHEME, "Interpretable filter activation"),
    "contribution": ("FILTCONTRIB", PRIVATE_SCHEME, "Filter contribution to class logit"),
    # What a filter's response is to a reader (napari_icnn.roles): only evidence bears on the finding.
    "filter_role": ("FILTROLE", PRIVATE_SCHEME, "Filter role"),
    "role_evidence": ("EVIDENCE", PRIVATE_SCHEME, "Evidence"),
    "role_context": ("CONTEXT", PRIVATE_SCHEME, "Context (anatomy)"),
    "role_artefact": ("POSSARTEFACT", PRIVATE_SCHEME, "Possible artefact"),
    # The image-quality gate (napari_icnn.gate): can the photograph be graded, and is it like the training data?
    "image_quality": ("IMGQUAL", PRIVATE_SCHEME, "Image quality"),
    "quality_gradable": ("GRADABLE", PRIVATE_SCHEME, "Gradable"),
    "quality_ungradeable": ("UNGRADEABLE", PRIVATE_SCHEME, "Ungradeable"),
    "quality_unfamiliar": ("UNFAMILIAR", PRIVATE_SCHEME, "Gradable, outside the model's experience"),
    "image_quality_reason": ("IMGQUALREASON", PRIVATE_SCHEME, "Image quality reason"),
    "experience_score": ("EXPSCORE", PRIVATE_SCHEME, "Experience score (1 = limit of the model's training data)"),
    # Lesion-type filters with no response anywhere: no point to report, yet their silence bears on the finding.
    "silent_filters": ("SILENTFILT", PRIVATE_SCHEME, "Evidence filters silent on this image"),
}
ROLE_CODES: dict[str, str] = {EVIDENCE: "role_evidence", CONTEXT: "role_context", ARTEFACT: "role_artefact"}
"""Key in :data:`CODES` of each role's value."""
QUALITY_CODES: dict[str, str] = {"gradable": "quality_gradable", "ungradeable": "quality_ungradeable",
                                 "unfamiliar": "quality_unfamiliar"}
"""Key in :data:`CODES` of each gate status's "Image quality" value."""
KEPT_SENTENCE = "The verdict was given on request although the photograph was judged {what}; it may not hold."
"""What the "Image quality reason" adds for a scan kept although the gate declined it."""


def build_sr(
    source: FundusImage,
    *,
    probability: float,
    predicted_class: str,
    threshold: float,
    model: ModelInfo,
    filters: Sequence[Mapping[str, Any]],
    gate: Mapping[str, Any] | None = None,
    silent: str = "",
    series_number: int = 902,
) -> hd.sr.ComprehensiveSR:
    """Build the TID 1500 report of one prediction on the frame ``source``.

    Parameters
    ----------
    source
        The frame that was classified; must come from DICOM (``source.header``).
    probability, threshold
        Probability of referable DR and the operating threshold, both in [0, 1];
        referable DR is reported present when ``probability >= threshold``.
    predicted_class
        The model's name for the predicted class, recorded in the image-level group.
    model
        The model; its SHA-256 determines the UIDs and identifies the observer device.
    filters
        The reported filters, each a mapping with :data:`FILTER_KEYS`: ``id``, display
        ``name``, matched ``part`` key (or ``None``), ``peak_x`` (column) and ``peak_y``
        (row) in source pixels, ``activation`` and ``contribution``; optionally ``role``
        (``evidence``, ``context``, ``possible artefact`` or ``None``), recorded as the group's
        "Filter role". Groups are in role order (evidence first), in the given order within
        a role. A possible artefact whose peak lies outside the image gets a group without
        a point (TID 1501); a possible artefact claims no finding type or site.
    gate
        The image-quality gate's outcome (:meth:`napari_icnn.gate.Gate.to_json`): ``status``
        (``gradable``, ``unfamiliar`` or ``ungradeable``), ``message``, ``experience_score`` (or
        ``None``) and ``kept`` (the verdict was given although the gate declined the scan). Recorded in
        the image-level group as the evaluation "Image quality", its reason in words (a TEXT item;
        for a kept scan, saying so) and the "Experience score" measurement (UCUM ``1``); nothing of it
        when ``None``.
    silent
        The evidence filters with no response anywhere on the frame, in words
        (:func:`napari_icnn.explain.silent_summary`): a TEXT item "Evidence filters silent on this
        image" in the image-level group; nothing when empty. Such filters have no peak, so no group.
    series_number
        Number shown by viewers.

    Raises
    ------
    InputError
        ``source`` cannot be referenced, or the peak of a filter that is not a possible
        artefact lies outside the image.
    ValueError
        A probability outside [0, 1], a filter entry with missing or non-numeric values
        or an unknown role, or a gate with an unknown status or a score that is not a
        non-negative number.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    ref = source_ref(source)
    probability = _unit_interval("probability", probability)
    threshold = _unit_interval("threshold", threshold)
    checked = [_check_filter(ref, f) for f in filters]
    quality = None if gate is None else _check_gate(gate)
    checked.sort(key=lambda f: ROLES.index(f["role"]) if f["role"] else 0)
    seen = [f["id"] for f in checked]
    if len(set(seen)) != len(seen):
        raise ValueError(f"filter ids must be unique; got {seen}")

    uids = derived_uids(ref, model, "sr")
    algorithm = hd.sr.AlgorithmIdentification(
        name=fit_text(model.name), version=fit_text(model.version), parameters=[f"sha256={model.sha256}"]
    )
    laterality = LATERALITY_CODES.get(source.laterality or "")
    groups: list[Any] = [_image_group(ref, model, algorithm, probability, threshold, predicted_class, quality,
                                      " ".join(str(silent).split()))]
    groups += [_filter_group(ref, model, algorithm, f, laterality) for f in checked]

    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(model),
            name=fit_text(model.name),
            manufacturer_name=MANUFACTURER,
            model_name=fit_text(f"{model.name} {model.version}"),
            serial_number=model.sha256,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_code("fundus_photography"),
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[ref.header],  # the checked attributes, not the source header
        content=report,
        series_instance_uid=uids.series_instance_uid,
        series_number=series_number,
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        specific_character_set=CHARACTER_SET,
    )
    sr.SeriesDescription = series_description("ICNN prediction", model)
    sr.ManufacturerModelName = fit_text(model.name)
    sr.SoftwareVersions = software_versions(model)  # type: ignore[assignment]  # highdicom's tuple[str] means any number of strings
    sr.DeviceSerialNumber = model.sha256
    sr.CodingSchemeIdentificationSequence = [_private_scheme()]
    return sr


def write_sr(path: str | os.PathLike[str], source: FundusImage, **kw: Any) -> Path:
    """:func:`build_sr` and save it to ``path`` atomically; returns the path."""
    return save_atomic(build_sr(source, **kw), path)


# ---------------------------------------------------------------------------------------


def _code(key: str) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(*CODES[key])


def _unitless(value: float) -> dict[str, Any]:
    """Value and unit of a dimensionless measurement (UCUM "1")."""
    from pydicom.sr.coding import Code

    return {"value": float(value), "unit": Code("1", "UCUM", "no units")}


def _private_scheme() -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = "napari-icnn interpretable CNN concepts"
    item.CodingSchemeResponsibleOrganization = "napari-icnn developers"
    item.CodingSchemeVersion = "1"
    return item


def _unit_interval(what: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number in [0, 1]; got {value!r}") from None
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError(f"{what} must be a number in [0, 1]; got {v}")
    return v


def _check_gate(gate: Mapping[str, Any]) -> dict[str, Any]:
    status = gate.get("status")
    if status not in QUALITY_CODES:
        raise ValueError(f"gate status must be one of {tuple(QUALITY_CODES)}; got {status!r}")
    score = gate.get("experience_score")
    if score is not None:
        try:
            score = float(score)
        except (TypeError, ValueError):
            raise ValueError(f"gate experience score must be a number; got {score!r}") from None
        if not (math.isfinite(score) and score >= 0):
            raise ValueError(f"gate experience score must be a non-negative number; got {score}")
    reason = " ".join(str(gate.get("message") or status).split())
    if gate.get("kept"):
        what = "ungradeable" if status == "ungradeable" else "outside the model's experience"
        reason = f"{reason}. {KEPT_SENTENCE.format(what=what)}"
    return {"status": status, "reason": reason, "experience_score": score}


def _check_filter(ref: SourceRef, f: Mapping[str, Any]) -> dict[str, Any]:
    missing = [k for k in FILTER_KEYS if k not in f]
    if missing:
        raise ValueError(f"filter entry {dict(f).get('id', '?')} lacks {', '.join(missing)}")
    out = dict(f)
    out["role"] = f.get("role")
    if out["role"] is not None and out["role"] not in ROLES:
        raise ValueError(f"filter entry {f['id']}: role must be one of {ROLES} or None; got {out['role']!r}")
    try:
        out["id"] = int(f["id"])
        for k in ("peak_x", "peak_y", "activation", "contribution"):
            out[k] = float(f[k])
    except (TypeError, ValueError):
        raise ValueError(f"filter entry {f['id']}: id, peak and scores must be numbers") from None
    if not all(math.isfinite(out[k]) for k in ("peak_x", "peak_y", "activation", "contribution")):
        raise ValueError(f"filter entry {out['id']}: peak and scores must be finite")
    if not str(f["name"]).strip():
        raise ValueError(f"filter entry {out['id']}: name must not be empty")
    x, y = out["peak_x"], out["peak_y"]
    out["on_image"] = -0.5 <= x <= ref.columns - 0.5 and -0.5 <= y <= ref.rows - 0.5
    # An artefact filter may peak in the padding beyond a photograph's edge; any other filter there is a bug.
    if not out["on_image"] and out["role"] != ARTEFACT:
        raise InputError(
            ref.path,
            f"peak of filter {out['id']} at (x={x:g}, y={y:g}) lies outside the {ref.columns}x{ref.rows} image",
        )
    return out


def _image_group(
    ref: SourceRef,
    model: ModelInfo,
    algorithm: Any,
    probability: float,
    threshold: float,
    predicted_class: str,
    quality: dict[str, Any] | None = None,
    silent: str = "",
) -> Any:
    import highdicom as hd

    referable = "present" if probability >= threshold else "absent"
    measurements = [
        hd.sr.Measurement(name=_code("probability"), **_unitless(probability)),
        hd.sr.Measurement(name=_code("threshold"), **_unitless(threshold)),
    ]
    evaluations = [hd.sr.QualitativeEvaluation(name=_code("referable_dr"), value=_code(referable))]
    if quality is not None:
        if quality["experience_score"] is not None:
            measurements.append(hd.sr.Measurement(name=_code("experience_score"),
                                                  **_unitless(quality["experience_score"])))
        evaluations.append(hd.sr.QualitativeEvaluation(name=_code("image_quality"),
                                                       value=_code(QUALITY_CODES[quality["status"]])))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(ref, model, "image"),
            identifier=f"image-level result: {' '.join(str(predicted_class).split()) or 'unnamed class'}",
        ),
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=ref.sop_class_uid,
                referenced_sop_instance_uid=ref.sop_instance_uid,
                referenced_frame_numbers=ref.frame_numbers,
            )
        ],
        finding_type=_code("diabetic_retinopathy"),
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )
    if quality is not None:
        # TID 1501 row 12 takes coded questions with text answers too; highdicom builds coded ones only.
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=_code("image_quality_reason"),
            value=quality["reason"],
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        ))
    if silent:
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=_code("silent_filters"),
            value=silent,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        ))
    return group


def _filter_group(
    ref: SourceRef,
    model: ModelInfo,
    algorithm: Any,
    f: dict[str, Any],
    laterality: tuple[str, str, str] | None,
) -> Any:
    import highdicom as hd

    part = PARTS.get(f["part"]) if f["part"] else None
    finding_type = None
    sites = None
    # A possible artefact is not a finding: no lesion type, no anatomic site for it.
    if part is not None and part.snomed is not None and f["role"] != ARTEFACT:
        code = hd.sr.CodedConcept(part.snomed[0], "SCT", part.snomed[1])
        lat = hd.sr.CodedConcept(*laterality) if laterality else None
        if part.kind == "lesion":
            finding_type = code
            code = _code("retina")
        sites = [hd.sr.FindingSite(anatomic_location=code, laterality=lat)]
    common: dict[str, Any] = {
        "tracking_identifier": hd.sr.TrackingIdentifier(
            uid=tracking_uid(ref, model, f["id"]), identifier=str(f["name"])
        ),
        "finding_type": finding_type,
        "finding_sites": sites,
        "algorithm_id": algorithm,
        "measurements": [
            hd.sr.Measurement(name=_code("activation"), **_unitless(f["activation"])),
            hd.sr.Measurement(name=_code("contribution"), **_unitless(f["contribution"])),
        ],
        "qualitative_evaluations": (
            [hd.sr.QualitativeEvaluation(name=_code("filter_role"), value=_code(ROLE_CODES[f["role"]]))]
            if f["role"] else None
        ),
    }
    if not f["on_image"]:
        # No point can be placed off the image: the group refers to the whole frame.
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            source_images=[
                hd.sr.SourceImageForMeasurementGroup(
                    referenced_sop_class_uid=ref.sop_class_uid,
                    referenced_sop_instance_uid=ref.sop_instance_uid,
                    referenced_frame_numbers=ref.frame_numbers,
                )
            ],
            **common,
        )
    # Graphic data are DICOM image coordinates, where the top-left corner of the first
    # pixel is (0, 0): the centre of pixel (row y, column x) is (x + 0.5, y + 0.5).
    point = np.array([[f["peak_x"] + 0.5, f["peak_y"] + 0.5]], dtype=np.float64)
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POINT,
            graphic_data=point,
            source_image=hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=ref.sop_class_uid,
                referenced_sop_instance_uid=ref.sop_instance_uid,
                referenced_frame_numbers=ref.frame_numbers,
            ),
        ),
        **common,
    )
