"""``icnn benchmark``: the harness runs and its output is well formed (timings are never asserted)."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from napari_icnn.cli import benchmark as cli_benchmark
from napari_icnn.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def harness():
    return cli_benchmark.load_harness()


def _figure_lines(text: str) -> dict[str, str]:
    """Printed figure lines by name (comment lines start with '#')."""
    lines = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#") and not line.startswith("figures written"):
            name = line.split()[0]
            assert name not in lines, f"{name} printed twice"
            lines[name] = line
    return lines


def test_quick_run_from_elsewhere_writes_matching_json(tmp_path):
    """The real command, from a folder outside the checkout and without a display: one line and one
    JSON entry per figure, numbers finite or null, and the napari stage reported missing, not faked."""
    out = tmp_path / "figures.json"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "napari_icnn", "benchmark", "--quick", "--device", "cpu", "--only", "synth", "explain",
         "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    printed = _figure_lines(proc.stdout)
    assert set(figures) == set(printed)
    for name, value in figures.items():
        assert value is None or (isinstance(value, float) and math.isfinite(value)), (name, value)
        assert ("missing:" in printed[name]) == (value is None), printed[name]

    assert figures["synth_images_per_s_512"] > 0
    assert (tmp_path / "figures.json").is_file() and not list(tmp_path.glob(".figures.json.*"))
    parts = [figures[f"explain_{k}_ms"] for k in ("preprocess", "forward", "maps")]
    assert all(p >= 0 for p in parts) and figures["explain_preprocess_ms"] > 0
    assert figures["explain_core_ms"] == pytest.approx(sum(parts), rel=1e-9)
    assert figures["explain_total_ms"] is None and figures["explain_layers_ms"] is None
    assert "missing: no display" in printed["explain_total_ms"]
    assert "target <= 1500 ms CPU" in printed["explain_total_ms"]


def test_materialised_reference_equals_real_loss():
    import torch

    from benchmarks.materialised import check_against_real, materialised_scores, product_bytes
    from napari_icnn.icnn.templates import TemplateBank

    assert check_against_real(seed=0) < 1e-9
    assert check_against_real(seed=3, b=4, c=2, n=7) < 1e-9  # odd n: the real loss folds a middle line
    bank = TemplateBank(5).double()
    x = torch.rand(2, 3, 5, 5, dtype=torch.float64)
    expected = bank.scores(x)
    assert torch.allclose(materialised_scores(x, bank, normalise=False), expected, rtol=1e-12, atol=1e-15)
    assert product_bytes(16, 64, 32) == 16 * 64 * 32**4 * 4


@pytest.mark.slow
def test_reference_and_memory_groups_quick(harness):
    """The materialised reference and memory groups measure real steps and report ratios."""
    out, err = io.StringIO(), io.StringIO()
    figures, failed = harness.run_benchmarks(["materialised", "memory", "scores"], quick=True, device="cpu", out=out,
                                             err=err)
    assert failed == [], err.getvalue()[-3000:]
    assert figures["materialised_check_max_rel_diff"] < 1e-9
    for name in ("loss_time_ratio_materialised_vgg_224", "train_step_ratio_materialised_vgg_224",
                 "memory_ratio_materialised_vgg_224", "train_memory_ratio_vgg_256"):
        assert figures[name] > 0
    # the reference builds a 0.3 GB product the vectorised loss never does
    assert figures["memory_ratio_materialised_vgg_224"] > 1.5
    # every score method is timed, and compared with the one the bank picks
    assert all(figures[f"scores_ms_{m}_n{n}"] > 0 for m in ("dense", "folded", "conv") for n in (32, 64))
    assert sum(name.startswith("scores_ratio_") for name in figures) == 4
    assert set(_figure_lines(out.getvalue())) == set(figures)


def test_interleaved_alternates_order_and_fills_budget(harness):
    calls: list[str] = []
    syncs = []
    t = harness.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, rounds=3,
                            sync=lambda: syncs.append(1))
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then A B, B A, A B
    assert t.rounds == 3 and len(syncs) == 1 + 2 * 6
    sized = harness.interleaved({"nap": lambda: time.sleep(0.01)}, warmup=0, budget_s=0.05, min_rounds=2,
                                max_rounds=50)
    assert 2 <= sized.rounds <= 6
    assert sized.median("nap") >= 0.01
    slow = harness.interleaved({"x": lambda: time.sleep(0.02), "y": lambda: time.sleep(0.002)}, warmup=0, rounds=3)
    assert slow.ratio("x", "y") > 2
    # the ratio pairs each round's times, so a run that changes speed half-way does not skew it
    drifting = harness.Timings({"x": (2.0, 2.2, 6.0, 6.6), "y": (1.0, 1.0, 3.0, 3.0)})
    assert drifting.ratio("x", "y") == pytest.approx(2.1)
    assert drifting.median("x") / drifting.median("y") == pytest.approx(2.05)


def test_figures_are_valid_once_built(harness):
    with pytest.raises(ValueError, match="not a finite number"):
        harness.Figure("ratio_x", float("nan"))
    with pytest.raises(ValueError, match="lower-case"):
        harness.Figure("Bad Name", 1.0)
    gone = harness.Figure.absent("explain_total_ms", "no display", unit="ms")
    assert gone.value is None and "missing: no display" in gone.line()
    target = harness.Target("<=", 1.10, "CPU")
    assert "target <= 1.10 CPU" in harness.Figure("r", 1.043, target=target).line()
    assert "NOT MET" in harness.Figure("r", 1.2, target=target).line()
    assert "NOT MET" not in harness.Figure("u", 0.9, target=harness.Target(">=", 0.85, "GPU")).line()


def test_a_failing_group_keeps_the_others(harness, tmp_path, monkeypatch):
    def good(ctx):
        yield harness.Figure("good_ratio", 1.5)

    def broken(ctx):
        yield harness.Figure("half_done_ms", 3.0, unit="ms")
        raise RuntimeError("out of memory on purpose")

    for name, fn in (("good", good), ("broken", broken)):
        module = types.ModuleType(f"benchmarks.fig_{name}")
        module.NAME, module.run = name, fn
        monkeypatch.setitem(sys.modules, f"benchmarks.fig_{name}", module)
    monkeypatch.setattr(harness, "GROUPS", {"broken": ("fig_broken", "fails"), "good": ("fig_good", "works")})
    path = tmp_path / "out.json"
    figures, failed = harness.run_benchmarks(["good", "broken"], device="cpu", json_path=path,
                                             out=io.StringIO(), err=io.StringIO())
    assert failed == ["broken"]
    assert json.loads(path.read_text()) == {"half_done_ms": 3.0, "broken_failed": None, "good_ratio": 1.5}
    assert figures == json.loads(path.read_text())


def test_json_has_no_nan(harness, tmp_path):
    path = harness.write_json(tmp_path / "f.json", {"a": 1.0, "b": None, "c": float("inf")})
    assert json.loads(path.read_text()) == {"a": 1.0, "b": None, "c": None}


def test_unknown_group_is_a_usage_error(capsys):
    assert main(["benchmark", "--only", "warp_speed"]) == 2
    err = capsys.readouterr().err
    assert "warp_speed" in err and "train_step" in err and "Traceback" not in err


def test_cuda_where_there_is_none_is_a_usage_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["benchmark", "--device", "cuda", "--only", "synth"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_without_the_checkout_says_so(tmp_path, monkeypatch, capsys):
    with pytest.raises(cli_benchmark.IcnnError, match="source checkout"):
        cli_benchmark.load_harness(tmp_path)
    monkeypatch.setattr(cli_benchmark, "checkout_root", lambda: tmp_path)
    assert main(["benchmark", "--only", "synth"]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "benchmarks" / "harness.py") in err and "Traceback" not in err


def test_help_lists_the_harness_groups(harness):
    assert cli_benchmark._GROUPS == tuple(harness.GROUPS)
    assert ROOT / "benchmarks" / "harness.py" == Path(harness.__file__).resolve()
