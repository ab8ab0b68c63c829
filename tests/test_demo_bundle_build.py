"""make demo-bundle's reuse of a finished ordinary CNN: only a run of the same settings, completed, stands for it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from napari_icnn.config import TrainConfig
from napari_icnn.data.synth import write_cohort
from napari_icnn.engine.train import train
from training.demo_bundle import cohort_as, finished_as, main


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A work folder as the build leaves it: cohorts, and an ordinary CNN trained on them (one real epoch)."""
    work = tmp_path_factory.mktemp("work")
    write_cohort(work / "train", 16, size=96, seed=7, look="clean")
    write_cohort(work / "val", 8, size=96, seed=8, look="clean")
    settings = dict(out=str(work / "ordinary"), data=str(work / "train"), val=str(work / "val"), ordinary=True,
                    epochs=1, warmup_epochs=1, categories="decision", size=64, seed=0, batch=8, n_filters=8,
                    width=8)
    train(TrainConfig(**settings))
    return work, settings


def test_a_finished_run_of_the_same_settings_is_reused(built):
    work, settings = built
    assert finished_as(work / "ordinary", settings) is None
    assert cohort_as(work / "train", 16, 96, 7, "clean") is None


def test_the_same_folders_spelled_another_way_are_the_same_settings(built, monkeypatch):
    work, settings = built
    monkeypatch.chdir(work.parent)
    relative = {k: str(Path(v).relative_to(work.parent)) if k in ("out", "data", "val") else v
                for k, v in settings.items()}
    assert relative["data"] == f"{work.name}/train"
    assert finished_as(Path(relative["out"]), relative) is None


def test_a_refused_reuse_stops_and_deletes_nothing(built, tmp_path, capsys):
    """The demo recipe's cohorts are not these small ones: the build says why and leaves the folder as it was."""
    work, _ = built
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    assert main(["--work", str(work), "--reuse-ordinary"]) == 2
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before
    err = capsys.readouterr().err
    assert f"cannot reuse the ordinary CNN: {work / 'train'} is another cohort" in err
    assert "without --reuse-ordinary" in err


def test_other_settings_or_an_unfinished_run_are_trained_again(built, tmp_path):
    work, settings = built
    assert "size" in finished_as(work / "ordinary", {**settings, "size": 96})
    assert "seed" in finished_as(work / "ordinary", {**settings, "seed": 1})
    assert "no finished model" in finished_as(tmp_path, settings)
    stopped = tmp_path / "stopped"  # a run stopped early still writes its best model so far
    shutil.copytree(work / "ordinary", stopped)
    (stopped / "checkpoints" / "history.json").write_text("[]")
    assert finished_as(stopped, settings) == f"{stopped} did not complete its 1 epoch(s)"


def test_another_cohort_is_named_with_what_differs(built, tmp_path):
    work, _ = built
    assert cohort_as(work / "train", 16, 96, 31, "clean") == f"{work / 'train'} is another cohort (seed)"
    assert "n, size" in cohort_as(work / "val", 200, 384, 8, "clean")
    assert cohort_as(tmp_path, 16, 96, 7, "clean") == f"{tmp_path} holds no cohort"


def test_the_recipes_interpretable_settings_reach_the_interpretable_stage_alone(tmp_path, monkeypatch):
    """A recipe's ``icnn`` settings (the lesion-type filter matching, say) are for the fine-tuning: the ordinary CNN
    would refuse them, and the shipped model must be built with them."""
    from dataclasses import replace
    from types import SimpleNamespace

    import training.demo_bundle as build
    from napari_icnn import recipes

    small = replace(recipes.RECIPES["demo"], n_train=16, n_val=8, image_size=96, size=64, types_size=64, epochs=1,
                    warmup=1, finetune_epochs=1, look="clean", train={"batch": 8, "n_filters": 8, "width": 8},
                    icnn={"match_filters_by": "lesion-hits"})
    monkeypatch.setitem(recipes.RECIPES, "demo", small)
    monkeypatch.setattr(build, "SHIPPED", tmp_path / "shipped")
    seen: list[TrainConfig] = []

    def record(cfg, on_event=None):  # what each stage was asked to train; the training itself is tested elsewhere
        seen.append(cfg)
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        return SimpleNamespace(stopped=False)

    monkeypatch.setattr("napari_icnn.engine.train.train", record)
    assert main(["--work", str(tmp_path / "work")]) == 0
    ordinary, icnn = seen
    assert ordinary.ordinary and ordinary.match_filters_by == "selectivity" and ordinary.n_filters == 8
    assert not icnn.ordinary and icnn.categories == "lesion-types" and icnn.match_filters_by == "lesion-hits"
    assert icnn.n_filters == 8 and icnn.init == str(tmp_path / "work" / "ordinary")
    assert (tmp_path / "shipped").is_dir()
