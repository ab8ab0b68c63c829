"""The interpretability study's driver, on its tiny preset: every step runs and the report is written."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
"""The checkout's root: the study runs from there (python -m training.experiments)."""


def _cohort_ids(cohort: Path) -> list[str]:
    with open(cohort / "labels.csv", newline="") as fh:
        return [row["id"] for row in csv.DictReader(fh)]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_disjoint(sets: dict[str, set | list]) -> None:
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = set(sets[a]) & set(sets[b])
            assert not shared, f"{a} and {b} share {sorted(shared)[:5]}"


def test_the_leakage_check_fails_on_leakage():
    with pytest.raises(AssertionError, match="train and test share"):
        assert_disjoint({"train": ["s1_00001", "s1_00002"], "test": ["s3_00000", "s1_00002"]})
    assert_disjoint({"train": ["s1_00001"], "val": ["s2_00001"], "test": ["s3_00001"]})


@pytest.mark.slow
def test_tiny_experiment_writes_tables_figures_and_resumes(tmp_path):
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "training.experiments", "--out", str(out), "--preset", "tiny"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    kinds = {(r["model"], r["explainer"], r["role"]) for r in doc["records"]}
    assert kinds == {("ordinary", "icnn", "explainer"), ("icnn", "icnn", "explainer"), ("ordinary", "gradcam", "explainer"),
                     ("ordinary", "occlusion", "explainer"), ("ordinary", "icnn", "classification"),
                     ("icnn", "icnn", "classification"), ("icnn-types", "icnn", "explainer"),
                     ("icnn-types", "icnn", "classification"), ("icnn", "lesion-types", "lesion-types"),
                     ("icnn-types", "lesion-types", "lesion-types")}
    for r in doc["records"]:
        m = r["metrics"]
        if r["role"] == "lesion-types":
            assert set(m["types"]) == {"MA", "HE", "EX", "SE"} and "top_filter" in m
            continue
        for key in ("auc", "part_interpretability", "location_instability", "pointing_hit_rate"):
            assert key in m
    # the two ICNNs differ in what their filters serve: the referable class, or one lesion type each
    runs = out / "runs" / "seed0"
    single = json.loads((runs / "vgg-referable-icnn" / "configs" / "metadata.json").read_text())["icnn"]
    types = json.loads((runs / "vgg-referable-icnn-types" / "configs" / "metadata.json").read_text())["icnn"]
    assert {f["category"] for f in single["filters"]} <= {"referable DR", "free"}
    assert {f["category"] for f in types["filters"]} - {"free"} == {"MA", "HE", "EX", "SE"}
    assert types["class_names"] == ["referable DR", "MA", "HE", "EX", "SE"]
    md = (out / "results.md").read_text()
    for heading in ("Part interpretability", "Location instability", "Pointing game", "Classification", "Bars",
                    "ECE", "Lesion-type evidence", "every lesion type has filters trained for it"):
        assert heading in md
    assert (out / "figures" / "iou_histogram.png").stat().st_size > 1000
    assert (out / "figures" / "montage.png").stat().st_size > 1000
    # no photograph is in two cohorts: neither the same id nor the same pixels
    data = out / "data" / "seed0"
    cohorts = {name: _cohort_ids(data / name) for name in ("train", "val", "test")}
    assert_disjoint(cohorts)
    digests = {name: {_digest(data / name / "images" / f"{i}.png") for i in ids} for name, ids in cohorts.items()}
    assert all(len(d) == len(cohorts[name]) for name, d in digests.items())
    assert_disjoint(digests)
    # every explainer was scored on the same test images, the subset drawn from the test cohort
    scored = {r["metrics"]["data"]["path"] for r in doc["records"] if r["role"] == "explainer"}
    assert len(scored) == 1
    scored_ids = {tuple(r["metrics"]["data"]["ids"]) for r in doc["records"] if r["role"] == "explainer"}
    assert len(scored_ids) == 1 and set(next(iter(scored_ids))) <= set(cohorts["test"])
    assert {r["metrics"]["n_images"] for r in doc["records"] if r["role"] == "classification"} == {16}
    for r in doc["records"]:
        if r["explainer"] == "icnn":
            assert r["metrics"]["selection"] == "validation"
            assert r["metrics"]["groups"].keys() == {"lesion", "anatomy"}
    for heading in ("lesion filters", "anatomy filters", "worst seed", "mean of seeds"):
        assert heading in md
    # a second run resumes: nothing is trained again
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    assert "epoch 1/" not in again.stdout + again.stderr


@pytest.mark.slow
def test_a_base_only_study_is_what_a_validation_variant_starts_from(tmp_path):
    """--base-only: the cohorts and the ordinary CNN, nothing evaluated; a variant then fine-tunes that CNN and is
    scored on the validation cohort alone."""
    study, variants = tmp_path / "study", tmp_path / "variants"
    base = [sys.executable, "-m", "training.experiments", "--out", str(study), "--preset", "tiny", "--base-only"]
    proc = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (study / "runs" / "seed0" / "vgg-referable-ordinary" / "models" / "model.pt").is_file()
    assert [p.name for p in (study / "runs" / "seed0").iterdir()] == ["vgg-referable-ordinary"]
    assert not (study / "metrics").exists() and not (study / "results.json").exists()
    assert (study / "data" / "seed0" / "test" / "labels.csv").is_file()  # generated, never read

    cmd = [sys.executable, "-m", "training.experiments.variants", "--study", str(study), "--preset", "tiny",
           "--seed", "0", "--out", str(variants), "--name", "probe", "free_fraction=0"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((variants / "probe-seed0.json").read_text())
    assert doc["variant"]["overrides"] == {"free_fraction": "0"}
    assert set(doc["types"]) == {"MA", "HE", "EX", "SE"} and "top_filter" in doc
    scored = set(_cohort_ids(variants / "seed0-val-score"))
    assert scored and scored <= set(_cohort_ids(study / "data" / "seed0" / "val"))


def test_unknown_preset_is_a_usage_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "training.experiments", "--out", str(tmp_path / "x"),
                           "--preset", "huge"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--preset" in proc.stderr and "Traceback" not in proc.stderr


def test_a_bad_free_fraction_is_refused_before_any_work(tmp_path):
    out = tmp_path / "x"
    proc = subprocess.run([sys.executable, "-m", "training.experiments", "--out", str(out), "--preset", "tiny",
                           "--free-fraction", "1.5"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--free-fraction" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "data").exists()


def test_matching_by_lesion_hits_without_the_mask_loss_is_refused_before_any_work(tmp_path):
    out = tmp_path / "x"
    proc = subprocess.run([sys.executable, "-m", "training.experiments", "--out", str(out), "--preset", "gpu-lesions",
                           "--lesion-mask-weight", "0"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--match-filters-by lesion-hits" in proc.stderr and "--lesion-mask-weight above 0" in proc.stderr
    assert not (out / "data").exists()


def test_the_filter_matching_of_a_study_can_be_set_from_the_command_line(monkeypatch, tmp_path):
    """The first 768-px test study ran before its preset adopted lesion-hit matching; --match-filters-by selectivity
    is how it is reproduced, so the option must reach the ICNN's overrides (and a wrong value never any work)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import training.experiments as experiments
    from training.experiments.__main__ import main

    seen: dict = {}

    def fake_run(out, **kw):  # records what the study would be run with; the study itself is tested above
        seen.update(kw)
        return {"total_seconds": 0.0}

    monkeypatch.setattr(experiments, "run_experiment", fake_run)
    assert main(["--out", str(tmp_path / "s"), "--preset", "gpu-lesions", "--match-filters-by", "selectivity"]) == 0
    assert seen["icnn_overrides"] == {"match_filters_by": "selectivity"} and seen["preset"] == "gpu-lesions"
    seen.clear()
    assert main(["--out", str(tmp_path / "s"), "--preset", "gpu-lesions"]) == 0
    assert seen["icnn_overrides"] == {}
    seen.clear()
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "s"), "--match-filters-by", "where"])
    assert e.value.code == 2 and seen == {}


def test_not_a_command_of_the_installed_package():
    from napari_icnn.cli import SUBCOMMANDS

    assert "experiment" not in SUBCOMMANDS  # the study ships with the checkout, not with the wheel


def test_the_lesion_type_arm_reads_its_own_input_side_where_the_preset_has_one():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from training.experiments.driver import input_size
    from training.experiments.presets import PRESETS

    cpu = PRESETS["cpu"]
    assert input_size(cpu, "lesion-types") == 384 and input_size(cpu, "decision") == cpu.size == 256
    # the published studies on the clean look and on ResNet stay at the side they were measured at
    for name in ("cpu-clean", "cpu-resnet", "tiny"):
        p = PRESETS[name]
        assert input_size(p, "lesion-types") == input_size(p, "decision") == p.size, name


def test_the_finer_rendering_study_differs_from_the_cpu_study_only_in_its_photographs():
    """gpu-lesions asks the cpu study's question on photographs rendered finer, with the filter matching its
    validation round adopted. Anything else it changed (cohort sizes, schedule, input sides, seeds' eyes) would make
    its figures incomparable with the cpu study's."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from dataclasses import asdict

    from training.experiments.driver import input_size
    from training.experiments.presets import PRESETS

    cpu, fine = asdict(PRESETS["cpu"]), asdict(PRESETS["gpu-lesions"])
    changed = {k for k in cpu if cpu[k] != fine[k]}
    assert changed == {"name", "image_size", "single_category", "icnn"}
    assert fine["icnn"] == {**cpu["icnn"], "match_filters_by": "lesion-hits"}
    assert fine["image_size"] == 2 * cpu["image_size"] and fine["lesion_types"] and not fine["single_category"]
    for kind in ("lesion-types", "decision"):
        assert input_size(PRESETS["gpu-lesions"], kind) == input_size(PRESETS["cpu"], kind)
