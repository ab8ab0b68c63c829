"""Peak memory of an ICNN training step against the ordinary network's (same backbone, batch, weights).

On a GPU: ``torch.cuda.max_memory_allocated`` over a step after a warm-up step (weights, optimizer
state, batch and activations), above what was allocated before the step's objects were built;
target ICNN / ordinary <= 1.05. On a CPU the allocator keeps freed memory, so each step runs in a
fresh process (glibc told to unmap freed blocks at once) and its peak resident-memory growth above
the process's size after its imports is reported, as information: it repeats to the megabyte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from benchmarks.harness import Context, Figure, release

NAME = "memory"

__all__ = ["NAME", "run", "peak_step_mb"]

_CHILD = """
import json, sys
from benchmarks.fig_memory import _fresh_process_peak
print(json.dumps(_fresh_process_peak(*json.loads(sys.argv[1]))))
"""


def plan(ctx: Context) -> list[tuple[str, int, int]]:
    """(arch, size, batch): every backbone and size at the default batch on a GPU; the default size on a CPU."""
    from benchmarks.fig_train import ARCHS, SIZES, plan_batch

    if ctx.cuda:
        return [(arch, size, plan_batch(ctx, size)) for arch in ARCHS for size in SIZES]
    if ctx.quick:
        return [("vgg", 256, 2)]
    return [("vgg", 256, 8), ("resnet", 256, 8)]


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (Linux), in bytes."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _resident_bytes() -> int:
    """Resident memory of this process now."""
    now = _status_bytes("VmRSS")
    if now is None:
        import psutil

        now = psutil.Process().memory_info().rss
    return now


def _peak_resident_bytes() -> int:
    """Peak resident memory of this process since it started its program.

    ``VmHWM`` rather than ``getrusage``: Linux carries ``ru_maxrss`` over ``exec`` from the forked
    copy of the parent, so a child would report at least the parent's size.
    """
    peak = _status_bytes("VmHWM")
    if peak is None:
        import resource

        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = value if sys.platform == "darwin" else value * 1024  # bytes on macOS, KiB elsewhere
    return peak


def _fresh_process_peak(arch: str, size: int, batch: int, loss: str, ordinary: bool) -> float:
    """In a new process: MB by which the peak resident size exceeds the size before the step was built."""
    import monai.networks.blocks  # noqa: F401 - imported before the baseline so only the step is counted
    import monai.networks.nets  # noqa: F401
    import torch

    import napari_icnn.engine.train  # noqa: F401
    from benchmarks.fig_train import TrainStep, fixed_batch, step_config
    from benchmarks.materialised import materialised_filter_loss

    device = torch.device("cpu")
    cfg = step_config(arch, size, batch, ordinary=ordinary)
    before = _resident_bytes()
    step = TrainStep(cfg, device, filter_loss=materialised_filter_loss if loss == "materialised" else None)
    x, y = fixed_batch(cfg, device)
    for _ in range(2):
        step(x, y)
    return max(_peak_resident_bytes() - before, 0) / 2**20


def peak_step_mb(ctx: Context, arch: str, size: int, batch: int, *, loss: str = "vectorised",
                 ordinary: bool = False) -> float:
    """Peak memory (MB) of one training step of this configuration (see the module docstring)."""
    if not ctx.cuda:
        root = Path(__file__).resolve().parents[1]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
        # glibc then maps every block above 64 KiB on its own and unmaps it when freed, so the peak
        # resident size follows the tensors alive at once instead of what the heap kept
        env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
        args = json.dumps([arch, size, batch, loss, ordinary])
        proc = subprocess.run([sys.executable, "-c", _CHILD, args], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"the memory probe for {arch} {size} px failed:\n{proc.stderr[-2000:]}")
        return float(json.loads(proc.stdout.strip().splitlines()[-1]))

    import torch

    from benchmarks.fig_train import TrainStep, fixed_batch, step_config
    from benchmarks.materialised import materialised_filter_loss

    release(ctx.device)
    base = torch.cuda.memory_allocated(ctx.device)
    cfg = step_config(arch, size, batch, ordinary=ordinary)
    step = TrainStep(cfg, ctx.device, filter_loss=materialised_filter_loss if loss == "materialised" else None)
    x, y = fixed_batch(cfg, ctx.device)
    step(x, y)  # optimizer state and cuDNN workspaces exist from here on
    ctx.sync()
    torch.cuda.reset_peak_memory_stats(ctx.device)
    step(x, y)
    ctx.sync()
    peak = torch.cuda.max_memory_allocated(ctx.device) - base
    del step, x, y
    release(ctx.device)
    return peak / 2**20


def run(ctx: Context) -> Iterator[Figure]:
    target = ctx.target("<=", cpu=None, gpu=1.05)
    what = "max_memory_allocated" if ctx.cuda else "peak RSS growth of a fresh process, information"
    for arch, size, batch in plan(ctx):
        tag = f"{arch}_{size}"
        ctx.log(f"peak memory {tag}, batch {batch}")
        icnn = peak_step_mb(ctx, arch, size, batch)
        plain = peak_step_mb(ctx, arch, size, batch, ordinary=True)
        yield Figure(f"train_memory_ratio_{tag}", icnn / plain, target=target,
                     note=f"{what}; batch {batch}, {icnn:.0f} / {plain:.0f} MB")
        yield Figure(f"train_peak_mb_icnn_{tag}", icnn, unit="MB")
        yield Figure(f"train_peak_mb_ordinary_{tag}", plain, unit="MB")
