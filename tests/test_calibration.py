"""Temperature scaling and the expected calibration error: fitted on validation, stored in the bundle,
applied by every explanation, reported by icnn evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_icnn.engine.calibration import expected_calibration_error, fit_temperature, reliability


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_fit_temperature_recovers_an_overconfident_models_scale():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 2.0, 20000)
    y = (rng.random(20000) < _sigmoid(true_logit)).astype(float)  # calibrated by construction
    t = fit_temperature(4.0 * true_logit, y)
    assert t == pytest.approx(4.0, rel=0.05)
    before = expected_calibration_error(_sigmoid(4.0 * true_logit), y)
    after = expected_calibration_error(_sigmoid(4.0 * true_logit / t), y)
    assert before > 0.05 and after < 0.015


def test_ece_of_perfect_and_of_constant_predictions():
    y = np.array([0, 0, 1, 1] * 25, float)
    assert expected_calibration_error(y, y) == 0.0
    assert expected_calibration_error(np.full(100, 0.9), y) == pytest.approx(0.4)
    bins = reliability(np.full(100, 0.9), y)
    assert [b["n"] for b in bins if b["n"]] == [100] and bins[9]["observed"] == pytest.approx(0.5)


def test_fit_temperature_refuses_empty_or_mismatched_input():
    with pytest.raises(ValueError, match="matching non-empty"):
        fit_temperature(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="matching non-empty"):
        fit_temperature(np.zeros(3), np.zeros(4))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from napari_icnn.data.synth import write_cohort

    root = tmp_path_factory.mktemp("calibration-cohort")
    write_cohort(root, 16, size=96, seed=43, look="clean")
    return root


def test_calibrate_stores_a_temperature_that_explanations_and_evaluate_use(tmp_path, cohort, capsys):
    import torch
    from conftest import make_bundle, scale_head
    from PIL import Image

    from napari_icnn.bundle import load_bundle
    from napari_icnn.cli import main
    from napari_icnn.data.fov import find_fov
    from napari_icnn.data.transforms import preprocess
    from napari_icnn.engine.evaluate import evaluate
    from napari_icnn.explain import explain

    bundle = make_bundle(tmp_path / "b")
    scale_head(bundle, 10.0)  # an overconfident head: the same decisions, logits ten times too large
    meta_path = bundle / "configs" / "metadata.json"

    assert main(["calibrate", "--model", str(bundle), "--data", str(cohort), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "temperature" in out and "expected calibration error" in out
    entry = json.loads(meta_path.read_text())["icnn"]["calibration"]
    assert entry["n_images"] == 16 and entry["ece_calibrated"] <= entry["ece_uncalibrated"] + 1e-9
    model = load_bundle(bundle, "cpu")
    assert model.temperature == pytest.approx(entry["temperature"], rel=1e-4)

    image = np.asarray(Image.open(sorted(cohort.glob("images/*.png"))[0]).convert("RGB"))
    expl = explain(image, model, check=False)
    x, _, _ = preprocess(image, model.size, find_fov(image))
    with torch.no_grad():
        logit = float(model.net(torch.from_numpy(np.asarray(x, np.float32))[None]).logits[0, 0])
    assert expl.probabilities[0] == pytest.approx(float(_sigmoid(logit / model.temperature)), abs=1e-6)

    doc = evaluate(str(bundle), str(cohort), device="cpu")
    assert set(doc["ece"]) == {"uncalibrated", "calibrated", "temperature"}
    assert doc["ece"]["temperature"] == pytest.approx(model.temperature)
    assert doc["ece"]["calibrated"] == pytest.approx(entry["ece_calibrated"], abs=1e-4)  # the same 16 images
    assert len(doc["reliability"]["calibrated"]) == 10


def test_a_bad_temperature_is_refused_naming_the_metadata(tmp_path):
    from conftest import make_bundle

    from napari_icnn.bundle import load_bundle
    from napari_icnn.errors import BundleError

    bundle = make_bundle(tmp_path / "b")
    path = bundle / "configs" / "metadata.json"
    meta = json.loads(path.read_text())
    meta["icnn"]["calibration"] = {"temperature": -1}
    path.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="temperature must be a positive number"):
        load_bundle(bundle, "cpu")
