"""The three ways :meth:`~napari_icnn.icnn.templates.TemplateBank.scores` computes the template scores.

The dense product (one matrix product with the (n²+1, n²) templates), the mirror-folded product
(four quarter-size ones) and the correlation with the template cone (one depthwise convolution) give
the same numbers; which is fastest depends on the device, the map side n and the cone's width. Each
is timed forward and backward on the same maps (64 filters, the batch of a training step) at the map
sides of the default VGG at 256 and 512 px, and reported against the method the bank picks by
itself, so a GPU run shows whether its default (dense) is the right one there too.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from benchmarks.harness import Context, Figure, interleaved, release

NAME = "scores"
SIDES = (32, 64)
"""Top-map sides of the default VGG (stride 8) at 256 and 512 px."""

__all__ = ["NAME", "SIDES", "run"]


def _batch(ctx: Context, n: int) -> int:
    if ctx.quick:
        return 2
    if ctx.cuda:
        return 16
    return 8 if n <= 32 else 2


def _fwd_bwd(bank, maps, method: str) -> None:
    import torch

    (grad,) = torch.autograd.grad(bank.scores(maps, method).sum(), maps)
    float(grad[0, 0, 0, 0])  # waits for an asynchronous device


def run(ctx: Context) -> Iterator[Figure]:
    import torch

    from napari_icnn.config import TrainConfig
    from napari_icnn.icnn.templates import SCORE_METHODS, TemplateBank

    cfg = TrainConfig()
    for n in SIDES:
        b = _batch(ctx, n)
        bank = TemplateBank(n, cfg.beta).to(ctx.device)
        g = torch.Generator().manual_seed(n)
        maps = torch.rand(b, cfg.n_filters, n, n, generator=g).to(ctx.device).requires_grad_(True)
        chosen = bank.method_for(maps)
        ctx.log(f"template scores at n = {n}, batch {b}: {', '.join(SCORE_METHODS)} (the bank picks {chosen})")

        t = interleaved({m: partial(_fwd_bwd, bank, maps, m) for m in SCORE_METHODS}, sync=ctx.sync,
                        **ctx.timing(budget_s=10.0))
        release(ctx.device)
        for method in SCORE_METHODS:
            yield Figure(f"scores_ms_{method}_n{n}", 1e3 * t.median(method), unit="ms",
                         note=f"forward + backward, {b} x {cfg.n_filters} maps, {t.rounds} rounds")
        for method in SCORE_METHODS:
            if method != chosen:
                yield Figure(f"scores_ratio_{method}_over_chosen_n{n}", t.ratio(method, chosen),
                             note=f"{method} / {chosen} (the bank's choice here): above 1 means the choice is right")
