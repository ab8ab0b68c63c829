"""``python -m benchmarks``: the harness runs and its output is well formed (timings are never asserted)."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks.__main__ import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def harness():
    import benchmarks.harness

    return benchmarks.harness


def _figure_lines(text: str) -> dict[str, str]:
    """Printed figure lines by name (comment lines start with '#')."""
    lines = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#") and not line.startswith("figures written"):
            name = line.split()[0]
            assert name not in lines, f"{name} printed twice"
            lines[name] = line
    return lines


def test_quick_run_writes_matching_json(tmp_path):
    """The real command, from the checkout's root and without a display: one line and one
    JSON entry per figure, numbers finite or null, and the napari stage reported missing, not faked."""
    out = tmp_path / "figures.json"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--device", "cpu", "--only", "synth", "explain",
         "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
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


class _Clock:
    """A stand-in for ``time.perf_counter``: time moves only when a timed call says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def costs(self, *seconds: float) -> Callable[[], None]:
        """A call whose n-th run takes ``seconds[n]`` (the last one again after that)."""
        runs = iter(seconds)
        last = [seconds[-1]]

        def call() -> None:
            last[0] = next(runs, last[0])
            self.now += last[0]

        return call


@pytest.fixture
def clock(harness, monkeypatch):
    fake = _Clock()
    monkeypatch.setattr(harness, "time", types.SimpleNamespace(perf_counter=fake))
    return fake


def test_interleaved_alternates_order(harness):
    calls: list[str] = []
    syncs = []
    t = harness.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, rounds=3,
                            sync=lambda: syncs.append(1))
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then A B, B A, A B
    assert t.rounds == 3 and len(syncs) == 1 + 2 * 6


def test_interleaved_records_each_variants_own_times(harness, clock):
    # The warm-up calls (100 s, 1000 s) are not recorded; the alternating order does not mix the variants up.
    t = harness.interleaved({"x": clock.costs(100.0, 1.0, 2.0, 3.0), "y": clock.costs(1000.0, 10.0, 20.0, 30.0)},
                            warmup=1, rounds=3)
    assert t.seconds == {"x": (1.0, 2.0, 3.0), "y": (10.0, 20.0, 30.0)}
    assert t.median("x") == 2.0 and t.median("y") == 20.0
    assert t.ratio("x", "y") == pytest.approx(0.1)


def test_interleaved_counts_the_sync_before_stopping(harness, clock):
    # sync waits for a device's queued work: the wait before stopping the clock belongs to the call timed,
    # the one before starting it to what ran before.
    def sync() -> None:
        clock.now += 0.5

    t = harness.interleaved({"x": clock.costs(1.0)}, warmup=0, rounds=2, sync=sync)
    assert t.seconds == {"x": (1.5, 1.5)}


@pytest.mark.parametrize(
    "budget_s, rounds",
    [(1.0, 4), (0.1, 2), (100.0, 10)],  # fills the budget; never fewer than min_rounds nor more than max_rounds
)
def test_interleaved_sizes_rounds_from_the_first(harness, clock, budget_s, rounds):
    t = harness.interleaved({"a": clock.costs(0.125), "b": clock.costs(0.125)}, warmup=0, budget_s=budget_s,
                            min_rounds=2, max_rounds=10)
    assert t.rounds == rounds
    assert t.seconds == {"a": (0.125,) * rounds, "b": (0.125,) * rounds}


def test_ratio_pairs_each_rounds_times(harness):
    # the ratio pairs each round's times, so a run that changes speed half-way does not skew it
    drifting = harness.Timings({"x": (2.0, 2.2, 6.0, 6.6), "y": (1.0, 1.0, 3.0, 3.0)})
    assert drifting.ratio("x", "y") == pytest.approx(2.1)
    assert drifting.median("x") / drifting.median("y") == pytest.approx(2.05)
    assert drifting.rounds == 4
    assert harness.Timings({"x": (1.0, 2.0, 3.0), "y": (1.0, 1.0)}).rounds == 2
    with pytest.raises(ValueError):  # rounds are paired, never matched up by position in unequal runs
        harness.Timings({"x": (1.0, 2.0), "y": (1.0,)}).ratio("x", "y")
    with pytest.raises(ValueError, match="nothing to time"):
        harness.interleaved({})


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


def _fake_groups(harness, monkeypatch, **groups):
    """Install figure groups ``name=run(ctx)`` in place of the real ones, in the order given."""
    for name, fn in groups.items():
        module = types.ModuleType(f"benchmarks.fig_{name}")
        module.NAME, module.run = name, fn
        monkeypatch.setitem(sys.modules, f"benchmarks.fig_{name}", module)
    monkeypatch.setattr(harness, "GROUPS", {name: (f"fig_{name}", name) for name in groups})


def test_a_failing_group_keeps_the_others(harness, tmp_path, monkeypatch):
    def good(ctx):
        yield harness.Figure("good_ratio", 1.5)

    def broken(ctx):
        yield harness.Figure("half_done_ms", 3.0, unit="ms")
        raise RuntimeError("out of memory on purpose")

    _fake_groups(harness, monkeypatch, broken=broken, good=good)
    path = tmp_path / "out.json"
    figures, failed = harness.run_benchmarks(["good", "broken"], device="cpu", json_path=path,
                                             out=io.StringIO(), err=io.StringIO())
    assert failed == ["broken"]
    assert json.loads(path.read_text()) == {"half_done_ms": 3.0, "broken_failed": None, "good_ratio": 1.5}
    assert figures == json.loads(path.read_text())


def test_a_figure_reported_twice_fails_its_group(harness, monkeypatch):
    def first(ctx):
        yield harness.Figure("step_ms", 1.0, unit="ms")

    def second(ctx):
        yield harness.Figure("step_ms", 2.0, unit="ms")
        yield harness.Figure("other_ms", 4.0, unit="ms")

    _fake_groups(harness, monkeypatch, first=first, second=second)
    out, err = io.StringIO(), io.StringIO()
    figures, failed = harness.run_benchmarks(None, device="cpu", out=out, err=err)
    assert failed == ["second"]
    assert figures == {"step_ms": 1.0, "second_failed": None}  # the first value stands; nothing after it
    assert "reported twice" in err.getvalue()
    printed = _figure_lines(out.getvalue())
    assert set(printed) == {"step_ms", "second_failed"}
    assert "missing: RuntimeError: figure step_ms is reported twice" in printed["second_failed"]


def test_an_interrupted_run_keeps_the_finished_groups(harness, tmp_path, monkeypatch):
    def done(ctx):
        yield harness.Figure("done_ratio", 0.5)

    def stopped(ctx):
        yield harness.Figure("partial_ms", 7.0, unit="ms")
        raise KeyboardInterrupt

    _fake_groups(harness, monkeypatch, done=done, stopped=stopped)
    path = tmp_path / "figures.json"
    with pytest.raises(KeyboardInterrupt):
        harness.run_benchmarks(None, device="cpu", json_path=path, out=io.StringIO(), err=io.StringIO())
    assert json.loads(path.read_text()) == {"done_ratio": 0.5}  # written after each finished group


def test_each_group_works_in_its_own_folder(harness, monkeypatch):
    seen = []

    def one(ctx):
        seen.append(ctx.workdir)
        (ctx.workdir / "scratch").write_text("x")
        yield harness.Figure("one_ratio", 1.0)

    def two(ctx):
        seen.append(ctx.workdir)
        assert not (ctx.workdir / "scratch").exists()
        yield harness.Figure("two_ratio", 2.0)

    _fake_groups(harness, monkeypatch, one=one, two=two)
    figures, failed = harness.run_benchmarks(None, device="cpu", out=io.StringIO(), err=io.StringIO())
    assert failed == [] and figures == {"one_ratio": 1.0, "two_ratio": 2.0}
    assert [p.name for p in seen] == ["one", "two"] and seen[0].parent == seen[1].parent
    assert not seen[0].parent.exists()  # the run's temporary folder is removed afterwards


def test_json_has_no_nan(harness, tmp_path):
    path = harness.write_json(tmp_path / "f.json", {"a": 1.0, "b": None, "c": float("inf")})
    assert json.loads(path.read_text()) == {"a": 1.0, "b": None, "c": None}


def test_unknown_group_is_a_usage_error(capsys):
    assert main(["--only", "warp_speed"]) == 2
    err = capsys.readouterr().err
    assert "warp_speed" in err and "train_step" in err and "Traceback" not in err


def test_cuda_where_there_is_none_is_a_usage_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["--device", "cuda", "--only", "synth"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_not_a_command_of_the_installed_package():
    from napari_icnn.cli import SUBCOMMANDS

    assert "benchmark" not in SUBCOMMANDS  # the harness ships with the checkout, not with the wheel


def test_help_lists_the_harness_groups(harness, capsys):
    assert ROOT / "benchmarks" / "harness.py" == Path(harness.__file__).resolve()
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: python -m benchmarks ")
    assert all(name in text for name in harness.GROUPS)
