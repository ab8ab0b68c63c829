"""What the vectorised template filter loss saves over the materialised ``(B, C, n², n, n)`` reference.

First the reference (:mod:`benchmarks.materialised`) is checked against the real loss on a small
float64 case; then, on the same maps, the loss's forward and backward are timed side by side, and
whole training steps (ordinary network, ICNN with the real loss, ICNN with the reference) are
interleaved; last the peak memory of the two ICNN steps (``torch.cuda.max_memory_allocated`` on a
GPU; on a CPU the peak resident-memory growth of a fresh process for each, as information).
Sizes are kept where the reference fits: n = 32 at batch 16 on a GPU (a 4.3 GB product), small
batches on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterator

from benchmarks.fig_train import TrainStep, fixed_batch, step_config, time_steps
from benchmarks.harness import Context, Figure, Timings, interleaved, release
from benchmarks.materialised import check_against_real, materialised_filter_loss, product_bytes

NAME = "materialised"
TOLERANCE = 1e-9
"""Largest relative difference (float64) accepted between the reference and the real loss."""

__all__ = ["NAME", "run", "plan"]


def plan(ctx: Context) -> list[tuple[str, int, int]]:
    """(arch, size, batch) of the comparisons: n = 32 on a GPU (VGG 256, ResNet 512); small on a CPU."""
    if ctx.cuda:
        return [("vgg", 256, 16), ("resnet", 512, 16)]
    if ctx.quick:
        return [("vgg", 224, 2)]
    return [("vgg", 224, 2), ("resnet", 512, 2)]


def _loss_timings(ctx: Context, cfg) -> tuple[Timings, int]:
    """Forward + backward of the real loss and of the reference on the same maps, interleaved; and n."""
    import torch

    from napari_icnn.icnn.assignment import FilterAssignment
    from napari_icnn.icnn.loss import template_filter_loss
    from napari_icnn.icnn.templates import TemplateBank

    device = ctx.device
    n = cfg.size // (8 if cfg.arch == "vgg" else 16)
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(cfg.batch, cfg.n_filters, n, n, generator=g).to(device).requires_grad_(True)
    y = (torch.arange(cfg.batch) % 2).float().view(-1, 1).to(device)
    positive = FilterAssignment(cfg.n_filters, 1, n_free=16).to(device).positive_mask(y)
    bank = TemplateBank(n, cfg.beta).to(device)

    def call(fn):
        def once() -> None:
            loss = fn(maps, positive, bank, mode=cfg.loss_mode, normalise=cfg.normalise)
            (grad,) = torch.autograd.grad(loss, maps)
            float(grad[0, 0, 0, 0])

        return once

    gb = product_bytes(cfg.batch, cfg.n_filters, n) / 1e9
    ctx.log(f"filter loss, n = {n}, batch {cfg.batch}: the reference builds a {gb:.2f} GB product")
    pair = {"vectorised": call(template_filter_loss), "materialised": call(materialised_filter_loss)}
    return interleaved(pair, sync=ctx.sync, **ctx.timing(budget_s=10.0)), n


def run(ctx: Context) -> Iterator[Figure]:
    worst = check_against_real()
    yield Figure("materialised_check_max_rel_diff", worst, unit="",
                 note="reference vs real loss and gradient, float64, B=3 C=5 n=6, both modes")
    if not worst <= TOLERANCE:
        raise RuntimeError(f"the materialised reference differs from the real loss by {worst:.3g} (relative); "
                           "its figures would compare against a different loss")
    for arch, size, batch in plan(ctx):
        tag = f"{arch}_{size}"
        cfg = step_config(arch, size, batch)
        t, n = _loss_timings(ctx, cfg)
        release(ctx.device)
        yield Figure(f"loss_time_ratio_materialised_{tag}", t.ratio("materialised", "vectorised"),
                     note=f"loss forward+backward, batch {batch}, n {n}, {t.rounds} pairs, "
                          f"{1e3 * t.median('materialised'):.1f} / {1e3 * t.median('vectorised'):.1f} ms")

        ctx.log(f"training steps {tag}, batch {batch}: ordinary, ICNN, ICNN with the reference loss")
        t = _steps(ctx, arch, size, batch)
        release(ctx.device)
        yield Figure(f"train_step_ratio_materialised_{tag}", t.ratio("reference", "ordinary"),
                     note=f"ICNN step with the reference loss / ordinary step; batch {batch}, {t.rounds} rounds; "
                          f"vectorised loss: {t.ratio('icnn', 'ordinary'):.3f}")
        yield Figure(f"train_step_materialised_over_vectorised_{tag}", t.ratio("reference", "icnn"),
                     note=f"{1e3 * t.median('reference'):.1f} / {1e3 * t.median('icnn'):.1f} ms")

        yield _memory_ratio(ctx, arch, size, batch)


def _steps(ctx: Context, arch: str, size: int, batch: int):
    cfg = step_config(arch, size, batch)
    steps = {
        "ordinary": TrainStep(step_config(arch, size, batch, ordinary=True), ctx.device),
        "icnn": TrainStep(cfg, ctx.device),
        "reference": TrainStep(cfg, ctx.device, filter_loss=materialised_filter_loss),
    }
    x, y = fixed_batch(cfg, ctx.device)
    return time_steps(ctx, steps, x, y, budget_s=25.0)


def _memory_ratio(ctx: Context, arch: str, size: int, batch: int) -> Figure:
    from benchmarks.fig_memory import peak_step_mb

    tag = f"{arch}_{size}"
    vec = peak_step_mb(ctx, arch, size, batch, loss="vectorised")
    mat = peak_step_mb(ctx, arch, size, batch, loss="materialised")
    what = "max_memory_allocated" if ctx.cuda else "peak RSS growth of a fresh process"
    return Figure(f"memory_ratio_materialised_{tag}", mat / vec,
                  note=f"ICNN step, {what}: {mat:.0f} / {vec:.0f} MB; batch {batch}")
