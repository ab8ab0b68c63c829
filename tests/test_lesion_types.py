"""Lesion-type filters: categories from presence labels, balanced assignment, the decision beside the lesion
types, and the lesion-type evidence figures — on real training runs of small synthetic cohorts."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_icnn.config import TrainConfig
from napari_icnn.errors import ConfigError
from napari_icnn.icnn.assignment import FilterAssignment


def test_categories_follow_the_presence_labels():
    cfg = TrainConfig(data="d", out="o")
    with_labels = cfg.resolved(lesion_labels=True)
    assert with_labels.categories == "lesion-types" and with_labels.target_set == "referable+lesion-types"
    assert with_labels.category_columns == (1, 2, 3, 4)
    grade_only = cfg.resolved(lesion_labels=False)
    assert grade_only.categories == "decision" and grade_only.target_set == "referable"
    assert "presence labels" in grade_only.derived["categories"]
    with pytest.raises(ConfigError, match="--categories lesion-types: some images"):
        TrainConfig(data="d", out="o", categories="lesion-types").resolved(lesion_labels=False)
    with pytest.raises(ConfigError, match="--categories"):
        TrainConfig(data="d", out="o", task="lesions", categories="decision")
    # an explicit choice is kept, and the multi-label task's categories are its outputs
    assert TrainConfig(data="d", out="o", categories="decision").resolved(lesion_labels=True).categories == "decision"
    lesions = TrainConfig(data="d", out="o", task="lesions").resolved(lesion_labels=True)
    assert lesions.target_set == "lesions" and lesions.category_columns == (0, 1, 2, 3)


def test_balanced_assignment_gives_every_type_its_share_to_the_most_selective_filters():
    a = FilterAssignment(n_filters=10, n_categories=4, n_free=2, balanced=True)
    # before any update the 8 category filters are dealt round-robin: 2 per type
    assert a.categories.tolist() == [-1, -1, 0, 1, 2, 3, 0, 1, 2, 3]
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.random((64, 4)) < 0.5).float()
    labels[:, 0] = 1.0  # type 0 (think: microaneurysms) is in every positive eye, and dominant in raw activation
    act = torch.full((64, 10), 0.1)
    # filters 2..9 respond to the type given below; every filter also fires strongly wherever type 0 is
    wanted = {2: 1, 3: 1, 4: 2, 5: 2, 6: 3, 7: 3, 8: 0, 9: 0}
    for f, t in wanted.items():
        act[:, f] += 5.0 * labels[:, t]
    a.train()
    for _ in range(3):
        a.update(act, labels)
    cats = a.categories.tolist()
    assert cats[:2] == [-1, -1]
    assert sorted(cats[2:]) == [0, 0, 1, 1, 2, 2, 3, 3]  # equal shares
    # the selective filters got their types; type 0, on every eye, cannot be told apart and takes the rest
    assert all(cats[f] == t for f, t in wanted.items() if t != 0)
    # filters that respond to "any lesion" (how many types an eye has): the paper's argmax gives every one of
    # them to the type that co-occurs most; the balanced matching still gives each type its share
    generic = 0.1 + labels.sum(dim=1, keepdim=True).expand(64, 10) + 0.01 * torch.arange(10.0)
    plain = FilterAssignment(n_filters=10, n_categories=4, n_free=2)
    even = FilterAssignment(n_filters=10, n_categories=4, n_free=2, balanced=True)
    for x in (plain, even):
        x.train()
        x.update(generic, labels)
    assert len(set(plain.categories.tolist()[2:])) == 1
    assert sorted(even.categories.tolist()[2:]) == [0, 0, 1, 1, 2, 2, 3, 3]
    # positives follow the assigned type; free filters take every image
    pos = a.positive_mask(labels)
    assert pos[:, :2].all() and torch.equal(pos[:, 4], labels[:, 2] > 0.5)


def test_checkpoints_without_the_negative_average_still_load():
    a = FilterAssignment(8, 4, n_free=2, balanced=True)
    state = {k: v for k, v in a.state_dict().items() if k not in ("ema_negative", "negatives_seen")}
    b = FilterAssignment(8, 4, n_free=2, balanced=True)
    b.load_state_dict(state)
    assert torch.equal(b.ema_negative, torch.zeros(8, 4))


def test_a_saved_assignment_keeps_the_matching_its_filters_were_trained_with():
    """The averages move after the epoch's matching was made; a model written then is labelled with the matching
    its filters were trained for, not with one recomputed from the final averages."""
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]] * 8)
    act = torch.full((16, 4), 0.1)
    act[:, 0] += 4.0 * labels[:, 0]
    act[:, 1] += 4.0 * labels[:, 0]
    act[:, 2] += 4.0 * labels[:, 1]
    act[:, 3] += 4.0 * labels[:, 1]
    a = FilterAssignment(4, 2, momentum=0.0, balanced=True)
    a.train()
    a.update(act, labels)
    trained = a.categories.tolist()
    assert trained == [0, 0, 1, 1]
    a.update(act[:, [2, 3, 0, 1]], labels)  # later steps: filters 0, 1 now fire on type 1 (not re-matched yet)
    a.update(act[:, [2, 3, 0, 1]], labels)
    b = FilterAssignment(4, 2, momentum=0.0, balanced=True)
    b.load_state_dict(a.state_dict())
    assert b.categories.tolist() == trained
    b.refresh()  # the next epoch matches again, from the averages
    assert b.categories.tolist() == [1, 1, 0, 0]
    # a checkpoint written before the matching was kept: matched from its averages, as then
    old = FilterAssignment(4, 2, momentum=0.0, balanced=True)
    old.load_state_dict({k: v for k, v in a.state_dict().items() if k != "matching"})
    assert old.categories.tolist() == [1, 1, 0, 0]


def test_filters_moved_by_an_epochs_matching_are_counted_by_pair():
    from napari_icnn.engine.train import _rematched

    names = ["MA", "HE"]
    assert _rematched(torch.tensor([-2, -2, -2]), torch.tensor([-1, 0, 1]), names) == []  # the first matching
    assert _rematched(torch.tensor([-1, 0, 1, 1, 1]), torch.tensor([-1, 1, 0, 0, 1]), names) == [("HE→MA", 2),
                                                                                                 ("MA→HE", 1)]


def test_fixed_filter_matching_stops_after_the_first_two_interpretable_epochs(lesion_cohorts, tmp_path):
    from napari_icnn.engine.train import matches_again, train

    every = TrainConfig(data="d", out="o", epochs=8, warmup_epochs=0)
    fixed = TrainConfig(data="d", out="o", epochs=8, warmup_epochs=0, filter_matching="fixed")
    assert all(matches_again(every, e) for e in range(1, 9))
    assert [matches_again(fixed, e) for e in range(1, 9)] == [True, True] + [False] * 6
    from_scratch = TrainConfig(data="d", out="o", epochs=8, warmup_epochs=3, filter_matching="fixed")
    assert [e for e in range(1, 9) if matches_again(from_scratch, e)] == [1, 2, 3, 4, 5]
    cfg = TrainConfig(data=str(lesion_cohorts / "train"), val=str(lesion_cohorts / "val"), out=str(tmp_path / "m"),
                      size=64, batch=8, n_filters=10, width=8, seed=3, epochs=4, warmup_epochs=1,
                      categories="lesion-types", filter_matching="fixed")
    result = train(cfg)
    assert [h["filters_rematched"] for h in result.history][3:] == [0]  # epoch 4: kept
    saved = json.loads((tmp_path / "m" / "checkpoints" / "config.json").read_text())
    assert saved["filter_matching"] == "fixed"
    with pytest.raises(ConfigError, match="--filter-matching"):
        TrainConfig(filter_matching="sometimes")


def test_the_decision_weighs_as_much_as_the_lesion_types_together():
    from napari_icnn.engine.train import classification_loss

    cfg = TrainConfig(data="d", out="o").resolved(lesion_labels=True)
    logits = torch.zeros(2, 5)
    y = torch.zeros(2, 5)
    y[:, 0] = 1.0  # only the decision is wrong
    only_decision = float(classification_loss(logits, y, cfg))
    y2 = torch.zeros(2, 5)
    y2[:, 1:] = 1.0  # only the four lesion types are wrong
    assert only_decision == pytest.approx(float(classification_loss(logits, y2, cfg)))


def test_filters_firing_alike_with_and_without_their_type_keep_no_decision_weight():
    from types import SimpleNamespace

    from napari_icnn.engine.train import restrict_decision, unselective_filters

    a = FilterAssignment(n_filters=6, n_categories=2, n_free=2, balanced=True)
    assert unselective_filters(a, 0.2) is not None and not unselective_filters(a, 0.2).any()  # nothing seen yet
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]] * 16)
    act = torch.full((32, 6), 0.1)
    act[:, 2] += 4.0 * labels[:, 0]  # selective for type 0
    act[:, 3] += 4.0  # fires on every eye: an optic-disc detector, whatever type it is given
    act[:, 4] += 4.0 * labels[:, 1]
    act[:, 5] += 4.0
    a.train()
    a.update(act, labels)
    weak = unselective_filters(a, 0.2)
    assert weak.tolist() == [False, False, False, True, False, True]
    assert unselective_filters(a, 0.0) is None
    # a decision is never left without filters: of a category whose filters are all unselective, the most
    # selective one stays in
    assert unselective_filters(a, 0.2, keep_one_of=(0,)).tolist() == weak.tolist()
    everything = unselective_filters(a, 0.99, keep_one_of=(0, 1))
    assert int(everything.sum()) == 3 and not bool(everything[[2, 4]].all())
    net = SimpleNamespace(fc=torch.nn.Linear(12, 3))  # 6 max- and 6 mean-pooled features, 3 outputs
    with torch.no_grad():
        net.fc.weight.fill_(1.0)
        restrict_decision(net, a, categories=(0, 1), unselective=weak)
    row = net.fc.weight[0]
    kept = [f for f in range(6) if row[f] != 0]
    assert kept == [2, 4] and torch.equal(row[:6] != 0, row[6:] != 0)
    assert bool((net.fc.weight[1:] == 1.0).all())  # only the decision's row is restricted
    with pytest.raises(ConfigError, match="--decision-min-selectivity"):
        TrainConfig(data="d", out="o", decision_min_selectivity=1.0)


def test_firing_thresholds_separate_eyes_with_and_without_the_type():
    from napari_icnn.engine.lesion_types import firing_thresholds
    from napari_icnn.roles import MIN_STRENGTH

    present = np.zeros((6, 4), bool)
    present[:3, 1] = True  # HE in the first three eyes
    scores = np.array([[0.2, 3.0], [0.1, 2.5], [0.3, 4.0], [0.2, 0.4], [0.1, 0.2], [0.3, 0.9]])
    thr = firing_thresholds(scores, present, [None, "HE"], np.array([2.0, 4.0]))
    assert thr[0] == pytest.approx(MIN_STRENGTH * 2.0)  # no lesion type: the product's "active" rule
    assert 0.9 < thr[1] <= 2.5  # between the highest negative and the lowest positive


def test_covered_instances_and_matched_area():
    from scipy import ndimage

    from napari_icnn.engine.lesion_types import _covered, _top_area

    mask = np.zeros((10, 10), bool)
    mask[1:3, 1:3] = True  # 4 px
    mask[6:8, 6:9] = True  # 6 px
    labels, n = ndimage.label(mask)
    region = np.zeros_like(mask)
    region[1:3, 1:2] = True  # half of the first
    region[6, 6] = True  # a sixth of the second
    assert _covered(labels, n, region) == 1
    heat = np.arange(100, dtype=float).reshape(10, 10)
    top = _top_area(heat, 7)
    assert top.sum() == 7 and top[9, 9] and not top[0, 0]


@pytest.fixture(scope="module")
def lesion_cohorts(tmp_path_factory):
    from napari_icnn.data.synth import generate_cohort
    from napari_icnn.progress import drain

    root = tmp_path_factory.mktemp("lesion-types")
    drain(generate_cohort(root / "train", 40, size=128, seed=7101, look="clean"))
    drain(generate_cohort(root / "val", 24, size=128, seed=7102, look="clean"))
    return root


@pytest.fixture(scope="module")
def lesion_bundle(lesion_cohorts):
    """A real two-stage training run (ordinary, then lesion-type fine-tuning) on a small cohort."""
    from napari_icnn.engine.train import train

    root = lesion_cohorts
    common = dict(data=str(root / "train"), val=str(root / "val"), size=64, batch=8, n_filters=10, width=8, seed=3)
    train(TrainConfig(out=str(root / "ordinary"), ordinary=True, epochs=2, warmup_epochs=1, **common))
    train(TrainConfig(out=str(root / "types"), init=str(root / "ordinary"), epochs=2, warmup_epochs=0, lr=5e-4,
                      **common))
    return root / "types"


def test_synthetic_cohorts_train_lesion_type_filters_and_the_decision_beside_them(lesion_bundle, lesion_cohorts):
    from napari_icnn.bundle import load_bundle
    from napari_icnn.data.image_io import load_image
    from napari_icnn.explain import explain

    meta = json.loads((lesion_bundle / "configs" / "metadata.json").read_text())["icnn"]
    assert meta["targets"] == "referable+lesion-types"
    assert meta["class_names"] == ["referable DR", "MA", "HE", "EX", "SE"]
    cats = [f["category"] for f in meta["filters"]]
    assert cats.count("free") == 2 and sorted(c for c in cats if c != "free") == ["EX", "EX", "HE", "HE", "MA",
                                                                                   "MA", "SE", "SE"]
    train_cfg = json.loads((lesion_bundle / "configs" / "train.json").read_text())
    assert train_cfg["categories"] == "lesion-types" and "presence labels" in train_cfg["derived"]["categories"]
    assert meta["calibration"]["n_images"] == 24  # fitted on the decision of the validation cohort

    model = load_bundle(lesion_bundle, device="cpu")
    assert model.decision_index == 0 and model.has_lesion_types
    # the decision is computed from the haemorrhage, exudate and cotton-wool-spot filters alone (those of them
    # that fire alike on eyes with and without their type are left out too)
    w, n = model.net.fc.weight[0].detach(), len(model.filters)
    carrying = [f for f in model.filters if bool(w[f.id] != 0 or w[n + f.id] != 0)]
    assert carrying and all(f.category in ("HE", "EX", "SE") for f in carrying), carrying
    img = load_image(next((lesion_cohorts / "val" / "images").glob("*.png")))[0]
    e = explain(img, model)
    assert e.class_index == 0 and e.predicted_class in ("referable DR", "no referable DR")
    assert set(e.to_json()["prediction"]["probabilities"]) == {"referable DR", "MA", "HE", "EX", "SE"}
    # contributions explain the decision's logit: they sum to logit(scan) - logit(reference), calibrated
    with torch.no_grad():
        from napari_icnn.data.fov import check_fundus
        from napari_icnn.data.transforms import preprocess

        x, _, _ = preprocess(img.pixels, model.size, check_fundus(img.pixels, img.source))
        out = model.net(torch.from_numpy(np.asarray(x, np.float32))[None])
        ref_logit = float(model.net.fc.weight[0] @ model.reference + model.net.fc.bias[0])
        gap = (float(out.logits[0, 0]) - ref_logit) / model.temperature
    sign = 1.0 if e.predicted_class == "referable DR" else -1.0
    assert sum(f.contribution for f in e.filters) == pytest.approx(sign * gap, abs=1e-3)
    # lesion-type filters are evidence, label-free ones context (unless they peak on the rim); a lesion-type
    # filter says whether it fires, by its threshold fixed on the validation images
    for f in e.filters:
        info = model.filters[f.id]
        if f.category == "free":
            assert f.role != "evidence" and f.fires is None and info.fire_threshold is None
        elif info.fire_threshold is None:  # its peak did not separate the validation eyes by its type
            assert f.fires is None and "no presence claim: fires alike on eyes with and without its type" in f.flags
        else:
            assert info.fire_threshold > 0 and f.fires == (f.activation >= info.fire_threshold)
            assert ("below its firing threshold" in f.flags) == (not f.fires)
    entries = [x for group in ("evidence", "context", "possible_artefacts") for x in e.to_json()[group]]
    assert {type(x["fires"]) for x in entries} <= {bool, type(None)} and len(entries) == len(e.filters)


def test_lesion_type_figures_score_filters_and_grad_cam_on_the_same_images(lesion_bundle, lesion_cohorts):
    from napari_icnn.engine.lesion_types import PER_IMAGE_KEYS, lesion_type_figures_iter
    from napari_icnn.progress import drain

    doc = drain(lesion_type_figures_iter(str(lesion_bundle), str(lesion_cohorts / "val"),
                                         str(lesion_cohorts / "train"), device="cpu"))
    assert doc["lesion_type_outputs"] == ["MA", "HE", "EX", "SE"]
    with open(lesion_cohorts / "val" / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for t, v in doc["types"].items():
        assert v["n_filters"] == 2
        with_type = sum(int(r[f"n_{t}"]) > 0 for r in rows)
        assert v["images_with"] == with_type and v["images_without"] == len(rows) - with_type
        for key in ("icnn_hit_rate", "gradcam_hit_rate", "coverage_icnn", "coverage_gradcam", "silence_mean"):
            assert v[key] is None or 0.0 <= v[key] <= 1.0
        # a figure is missing only where no image can score it
        assert (v["icnn_hit_rate"] is None) == (with_type == 0) == (v["gradcam_hit_rate"] is None), (t, v)
        assert (v["silence_mean"] is None) == (with_type == len(rows)), (t, v)
        # the threshold-free separation beside silence: one ROC area per filter, none where a class is missing
        assert len(v["peak_auc_per_filter"]) == 2
        if 0 < with_type < len(rows):
            assert all(0.0 <= a <= 1.0 for a in v["peak_auc_per_filter"])
            assert v["peak_auc_median"] == pytest.approx(float(np.median(v["peak_auc_per_filter"])))
        else:
            assert v["peak_auc_median"] is None
        # the network's own presence output of the type, scored the same way: what the filters are measured against
        assert (v["output_auc"] is None) == (not 0 < with_type < len(rows)), (t, v)
        assert v["output_auc"] is None or 0.0 <= v["output_auc"] <= 1.0
        img = v["per_image"]
        assert set(img) == set(PER_IMAGE_KEYS) and all(len(img[k]) == with_type for k in PER_IMAGE_KEYS)
        if with_type:
            # the per-image figures add up to the document's, and the intervals are of that same difference
            assert np.mean(img["icnn_hit"]) == pytest.approx(v["icnn_hit_rate"])
            assert np.mean(img["gradcam_hit"]) == pytest.approx(v["gradcam_hit_rate"])
            assert sum(img["instances"]) == v["instances"] > 0
            assert sum(img["covered_icnn"]) / v["instances"] == pytest.approx(v["coverage_icnn"])
            assert sum(img["covered_gradcam"]) / v["instances"] == pytest.approx(v["coverage_gradcam"])
            for key, ours, theirs in (("hit_rate_difference", "icnn_hit_rate", "gradcam_hit_rate"),
                                      ("coverage_difference", "coverage_icnn", "coverage_gradcam")):
                iv = v[key]
                assert iv["difference"] == pytest.approx(v[ours] - v[theirs]), (t, key)
                assert -1.0 <= iv["low"] <= iv["high"] <= 1.0 and iv["level"] == 0.95
        else:
            assert v["hit_rate_difference"] is None and v["coverage_difference"] is None
        if with_type:
            # the strongest filter hits where both filters do and only where one of them does
            a, b = v["icnn_hit_rate_per_filter"]
            assert max(0.0, a + b - 1.0) - 1e-9 <= v["strongest_filter_hit_rate"] <= min(1.0, a + b) + 1e-9, (t, v)
    assert doc["top_filter"]["referable_images"] == sum(r["referable"] == "1" for r in rows)
    assert len(doc["firing_thresholds"]) == 10


def test_grad_cam_leaves_the_network_as_it_found_it(lesion_bundle, lesion_cohorts):
    """The baseline must not change the model it is compared with: after a Grad-CAM map the network is still in
    eval mode (no dropout, batch norm on its running averages), so every later forward pass is the product's."""
    from napari_icnn.bundle import load_bundle
    from napari_icnn.engine.explainers import make_explainer
    from napari_icnn.engine.lesion_types import lesion_type_figures_iter
    from napari_icnn.progress import drain

    net = load_bundle(lesion_bundle, device="cpu").net
    net.eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        before = net(x).logits.clone()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    make_explainer("gradcam", net, class_index=0)(x)
    assert not net.training
    with torch.no_grad():
        assert torch.equal(net(x).logits, before)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())  # running averages unmoved
    # so the filters' figures are the same with and without the baseline, over several batches
    figures = [drain(lesion_type_figures_iter(str(lesion_bundle), str(lesion_cohorts / "val"),
                                              str(lesion_cohorts / "train"), device="cpu", batch=3, gradcam=g))
               for g in (True, False)]
    with_cam, without = figures
    assert with_cam["decision_auc"] == without["decision_auc"]
    assert with_cam["top_filter"]["own_type_rate"] == without["top_filter"]["own_type_rate"]
    for t in with_cam["types"]:
        for key in ("icnn_hit_rate", "silence_mean", "coverage_icnn"):
            assert with_cam["types"][t][key] == without["types"][t][key], (t, key)


def test_grade_only_data_trains_decision_filters_and_says_why(tmp_path, lesion_cohorts):
    """A CSV layout without presence columns: every filter serves the decision, and the run says why."""
    images = sorted((lesion_cohorts / "train" / "images").glob("*.png"))[:12]
    table = tmp_path / "grades.csv"
    with open(lesion_cohorts / "train" / "labels.csv", newline="") as fh:
        ref = {r["id"]: r["referable"] for r in csv.DictReader(fh)}
    with open(table, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        for p in images:
            w.writerow([str(p), ref[p.stem]])
    proc = subprocess.run([sys.executable, "-m", "napari_icnn", "train", "--data", str(table), "--out",
                           str(tmp_path / "m"), "--size", "64", "--epochs", "2", "--batch", "4", "--filters", "6"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "lesion-type evidence needs MA/HE/EX/SE presence labels" in proc.stdout + proc.stderr
    meta = json.loads((tmp_path / "m" / "configs" / "metadata.json").read_text())["icnn"]
    assert meta["targets"] == "referable" and meta["class_names"] == ["referable DR"]
    assert {f["category"] for f in meta["filters"]} <= {"referable DR", "free"}
    refused = subprocess.run([sys.executable, "-m", "napari_icnn", "train", "--data", str(table), "--out",
                              str(tmp_path / "m2"), "--size", "64", "--epochs", "2", "--batch", "4",
                              "--categories", "lesion-types"], capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "--categories lesion-types" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "m2" / "models").exists()


def test_the_papers_running_z_trains_and_resumes(lesion_cohorts, tmp_path):
    """``--z-estimate running``: Z_T is a running constant, updated in training and kept in the checkpoint."""
    from napari_icnn.engine.train import train

    cfg = dict(data=str(lesion_cohorts / "train"), val=str(lesion_cohorts / "val"), out=str(tmp_path / "m"),
               size=64, batch=8, n_filters=10, width=8, seed=3, epochs=2, warmup_epochs=1, z_estimate="running")
    result = train(TrainConfig(**cfg), should_stop=None)
    assert result.epochs_done == 2 and np.isfinite(result.history[1]["filter_loss"])
    assert result.history[1]["filter_loss"] != 0
    saved = torch.load(tmp_path / "m" / "checkpoints" / "last.pt", weights_only=True)
    z = saved["running_z"]
    assert bool(z["initialised"]) and torch.isfinite(z["log_mean_z"]).all() and z["log_mean_z"].abs().sum() > 0
    with pytest.raises(ConfigError, match="--z-estimate"):
        TrainConfig(**{**cfg, "z_estimate": "exact"})
