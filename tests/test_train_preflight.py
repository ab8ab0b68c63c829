"""The checks before a training run, without Qt: the data-set preflight, the output folder's layout and states,
the device a choice resolves to, the whole-run check the CLI and the Train widget share, and the parity of their
messages: ``icnn train`` prints exactly what the widget shows next to the field."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import make_bundle

from napari_icnn.cli import main
from napari_icnn.config import TrainConfig, flag_of, settings
from napari_icnn.data.preflight import DataCheckCache, check_data
from napari_icnn.data.synth import write_cohort
from napari_icnn.devices import describe_device, resolve_device
from napari_icnn.engine import train as engine
from napari_icnn.engine.preflight import check_training
from napari_icnn.engine.run_folder import (
    CHECKPOINT_DIR,
    HISTORY,
    LAST,
    RunFolder,
    check_output,
    inspect_output,
    outcome_of,
)
from napari_icnn.errors import ConfigError, InputError


def write_cohorts(root):
    """A synthetic cohort (grades and lesion labels), a CSV set with grades only, and a folder of no data."""
    write_cohort(root / "train", 24, size=96, seed=11, look="clean")
    images = sorted((root / "train" / "images").iterdir())[:12]
    (root / "graded").mkdir()
    (root / "graded" / "labels.csv").write_text(
        "path,label\n" + "".join(f"{p},{i % 2}\n" for i, p in enumerate(images)), encoding="utf-8"
    )
    (root / "junk").mkdir()
    (root / "junk" / "notes.txt").write_text("not a data set")
    return root


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    return write_cohorts(tmp_path_factory.mktemp("cohorts"))


def defaults() -> dict:
    """The values of an untouched form, and of ``icnn train`` given no options."""
    return {s.name: s.default for s in settings()}


# --------------------------------------------------------------------------- the data-set preflight


def test_check_data_reads_the_layout_and_counts(cohorts):
    ok = check_data(str(cohorts / "train"), "auto", "referable")
    assert ok.problem is None and ok.count == 24 and ok.lesion_labels and ok.lesion_masks
    assert ok.summary.startswith("24 photographs · synth layout · part masks")
    graded = check_data(str(cohorts / "graded"), "auto", "referable")
    assert graded.problem is None and graded.count == 12 and not graded.lesion_labels and not graded.lesion_masks
    assert graded.summary == "12 photographs · csv layout"


def test_check_data_names_what_is_wrong_and_keeps_the_error(cohorts, tmp_path):
    wrong = check_data(str(cohorts / "train"), "idrid-seg", "referable")
    assert isinstance(wrong.error, InputError) and str(cohorts / "train") in wrong.problem and wrong.count == 0
    missing = check_data(str(tmp_path / "nope"))
    assert missing.problem == f"{tmp_path / 'nope'}: no such file or folder"
    assert "unknown data layout" in check_data(str(cohorts / "junk")).problem
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "labels.csv").write_text("path,label\n")
    assert "no photographs found" in check_data(str(tmp_path / "none")).problem
    unlabelled = check_data(str(cohorts / "graded"), "auto", "lesions")  # the task needs MA/HE/EX/SE
    assert isinstance(unlabelled.error, ConfigError) and "has no MA, HE, EX, SE label" in unlabelled.problem
    blank = check_data("  ")  # never the working directory
    assert isinstance(blank.error, ConfigError) and blank.count == 0


def test_data_checks_are_redone_when_the_folder_changes(tmp_path):
    checks = DataCheckCache(size=2)
    folder = tmp_path / "d"
    folder.mkdir()
    first = checks(str(folder))
    assert "the folder is empty" in first.problem and checks(str(folder)) is first
    (folder / "labels.csv").write_text("path,label\n")
    stamp = folder.stat().st_mtime_ns + 10**9  # a second later, whatever the file system's resolution
    os.utime(folder, ns=(stamp, stamp))
    assert "no photographs found" in checks(str(folder)).problem
    checks(str(tmp_path / "a"))
    checks(str(tmp_path / "b"))
    assert len(checks._checks) == 2  # the oldest are let go


# --------------------------------------------------------------------------- the output folder


def _fake_run(out, epochs: int, done: int) -> RunFolder:
    run = RunFolder(out)
    run.checkpoints.mkdir(parents=True)
    run.last.write_bytes(b"not read here")
    run.config_file.write_text(json.dumps({"epochs": epochs, "warmup_epochs": 1}))
    run.history_file.write_text(json.dumps([{"epoch": e + 1} for e in range(done)]))
    return run


def test_the_engine_writes_the_layout_the_run_folder_reads(tmp_path):
    run = RunFolder(tmp_path)
    assert (engine.CHECKPOINT_DIR, engine.LAST) == (CHECKPOINT_DIR, LAST)
    assert (run.last, run.history_file) == (tmp_path / "checkpoints" / "last.pt", tmp_path / "checkpoints" / HISTORY)
    assert run.saved_config() == {} and run.history() == [] and not run.has_checkpoint()
    run.checkpoints.mkdir()
    run.config_file.write_text("[not an object")
    assert run.saved_config() == {}


def test_output_folder_states(tmp_path):
    assert inspect_output(str(tmp_path / "missing")).state == "new"
    (tmp_path / "empty").mkdir()
    assert inspect_output(f"  {tmp_path / 'empty'} ").can_start
    (tmp_path / "file").write_text("x")
    assert inspect_output(str(tmp_path / "file")).message().endswith("exists and is not a folder.")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "precious.txt").write_text("keep")
    busy = inspect_output(str(tmp_path / "busy"))
    assert busy.state == "occupied" and not busy.can_start and not busy.can_resume
    _fake_run(tmp_path / "stopped", epochs=4, done=1)
    stopped = inspect_output(str(tmp_path / "stopped"))
    assert stopped.can_resume and (stopped.epochs_done, stopped.epochs) == (1, 4)
    assert "stopped after epoch 1 of 4" in stopped.message()
    _fake_run(tmp_path / "done", epochs=2, done=2)
    assert inspect_output(str(tmp_path / "done")).state == "finished"


def test_check_output_refuses_what_the_engine_refuses(tmp_path):
    with pytest.raises(ConfigError, match=r"^--out: give the folder") as err:
        check_output("", resume=False)
    assert err.value.field == "out"
    with pytest.raises(ConfigError, match=r"^--resume: .* \(checkpoints/last.pt is missing\)"):
        check_output(str(tmp_path), resume=True)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"^--out .*: the folder exists and is not empty"):
        check_output(str(tmp_path), resume=False)
    check_output(str(tmp_path / "new"), resume=False)
    _fake_run(tmp_path / "run", epochs=4, done=1)
    check_output(str(tmp_path / "run"), resume=True)


def test_outcome_of_a_stopped_run_reads_its_folder(tmp_path):
    _fake_run(tmp_path / "run", epochs=4, done=1)
    outcome = outcome_of(TrainConfig(out=str(tmp_path / "run"), resume=True), None, 12.0)
    assert outcome.stopped and (outcome.epochs_done, outcome.n_epochs, outcome.bundle) == (1, 4, None)
    text = outcome.describe()
    assert text.startswith("Stopped after epoch 1 of 4") and "no model yet: warm-up epochs" in text
    fresh = outcome_of(TrainConfig(out=str(tmp_path / "none"), epochs=6), None, 1.0)
    assert (fresh.epochs_done, fresh.n_epochs) == (0, 6) and "before the first epoch" in fresh.describe()
    done = outcome_of(TrainConfig(out=str(tmp_path / "run")), engine.TrainResult(tmp_path, 4, 4), 150.0)
    assert done.describe().startswith("Finished 4 epochs in 2.5 min")


# --------------------------------------------------------------------------- the device


def test_describe_device_resolves_as_training_does():
    cpu = describe_device("cpu")
    assert (cpu.kind, cpu.text, cpu.problem) == ("cpu", "CPU", None) and cpu.detail.startswith("Runs on the CPU.")
    auto = describe_device("auto")
    assert auto.kind == ("gpu" if torch.cuda.is_available() else "cpu") and auto.problem is None
    bogus = describe_device("tpu")
    assert bogus.problem == "--device: must be auto, cpu or cuda (got 'tpu')"
    if not torch.cuda.is_available():
        cuda = describe_device("cuda")
        with pytest.raises(ConfigError) as err:
            resolve_device("cuda")
        assert cuda.text == "no GPU" and cuda.problem == str(err.value) and err.value.field == "device"


# --------------------------------------------------------------------------- the whole-run check


def test_check_training_resolves_auto_settings_for_the_data(cohorts, tmp_path):
    values = {**defaults(), "data": str(cohorts / "train"), "out": str(tmp_path / "m"), "size": 64}
    check = check_training(values)
    assert check.ok, check.problems
    assert check.hints["data"].startswith("24 photographs") and check.hints["batch"] == "auto: 16 (the default)"
    assert check.hints["categories"].startswith("auto: lesion-types (every image has")
    assert check.resolved.categories == "lesion-types" and check.resolved.val_fraction == 0.2
    assert check.hints["lesion_mask_weight"].startswith("auto: 1 (lesion-type filters and lesion masks")
    assert check.raise_first() == TrainConfig(**values)  # as given: the engine resolves it again

    graded = check_training({**values, "data": str(cohorts / "graded")})
    assert graded.hints["categories"].startswith("auto: decision (some images lack")
    assert graded.hints["lesion_mask_weight"] == "auto: 0 (no lesion-type filters)"

    # the input size: finer for lesion-type filters, and a retrained lesion-type bundle keeps its own
    auto = {**values, "size": None}
    assert check_training(auto).hints["size"].startswith("auto: 384 (lesion-type filters")
    assert check_training({**auto, "data": str(cohorts / "graded")}).hints["size"] == "auto: 256 (the default)"
    retrain = check_training({**auto, "init": str(make_bundle(tmp_path / "types", size=96, lesion_types=True))})
    assert retrain.ok and retrain.hints["size"].startswith("auto: 96 (the --init bundle's")
    # the engine resolves it the same way: what the form said is what trains
    cfg = engine._load_data(TrainConfig(**{**auto, "init": retrain.config.init}), 1, "cpu")[0]
    assert cfg.size == 96 and engine._load_data(TrainConfig(**auto), 1, "cpu")[0].size == 384

    seen = []

    def counted(path, fmt, task):  # a caller's cache stands in for check_data
        seen.append((path, fmt, task))
        return check_data(path, fmt, task)

    check_training({**values, "val": str(cohorts / "graded")}, data_check=counted)
    assert seen == [(str(cohorts / "train"), "auto", "referable"), (str(cohorts / "graded"), "auto", "referable")]


def test_check_training_reports_each_field_and_raises_the_first(cohorts, tmp_path):
    check = check_training({**defaults(), "size": 100, "val": str(tmp_path / "no val")})
    assert list(check.errors) == ["data", "out", "size", "val"]
    assert check.problems["data"] == "--data: give a training folder or CSV file"
    assert check.problems["val"] == f"{tmp_path / 'no val'}: no such file or folder"
    with pytest.raises(ConfigError, match="^--data: give"):
        check.raise_first()
    # a problem with the data leaves the explicit values unjudged against it
    check = check_training({**defaults(), "data": str(cohorts / "junk"), "out": "m", "batch": 500})
    assert list(check.errors) == ["data"] and isinstance(check.errors["data"], InputError)


# --------------------------------------------------------------------------- CLI and widget say the same

PARITY = [
    # (what, the values that differ from a good run, the field the widget shows the problem under)
    ("missing data folder", {"data": "{tmp}/no such folder"}, "data"),
    ("a folder with no photographs", {"data": "{cohorts}/junk"}, "data"),
    ("no data given", {"data": ""}, "data"),
    ("bad --size", {"size": 100}, "size"),
    ("bad --lambda", {"lam": -1.0}, "lam"),
    ("--filters 0", {"n_filters": 0}, "n_filters"),
    ("a batch larger than the data", {"batch": 30}, "batch"),
    ("too small a validation share", {"val_fraction": 0.05}, "val_fraction"),
    ("no interpretable epoch", {"epochs": 3, "warmup_epochs": 3}, "warmup_epochs"),
    ("lesion types without lesion labels", {"data": "{cohorts}/graded", "categories": "lesion-types"}, "categories"),
    ("missing validation folder", {"val": "{tmp}/no val"}, "val"),
    ("--init a folder that is no model", {"init": "{tmp}"}, "init"),
    ("a GPU that is not there", {"device": "cuda"}, "device"),
]
WIDGET_CANNOT = {"lam", "n_filters"}
"""Values the widget's boxes cannot hold (their lowest value is valid)."""


def parity_case(overrides: dict, cohorts, tmp) -> dict:
    """The good run's values with ``overrides``, paths filled in."""
    values = {"data": str(cohorts / "train"), "out": str(tmp / "out"), "size": 64, "epochs": 2}
    for name, value in overrides.items():
        values[name] = value.format(tmp=tmp, cohorts=cohorts) if isinstance(value, str) else value
    return values


def cli_args(values: dict) -> list[str]:
    args = ["train"]
    for name, value in values.items():
        if value not in ("", None):
            args += [flag_of(name), str(value)]
    return args


def cli_error(capsys, values: dict) -> str:
    """What ``icnn train`` prints for ``values``, less its prefix (it must fail, without a traceback)."""
    capsys.readouterr()
    rc = main(cli_args(values))
    err = capsys.readouterr().err
    assert rc in (1, 2) and err.startswith("icnn train: error: ") and "Traceback" not in err, (rc, err)
    return err.rstrip("\n").removeprefix("icnn train: error: ")


@pytest.mark.parametrize(("what", "overrides", "field"), PARITY, ids=[p[0] for p in PARITY])
def test_cli_prints_what_the_shared_check_says(cohorts, tmp_path, capsys, what, overrides, field):
    if field == "device" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    values = parity_case(overrides, cohorts, tmp_path)
    check = check_training({**defaults(), **values})
    assert list(check.errors)[:1] == [field], check.problems
    assert cli_error(capsys, values) == check.problems[field]
    assert not (tmp_path / "out").exists()  # refused before anything was written
