"""Defaults that depend on other settings: derived ("auto") when not given, never in conflict with what
the user gave, the same for the CLI, the MONAI bundle config and the engine, and recorded with the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_icnn.cli import build_parser, main
from napari_icnn.config import (
    DEFAULT_BATCH,
    MIN_BATCH,
    MIN_VAL_IMAGES,
    TrainConfig,
    config_help,
    flag_of,
    validation_size,
)
from napari_icnn.data.datasets import split_records
from napari_icnn.data.layouts import Record
from napari_icnn.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _train_options() -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {s for a in sub.choices["train"]._actions for s in a.option_strings}


# --------------------------------------------------------------------------- the schedule


@given(st.integers(1, 500))
def test_warmup_follows_the_epochs_given(epochs):
    cfg = TrainConfig(epochs=epochs).resolved()
    assert cfg.epochs == epochs and cfg.warmup_epochs == epochs // 2
    assert 0 <= cfg.warmup_epochs < cfg.epochs and "warmup_epochs" in cfg.derived and "epochs" not in cfg.derived


@given(st.integers(0, 500))
def test_epochs_follow_the_warmup_given(warmup):
    cfg = TrainConfig(warmup_epochs=warmup).resolved()
    assert cfg.warmup_epochs == warmup and cfg.epochs == max(16, 2 * warmup) and cfg.warmup_epochs < cfg.epochs


def test_schedule_examples_and_the_untouched_default():
    assert [TrainConfig(epochs=e).resolved().warmup_epochs for e in (1, 2, 3, 4, 16)] == [0, 1, 1, 2, 8]
    plain = TrainConfig().resolved()
    assert (plain.epochs, plain.warmup_epochs) == (16, 8)  # the former fixed defaults
    kept = TrainConfig(epochs=5, warmup_epochs=3).resolved()
    assert (kept.epochs, kept.warmup_epochs) == (5, 3) and not kept.derived


def test_an_explicit_conflict_is_an_error_naming_the_flags_given():
    with pytest.raises(ConfigError) as err:
        TrainConfig(epochs=1, warmup_epochs=8)
    assert str(err.value).startswith("--warmup-epochs 8:") and "--epochs (1)" in str(err.value)
    TrainConfig(epochs=1, warmup_epochs=8, ordinary=True)  # the baseline has no interpretable epochs to lose


def test_help_texts_say_the_rules():
    assert "half of --epochs" in config_help("warmup_epochs")
    assert "twice --warmup-epochs" in config_help("epochs")
    assert f"auto: {DEFAULT_BATCH}" in config_help("batch")
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    help_text = " ".join(sub.format_help().split())
    assert "auto: half of --epochs, rounded down" in help_text
    warmup = help_text[help_text.rindex("--warmup-epochs WARMUP_EPOCHS"):]  # its description, after the usage
    warmup = warmup[: warmup.index("--lambda LAM")]
    assert "(default: 8)" not in warmup and "(default: None)" not in warmup  # a derived default is not a value


# --------------------------------------------------------------------------- data-dependent settings


@settings(max_examples=60, deadline=None)
@given(n=st.integers(MIN_VAL_IMAGES + MIN_BATCH, 400), seed=st.integers(0, 3), positives=st.floats(0, 1))
def test_auto_split_and_batch_fit_any_data_set_and_match_the_real_split(n, seed, positives):
    cfg = TrainConfig(data="D", seed=seed).resolved(n)
    records = [Record(f"r{i}", f"r{i}.png", labels={"referable": int(i < positives * n)}) for i in range(n)]
    train, val = split_records(records, cfg.val_fraction, cfg.seed)
    assert len(val) == validation_size(n, cfg.val_fraction) >= MIN_VAL_IMAGES
    assert MIN_BATCH <= cfg.batch <= min(DEFAULT_BATCH, len(train))
    assert cfg.batch == min(DEFAULT_BATCH, len(train))


def test_batch_shrinks_to_small_data_with_a_note_and_an_explicit_one_is_checked():
    small = TrainConfig(data="D").resolved(10)  # 2 held out, 8 to train on
    assert (small.val_fraction, small.batch) == (0.2, 8) and "8 training images" in small.derived["batch"]
    assert TrainConfig(data="D").resolved(100).batch == DEFAULT_BATCH
    assert TrainConfig(data="D", batch=4).resolved(10).batch == 4
    with pytest.raises(ConfigError) as err:
        TrainConfig(data="D", batch=12).resolved(10)
    assert str(err.value).startswith("--batch 12:") and "--data D" in str(err.value)
    with pytest.raises(ConfigError, match=r"^--batch 8: .*--data D, --max-train-images 5"):
        TrainConfig(data="D", batch=8, max_train_images=5).resolved(100)
    assert TrainConfig(data="D", max_train_images=5).resolved(100).batch == 5
    # under torchrun each process needs a whole batch of its own share
    ddp = TrainConfig(data="D", val="V").resolved(20, 4, world_size=4)
    assert ddp.batch == 5 and "per process" in ddp.derived["batch"]


def test_validation_share_grows_for_tiny_data_and_explicit_shares_are_checked():
    tiny = TrainConfig(data="D").resolved(5)
    assert validation_size(5, tiny.val_fraction) == MIN_VAL_IMAGES and tiny.batch == 3
    with pytest.raises(ConfigError, match=r"^--data D: 3 image\(s\) .* give --val"):
        TrainConfig(data="D").resolved(3)
    with pytest.raises(ConfigError, match=r"^--val-fraction 0.1: holds out 1 of the 10"):
        TrainConfig(data="D", val_fraction=0.1).resolved(10)
    with pytest.raises(ConfigError, match=r"^--val-fraction 0.9: .* leaving 1 to train on"):
        TrainConfig(data="D", val_fraction=0.9).resolved(10)
    with pytest.raises(ConfigError, match=r"^--val V: 1 validation image"):
        TrainConfig(data="D", val="V").resolved(10, 1)
    separate = TrainConfig(data="D", val="V").resolved(3, 2)  # all of --data trains
    assert separate.batch == 3 and separate.val_fraction is None


def test_loader_workers_follow_the_device_and_the_cores():
    def auto(device_type, cores, world_size=1):
        return TrainConfig().resolved(device_type=device_type, cores=cores, world_size=world_size).workers

    assert [auto("cpu", c) for c in (1, 2, 64)] == [0, 0, 0]
    assert [auto("cuda", c) for c in (1, 2, 4, 64)] == [0, 1, 3, 8]
    assert auto("cuda", 8, world_size=2) == 3
    assert TrainConfig(workers=5).resolved(device_type="cuda", cores=2).workers == 5
    with pytest.raises(ConfigError, match="^--workers: must not be negative"):
        TrainConfig(workers=-1)


def test_errors_name_the_real_command_line_flags():
    options = _train_options()
    bad = {"lam": -1.0, "n_filters": 0, "batch": 1, "val_fraction": 1.5, "epochs": 0, "warmup_epochs": -1,
           "free_fraction": 2.0, "free_weight": -1.0, "size": 100, "workers": -2, "max_train_images": 1}
    for name, value in bad.items():
        with pytest.raises(ConfigError) as err:
            TrainConfig(**{name: value})
        flag = str(err.value).split(":")[0]
        assert flag == flag_of(name) and flag in options, (name, str(err.value))
    assert (flag_of("lam"), flag_of("n_filters")) == ("--lambda", "--filters")


# --------------------------------------------------------------------------- repeatable and compatible


def test_the_saved_config_records_values_and_derivations_and_old_configs_still_load():
    cfg = TrainConfig(data="D", out="M", epochs=4).resolved(10, device_type="cpu")
    saved = json.loads(cfg.to_json())
    assert (saved["warmup_epochs"], saved["batch"], saved["val_fraction"], saved["workers"]) == (2, 8, 0.2, 0)
    assert set(saved["derived"]) == {"warmup_epochs", "batch", "val_fraction", "workers"}
    again = TrainConfig.from_dict(saved)
    assert again == cfg and again.derived == cfg.derived
    assert again.resolved(10, device_type="cpu") == cfg  # resolving a resolved run changes nothing
    # a configuration saved before settings could be derived: every value explicit, no "derived" key
    old = {k: v for k, v in TrainConfig().resolved(100, device_type="cpu").to_dict().items() if k != "derived"}
    old.update(epochs=16, warmup_epochs=8, batch=16, val_fraction=0.2, workers=0)
    loaded = TrainConfig.from_dict(old)
    assert loaded.derived == {} and loaded.resolved(100, device_type="cpu") == loaded
    with pytest.raises(ConfigError, match="unknown training option"):
        TrainConfig.from_dict({**old, "warmup": 3})


def test_the_monai_bundle_config_gets_the_same_rule():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "training" / "configs" / "train.json"))
    parser["data"], parser["out"], parser["overrides"] = "D", "M", {"epochs": 1}
    cfg = parser.get_parsed_content("config")
    assert cfg.warmup_epochs is None and cfg.resolved().warmup_epochs == 0


# --------------------------------------------------------------------------- the command line, for real


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    from napari_icnn.data.synth import write_cohort

    root = tmp_path_factory.mktemp("small") / "cohort"
    write_cohort(root, 12, size=96, seed=303, look="clean")
    return root


def test_icnn_train_with_one_epoch_trains(small_cohort, tmp_path, capsys):
    from napari_icnn.bundle import load_bundle

    out = tmp_path / "m"
    rc = main(["train", "--data", str(small_cohort), "--out", str(out), "--epochs", "1",
               "--size", "64", "--filters", "8", "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-2000:]
    said = captured.out + captured.err
    # 12 images: 2 held out, so the batch is the 10 left, and the warm-up is half of one epoch
    assert "--warmup-epochs 0 (half of 1 epoch" in said and "--batch 10 (all 10 training images" in said
    saved = json.loads((out / "configs" / "train.json").read_text())
    assert (saved["epochs"], saved["warmup_epochs"], saved["batch"], saved["val_fraction"]) == (1, 0, 10, 0.2)
    assert set(saved["derived"]) >= {"warmup_epochs", "batch", "val_fraction", "workers"}
    history = json.loads((out / "checkpoints" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1] and history[0]["lambda"] > 0  # an interpretable epoch
    assert load_bundle(out, device="cpu").net.interpretable


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--epochs", "1", "--warmup-epochs", "1"], ["--warmup-epochs 1:", "--epochs (1)"]),
        (["--epochs", "4", "--warmup-epochs", "8"], ["--warmup-epochs 8:", "--epochs (4)"]),
        (["--batch", "11"], ["--batch 11:", "10 training images", "--data "]),
        (["--val-fraction", "0.05"], ["--val-fraction 0.05:", "--data "]),
    ],
)
def test_explicit_conflicts_stop_the_cli_naming_the_flags_given(small_cohort, tmp_path, capsys, args, expect):
    out = tmp_path / "m"
    rc = main(["train", "--data", str(small_cohort), "--out", str(out), "--size", "64", *args])
    err = capsys.readouterr().err
    assert rc == 2 and all(e in err for e in expect), err
    assert "Traceback" not in err and "(got 8)" not in err
    assert not out.exists()  # nothing was written for a run that could not start


def test_the_top_stride_follows_the_filter_categories():
    from napari_icnn.config import TrainConfig

    assert TrainConfig(data="d", out="o").top_stride is None  # auto until the categories are known
    types = TrainConfig(data="d", out="o").resolved(lesion_labels=True)
    assert types.top_stride == 4 and "validation" in types.derived["top_stride"]
    assert TrainConfig(data="d", out="o").resolved(lesion_labels=False).top_stride == 8
    assert TrainConfig(data="d", out="o", arch="resnet").resolved(lesion_labels=True).top_stride == 8
    assert TrainConfig(data="d", out="o", arch="resnet").resolved(lesion_labels=False).top_stride == 16
    assert TrainConfig(data="d", out="o", arch="resnet", ordinary=True).resolved(lesion_labels=True).top_stride == 16
    assert TrainConfig(data="d", out="o", ordinary=True).resolved(lesion_labels=True).top_stride == 8
    assert TrainConfig(data="d", out="o", top_stride=8).resolved(lesion_labels=True).top_stride == 8


def test_the_input_size_follows_the_filter_categories_and_a_retrained_bundle():
    from napari_icnn.config import DEFAULT_SIZE, LESION_TYPES_SIZE

    assert TrainConfig(data="d", out="o").size is None  # auto until the categories are known
    types = TrainConfig(data="d", out="o").resolved(lesion_labels=True)
    assert types.size == LESION_TYPES_SIZE > DEFAULT_SIZE and "microaneurysms" in types.derived["size"]
    assert TrainConfig(data="d", out="o").resolved(lesion_labels=False).size == DEFAULT_SIZE
    assert TrainConfig(data="d", out="o", ordinary=True).resolved(lesion_labels=True).size == DEFAULT_SIZE
    assert TrainConfig(data="d", out="o", categories="decision").resolved().size == DEFAULT_SIZE
    given = TrainConfig(data="d", out="o", size=128).resolved(lesion_labels=True, init_size=256)
    assert given.size == 128 and "size" not in given.derived  # what the user gave is kept
    kept = TrainConfig(data="d", out="o").resolved(lesion_labels=True, init_size=256)
    assert kept.size == 256 and "--init" in kept.derived["size"]
    with pytest.raises(ConfigError, match="--size"):
        TrainConfig(size=100)


def test_only_a_bundle_with_lesion_type_filters_passes_its_size_on(tmp_path, tiny_bundle):
    from conftest import make_bundle

    from napari_icnn.bundle import lesion_types_size
    from napari_icnn.errors import BundleError

    assert lesion_types_size(tiny_bundle) is None  # its filters serve the decision: a new recipe may differ
    assert lesion_types_size(make_bundle(tmp_path / "types", size=96, lesion_types=True)) == 96
    with pytest.raises(BundleError, match="no such model bundle"):
        lesion_types_size(tmp_path / "missing")


def test_the_lesion_mask_weight_follows_the_categories_and_the_masks():
    from napari_icnn.config import DEFAULT_LESION_MASK_WEIGHT, TrainConfig

    base = TrainConfig(data="d", out="o")
    assert base.lesion_mask_weight is None  # auto until the data are known
    masked = base.resolved(lesion_labels=True, lesion_masks=True)
    assert masked.lesion_mask_weight == DEFAULT_LESION_MASK_WEIGHT > 0
    assert "validation" in masked.derived["lesion_mask_weight"]
    bare = base.resolved(lesion_labels=True, lesion_masks=False)
    assert bare.lesion_mask_weight == 0 and "no lesion masks" in bare.derived["lesion_mask_weight"]
    assert base.resolved(lesion_labels=False, lesion_masks=True).lesion_mask_weight == 0  # decision filters
    assert TrainConfig(data="d", out="o", ordinary=True).resolved(lesion_labels=True,
                                                                   lesion_masks=True).lesion_mask_weight == 0
    assert TrainConfig(data="d", out="o", lesion_mask_weight=0.0).resolved(
        lesion_labels=True, lesion_masks=True).lesion_mask_weight == 0  # an explicit 0 is kept
    assert base.resolved(lesion_labels=True).lesion_mask_weight is None  # masks unknown: left to the engine


def test_the_mask_target_is_the_centre_and_the_separation_loss_an_option_off_by_default():
    from napari_icnn.config import TrainConfig

    base = TrainConfig(data="d", out="o")
    assert base.separation_weight == 0 and base.lesion_mask_target == "centre"
    assert base.resolved(lesion_labels=True, lesion_masks=True).separation_weight == 0
    assert TrainConfig(data="d", out="o", separation_weight=3.0).resolved(
        lesion_labels=True, lesion_masks=False).separation_weight == 3.0
