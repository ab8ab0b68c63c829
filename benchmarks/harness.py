"""The performance harness behind ``python -m benchmarks``.

Each figure is measured side by side with what it is compared to, in the same process: the
repetitions of the variants are interleaved (A B, B A, A B, ... so neither always runs first) and
their medians compared, so a machine busy with other work slows both alike. Figures are printed,
one line each, and written as JSON (figure name -> value, ``null`` for a missing one); nothing here
asserts a timing.

A figure group is a module of this folder (:data:`GROUPS` names it) with ``NAME`` and ``run(ctx)``,
a generator of :class:`Figure` s. :func:`run_benchmarks` runs the groups asked for, in that order.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from napari_icnn.errors import ConfigError

__all__ = [
    "GROUPS",
    "Target",
    "Figure",
    "Context",
    "Timings",
    "interleaved",
    "run_benchmarks",
    "write_json",
    "release",
]

GROUPS: dict[str, tuple[str, str]] = {
    "train_step": ("fig_train", "training step time, ICNN / ordinary network (VGG and ResNet, 224, 256 and 512 px); "
                   "the finer top map / the default, ResNet / VGG"),
    "materialised": ("fig_materialised",
                     "the B x C x n^2 x n x n reference filter loss against the vectorised one (time, memory)"),
    "memory": ("fig_memory", "peak memory of an ICNN training step against the ordinary network's"),
    "scores": ("fig_scores", "the template scores' three methods (dense, folded, cone correlation) against the "
                             "one the bank picks, at n = 32 and 64"),
    "explain": ("fig_explain", "Explain latency on the 1411 x 1411 scikit-image photograph, by stage"),
    "throughput": ("fig_throughput",
                   "training images/s at the default configuration; data loader against a cached batch"),
    "batch": ("fig_batch", "batch inference: pipeline against decode-only and model-only; memory, 200 vs 2000 files"),
    "synth": ("fig_synth", "synthetic cohort generation, 512 px, one worker"),
}
"""Figure groups in the order they run: name -> (module in ``benchmarks/``, what it measures)."""


@dataclass(frozen=True)
class Target:
    """What a figure should reach on one kind of machine, e.g. ``<= 1.10`` on the CPU."""

    op: str
    value: float
    where: str
    """``"CPU"`` or ``"GPU"``."""

    def __post_init__(self) -> None:
        if self.op not in ("<=", ">="):
            raise ValueError(f"a target compares with <= or >=, not {self.op!r}")

    def met(self, value: float) -> bool:
        return value <= self.value if self.op == "<=" else value >= self.value

    def describe(self, unit: str) -> str:
        amount = f"{self.value:.2f}" if unit in ("x", "") else f"{self.value:g} {unit}"
        return f"target {self.op} {amount} {self.where}"


@dataclass(frozen=True)
class Figure:
    """One measured number (or the reason it could not be measured).

    Valid once built: a lower-case name of letters, digits and ``_``; a finite value unless
    ``missing`` says why there is none.
    """

    name: str
    value: float | None
    unit: str = "x"
    """``"x"`` for a ratio; ``"ms"``, ``"images/s"``, ``"MB"``, ... otherwise."""
    target: Target | None = None
    note: str = ""
    """How it was measured (batch, repetitions), printed after the value."""
    missing: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c == "_" for c in self.name) or self.name != self.name.lower():
            raise ValueError(f"figure names are lower-case letters, digits and '_'; got {self.name!r}")
        if self.missing is None:
            if self.value is None or not math.isfinite(float(self.value)):
                raise ValueError(f"figure {self.name}: value {self.value!r} is not a finite number; say why it is missing")
            object.__setattr__(self, "value", float(self.value))
        else:
            object.__setattr__(self, "value", None)

    @classmethod
    def absent(cls, name: str, reason: str, unit: str = "x", target: Target | None = None) -> Figure:
        """A figure whose feature is missing here (reported, never faked)."""
        return cls(name, None, unit=unit, target=target, missing=reason)

    @property
    def met(self) -> bool | None:
        if self.value is None or self.target is None:
            return None
        return self.target.met(self.value)

    def line(self) -> str:
        """``train_step_ratio_vgg_224      1.043  (target <= 1.10 CPU; batch 8, 5 pairs)``."""
        if self.value is None:
            shown = f"missing: {self.missing}"
        else:
            shown = _format(self.value, self.unit)
        extra = []
        if self.target is not None:
            extra.append(self.target.describe(self.unit) + ("" if self.met in (None, True) else ", NOT MET"))
        elif self.unit not in ("x", ""):
            extra.append(self.unit)
        if self.note:
            extra.append(self.note)
        tail = f"  ({'; '.join(extra)})" if extra else ""
        return f"{self.name:<46s} {shown:>10s}{tail}"


def _format(value: float, unit: str) -> str:
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.2e}"
    if unit in ("x", ""):
        return f"{value:.3f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


@dataclass(frozen=True)
class Timings:
    """Interleaved repetitions of several variants: seconds per call, by variant."""

    seconds: Mapping[str, tuple[float, ...]]

    @property
    def rounds(self) -> int:
        return min(len(v) for v in self.seconds.values())

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def ratio(self, name: str, over: str) -> float:
        """Median over the rounds of ``name``'s time over ``over``'s in the same round.

        Paired within a round, so a machine that speeds up or slows down during the run (other work,
        clock changes) moves both sides of each ratio alike.
        """
        return statistics.median(a / b for a, b in zip(self.seconds[name], self.seconds[over], strict=True))


def interleaved(
    variants: Mapping[str, Callable[[], object]],
    *,
    warmup: int = 1,
    rounds: int | None = None,
    budget_s: float = 20.0,
    min_rounds: int = 3,
    max_rounds: int = 20,
    sync: Callable[[], None] = lambda: None,
) -> Timings:
    """Time ``variants`` round by round, alternating their order each round.

    Parameters
    ----------
    variants
        Name -> a call to time (it does one unit of work: one step, one image).
    warmup
        Untimed rounds first (allocator growth, cuDNN's algorithm search, lazy buffers).
    rounds
        Timed rounds; ``None`` sizes them from the first timed round to fill ``budget_s``,
        within ``[min_rounds, max_rounds]``.
    sync
        Called before starting and before stopping each clock (``torch.cuda.synchronize``), so an
        asynchronous device's work is counted where it was asked for.
    """
    names = list(variants)
    if not names:
        raise ValueError("nothing to time")
    for _ in range(warmup):
        for name in names:
            variants[name]()
    sync()
    times: dict[str, list[float]] = {name: [] for name in names}
    planned = rounds
    done = 0
    while planned is None or done < planned:
        for name in names if done % 2 == 0 else reversed(names):
            sync()
            start = time.perf_counter()
            variants[name]()
            sync()
            times[name].append(time.perf_counter() - start)
        done += 1
        if planned is None:
            per_round = sum(t[-1] for t in times.values())
            planned = max(min_rounds, min(max_rounds, int(budget_s / max(per_round, 1e-9))))
    return Timings({k: tuple(v) for k, v in times.items()})


@dataclass
class Context:
    """What every figure group is given."""

    device: Any
    """The ``torch.device`` figures run on."""
    quick: bool
    workdir: Path
    """A temporary folder for this run (removed afterwards)."""
    log: Callable[[str], None] = field(default=lambda text: None)
    cores: int = field(default_factory=lambda: len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def where(self) -> str:
        return "GPU" if self.cuda else "CPU"

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)

    def target(self, op: str, cpu: float | None, gpu: float | None) -> Target | None:
        """The target for this machine's kind (``None`` where there is none)."""
        value = gpu if self.cuda else cpu
        return None if value is None else Target(op, value, self.where)

    def timing(self, budget_s: float = 20.0) -> dict[str, Any]:
        """Repetitions for :func:`interleaved`: a fixed 3 + 20 on a GPU; 2 warm-up rounds and timed rounds
        sized to a time budget on the CPU (5 to 30); 1 + 2 with ``quick``."""
        if self.quick:
            return {"warmup": 1, "rounds": 2}
        if self.cuda:
            return {"warmup": 3, "rounds": 20}
        return {"warmup": 2, "budget_s": budget_s, "min_rounds": 5, "max_rounds": 30}


def _machine_lines(device: Any, cores: int) -> list[str]:
    import torch

    lines = [
        f"# python -m benchmarks on {platform.node() or 'this machine'}: {platform.machine()}, {cores} usable CPU cores, "
        f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    ]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(
            f"# device {props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}"
        )
    else:
        lines.append(f"# device cpu ({platform.processor() or platform.machine()})")
    if hasattr(os, "getloadavg"):
        load = os.getloadavg()
        lines.append("# load average at start: " + " ".join(f"{v:.1f}" for v in load))
        if device.type == "cpu" and load[0] > cores and torch.get_num_threads() > 1:
            lines.append(
                "# note: other work keeps the cores busy, so torch's threads wait on each other; timings are noisy "
                "(OMP_NUM_THREADS=1 gives steadier ones). Compare the ratios, not the times."
            )
    return lines


def _select(only: Sequence[str] | None) -> list[str]:
    if not only:
        return list(GROUPS)
    unknown = [name for name in only if name not in GROUPS]
    if unknown:
        raise ConfigError(f"--only: unknown figure group(s) {', '.join(unknown)} (choose from {', '.join(GROUPS)})")
    return [name for name in GROUPS if name in set(only)]


def write_json(path: str | os.PathLike[str], figures: Mapping[str, float | None]) -> Path:
    """Write ``figures`` (name -> value or ``None``) as JSON, through a temporary file and a rename."""
    from napari_icnn.atomic import atomic_write_text

    clean = {k: (None if v is None or not math.isfinite(v) else float(v)) for k, v in figures.items()}
    return atomic_write_text(path, json.dumps(clean, indent=2, allow_nan=False) + "\n")


def release(device: Any) -> None:
    """Free what the last measurement left, so the next one starts from the same state."""
    import gc

    gc.collect()
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


def _group_figures(name: str, ctx: Context) -> Iterator[Figure]:
    module_name = GROUPS[name][0]
    module = importlib.import_module(f"benchmarks.{module_name}")
    if getattr(module, "NAME", None) != name:
        raise RuntimeError(f"benchmarks/{module_name}.py does not define NAME = {name!r}")
    yield from module.run(ctx)


def run_benchmarks(
    only: Sequence[str] | None = None,
    *,
    quick: bool = False,
    device: str = "auto",
    json_path: str | os.PathLike[str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> tuple[dict[str, float | None], list[str]]:
    """Run the figure groups ``only`` (all by default); print one line per figure.

    Returns
    -------
    figures, failed
        Figure name -> value (``None`` when missing), and the groups that stopped on an error (each
        reported on ``err`` with its traceback, as ``<group>_failed`` in the figures; the other
        groups still run). With ``json_path`` the JSON is rewritten after each group, so an
        interrupted run keeps what it measured.

    Raises
    ------
    ConfigError
        An unknown group, or ``device="cuda"`` where there is none.
    """
    from napari_icnn.devices import resolve_device

    out = out or sys.stdout
    err = err or sys.stderr
    groups = _select(only)
    dev = resolve_device(device)
    if dev.type == "cuda":
        import torch

        # Let cuDNN pick its fastest algorithms for each fixed input shape, as a long training run
        # effectively does; the warm-up rounds absorb the search.
        torch.backends.cudnn.benchmark = True

    def log(text: str) -> None:
        print(f"... {text}", file=err, flush=True)

    figures: dict[str, float | None] = {}
    failed: list[str] = []
    if json_path is not None:
        if Path(json_path).is_dir():
            raise ConfigError(f"--json {json_path}: is a folder; give a file name")
        try:
            write_json(json_path, figures)  # fail now, not after the first group, if it cannot be written
        except OSError as exc:
            raise ConfigError(f"--json {json_path}: cannot write there ({exc.strerror or exc})") from None
    with tempfile.TemporaryDirectory(prefix="icnn-bench-") as tmp:
        ctx = Context(device=dev, quick=quick, workdir=Path(tmp), log=log)
        for line in _machine_lines(dev, ctx.cores):
            print(line, file=out, flush=True)
        print(f"# figure groups: {', '.join(groups)}{' (quick)' if quick else ''}", file=out, flush=True)
        for name in groups:
            start = time.perf_counter()
            (ctx.workdir / name).mkdir()
            ctx.workdir, root = ctx.workdir / name, ctx.workdir
            try:
                for fig in _group_figures(name, ctx):
                    if fig.name in figures:
                        raise RuntimeError(f"figure {fig.name} is reported twice")
                    figures[fig.name] = fig.value
                    print(fig.line(), file=out, flush=True)
            except Exception as exc:  # noqa: BLE001 - one group's failure must not lose the others' figures
                failed.append(name)
                traceback.print_exc(file=err)
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                fig = Figure.absent(f"{name}_failed", f"{type(exc).__name__}: {first}")
                figures[fig.name] = None
                print(fig.line(), file=out, flush=True)
            finally:
                ctx.workdir = root
                release(dev)  # what a failed group held (a CUDA out-of-memory) must not starve the next
            print(f"# {name}: {time.perf_counter() - start:.0f} s", file=out, flush=True)
            if json_path is not None:
                write_json(json_path, figures)
        if hasattr(os, "getloadavg"):
            print("# load average at end: " + " ".join(f"{v:.1f}" for v in os.getloadavg()), file=out, flush=True)
    return figures, failed

