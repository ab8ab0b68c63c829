"""Batch inference (``icnn infer``): the pipeline against its parts, and memory against the number of files.

On a CPU the figures are :func:`benchmarks.bench_batch.run`'s (JPEG-baseline OP DICOM inputs, every
output format; see its docstring), each prefixed ``batch_``. On a GPU, or where the DICOM writers
cannot be imported, the same comparison runs over PNG photographs with JSON output
(``batch_png_``): the model on the device, decoding in worker processes, no DICOM writer needed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from benchmarks.harness import Context, Figure

NAME = "batch"

__all__ = ["NAME", "run"]

_SETTINGS = ("n_files", "side_px", "workers", "cores", "n_small", "n_large")
"""Keys of the batch benchmark's results that describe the run rather than measure it."""


def _unit(key: str) -> str:
    if key.endswith("_ips"):
        return "images/s"
    if key.endswith("_mb"):
        return "MB"
    return "x"


def _targets(ctx: Context, key: str):
    if key.endswith("pipeline_over_bound"):
        return ctx.target(">=", cpu=0.85, gpu=0.85)
    if key == "rss_growth":
        return ctx.target("<=", cpu=1.10, gpu=1.10)
    return None


def _dicom_missing() -> str | None:
    import importlib.util

    absent = [name for name in ("pydicom", "highdicom") if importlib.util.find_spec(name) is None]
    return f"{' and '.join(absent)} (not installed)" if absent else None


def run(ctx: Context) -> Iterator[Figure]:
    missing = _dicom_missing()
    if ctx.cuda or missing:
        if not ctx.cuda:
            yield Figure.absent("batch_dicom", f"the DICOM batch figures need {missing}; PNG inputs instead")
        yield from _png_run(ctx)
        return
    from benchmarks import bench_batch

    results = bench_batch.run(quick=ctx.quick, log=lambda key, value: ctx.log(f"batch {key} {value:.3f}"))
    setting = ", ".join(f"{k} {results[k]:g}" for k in _SETTINGS if k in results)
    for key, value in results.items():
        if key in _SETTINGS:
            continue
        note = setting if key in ("pipeline_over_bound", "rss_growth") else ""
        yield Figure(f"batch_{key}", value, unit=_unit(key), target=_targets(ctx, key), note=note)


def _png_files(folder, n: int, side: int, distinct: int = 6) -> list:
    """``n`` PNG photographs of ``side`` px (byte copies of ``distinct`` synthetic ones)."""
    import io

    from PIL import Image

    from napari_icnn.data.synth import generate_fundus

    folder.mkdir(parents=True, exist_ok=True)
    blobs = []
    for s in range(distinct):
        buf = io.BytesIO()
        Image.fromarray(generate_fundus(s, size=side, look="clean").image).save(buf, format="PNG", compress_level=1)
        blobs.append(buf.getvalue())
    paths = []
    for i in range(n):
        path = folder / f"img{i:05d}.png"
        path.write_bytes(blobs[i % distinct])
        paths.append(path)
    return paths


def _png_run(ctx: Context) -> Iterator[Figure]:
    from benchmarks.bench_batch import make_bundle, timed_infer
    from napari_icnn.batch import BatchConfig
    from napari_icnn.batch.outputs import OutputSpec
    from napari_icnn.batch.summary import Row
    from napari_icnn.batch.work import Prepared, explain_rows, prepare_file, write_frame
    from napari_icnn.bundle import load_bundle
    from napari_icnn.dicom.uids import ModelInfo

    n_files, side = (24, 512) if ctx.quick else (200, 1024)
    workers, batch = min(4, max(1, ctx.cores - 2)), 8
    n_model = min(n_files, 40)
    root = ctx.workdir
    ctx.log(f"batch inference over {n_files} PNG photographs of {side} px, {workers} workers")
    files = _png_files(root / "in", n_files, side)
    bundle = make_bundle(root / "bundle")
    model = load_bundle(bundle, ctx.device.type)

    start = time.perf_counter()
    kept: list[Prepared] = []
    for i, path in enumerate(files):
        items = prepare_file(str(path), model.size)
        if i < n_model:
            kept += [p for p in items if isinstance(p, Prepared)]
    t_decode = (time.perf_counter() - start) / n_files

    spec = OutputSpec(str(root / "model_only"), ModelInfo(model.name, model.version, model.sha256), formats=("json",))
    explain_rows(model, kept[:batch])  # warm-up (cuDNN, allocator)
    start = time.perf_counter()
    for first in range(0, len(kept), batch):
        for prepared, expl in explain_rows(model, kept[first : first + batch]):
            if isinstance(expl, Row):
                raise RuntimeError(f"the model failed on {prepared.input_path}: {expl.reason}")
            write_frame(spec, prepared, expl)
    t_model = (time.perf_counter() - start) / len(kept)
    del kept, model

    cfg = BatchConfig(inputs=(str(root / "in"),), out=str(root / "pipeline"), model=str(bundle),
                      device=ctx.device.type, workers=workers, batch=batch, formats=("json",))
    summary, steady = timed_infer(cfg)
    if summary.n_ok != n_files:
        raise RuntimeError(f"the batch run processed {summary.n_ok} of {n_files} files: {summary.describe()}")
    bound = 1.0 / (t_decode + t_model)
    pipeline = n_files / summary.seconds
    setting = f"{n_files} files of {side} px, {workers} workers, batch {batch}, JSON output"
    target = ctx.target(">=", cpu=0.85, gpu=0.85)
    yield Figure("batch_png_decode_ips", 1.0 / t_decode, unit="images/s", note="read, fundus check, preprocess")
    yield Figure("batch_png_model_ips", 1.0 / t_model, unit="images/s", note="batched explanation + JSON writing")
    yield Figure("batch_png_bound_ips", bound, unit="images/s", note="1 / (decode + model): one process doing both")
    yield Figure("batch_png_pipeline_ips", pipeline, unit="images/s", note="wall time, start-up included")
    yield Figure("batch_png_pipeline_over_bound", pipeline / bound, target=target, note=setting)
    yield Figure("batch_png_pipeline_steady_ips", steady, unit="images/s", note="first to last file finished")
    yield Figure("batch_png_pipeline_steady_over_bound", steady / bound, target=target)
