"""Training throughput at the default configuration, and whether the step waits on its data.

The data are a synthetic cohort (512 px photographs) read through :func:`~napari_icnn.data.datasets.make_dataset`
with augmentation and the memory cache, and a MONAI ``DataLoader`` built as the training engine
builds it (``TrainConfig()`` defaults, resolved for this machine: size, batch, width, filters, cache, loader workers). Two
variants of the engine's ICNN step are interleaved: one takes the next batch from the loader
(waiting for it is part of its time), the other reuses one batch already on the device. Their
ratio, ``train_loader_utilisation``, is the share of the step the device spends computing: 1 means
it never waits on decoding or augmentation.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

from benchmarks.fig_train import TrainStep
from benchmarks.harness import Context, Figure, Timings, interleaved, release

NAME = "throughput"

__all__ = ["NAME", "run"]


class _Batches:
    """Endless batches from a data loader, a new epoch whenever one ends (as training goes on)."""

    def __init__(self, loader: Any, device: Any):
        self.loader, self.device, self._it = loader, device, iter(loader)

    def __call__(self) -> tuple[Any, Any]:
        import torch

        try:
            batch = next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            batch = next(self._it)
        x = batch["image"].to(self.device, non_blocking=True)
        y = batch["target"].to(self.device, non_blocking=True).float().view(len(x), -1)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y


def _loader(dataset: Any, cfg: Any, device: Any, workers: int) -> Any:
    import torch
    from monai.data import DataLoader

    gen = torch.Generator().manual_seed(cfg.seed)
    return DataLoader(dataset, batch_size=cfg.batch, shuffle=True, drop_last=True, num_workers=workers,
                      pin_memory=device.type == "cuda", generator=gen, persistent_workers=workers > 0)


def _compare(ctx: Context, cfg: Any, dataset: Any, workers: int) -> Timings:
    """The engine's step on the loader's next batch against the same step on one cached batch."""
    step = TrainStep(cfg, ctx.device)
    batches = _Batches(_loader(dataset, cfg, ctx.device, workers), ctx.device)
    cached = partial(step, *batches())
    return interleaved({"cached": cached, "loader": lambda: step(*batches())}, sync=ctx.sync,
                       **ctx.timing(budget_s=30.0))


def run(ctx: Context) -> Iterator[Figure]:
    from napari_icnn.config import DEFAULT_BATCH, TrainConfig
    from napari_icnn.data.datasets import make_dataset
    from napari_icnn.data.layouts import discover
    from napari_icnn.data.synth import generate_cohort
    from napari_icnn.progress import drain

    batch = 4 if ctx.quick else DEFAULT_BATCH
    n_images = batch * (2 if ctx.quick else 8)
    # the loader workers the engine would choose here (explicit batch: the quick run's is smaller)
    cfg = TrainConfig(batch=batch, categories="decision").resolved(n_images, device_type=ctx.device.type,
                                                                   cores=ctx.cores)
    gen_workers = min(8, ctx.cores) if ctx.cores >= 4 else 1
    ctx.log(f"training data: {n_images} synthetic photographs of 512 px ({gen_workers} worker(s))")
    drain(generate_cohort(ctx.workdir / "cohort", n_images, size=512, seed=0, workers=gen_workers, look="clean"))
    records = list(discover(ctx.workdir / "cohort", "synth").records)
    dataset = make_dataset(records, size=cfg.size, task=cfg.task, augment=cfg.augment, cache=cfg.cache)

    variants = [cfg.workers]
    more = min(8, ctx.cores // 2)
    if more > cfg.workers and ctx.cores >= 4:
        variants.append(more)
    for workers in variants:
        ctx.log(f"training steps, {cfg.arch} {cfg.size} px, batch {cfg.batch}, {workers} loader worker(s)")
        t = _compare(ctx, cfg, dataset, workers)
        release(ctx.device)
        utilisation = t.ratio("cached", "loader")
        note = (f"{cfg.arch} {cfg.size} px, batch {cfg.batch}, {workers} loader worker(s), {t.rounds} pairs; "
                f"{1e3 * t.median('cached'):.0f} / {1e3 * t.median('loader'):.0f} ms")
        if workers == cfg.workers:
            yield Figure("train_images_per_s", cfg.batch / t.median("loader"), unit="images/s",
                         note="engine ICNN step with the default data loader")
            yield Figure("train_images_per_s_cached", cfg.batch / t.median("cached"), unit="images/s",
                         note="the same step on a batch already on the device")
            yield Figure("train_loader_utilisation", utilisation, target=ctx.target(">=", cpu=None, gpu=0.95),
                         note=note)
        else:
            yield Figure("train_loader_utilisation_more_workers", utilisation, note=note)
            yield Figure("train_images_per_s_more_workers", cfg.batch / t.median("loader"), unit="images/s",
                         note=f"{workers} loader workers")
    if len(variants) == 1:
        yield Figure.absent("train_loader_utilisation_more_workers", f"needs 4 or more cores (this machine: {ctx.cores})")
        yield Figure.absent("train_images_per_s_more_workers", f"needs 4 or more cores (this machine: {ctx.cores})",
                            unit="images/s")
