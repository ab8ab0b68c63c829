"""Contributions against a healthy reference eye: exact Shapley values of the linear head that sum to
logit(scan) − logit(reference), about zero for a filter that fires alike on every eye; bundles carry
the reference (from training or ``icnn calibrate``) and explanations say how they were measured."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from napari_icnn.bundle import load_bundle
from napari_icnn.cli import main
from napari_icnn.icnn.networks import ICNN


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(3)
    model = ICNN(arch="vgg", n_outputs=1, n_filters=6, image_size=64, width=8).eval()
    with torch.no_grad():
        model.fc.weight.normal_()  # every pooled feature matters to the logit
    return model


def _maps(b: int, c: int = 6, n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()


def test_contributions_sum_to_the_logit_difference_from_the_reference(net):
    masked = _maps(5)
    reference = net.pooled(_maps(40, seed=1)).mean(dim=0)
    with torch.no_grad():
        got = net.contributions(masked, 0, reference)
        logits = net.head(masked)[:, 0]
        ref_logit = torch.nn.functional.linear(reference, net.fc.weight, net.fc.bias)[0]
    assert torch.allclose(got.sum(dim=1), logits - ref_logit, atol=1e-4)


def test_each_contribution_is_the_logit_change_when_that_filter_takes_its_reference_values(net):
    masked = _maps(3, seed=4)
    reference = net.pooled(_maps(20, seed=5)).mean(dim=0)
    c = masked.shape[1]
    with torch.no_grad():
        got = net.contributions(masked, 0, reference)
        feats = net.pooled(masked)
        full = net.fc(feats)[:, 0]
        for f in range(c):
            swapped = feats.clone()
            swapped[:, f], swapped[:, c + f] = reference[f], reference[c + f]
            assert torch.allclose(got[:, f], full - net.fc(swapped)[:, 0], atol=1e-5)


def test_an_always_on_filter_contributes_nothing_against_the_reference_but_tops_zero_ablation(net):
    masked = _maps(6, seed=7) * 0.2
    masked[:, 0] = 3.0  # fires alike on every eye, as an optic-disc detector does
    healthy = _maps(30, seed=8) * 0.2
    healthy[:, 0] = 3.0
    reference = net.pooled(healthy).mean(dim=0)
    with torch.no_grad():
        against_reference = net.contributions(masked, 0, reference)
        zero_ablation = net.contributions(masked, 0)
    assert torch.all(against_reference[:, 0].abs() < 0.05 * against_reference[:, 1:].abs().max())
    # zero-ablation makes the same filter the largest "evidence" on every eye
    assert torch.all(zero_ablation[:, 0].abs() > zero_ablation[:, 1:].abs().max(dim=1).values)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from napari_icnn.data.synth import write_cohort

    root = tmp_path_factory.mktemp("calibration-cohort")
    write_cohort(root, 16, size=96, seed=41, look="clean")
    return root


def test_calibrate_stores_the_reference_eye_and_explanations_use_it(tmp_path, cohort, capsys):
    from conftest import make_bundle, scale_head

    from napari_icnn.data.fov import find_fov
    from napari_icnn.data.layouts import discover
    from napari_icnn.data.transforms import preprocess
    from napari_icnn.engine.reference import healthy_eyes
    from napari_icnn.explain import explain

    bundle = make_bundle(tmp_path / "b")
    scale_head(bundle, 300.0)  # an untrained head's logits barely move; the sum is checked on ones that do
    before = load_bundle(bundle, "cpu")
    assert before.reference is None and "zero-ablation" in before.contribution_basis
    image = np.asarray(Image.open(sorted(cohort.glob("images/*.png"))[0]).convert("RGB"))
    plain = explain(image, before, check=False)
    assert "zero-ablation" in plain.to_json()["contribution_basis"]

    healthy = healthy_eyes(discover(str(cohort)).records)
    assert len(healthy) >= 2
    assert main(["calibrate", "--model", str(bundle), "--data", str(cohort), "--device", "cpu"]) == 0
    assert f"the mean of {len(healthy)} healthy" in capsys.readouterr().out
    assert load_bundle(bundle, "cpu").experience is None  # only with --train
    assert main(["calibrate", "--model", str(bundle), "--data", str(cohort), "--train", str(cohort),
                 "--device", "cpu"]) == 0
    assert "experience stored" in capsys.readouterr().out
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["icnn"]["reference"]["n_images"] == len(healthy)
    assert list(bundle.glob("configs/metadata.json.bak-*"))  # the previous metadata is kept
    after = load_bundle(bundle, "cpu")
    assert after.reference is not None and after.sha256 == before.sha256  # weights untouched
    expl = explain(image, after, check=False)
    assert "reference eye" in expl.contribution_basis and f"{len(healthy)} healthy" in expl.contribution_basis
    x, _, _ = preprocess(image, after.size, find_fov(image))
    with torch.no_grad():
        logit = float(after.net(torch.from_numpy(np.asarray(x, np.float32))[None]).logits[0, 0])
        ref_logit = float(torch.nn.functional.linear(after.reference, after.net.fc.weight, after.net.fc.bias)[0])
    sign = 1.0 if expl.probability >= after.threshold else -1.0  # contributions explain the decision taken
    expected = sign * (logit - ref_logit) / after.temperature  # in units of the calibrated logit
    # a gap that matters before the temperature (an untrained head's temperature can be large)
    assert abs(expected * after.temperature) > 1e-3
    assert sum(f.contribution for f in expl.filters) == pytest.approx(expected, rel=1e-3, abs=1e-7)


def test_calibrate_refuses_data_without_healthy_eyes(tmp_path, cohort, capsys):
    import csv

    from conftest import make_bundle

    bundle = make_bundle(tmp_path / "b")
    table = tmp_path / "labels.csv"
    with open(table, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        for p in sorted(cohort.glob("images/*.png"))[:4]:
            w.writerow([str(p), 1])
    assert main(["calibrate", "--model", str(bundle), "--data", str(table), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "0 of 4 images are known healthy" in err
    assert "reference" not in json.loads((bundle / "configs" / "metadata.json").read_text())["icnn"]


def test_a_broken_reference_is_refused_naming_the_metadata(tmp_path):
    from conftest import make_bundle

    from napari_icnn.errors import BundleError

    bundle = make_bundle(tmp_path / "b")
    path = bundle / "configs" / "metadata.json"
    meta = json.loads(path.read_text())
    meta["icnn"]["reference"] = {"pooled": [0.0, 1.0], "n_images": 3}
    path.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="reference eye holds 2 values; this network needs 16"):
        load_bundle(bundle, "cpu")


def test_training_stores_the_reference_eye_of_its_validation_cohort(tmp_path, cohort):
    from napari_icnn.data.layouts import discover
    from napari_icnn.engine.reference import healthy_eyes

    out = tmp_path / "model"
    code = main(["train", "--data", str(cohort), "--val", str(cohort), "--out", str(out), "--epochs", "1",
                 "--size", "64", "--filters", "8", "--device", "cpu"])
    assert code == 0
    model = load_bundle(out, "cpu")
    assert model.reference is not None and model.reference.shape == (16,)
    n = len(healthy_eyes(discover(str(cohort)).records))
    assert f"{n} healthy" in model.contribution_basis
    meta = json.loads((out / "configs" / "metadata.json").read_text())["icnn"]
    assert meta["calibration"]["n_images"] == 16 and model.temperature == pytest.approx(
        meta["calibration"]["temperature"], rel=1e-4)
    # and the statistics of its experience: training photographs, limit on the validation ones
    assert meta["experience"]["n_train"] == meta["experience"]["n_val"] == 16
    assert model.experience is not None and model.experience.dims == model.net.summary_width
