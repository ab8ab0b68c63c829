"""Every training setting is described once, in TrainConfig's field metadata: its flag, help, label, placeholder,
spin-box limits and choices. The command line and the Train widget are made from it, and every error names the
flag and the field it is about."""

from __future__ import annotations

from dataclasses import fields

import pytest

from napari_icnn.cli import build_parser
from napari_icnn.config import (
    CACHE_MODES,
    DEVICES,
    LOSS_MODES,
    TrainConfig,
    field_of_flag,
    flag_of,
    setting,
    settings,
)
from napari_icnn.errors import ConfigError


def _train_parser():
    return next(a for a in build_parser()._actions if a.dest == "command").choices["train"]


def test_every_setting_has_its_own_command_line_option():
    options = {s: a.dest for a in _train_parser()._actions for s in a.option_strings}
    names = [f.name for f in fields(TrainConfig)]
    assert [s.name for s in settings()] == names
    flags = [flag_of(n) for n in names]
    assert len(set(flags)) == len(flags)
    for name, flag in zip(names, flags):
        assert options.get(flag) == name, flag
        assert field_of_flag(flag) == name
    assert (flag_of("lam"), flag_of("n_filters")) == ("--lambda", "--filters")
    with pytest.raises(KeyError):
        flag_of("lambda")


def test_the_options_once_without_a_flag_set_their_fields():
    args = _train_parser().parse_args(
        ["--weight-decay", "0.01", "--width", "16", "--dropout", "0.1", "--no-augment", "--no-amp", "--no-normalise"]
    )
    assert (args.weight_decay, args.width, args.dropout) == (0.01, 16, 0.1)
    assert (args.augment, args.amp, args.normalise) == (False, False, False)
    plain = _train_parser().parse_args([])
    assert {s.name: getattr(plain, s.name) for s in settings()} == {s.name: s.default for s in settings()}


def test_choices_are_the_shared_tuples():
    assert setting("device").choices == DEVICES and setting("loss_mode").choices == LOSS_MODES
    assert setting("cache").choices == CACHE_MODES
    parser_choices = {a.dest: tuple(a.choices) for a in _train_parser()._actions if a.choices}
    assert parser_choices["device"] == DEVICES and parser_choices["cache"] == CACHE_MODES


def test_form_metadata_fits_the_defaults():
    assert setting("lam").label == "Filter-loss weight λ" and setting("seed").label == "Seed"
    assert setting("data").placeholder and setting("out").placeholder and setting("size").step == 16
    for s in settings():
        assert s.help and s.label
        if s.bounds is not None:
            lo, hi = s.bounds
            assert lo < hi and s.kind in (int, float), s.name
            # an optional number reads None at its lowest value, so that value must not be a valid one
            if s.optional:
                assert s.default is None, s.name
                if s.name != "max_train_images":  # whose 0 caps nothing, as None does
                    with pytest.raises(ConfigError):
                        TrainConfig(**{s.name: s.kind(lo)})
            else:
                assert lo <= s.default <= hi, s.name


def test_accepts_tells_types_apart():
    assert setting("epochs").accepts(None) and setting("epochs").accepts(3)
    assert not setting("epochs").accepts(True) and not setting("epochs").accepts(2.5)
    assert setting("lr").accepts(1) and not setting("lr").accepts(None) and not setting("lr").accepts("0.1")
    assert setting("augment").accepts(False) and not setting("augment").accepts(0)
    assert setting("val").accepts(None) and not setting("data").accepts(None)


BAD = {
    "task": "grading", "arch": "alexnet", "device": "tpu", "categories": "x", "loss_mode": "x", "z_estimate": "x",
    "decision_filters": "x", "decision_min_selectivity": 1.0, "cache": "ram", "top_stride": 5, "size": 100,
    "epochs": 0, "warmup_epochs": -1, "lam": -1.0, "batch": 1, "val_fraction": 1.5, "free_fraction": 2.0,
    "free_weight": -1.0, "n_filters": 0, "width": 0, "lr": 0.0, "weight_decay": -1.0, "dropout": 1.0, "beta": 0.0,
    "workers": -2, "max_train_images": 1, "lesion_mask_weight": -1.0, "silence_weight": -1.0,
    "separation_weight": -1.0, "lesion_mask_target": "middle", "lesion_mask_instances": "all",
    "lesion_mask_locations": "all",
    "distinct_types": "EX,XX",
    "separation_types": "MA,XX", "filter_matching": "sometimes", "match_filters_by": "where",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_invalid_value_names_its_flag_and_field(name):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**{name: BAD[name]})
    assert str(err.value).startswith(f"{flag_of(name)}:") and err.value.field == name


def test_errors_found_on_resolving_name_their_field():
    cases = [
        (TrainConfig(data="D", batch=12), (10,), "batch"),
        (TrainConfig(data="D", val_fraction=0.1), (10,), "val_fraction"),
        (TrainConfig(data="D"), (3,), "data"),
        (TrainConfig(data="D", val="V"), (10, 1), "val"),
        (TrainConfig(data="D", max_train_images=2, val_fraction=0.5), (10,), None),
    ]
    for cfg, counts, name in cases:
        if name is None:
            cfg.resolved(*counts)  # fits
            continue
        with pytest.raises(ConfigError) as err:
            cfg.resolved(*counts)
        assert err.value.field == name and str(err.value).startswith(flag_of(name)), str(err.value)
    with pytest.raises(ConfigError) as err:
        TrainConfig(categories="lesion-types").resolved(lesion_labels=False)
    assert err.value.field == "categories"
    with pytest.raises(ConfigError) as err:
        TrainConfig(epochs=3, warmup_epochs=3)
    assert err.value.field == "warmup_epochs"
