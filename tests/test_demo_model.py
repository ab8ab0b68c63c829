"""The shipped demo model is real: checked on a cohort generated from a seed it has never seen."""

from __future__ import annotations

import numpy as np
import pytest

from napari_icnn.bundle import load_bundle, shipped_bundle_path
from napari_icnn.parts import ANATOMY_KEYS, LESION_KEYS

SHIPPED = shipped_bundle_path()


@pytest.fixture(scope="module")
def metrics(tmp_path_factory):
    from napari_icnn.data.synth import write_cohort
    from napari_icnn.engine.evaluate import evaluate

    cohort = tmp_path_factory.mktemp("unseen") / "cohort"
    # the look the shipped model is trained on: varied cameras, burned-in text, casts, blur, faint lesions
    write_cohort(cohort, 160, size=384, seed=9173, workers=2, look="realistic")
    return evaluate(str(SHIPPED), str(cohort), batch=16, device="cpu")


def test_the_shipped_bundle_is_small_and_loads():
    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size <= 10 * 2**20, f"{size / 2**20:.1f} MB"
    m = load_bundle(SHIPPED, device="cpu")
    assert m.task == "referable" and m.net.interpretable
    assert not (SHIPPED / "checkpoints").exists()  # training state is not shipped


def test_the_shipped_model_is_the_demo_recipe_s_lesion_type_stage():
    """make demo-bundle and icnn demo --full fine-tune lesion-type filters at the recipe's types_size."""
    from napari_icnn.bundle import lesion_types_size
    from napari_icnn.recipes import RECIPES

    assert lesion_types_size(SHIPPED) == RECIPES["demo"].types_size == 384
    assert {f.category for f in load_bundle(SHIPPED, device="cpu").filters} >= {"MA", "HE", "EX", "SE"}


@pytest.mark.slow
def test_it_classifies_referable_dr_on_unseen_images(metrics):
    assert metrics["auc"] >= 0.85


@pytest.mark.slow
def test_its_disc_filters_peak_inside_the_optic_disc(metrics):
    disc = [f for f in metrics["per_filter"] if f["part"] == "optic_disc"]
    assert disc, "no filter of the demo model is named optic disc"
    rates = [f["pointing_hit_rate"] for f in disc]
    assert min(rates) >= 0.8, rates


@pytest.mark.slow
def test_its_filters_are_named_after_anatomy_and_lesions(metrics):
    names = {f["part"] for f in metrics["per_filter"] if f["part"]}
    assert names & set(ANATOMY_KEYS) and names & set(LESION_KEYS), names


@pytest.mark.slow
def test_a_lesion_filter_points_at_its_lesions_far_above_chance(metrics):
    best = []
    for f in metrics["per_filter"]:
        part = f["part"]
        if part in LESION_KEYS and part in metrics["per_part"] and f["pointing_hit_rate"] is not None:
            chance = metrics["per_part"][part]["chance"]
            best.append((f["pointing_hit_rate"] / chance, f["name"]))
    assert best, "no lesion-named filter"
    lift, name = max(best)
    assert lift >= 2.0, (lift, name)
    assert np.isfinite(lift)
