"""The checks a batch passes before anything runs (no Qt): each field's problem in the words ``icnn infer``
prints, nothing created while checking, and the run refusing with the same words."""

from __future__ import annotations

import pytest
from test_batch_data import png

from napari_icnn.batch import BatchConfig, infer_iter, preflight, problems
from napari_icnn.batch.preflight import (
    NO_INPUTS,
    NO_OUT,
    device_problem,
    inputs_problem,
    model_problem,
    out_note,
    out_problem,
    scheduler_problem,
)
from napari_icnn.errors import BundleError, ConfigError
from napari_icnn.progress import drain


def test_inputs_none_given_or_missing(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    assert inputs_problem([]) == inputs_problem(["", "  "]) == NO_INPUTS
    assert inputs_problem([str(tmp_path / "a.png"), str(tmp_path)]) is None
    missing = tmp_path / "nowhere"
    assert inputs_problem([str(tmp_path), str(missing)]) == f"INPUT {missing}: no such file or folder"


def test_output_folder_checks_create_nothing(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert out_problem("") == out_problem("  ") == out_problem(None) == NO_OUT
    assert out_problem(str(a_file)) == f"--out {a_file}: exists and is not a folder"
    under = a_file / "sub" / "deeper"
    assert out_problem(str(under)) == f"--out {under}: cannot create the folder (Not a directory)"
    assert out_problem(str(tmp_path)) is None
    assert out_problem(str(tmp_path / "new" / "results")) is None
    assert not (tmp_path / "new").exists()


def test_output_folder_note_says_a_run_continues(tmp_path):
    assert out_note(str(tmp_path)) is None and out_note("") is None
    (tmp_path / "summary.csv").write_text("")
    assert "earlier run" in out_note(str(tmp_path))


def test_model_problems_are_the_words_of_loading_it(tmp_path, tiny_bundle):
    from napari_icnn.bundle import load_bundle

    assert model_problem(str(tiny_bundle)) is None
    not_a_bundle = tmp_path / "model"
    not_a_bundle.mkdir()
    no_weights = tmp_path / "no_weights"
    (no_weights / "configs").mkdir(parents=True)
    (no_weights / "configs" / "metadata.json").write_text((tiny_bundle / "configs" / "metadata.json").read_text())
    for path in (tmp_path / "missing", not_a_bundle, no_weights):
        problem = model_problem(str(path))
        assert problem and str(path) in problem
        with pytest.raises(BundleError) as loading:
            load_bundle(str(path), "cpu")
        assert str(loading.value) == problem


def test_scheduler_addresses():
    for ok in ("tcp://127.0.0.1:8786", "scheduler-host:8786", "tls://dask.hospital.local:8786", "tcp://[::1]:8786",
               "TCP://Scheduler:8786", "10.1.2.3"):
        assert scheduler_problem(ok) is None, ok
    assert scheduler_problem(None) is None and scheduler_problem("  ") is None  # run here
    for bad in ("http://host:8786", "host:port", "tcp://", "tcp://host:99999", "-", "inproc://x", "a b:1",
                "tcp://nohost:notaport"):
        problem = scheduler_problem(bad)
        assert problem == f"--scheduler {bad}: not a scheduler address; give one like tcp://host:8786", bad


def test_device_is_checked_only_where_the_batch_runs():
    import torch

    assert device_problem("cpu") is None and device_problem("auto") is None
    if not torch.cuda.is_available():
        assert "--device cuda: no CUDA device" in device_problem("cuda")
    assert device_problem("cuda", scheduler="tcp://host:8786") is None  # its workers resolve it


def test_problems_are_keyed_by_field_in_form_order(tmp_path, tiny_bundle):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    found = problems([], str(a_file), model=str(tmp_path / "nomodel"), scheduler="nohost:port")
    assert list(found) == ["inputs", "out", "model", "scheduler"]
    assert problems([str(tmp_path)], str(tmp_path / "out"), model=str(tiny_bundle)) == {}


def test_preflight_raises_the_first_problem_naming_its_field(tmp_path, tiny_bundle):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cfg = BatchConfig(inputs=(str(tmp_path / "nowhere"),), out=str(a_file), model=str(tiny_bundle))
    with pytest.raises(ConfigError) as err:
        preflight(cfg)
    assert err.value.field == "inputs" and "no such file or folder" in str(err.value)
    with pytest.raises(ConfigError) as err:
        preflight(cfg, inputs=False)  # the inputs of a PACS run are still to come
    assert err.value.field == "out" and str(err.value) == out_problem(str(a_file))
    with pytest.raises(BundleError, match="no such model bundle"):
        preflight(BatchConfig(inputs=(str(tmp_path),), out=str(tmp_path / "o"), model=str(tmp_path / "m")))
    assert not (tmp_path / "o").exists()


def test_the_run_refuses_with_the_preflight_words_before_starting_anything(tmp_path, tiny_bundle):
    png(tmp_path / "a.png")
    cfg = BatchConfig(inputs=(str(tmp_path / "a.png"),), out=str(tmp_path / "out"), model=str(tiny_bundle),
                      scheduler="tcp://nohost:notaport")
    with pytest.raises(ConfigError) as err:
        drain(infer_iter(cfg))
    assert err.value.field == "scheduler" and str(err.value) == scheduler_problem("tcp://nohost:notaport")
    assert not (tmp_path / "out").exists()


def test_the_run_reports_an_output_folder_that_turned_into_a_file_in_the_same_words(tmp_path):
    from napari_icnn.batch.run import _output_folder

    a_file = tmp_path / "results"
    a_file.write_text("x")
    with pytest.raises(ConfigError) as err:
        _output_folder(str(a_file))
    assert str(err.value) == out_problem(str(a_file)) and err.value.field == "out"


def test_every_batch_setting_is_described_once_for_the_command_line_and_the_widget(capsys):
    from dataclasses import fields

    from napari_icnn.batch.config import BatchConfig, batch_setting
    from napari_icnn.cli import main

    with pytest.raises(SystemExit):
        main(["infer", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in fields(BatchConfig):
        st = batch_setting(f.name)
        assert st.label and st.help and st.flag, f.name
        assert st.flag in text and " ".join(st.help.split())[:40] in text, f.name
        if f.type in ("int", int):
            low, high = st.bounds
            assert low <= st.default <= high, f.name
    with pytest.raises(KeyError):
        batch_setting("no_such_setting")
