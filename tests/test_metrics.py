"""Metric code on constructed cases with known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from napari_icnn.engine.collect import MapBatch, collect
from napari_icnn.engine.metrics import (
    activation_thresholds,
    classification_metrics,
    instability,
    match_parts,
    part_scores,
    pointing_game,
    roc_auc,
)
from napari_icnn.icnn.cells import cell_centres


def _auc_pairs(s, t):
    pos, neg = s[t > 0.5], s[t <= 0.5]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_roc_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    s = np.round(rng.random(60), 1)  # many ties
    t = (rng.random(60) > 0.4).astype(float)
    assert roc_auc(s, t) == pytest.approx(_auc_pairs(s, t), abs=1e-12)
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert np.isnan(roc_auc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_classification_metrics_macro_and_sensitivity_at_specificity():
    probs = np.array([[0.1, 0.9], [0.2, 0.8], [0.7, 0.3], [0.9, 0.2]])
    targets = np.array([[0, 1], [0, 1], [1, 0], [1, 0]])
    m = classification_metrics(probs, targets, ["a", "b"])
    assert m["auc"] == 1.0
    assert m["accuracy"] == 1.0
    assert m["per_class"]["a"]["sensitivity_at_90_specificity"] == 1.0
    m2 = classification_metrics(1 - probs, targets, ["a", "b"])
    assert m2["auc"] == 0.0 and m2["accuracy"] == 0.0


def test_activation_threshold_is_the_quantile_over_all_positions():
    maps = np.zeros((10, 2, 4, 4), np.float32)
    maps[:, 0, 0, 0] = np.arange(10)  # filter 0: 10 non-zero of 160 positions
    thr = activation_thresholds(maps, 0.995)
    assert thr[1] == 0
    assert thr[0] == pytest.approx(np.quantile(maps[:, 0].ravel(), 0.995))


def test_instability_zero_for_a_filter_locked_to_the_landmarks_and_exact_otherwise():
    rng = np.random.default_rng(1)
    n = 30
    lm = rng.uniform(40, 200, size=(n, 2, 2))
    peaks = np.zeros((n, 2, 2))
    peaks[:, 0] = lm[:, 0]  # filter 0 sits on the disc in every image
    peaks[:, 1] = rng.uniform(0, 256, size=(n, 2))  # filter 1 wanders
    scores = np.ones((n, 2))
    mean, per = instability(peaks, scores, lm, 256)
    d_fovea = np.linalg.norm(lm[:, 1] - lm[:, 0], axis=1) / np.hypot(256, 256)
    assert per[0] == pytest.approx(np.std(d_fovea, ddof=1) / 2)  # disc term 0, fovea term its std
    d = [np.linalg.norm(lm[:, k] - peaks[:, 1], axis=1) / np.hypot(256, 256) for k in range(2)]
    assert per[1] == pytest.approx((np.std(d[0], ddof=1) + np.std(d[1], ddof=1)) / 2)
    assert mean == pytest.approx(per.mean())


def test_instability_uses_the_top_images_and_drops_filters_without_landmarks():
    lm = np.full((5, 2, 2), np.nan)
    peaks = np.zeros((5, 1, 2))
    mean, per = instability(peaks, np.ones((5, 1)), lm, 64)
    assert np.isnan(per[0]) and np.isnan(mean)
    # only the top-2 images by score count: both on the landmark -> 0
    lm = np.zeros((4, 2, 2))
    peaks = np.array([[[0, 0]], [[0, 0]], [[50, 50]], [[9, 90]]], float)
    _, per = instability(peaks, np.array([[3.0], [2.0], [1.0], [0.5]]), lm, 64, top=2)
    assert per[0] == 0


def test_part_scores_and_matching_on_known_ious():
    iou = np.zeros((4, 2, 3))
    iou[:, 0, 0] = [0.5, 0.3, 0.1, 0.25]  # filter 0 overlaps part 0
    iou[:, 1, 2] = [0.05, 0.05, 0.05, 0.05]  # filter 1 weakly overlaps part 2
    present = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 1], [1, 0, 1]], bool)
    ps = part_scores(iou, present, ("a", "b", "c"))
    assert ps.hit_rate[0, 0] == pytest.approx(0.75)  # 3 of 4 above 0.2
    assert ps.hit_rate[1, 2] == 0
    assert ps.hit_rate_loose[1, 2] == pytest.approx(1.0)  # all above 0.04 on the 3 images with c
    assert ps.interpretability.tolist() == pytest.approx([0.75, 0.0])
    names, score = match_parts(ps)
    assert names == ["a", "c"]
    assert score[0] == pytest.approx(np.mean([0.5, 0.3, 0.1, 0.25]))
    assert score[1] == pytest.approx(0.05 * 3 / 4)  # images without part c count 0


def test_a_filter_is_named_after_the_part_it_overlaps_across_the_cohort_not_a_rare_one():
    iou = np.zeros((4, 1, 2))
    iou[:, 0, 0] = 0.35  # a common part, overlapped in every image
    iou[:2, 0, 1] = 0.6  # a rare part (in 2 of 4 images), overlapped more
    present = np.array([[1, 1], [1, 1], [1, 0], [1, 0]], bool)
    ps = part_scores(iou, present, ("common", "rare"))
    assert ps.mean_iou[0].tolist() == pytest.approx([0.35, 0.6])  # over the images that have the part
    assert match_parts(ps)[0] == ["common"]


def test_pointing_game_counts_only_images_with_the_part_where_the_filter_fires():
    hit = np.zeros((3, 1, 2), bool)
    hit[0, 0, 1] = True
    present = np.array([[0, 1], [0, 1], [1, 0]], bool)
    active = np.array([[True], [True], [True]])
    assert pointing_game(hit, present, active, [1])[0] == pytest.approx(0.5)
    active[1, 0] = False
    assert pointing_game(hit, present, active, [1])[0] == pytest.approx(1.0)
    assert np.isnan(pointing_game(hit, present, active, [None])[0])


def test_collect_measures_iou_and_pointing_from_maps_and_masks():
    size, n = 64, 8
    disc = np.zeros((size, size), bool)
    disc[8:24, 8:24] = True  # covers cells (1..2, 1..2) of the 8-px grid
    fovea = np.zeros((size, size), bool)
    fovea[40:48, 40:48] = True  # cell (5, 5)
    batch_maps = torch.zeros(2, 2, n, n)
    batch_maps[:, 0, 1:3, 1:3] = 1.0  # filter 0 fires on the disc
    batch_maps[:, 1, 5, 5] = 1.0  # filter 1 fires on the fovea
    masks = torch.from_numpy(np.stack([disc, fovea]).astype(np.uint8))[None].repeat(2, 1, 1, 1)

    def explainer(x):
        return MapBatch(torch.zeros(len(x), 1), batch_maps[: len(x)])

    batches = [{
        "image": torch.zeros(2, 3, size, size), "target": torch.ones(2, 1), "id": ["a", "b"],
        "masks": masks, "fov": torch.ones(2, 1, size, size),
        "landmarks": {"optic_disc": torch.tensor([[16.0, 16.0]] * 2), "fovea": torch.tensor([[44.0, 44.0]] * 2)},
    }]
    col = collect(explainer, batches, size=size, device=torch.device("cpu"), parts=("optic_disc", "fovea"),
                  stride=8, offset=3.5)
    assert col.present.all()
    assert col.iou[:, 0, 0].min() > 0.2 and col.iou[:, 0, 1].max() == 0
    assert col.iou[:, 1, 1].min() > 0.2 and col.iou[:, 1, 0].max() == 0
    assert col.peak_in_part[:, 1, 1].all()  # filter 1's peak (cell 5,5 -> px 43.5) is inside the fovea mask
    assert col.peak_in_part[:, 0, 0].all()
    assert col.landmarks[0, 1].tolist() == [44.0, 44.0]
    assert col.chance[0, 0] == pytest.approx(disc.sum() / size**2)


def test_cell_centres_tile_the_input():
    c = cell_centres(4, 4, 64)
    assert c[0].tolist() == [7.5, 7.5] and c[-1].tolist() == [55.5, 55.5]
    c = cell_centres(4, 4, 64, stride=16, offset=0.0)
    assert c[5].tolist() == [16.0, 16.0]


def test_a_name_needs_the_filters_peaks_to_back_it():
    from napari_icnn.engine.metrics import LANDMARK_MIN_HIT, MIN_LIFT, reliable_parts

    chance = {"optic_disc": 0.02, "HE": 0.025, "vessels": 0.2}
    parts = ["optic_disc", "optic_disc", "HE", "HE", "vessels", None, "HE"]
    hits = np.array([LANDMARK_MIN_HIT, 0.6, MIN_LIFT * 0.025, 0.04, 0.3, np.nan, np.nan])
    # a disc filter that misses the disc on 40 % of images is not called a disc filter, although 0.6 is 30x
    # chance; a haemorrhage filter needs twice chance; a part the filter never peaked on stays unnamed
    assert reliable_parts(parts, hits, chance) == ["optic_disc", None, "HE", None, None, None, None]


def test_the_icnn_explainer_reports_each_images_most_contributing_filter():
    from napari_icnn.engine.collect import icnn_explainer
    from napari_icnn.icnn import ICNN

    torch.manual_seed(0)
    net = ICNN(n_filters=6, image_size=64, width=8).eval()
    x = torch.randn(3, 3, 64, 64)
    mb = icnn_explainer(net)(x)
    with torch.no_grad():
        out = net(x)
        # zeroing the reported filter's map lowers the referable logit more than zeroing any other
        drops = torch.stack([out.logits[:, 0] - net.head(out.masked * (torch.arange(6) != f).view(1, 6, 1, 1))[:, 0]
                             for f in range(6)], dim=1)
    assert torch.equal(mb.top, drops.argmax(dim=1))
