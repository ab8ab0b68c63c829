"""Evidence, context and possible artefacts: the rule, and what the shipped model shows on a real photograph."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_icnn.roles import (
    ARTEFACT,
    CONTEXT,
    EVIDENCE,
    MIN_STRENGTH,
    RIM,
    SILENT_FLAG,
    fov_radius_of,
    role_of,
)


@pytest.mark.parametrize(
    "category, part, strength, radius, inside, role, flag",
    [
        ("referable DR", None, 0.8, 0.3, True, EVIDENCE, None),
        ("HE", "HE", 0.8, 0.5, True, EVIDENCE, None),
        ("referable DR", "optic_disc", 0.8, 0.4, True, CONTEXT, "category filter that learned anatomy"),
        ("referable DR", "vessels", 0.8, 0.4, True, CONTEXT, "category filter that learned anatomy"),
        ("free", "optic_disc", 0.8, 0.4, True, CONTEXT, "label-free filter (anatomy context)"),
        ("free", None, 0.8, 0.4, True, CONTEXT, "label-free filter (anatomy context)"),
        (None, None, 0.8, 0.4, True, CONTEXT, "no category (not an interpretable filter)"),
        ("referable DR", None, 0.8, 0.95, True, ARTEFACT, "peak on the field-of-view rim"),
        ("free", "optic_disc", 0.8, 1.2, True, ARTEFACT, "peak outside the field of view"),
        ("HE", "HE", 0.8, 0.5, False, ARTEFACT, "peak outside the photograph"),
        # a silent filter's peak on the rim means nothing: no artefact flag ...
        ("referable DR", None, MIN_STRENGTH / 2, 0.95, True, EVIDENCE, None),
        ("free", None, MIN_STRENGTH / 2, 0.95, True, CONTEXT, "label-free filter (anatomy context)"),
        # ... but beyond the field, on the black surround, no filter is evidence or context, however weak
        ("referable DR", None, MIN_STRENGTH / 2, 1.3, True, ARTEFACT, "peak outside the field of view"),
        ("free", None, 1e-6, 1.3, True, ARTEFACT, "peak outside the field of view"),
        # a filter with no response anywhere has no peak: its map's first cell (a corner, often beyond the field
        # or the photograph) is no place, so it keeps its category's role, flagged silent
        ("HE", "HE", 0.0, 1.3, True, EVIDENCE, SILENT_FLAG),
        ("referable DR", None, 0.0, 0.2, False, EVIDENCE, SILENT_FLAG),
        ("free", None, 0.0, 1.3, True, CONTEXT, SILENT_FLAG),
        ("SE", "optic_disc", 0.0, 1.4, False, CONTEXT, SILENT_FLAG),
    ],
)
def test_the_role_rule(category, part, strength, radius, inside, role, flag):
    got = role_of(category, part, strength, radius, inside_scan=inside)
    assert got.role == role
    if flag is None:
        assert not any("peak" in f or "anatomy" in f for f in got.flags)
    else:
        assert flag in got.flags


def test_rim_boundary_and_fov_radius_geometry():
    assert role_of("HE", None, 1.0, RIM).role == EVIDENCE
    assert role_of("HE", None, 1.0, math.nextafter(RIM, 2.0)).role == ARTEFACT
    assert role_of("HE", None, 1.0, float("nan")).role == ARTEFACT  # never evidence by accident
    size = 256
    assert fov_radius_of(size / 2 - 0.5, size / 2 - 0.5, size) == 0.0
    assert fov_radius_of(size / 2 - 0.5, -0.5, size) == pytest.approx(1.0)
    assert fov_radius_of(-0.5, -0.5, size) == pytest.approx(math.sqrt(2))


@pytest.fixture(scope="module")
def retina_explanation():
    import skimage.data

    from napari_icnn.bundle import default_bundle_path, load_bundle
    from napari_icnn.explain import explain

    model = load_bundle(default_bundle_path(), "cpu")
    return explain(skimage.data.retina(), model), model


def test_the_shipped_model_never_lists_anatomy_or_rim_peaks_as_evidence(retina_explanation):
    expl, model = retina_explanation
    assert model.reference is not None and "reference eye" in expl.contribution_basis
    groups = expl.evidence(), expl.context(), expl.possible_artefacts()
    # every filter in exactly one group, or silent (no response anywhere: nothing to show)
    assert sum(len(g) for g in groups) + len(expl.silent()) == len(expl.filters)
    for f in expl.evidence():
        assert f.category not in (None, "free") and f.part not in ("optic_disc", "fovea", "vessels")
    anatomy = [f for f in expl.filters if f.category == "free" or f.part in ("optic_disc", "fovea", "vessels")]
    assert anatomy and all(f.role in (CONTEXT, ARTEFACT) for f in anatomy)
    for f in expl.possible_artefacts():  # an active filter on the rim or text, or any peak beyond the field
        assert f.strength >= MIN_STRENGTH or "peak outside the field of view" in f.flags or (
            "peak outside the photograph" in f.flags), f
        assert any(flag.startswith("peak ") for flag in f.flags) and f.activation > 0
    for f in expl.evidence() + expl.context():  # nothing in the black surround is read as the eye's
        assert not any("outside" in flag for flag in f.flags), f
    for group in groups:  # each group is ranked by contribution
        c = [f.contribution for f in group]
        assert c == sorted(c, reverse=True)


def test_roles_leave_maps_probabilities_and_contributions_unchanged(retina_explanation):
    """Grouping is presentation only: the same numbers as the network computes."""
    import skimage.data
    import torch

    from napari_icnn.data.fov import find_fov
    from napari_icnn.data.transforms import preprocess

    expl, model = retina_explanation
    x, _, _ = preprocess(skimage.data.retina(), model.size, find_fov(skimage.data.retina()))
    with torch.no_grad():
        out = model.net(torch.from_numpy(np.asarray(x, np.float32))[None])
        contrib = model.net.contributions(out.masked, 0, model.reference)[0].numpy()
    sign, t = (1.0 if expl.probability >= model.threshold else -1.0), model.temperature
    assert expl.probabilities[0] == pytest.approx(float(torch.sigmoid(out.logits[0, 0] / t)), abs=1e-6)
    for f in expl.filters:
        assert f.contribution == pytest.approx(sign * float(contrib[f.id]) / t, abs=1e-5)
        assert np.array_equal(f.map, out.masked[0, f.id].numpy())


def test_explanation_json_groups_the_filters(retina_explanation):
    from napari_icnn.explain import FORMAT_VERSION

    expl, _ = retina_explanation
    doc = expl.to_json(5)
    assert doc["format_version"] == FORMAT_VERSION == 4 and doc["gate"]["status"] == "gradable"
    assert "filters" not in doc and doc["contribution_basis"] == expl.contribution_basis
    assert [e["id"] for e in doc["evidence"]] == [f.id for f in expl.evidence(5)]
    assert [e["id"] for e in doc["context"]] == [f.id for f in expl.context(5)]
    assert all(e["role"] == "possible artefact" and e["flags"] for e in doc["possible_artefacts"])
    # the silent filters: all of them, by contribution, without a peak (they have none)
    assert [e["id"] for e in doc["silent"]] == [f.id for f in expl.silent()]
    assert all("peak_x" not in e and e["activation"] == 0 and SILENT_FLAG in e["flags"] for e in doc["silent"])


def test_silent_filters_are_listed_apart_with_their_contribution(retina_explanation):
    """On the real photograph (no referable DR) whole lesion-type filters stay silent: not one response on the
    scan. Their silence is part of the healthy decision (positive contributions) and is said in words; they are
    never possible artefacts, whatever corner their all-zero map's first cell lies in."""
    from napari_icnn.explain import silent_summary

    expl, _ = retina_explanation
    silent = expl.silent()
    assert silent, "the shipped model's lesion-type filters fire nowhere on a healthy eye: some must be silent"
    for f in silent:
        assert f.activation == 0 and not f.map.any() and SILENT_FLAG in f.flags
        assert f.role == (EVIDENCE if f.category not in (None, "free") else CONTEXT)
        assert f not in expl.evidence() + expl.context() + expl.possible_artefacts()
    assert all(f.activation > 0 for f in expl.evidence() + expl.context() + expl.possible_artefacts())
    ev = expl.silent(EVIDENCE)
    text = silent_summary(expl)
    assert text.startswith(f"{len(ev)} evidence filter") and "for no referable DR" in text
    assert f"{sum(f.contribution for f in ev):+.3f}" in text


def test_a_peak_beyond_the_photograph_is_never_evidence_however_weak():
    from napari_icnn.roles import ARTEFACT, role_of

    # a 4-px map's corner cell can lie in the padding of a field of view the frame cuts (a strength of 0 is a
    # silent filter: it has no peak at all)
    for strength in (1e-6, 0.05, 5.0):
        for category, part in (("HE", None), ("free", "fovea"), ("SE", "optic_disc")):
            role = role_of(category, part, strength, fov_radius=0.99, inside_scan=False)
            assert role.role == ARTEFACT and "peak outside the photograph" in role.flags, (strength, category)


def test_the_gate_passes_the_real_photograph_with_its_disc_found(retina_explanation):
    """The image-quality and experience gate lets scikit-image's real photograph through: gradable, within the
    shipped model's experience, no referable DR, its optic-disc filters on the brightest spot of the field and its
    fovea filters where a fovea lies: level with the disc, about 4.5 mm (0.5-0.95 of a 45-degree field's radius)
    from it."""
    import skimage.data
    from scipy import ndimage as ndi

    from napari_icnn.data.fov import find_fov

    expl, model = retina_explanation
    assert model.experience is not None
    assert expl.gate.status == "gradable" and expl.gate.quality.gradable and expl.gate.experience <= 1.0
    assert expl.predicted_class == "no referable DR"
    rgb = skimage.data.retina()
    fov = find_fov(rgb)
    glow = ndi.gaussian_filter(rgb.astype(float).mean(axis=2), 0.06 * fov.radius) * fov.mask(rgb.shape[:2])
    y, x = np.unravel_index(glow.argmax(), glow.shape)
    context = expl.context(len(expl.filters))
    disc = [f for f in context if f.part == "optic_disc"]
    assert disc and all(np.hypot(f.peak_x - x, f.peak_y - y) < 0.15 * fov.radius for f in disc)
    for f in (f for f in context if f.part == "fovea"):
        assert 0.5 * fov.radius < np.hypot(f.peak_x - x, f.peak_y - y) < 0.95 * fov.radius, f.name
        assert abs(f.peak_y - y) < 0.2 * fov.radius, f.name
