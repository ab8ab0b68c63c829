"""Synthetic cohort generation: images per second at 512 px with one worker.

The rate is :func:`~napari_icnn.data.synth.generate_cohort`'s own clock over the images (each
photograph drawn, its masks and PNG files written), not counting the folder set-up and the
labels file.
"""

from __future__ import annotations

from collections.abc import Iterator

from benchmarks.harness import Context, Figure

NAME = "synth"
SIZE = 512

__all__ = ["NAME", "run"]


def run(ctx: Context) -> Iterator[Figure]:
    from napari_icnn.data.synth import generate_cohort
    from napari_icnn.progress import drain

    n = 4 if ctx.quick else 32
    ctx.log(f"synthetic cohort: {n} images of {SIZE} px, 1 worker")
    summary = drain(generate_cohort(ctx.workdir / "cohort", n, size=SIZE, seed=0, workers=1, look="clean"))
    yield Figure("synth_images_per_s_512", summary.n / summary.seconds, unit="images/s",
                 note=f"{n} images, 1 worker, masks and PNG files written")
