"""Paired bootstrap intervals of a difference between two explainers scored on the same images."""

import numpy as np
import pytest

from napari_icnn.engine.intervals import ratio_difference_interval


def test_the_same_scores_on_both_sides_differ_by_exactly_nothing():
    hits = [1, 0, 1, 1, 0, 1]
    iv = ratio_difference_interval([(hits, hits, [1] * 6)])
    assert iv == {"difference": 0.0, "low": 0.0, "high": 0.0, "level": 0.95, "resamples": 2000}


def test_a_clear_difference_excludes_zero_and_one_decisive_eye_does_not():
    rng = np.random.default_rng(1)
    ours = rng.random(60) < 0.9
    theirs = rng.random(60) < 0.3
    clear = ratio_difference_interval([(ours, theirs, np.ones(60))])
    assert clear["difference"] == pytest.approx(ours.mean() - theirs.mean())
    assert 0.0 < clear["low"] < clear["difference"] < clear["high"] <= 1.0
    # twenty eyes, both right on nineteen, one eye decides: the interval spans zero
    one = np.ones(20)
    narrow = ratio_difference_interval([(one, np.r_[one[:19], 0.0], one)])
    assert narrow["difference"] == pytest.approx(0.05) and narrow["low"] <= 0.0 < narrow["high"]


def test_coverage_is_a_ratio_of_sums_and_seeds_weigh_alike():
    # seed 1: 3 of 10 instances against 1 of 10; seed 2: 1 of 2 against 2 of 2
    seed1 = ([1, 2, 0], [0, 1, 0], [4, 5, 1])
    seed2 = ([1], [2], [2])
    iv = ratio_difference_interval([seed1, seed2], resamples=500, seed=3)
    assert iv["difference"] == pytest.approx(((0.3 - 0.1) + (0.5 - 1.0)) / 2)
    assert iv["low"] <= iv["difference"] <= iv["high"]
    # seeded: the same draws give the same interval, another seed other draws
    assert ratio_difference_interval([seed1, seed2], resamples=500, seed=3) == iv


def test_an_empty_seed_has_no_interval_and_a_malformed_one_is_named():
    assert ratio_difference_interval([([1, 0], [0, 0], [1, 1]), ([], [], [])]) is None
    assert ratio_difference_interval([([0, 0], [0, 0], [0, 0])]) is None
    assert ratio_difference_interval([([1, 0], [None, 1], [1, 1])]) is None  # an explainer not scored there
    with pytest.raises(ValueError, match="differ in shape"):
        ratio_difference_interval([([1, 0], [1], [1, 1])])
    with pytest.raises(ValueError, match="at least one group"):
        ratio_difference_interval([])
