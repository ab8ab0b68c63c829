"""The gate in front of every verdict: image quality measured on real pixels, the model's experience fitted and
stored in real bundles, and explain() withholding the verdict on an ungradeable photograph."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from napari_icnn.bundle import load_bundle, set_experience
from napari_icnn.data.fov import check_fundus, find_fov
from napari_icnn.data.synth import generate_cohort, generate_fundus
from napari_icnn.errors import BundleError, DeclinedInput, GateDeclined
from napari_icnn.experience import EXPERIENCE_QUANTILE, Experience, fit_experience
from napari_icnn.explain import explain
from napari_icnn.gate import Gate
from napari_icnn.progress import drain
from napari_icnn.quality import LIMITS, Quality, assess_quality


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Realistic photographs of one seed, undegraded and degraded (the generator's ungradeable kinds)."""
    root = tmp_path_factory.mktemp("gate")
    drain(generate_cohort(root / "good", 12, size=None, size_range=(400, 900), seed=41, look="realistic"))
    drain(generate_cohort(root / "bad", 16, size=None, size_range=(400, 900), seed=44, look="realistic",
                          ungradeable_share=1.0))
    return root


def _images(folder):
    for row in csv.DictReader(open(folder / "labels.csv", newline="")):
        yield row, np.asarray(Image.open(folder / "images" / f"{row['id']}.png").convert("RGB"))


def _blurred(rgb, share=0.04):
    fov = find_fov(rgb)
    s = share * 2 * fov.radius
    return ndi.gaussian_filter(rgb.astype(np.float32), (s, s, 0)).round().astype(np.uint8)


def test_realistic_photographs_are_gradable(cohort):
    for row, rgb in _images(cohort / "good"):
        q = assess_quality(rgb, check_fundus(rgb, row["id"]))
        assert q.gradable, (row["id"], row["camera"], q.verdict)
        assert q.verdict == "gradable" and q.sharpness >= LIMITS["min_sharpness"]


def test_every_degraded_kind_is_declined_for_its_reason(cohort):
    words = {"defocus": ("out of focus",), "underexposed": ("underexposed", "too dark"),
             "overexposed": ("overexposed", "greyscale"), "obscured": ("no retinal detail", "field of view", "out of focus")}
    seen, drawn = set(), set()
    for row, rgb in _images(cohort / "bad"):
        drawn.add(row["ungradeable"])
        kind = row["ungradeable"]
        assert row["gradable"] == "0" and kind in words
        try:
            verdict = assess_quality(rgb, check_fundus(rgb, row["id"])).verdict
        except DeclinedInput as err:  # not even taken for a readable fundus photograph
            verdict = err.reason
        assert verdict != "gradable", (row["id"], kind)
        assert any(w in verdict for w in words[kind]), (kind, verdict)
        seen.add(kind)
    assert seen == drawn == set(words)


def test_blur_lowers_sharpness_whatever_the_size():
    rgb = generate_fundus(5, 768, look="realistic").image
    sharp = assess_quality(rgb)
    small = np.asarray(Image.fromarray(rgb).resize((384, 384), Image.LANCZOS))
    assert assess_quality(small).gradable
    # the working size makes the measure read alike across resolutions
    assert abs(assess_quality(small).sharpness - sharp.sharpness) < 0.5 * sharp.sharpness
    for img in (rgb, small):
        q = assess_quality(_blurred(img))
        assert not q.gradable and q.reasons[0].startswith("out of focus")
        assert q.sharpness < LIMITS["min_sharpness"] < sharp.sharpness


def test_dim_photograph_is_underexposed_and_a_covered_one_has_coverage():
    rgb = generate_fundus(6, 512, look="realistic").image
    dim = (rgb.astype(np.float32) * 0.28).astype(np.uint8)
    q = assess_quality(dim, find_fov(rgb))
    assert not q.gradable and "underexposed" in q.verdict and q.brightness < LIMITS["min_brightness"]
    covered = rgb.copy()
    fov = find_fov(rgb)
    top = int(fov.cy + 0.5 * fov.radius)  # a shadow over everything above the lower quarter of the field
    covered[:top] = (covered[:top].astype(np.float32) * 0.02).astype(np.uint8)
    q = assess_quality(covered, fov)
    assert not q.gradable and q.coverage > LIMITS["max_coverage"], q.verdict


def test_quality_json_names_measures_and_limits():
    q = assess_quality(generate_fundus(7, 384, look="realistic").image)
    doc = q.to_json()
    assert doc["gradable"] is True and doc["reasons"] == []
    assert set(doc["measures"]) == {"brightness", "dark_fraction", "bright_fraction", "sharpness", "coverage"}
    assert doc["limits"] == LIMITS
    json.dumps(doc)


def test_experience_scores_new_samples_of_the_training_distribution_within_the_limit():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(20, 40))
    train = rng.normal(size=(600, 20)) @ mix + 3.0
    val = rng.normal(size=(300, 20)) @ mix + 3.0
    e = fit_experience(train, val, "test")
    fresh = rng.normal(size=(2000, 20)) @ mix + 3.0
    inside = (e.score(fresh) <= 1.0).mean()
    assert 0.95 <= inside <= 1.0 and abs((e.score(val) <= 1.0).mean() - EXPERIENCE_QUANTILE) < 0.01
    # off the training data's subspace, or far along it: outside
    assert (e.score(fresh + rng.normal(scale=2.0, size=fresh.shape)) > 1.0).mean() > 0.95
    assert (e.score(fresh * 4.0) > 1.0).all()
    again = Experience.from_entry(json.loads(json.dumps(e.to_entry())))
    np.testing.assert_allclose(again.score(fresh[:50]), e.score(fresh[:50]), rtol=1e-3)


def test_experience_refuses_too_little_or_broken_data():
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="at least 8"):
        fit_experience(rng.normal(size=(5, 4)), rng.normal(size=(20, 4)))
    with pytest.raises(ValueError, match="finite"):
        fit_experience(np.full((20, 4), np.nan), rng.normal(size=(20, 4)))
    entry = fit_experience(rng.normal(size=(40, 4)), rng.normal(size=(20, 4))).to_entry()
    with pytest.raises(ValueError):
        Experience.from_entry({**entry, "limit": -1.0})


def test_a_bundle_stores_its_experience_and_refuses_a_broken_one(tmp_path):
    from conftest import make_bundle

    bundle = make_bundle(tmp_path / "b")
    assert load_bundle(bundle, "cpu").experience is None
    width = load_bundle(bundle, "cpu").net.summary_width
    rng = np.random.default_rng(2)
    entry = fit_experience(rng.normal(size=(40, width)), rng.normal(size=(20, width)), "test").to_entry()
    set_experience(bundle, entry)
    model = load_bundle(bundle, "cpu")
    assert model.experience is not None and model.experience.dims == width
    with pytest.raises(BundleError, match="features"):
        set_experience(bundle, fit_experience(rng.normal(size=(40, 6)), rng.normal(size=(20, 6))).to_entry())
    meta_path = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["icnn"]["experience"]["limit"] = "lots"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="experience"):
        load_bundle(bundle, "cpu")


def test_gate_statuses_and_messages():
    good = Quality(0.7, 0.0, 0.0, 0.06, 0.3)
    bad = Quality(0.7, 0.0, 0.0, 0.01, 0.3, ("out of focus (sharpness 0.010, gradable from 0.020)",))
    assert Gate(good, 0.5).status == "gradable" and not Gate(good, 0.5).declined
    assert Gate(good, None).status == "gradable" and "no statistics" in Gate(good, None).message
    unfamiliar = Gate(good, 1.7)
    assert unfamiliar.status == "unfamiliar" and not unfamiliar.declined and "1.70" in unfamiliar.message
    assert Gate(good, 1.7, decline_unfamiliar=True).declined
    down = Gate(bad, 0.5)
    assert down.status == "ungradeable" and down.declined and down.message.startswith("ungradeable: out of focus")
    assert down.to_json()["quality"]["reasons"] == list(bad.reasons)


def test_explain_withholds_the_verdict_on_an_ungradeable_photograph(tiny_bundle):
    model = load_bundle(tiny_bundle, "cpu")
    rgb = generate_fundus(8, 384, look="realistic").image
    ok = explain(rgb, model)
    assert ok.gate.status in ("gradable", "unfamiliar") and ok.to_json()["gate"]["status"] == ok.gate.status
    with pytest.raises(GateDeclined, match="out of focus") as info:
        explain(_blurred(rgb), model)
    kept = info.value.explanation
    assert kept.gate.declined and 0 <= kept.probability <= 1
    again = explain(_blurred(rgb), model, gate=False)
    assert again.gate.status == "ungradeable" and again.to_json()["gate"]["declined"] is True
