"""How the study reports: lesion and anatomy filters apart, per-seed ratios with the worst seed, every
explainer on the same images, best filters chosen on the validation cohort."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_icnn.engine.collect import Collected
from napari_icnn.engine.evaluate import summarise

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from training.experiments.driver import scored_subset  # noqa: E402
from training.experiments.report import _bars, summary_over_seeds, tables_markdown  # noqa: E402

PARTS = ("optic_disc", "HE")


def _collected(peak_hits: np.ndarray, iou: np.ndarray | None = None) -> Collected:
    """A collected run over len(peak_hits) images, each with both parts; ``peak_hits`` (N, C, P) bool."""
    n, c, p = peak_hits.shape
    iou = np.zeros((n, c, p), np.float32) if iou is None else iou.astype(np.float32)
    rng = np.random.default_rng(0)
    return Collected(
        ids=[f"i{k}" for k in range(n)], probs=np.full((n, 1), 0.5), targets=np.zeros((n, 1)),
        maps=np.ones((n, c, 2, 2), np.float32), size=64,
        peaks_xy=rng.uniform(0, 64, (n, c, 2)).astype(np.float32), scores=np.ones((n, c), np.float32),
        landmarks=rng.uniform(0, 64, (n, 2, 2)).astype(np.float32), parts=PARTS,
        present=np.ones((n, p), bool), iou=iou, iou_instance=iou, peak_in_part=peak_hits.astype(bool),
        peak_in_part_tol=peak_hits.astype(bool), chance=np.full((n, p), 0.02, np.float32),
        thresholds=np.zeros(c, np.float32), tolerance=4)


def _summary(col: Collected, categories=None, parts=None, select=None) -> dict:
    return summarise(col, class_names=["referable DR"], filter_parts=parts, filter_names=None, has_labels=False,
                     explainer="icnn", filter_categories=categories, select=select)


# --- lesion vs anatomy -------------------------------------------------------------------------------------------

def test_icnn_filters_are_split_into_lesion_and_anatomy_and_each_group_is_scored_on_its_own_parts():
    n = 10
    hits = np.zeros((n, 3, 2), bool)
    hits[:, 0, 0] = True  # a label-free filter on the disc
    hits[:, 1, 1] = True  # a category filter on haemorrhages
    hits[:, 2, 0] = True  # a category filter that learned the disc
    iou = np.zeros((n, 3, 2))
    iou[:, 0, 0] = iou[:, 2, 0] = 0.5
    iou[:, 1, 1] = 0.3
    doc = _summary(_collected(hits, iou), categories=["free", "referable DR", "referable DR"],
                   parts=["optic_disc", "HE", "optic_disc"])
    g = doc["groups"]
    assert g["lesion"]["filters"] == [1] and g["anatomy"]["filters"] == [0, 2]
    assert g["lesion"]["parts"] == ["HE"] and g["anatomy"]["parts"] == ["optic_disc"]
    assert g["lesion"]["part_interpretability"] == 1.0 and g["lesion"]["pointing_hit_rate"] == 1.0
    assert g["anatomy"]["part_interpretability"] == 1.0 and g["anatomy"]["pointing_hit_rate"] == 1.0


def test_an_ordinary_cnn_is_scored_with_all_filters_against_lesion_parts_only():
    n = 10
    hits = np.zeros((n, 2, 2), bool)
    hits[:, 0, 0] = True  # a disc filter: perfect on anatomy, nothing on lesions
    hits[: n // 2, 1, 1] = True
    iou = np.zeros((n, 2, 2))
    iou[:, 0, 0] = 0.6
    iou[: n // 2, 1, 1] = 0.3
    doc = _summary(_collected(hits, iou))
    les = doc["groups"]["lesion"]
    assert les["filters"] == [0, 1] and les["parts"] == ["HE"]
    # the disc filter's overlap with the disc does not count for lesions: it scores 0 there
    assert les["part_interpretability"] == pytest.approx(0.25)
    assert les["pointing_hit_rate"] == pytest.approx(0.25)
    assert doc["groups"]["anatomy"]["part_interpretability"] == pytest.approx(0.5)


# --- best filter chosen on validation -----------------------------------------------------------------------------

def test_the_best_filter_is_chosen_on_the_validation_data_and_scored_on_the_test_data():
    n = 20
    val = np.zeros((n, 2, 2), bool)
    val[:15, 0, 1] = True  # on validation, unit 0 hits haemorrhages 75 %, unit 1 50 %
    val[:10, 1, 1] = True
    test = np.zeros((n, 2, 2), bool)
    test[:6, 0, 1] = True  # on test, unit 1 is better (0.9 vs 0.3): choosing on test would pick it
    test[:18, 1, 1] = True
    doc = _summary(_collected(test), categories=["referable DR"] * 2, parts=["HE", "HE"], select=_collected(val))
    best = doc["per_part"]["HE"]["peak_hit_rate_best_unit"]
    assert best == {"filter": 0, "validation": 0.75, "test": pytest.approx(0.3)}
    assert doc["per_part"]["HE"]["pointing_matched_best"]["filter"] == 0
    assert doc["selection"] == "validation"


def test_without_validation_data_no_best_filter_is_reported_for_several_filters():
    hits = np.ones((8, 2, 2), bool)
    doc = _summary(_collected(hits), categories=["referable DR"] * 2, parts=["HE", "HE"])
    assert doc["per_part"]["HE"]["peak_hit_rate_best_unit"] is None
    assert doc["per_part"]["HE"]["pointing_matched_best"] is None
    assert "not available" in doc["selection"]


def test_a_single_heat_map_needs_no_choice():
    hits = np.zeros((8, 1, 2), bool)
    hits[:2, 0, 1] = True
    doc = summarise(_collected(hits), class_names=["referable DR"], filter_parts=None, filter_names=None,
                    has_labels=False, explainer="gradcam")
    assert doc["per_part"]["HE"]["peak_hit_rate_best_unit"]["test"] == pytest.approx(0.25)


# --- per-seed ratios and the worst seed ------------------------------------------------------------------------------

def _metrics(pi_lesion: float, pi_anatomy: float, li: float, point: float, auc: float = 0.99) -> dict:
    groups = {g: {"part_interpretability": pi, "part_interpretability_iou04": pi, "location_instability": li,
                  "pointing_hit_rate": point, "pointing_chance": 0.05}
              for g, pi in (("lesion", pi_lesion), ("anatomy", pi_anatomy))}
    return {"auc": auc, "accuracy": 0.9, "groups": groups, "per_part": {}, "per_filter": [],
            "ece": {"uncalibrated": 0.05, "calibrated": 0.02, "temperature": 1.5}}


def _study(per_seed: dict[int, dict[str, dict]]) -> dict:
    records = []
    for s, models in per_seed.items():
        for key, m in models.items():
            model, ex = (key, "icnn") if key in ("ordinary", "icnn") else ("ordinary", key)
            records.append({"seed": s, "arch": "vgg", "task": "referable", "model": model, "explainer": ex,
                            "role": "explainer", "metrics": m})
            if ex == "icnn":
                records.append({"seed": s, "arch": "vgg", "task": "referable", "model": model, "explainer": ex,
                                "role": "classification", "metrics": m})
    return {"preset": "tiny", "seeds": list(per_seed), "machine": "test", "gpu": None, "total_seconds": 60,
            "train_seconds": {}, "records": records,
            "scored_subset": {"images": 8, "of": 16, "rule": "test rule"}}


def test_ratios_are_taken_per_seed_then_averaged_and_the_worst_seed_is_named():
    # seed 1: 0.1 -> 0.5 (5x); seed 2: 0.4 -> 0.8 (2x). Mean of ratios 3.5x; ratio of means 0.65/0.25 = 2.6x.
    doc = _study({
        1: {"ordinary": _metrics(0.1, 0.2, 0.10, 0.2), "icnn": _metrics(0.5, 0.4, 0.05, 0.1),
            "gradcam": _metrics(0, 0, 0.1, 0.4), "occlusion": _metrics(0, 0, 0.1, 0.1)},
        2: {"ordinary": _metrics(0.4, 0.2, 0.10, 0.2), "icnn": _metrics(0.8, 0.4, 0.09, 0.3),
            "gradcam": _metrics(0, 0, 0.1, 0.2), "occlusion": _metrics(0, 0, 0.1, 0.1)},
    })
    md = tables_markdown(doc)
    lesion_table = md.split("### Part interpretability, lesion filters")[1].split("###")[0]
    assert "**3.50×**" in lesion_table and "2.60×" not in lesion_table
    assert "| worst seed (2) |" in lesion_table and "**2.00×**" in lesion_table
    assert "### Part interpretability, anatomy filters" in md
    assert "### Location instability, lesion filters" in md and "### Pointing game, anatomy filters" in md
    bars = {text: (verdict, detail) for text, verdict, detail in _bars(doc)}
    verdict, detail = bars["vgg/referable: lesion filters' part interpretability ICNN ≥ 1.5× ordinary"]
    assert verdict == "PASS" and "worst seed 2 2.00×" in detail
    # instability: 0.5x and 0.9x, mean 0.7 meets the bar, the worst seed does not
    verdict, _ = bars["vgg/referable: lesion filters' location instability ≥ 30 % lower (ICNN / ordinary ≤ 0.70)"]
    assert verdict == "PASS on the mean, MISS on seed 2"
    # pointing: ICNN lesion filters behind Grad-CAM on both seeds
    verdict, _ = bars["vgg/referable: ICNN lesion filters' peaks on a lesion more often than Grad-CAM's peak"]
    assert verdict == "MISS"
    assert "ECE uncalibrated" in md


def test_summary_over_seeds_picks_the_worst_in_the_right_direction():
    assert summary_over_seeds({10: 2.0, 11: 1.0, 12: 3.0}) == {"mean": 2.0, "worst": 1.0, "worst_seed": 11, "n": 3}
    worse_high = summary_over_seeds({10: 0.5, 11: 0.9}, higher_is_better=False)
    assert worse_high["worst_seed"] == 11
    assert summary_over_seeds({10: float("nan")})["worst_seed"] is None


# --- same images for every explainer ------------------------------------------------------------------------------

def _fake_cohort(path: Path, n: int) -> Path:
    (path / "images").mkdir(parents=True)
    (path / "masks" / "HE").mkdir(parents=True)
    with open(path / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "referable"])
        for i in range(n):
            w.writerow([f"s3_{i:05d}", i % 2])
            (path / "images" / f"s3_{i:05d}.png").write_bytes(b"png")
            (path / "masks" / "HE" / f"s3_{i:05d}.png").write_bytes(b"png")
    return path


def _ids(cohort: Path) -> list[str]:
    with open(cohort / "labels.csv", newline="") as fh:
        return [r["id"] for r in csv.DictReader(fh)]


def test_the_scored_subset_is_a_seeded_draw_from_the_test_cohort_not_its_first_images(tmp_path):
    test = _fake_cohort(tmp_path / "a" / "test", 50)
    sub = scored_subset(test, 10, 1004)
    ids = _ids(sub)
    assert len(ids) == len(set(ids)) == 10 and set(ids) <= set(_ids(test))
    assert ids != _ids(test)[:10]
    assert ids == sorted(ids)  # kept in cohort order
    for i in ids:
        assert (sub / "images" / f"{i}.png").resolve() == (test / "images" / f"{i}.png").resolve()
        assert (sub / "masks" / "HE" / f"{i}.png").exists()
    # the same rule gives the same images in another study folder; another seed other images
    other = _fake_cohort(tmp_path / "b" / "test", 50)
    assert _ids(scored_subset(other, 10, 1004)) == ids
    assert _ids(scored_subset(_fake_cohort(tmp_path / "c" / "test", 50), 10, 2004)) != ids
    # asking again reuses the folder
    assert scored_subset(test, 10, 1004) == sub


def test_a_study_without_a_single_category_icnn_reports_the_lesion_type_icnn_under_its_own_name():
    """A preset that trains only the lesion-type ICNN (the ResNet study) fills the paper's tables with that model
    and says so on every row and bar."""
    doc = _study({
        1: {"ordinary": _metrics(0.1, 0.2, 0.10, 0.2), "icnn": _metrics(0.3, 0.6, 0.08, 0.1, auc=0.95),
            "gradcam": _metrics(0, 0, 0.1, 0.4)},
    })
    for r in doc["records"]:
        if r["model"] == "icnn":
            r["model"] = "icnn-types"
    md = tables_markdown(doc)
    assert "this preset trains no single-category ICNN" in md
    lesion_table = md.split("### Part interpretability, lesion filters")[1].split("###")[0]
    assert "| vgg / referable (ICNN: lesion types) | 1 | 0.100 | 0.300 |" in lesion_table
    assert "**3.00×**" in lesion_table
    bars = {text: verdict for text, verdict, _ in _bars(doc)}
    assert bars["vgg/referable (ICNN: lesion types): ICNN AUC within 0.02 of ordinary (ICNN − ordinary ≥ −0.02)"]
    assert not any(text.startswith("vgg/referable:") for text in bars)


def test_a_seed_where_neither_model_scores_cannot_pass_a_ratio_bar():
    doc = _study({
        1: {"ordinary": _metrics(0.1, 0.2, 0.10, 0.2), "icnn": _metrics(0.5, 0.4, 0.05, 0.1)},
        2: {"ordinary": _metrics(0.0, 0.2, 0.10, 0.2), "icnn": _metrics(0.0, 0.4, 0.05, 0.1)},  # 0 / 0
    })
    bars = {text: verdict for text, verdict, _ in _bars(doc)}
    assert bars["vgg/referable: lesion filters' part interpretability ICNN ≥ 1.5× ordinary"].startswith("MISS")
    assert bars["vgg/referable: anatomy filters' part interpretability ICNN ≥ 1.5× ordinary"] == "PASS"


def test_lesion_filters_that_never_find_their_lesion_do_not_pass_by_tying_grad_cam_at_zero():
    from training.experiments.report import lesion_type_bars

    def types(hit: float, gradcam: float) -> dict:
        t = {"n_filters": 2, "icnn_hit_rate": hit, "gradcam_hit_rate": gradcam, "coverage_icnn": hit,
             "coverage_gradcam": gradcam, "silent_filters_share": 1.0, "silence_worst": 0.9}
        return {"types": {"MA": t, "HE": dict(t, icnn_hit_rate=0.3, coverage_icnn=0.3), "EX": t, "SE": t},
                "top_filter": {"own_type_rate": 0.5}}

    doc = {"preset": "tiny", "seeds": [1, 2], "records": [
        {"seed": s, "arch": "vgg", "task": "referable", "model": "icnn-types", "explainer": "lesion-types",
         "role": "lesion-types", "metrics": types(0.0, 0.0)} for s in (1, 2)]}
    bars = {text: verdict for text, verdict, _ in lesion_type_bars(doc)}
    ma = bars["vgg/referable lesion types: microaneurysms filters' hit rate (peak in a lesion of the type) ≥ "
              "Grad-CAM of the type's logit (mean over seeds)"]
    he = bars["vgg/referable lesion types: haemorrhages filters' hit rate (peak in a lesion of the type) ≥ "
              "Grad-CAM of the type's logit (mean over seeds)"]
    assert ma.startswith("MISS") and "neither" in ma
    assert he == "PASS"


def test_per_type_comparisons_carry_an_interval_pooled_over_the_seeds_images():
    """Where the documents hold per-image figures, each hit-rate and coverage bar names the 95 % interval of the
    mean difference (images resampled within each seed); older documents without them get no interval."""
    from training.experiments.report import lesion_type_bars

    def types(per_image: dict | None) -> dict:
        t = {"n_filters": 2, "icnn_hit_rate": 0.5, "gradcam_hit_rate": 0.5, "coverage_icnn": 0.2,
             "coverage_gradcam": 0.1, "silent_filters_share": 1.0, "silence_worst": 0.9}
        if per_image:
            t["per_image"] = per_image
        return {"types": {k: t for k in ("MA", "HE", "EX", "SE")}, "top_filter": {"own_type_rate": 0.7}}

    # ten eyes per seed: filters and Grad-CAM each right on five, in different eyes; coverage 2 of 10 vs 1 of 10
    img = {"icnn_hit": [1.0] * 5 + [0.0] * 5, "gradcam_hit": [0.0] * 5 + [1.0] * 5, "instances": [1] * 10,
           "covered_icnn": [1, 1] + [0] * 8, "covered_gradcam": [0, 0, 1] + [0] * 7}

    def bars(per_image: dict | None) -> dict[str, str]:
        doc = {"preset": "tiny", "seeds": [1, 2], "records": [
            {"seed": s, "arch": "vgg", "task": "referable", "model": "icnn-types", "explainer": "lesion-types",
             "role": "lesion-types", "metrics": types(per_image)} for s in (1, 2)]}
        return {text: detail for text, _, detail in lesion_type_bars(doc)}

    hit = ("vgg/referable lesion types: haemorrhages filters' hit rate (peak in a lesion of the type) ≥ Grad-CAM of "
           "the type's logit (mean over seeds)")
    with_images = bars(img)[hit]
    low, high = (float(v) for v in with_images.split("interval [")[1].split("]")[0].split(", "))
    assert "95 % interval" in with_images and low < 0.0 < high  # a tie decided by which eyes were drawn
    assert "interval" not in bars(None)[hit]
