"""Training step time of the ICNN over the ordinary network: same backbone, batch and weights; and of the
finer top map (``--top-stride``: VGG 4 px against 8, ResNet 8 against 16) over each backbone's default, and of
ResNet over VGG, the costs behind the lesion-type recipe's geometry.

The ICNN step is the training engine's (:func:`napari_icnn.engine.train.train_iter`) in an
interpretable epoch: mask on, forward under the engine's autocast, BCE, filter-assignment update,
template filter loss, backward, AdamW and one-cycle steps, and the per-step loss read-outs. The
ordinary step is the same engine step of the same network built with ``interpretable=False``
(``--ordinary``): no mask, no assignment, no filter loss. On CUDA both use channels-last and bf16
autocast as the engine does.

:class:`TrainStep` is shared by the memory, reference-loss and throughput figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from benchmarks.harness import Context, Figure, Timings, interleaved, release

NAME = "train_step"
ARCHS = ("vgg", "resnet")
SIZES = (224, 256, 512)

__all__ = ["NAME", "TrainStep", "step_config", "fixed_batch", "plan_batch", "time_steps", "run"]


def step_config(arch: str, size: int, batch: int, *, ordinary: bool = False, **overrides: Any):
    """The training configuration of a step: the defaults (``TrainConfig()``) but for these; one output (the
    referable decision, every filter serving it), the step these benchmarks have always timed."""
    from napari_icnn.config import TrainConfig

    overrides = {"categories": "decision", **overrides}
    return TrainConfig(arch=arch, size=size, batch=batch, ordinary=ordinary, device="auto", **overrides)


def plan_batch(ctx: Context, size: int) -> int:
    """Batch of the step figures: the default (16) on a GPU; 8 (2 at 512 px) on a CPU; 2 when quick."""
    from napari_icnn.config import DEFAULT_BATCH

    if ctx.cuda:
        return DEFAULT_BATCH
    if ctx.quick:
        return 2
    return 8 if size <= 256 else 2


def fixed_batch(cfg, device, seed: int = 0) -> tuple[Any, Any]:
    """A batch as the engine feeds it (images on the device, channels-last on CUDA; half positive)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(cfg.batch, 3, cfg.size, cfg.size, generator=g).to(device)
    y = (torch.arange(cfg.batch) % 2).float().view(-1, 1).to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


class TrainStep:
    """One step of the training engine on a batch, as in its interpretable epochs.

    Parameters
    ----------
    cfg
        The run's :class:`~napari_icnn.config.TrainConfig` (``ordinary=True`` for the baseline).
    device
        Where it runs.
    filter_loss
        The template filter loss to use (the product's by default; the materialised reference for
        the comparison).
    seed
        Weights' seed: the same seed gives the ICNN and the ordinary network the same weights.
    """

    def __init__(self, cfg, device, *, filter_loss: Callable[..., Any] | None = None, seed: int = 0):
        import torch

        from napari_icnn.engine.train import _build_net, filter_weights_for, n_free_filters
        from napari_icnn.icnn.assignment import FilterAssignment

        torch.manual_seed(seed)
        n_outputs = 1  # referable DR, the default task
        net = _build_net(cfg, n_outputs).to(device)
        if device.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        net.set_mask_enabled(cfg.interpretable)  # an interpretable epoch (the ordinary net stays off)
        self.net, self.cfg, self.device = net, cfg, device
        self.assignment = FilterAssignment(cfg.n_filters, n_outputs, n_free=n_free_filters(cfg)).to(device)
        self.opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        # a constant schedule: the engine's per-step multiplier costs the same whatever its value
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda step: 1.0)
        self.filter_weights = filter_weights_for(cfg, device)
        self.lam = 1.0 if cfg.interpretable else 0.0
        self.filter_loss = filter_loss
        net.train()
        self.assignment.train()

    def __call__(self, x, y) -> float:
        """One step of the engine (:func:`napari_icnn.engine.train.train_step`) on ``(x, y)``; its loss, read
        back as the engine does for its progress."""
        from napari_icnn.engine.train import train_step

        loss, _, _ = train_step(self.net, self.net, x, y, self.opt, self.sched, self.assignment, self.cfg,
                                self.lam, self.filter_weights, filter_loss=self.filter_loss)
        return float(loss)


def time_steps(ctx: Context, steps: dict[str, TrainStep], x, y, budget_s: float) -> Timings:
    """Interleaved timings of ``steps`` (name -> step) on the same batch."""
    return interleaved({name: partial(step, x, y) for name, step in steps.items()}, sync=ctx.sync,
                       **ctx.timing(budget_s=budget_s))


def _compare(ctx: Context, arch: str, size: int, batch: int) -> Timings:
    cfg = step_config(arch, size, batch)
    steps = {"ordinary": TrainStep(step_config(arch, size, batch, ordinary=True), ctx.device),
             "icnn": TrainStep(cfg, ctx.device)}
    x, y = fixed_batch(cfg, ctx.device)
    return time_steps(ctx, steps, x, y, budget_s=25.0)


FINE_MAP = {"vgg": (8, 4), "resnet": (16, 8)}
"""Each backbone's default top stride and its finer map (:data:`napari_icnn.config.TOP_STRIDES`)."""


def _geometry(ctx: Context, size: int, batch: int) -> Timings:
    """The ICNN step of both backbones at both top strides, interleaved on one batch."""
    steps = {f"{arch}_{stride}": TrainStep(step_config(arch, size, batch, top_stride=stride), ctx.device)
             for arch, strides in FINE_MAP.items() for stride in strides}
    x, y = fixed_batch(step_config("vgg", size, batch), ctx.device)
    return time_steps(ctx, steps, x, y, budget_s=40.0)


def run(ctx: Context) -> Iterator[Figure]:
    size = 256
    batch = plan_batch(ctx, size)
    ctx.log(f"training step, top-map geometry, {size} px, batch {batch}")
    t = _geometry(ctx, size, batch)
    release(ctx.device)
    for arch, (coarse, fine) in FINE_MAP.items():
        yield Figure(f"train_step_ratio_fine_map_{arch}_{size}", t.ratio(f"{arch}_{fine}", f"{arch}_{coarse}"),
                     note=f"{fine}-px over {coarse}-px cells, batch {batch}, {t.rounds} rounds, "
                          f"{1e3 * t.median(f'{arch}_{fine}'):.0f} / {1e3 * t.median(f'{arch}_{coarse}'):.0f} ms")
    yield Figure(f"train_step_ratio_resnet_over_vgg_{size}", t.ratio("resnet_16", "vgg_8"),
                 note="each backbone at its default top stride")
    yield Figure(f"train_step_ratio_resnet_over_vgg_lesion_maps_{size}", t.ratio("resnet_8", "vgg_4"),
                 note="each at the finer map the lesion-type filters use")
    target = ctx.target("<=", cpu=1.10, gpu=1.03)
    for arch in ARCHS:
        for size in SIZES:
            batch = plan_batch(ctx, size)
            ctx.log(f"training step {arch} {size} px, batch {batch}")
            t = _compare(ctx, arch, size, batch)
            release(ctx.device)
            tag = f"{arch}_{size}"
            a_ms, b_ms = 1e3 * t.median("ordinary"), 1e3 * t.median("icnn")
            yield Figure(f"train_step_ratio_{tag}", t.ratio("icnn", "ordinary"), target=target,
                         note=f"batch {batch}, {t.rounds} pairs, {b_ms:.1f} / {a_ms:.1f} ms")
            yield Figure(f"train_step_ms_icnn_{tag}", b_ms, unit="ms")
            yield Figure(f"train_step_ms_ordinary_{tag}", a_ms, unit="ms")
