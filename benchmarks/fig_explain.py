"""Explain latency for the 1411 x 1411 photograph scikit-image ships, after the model is loaded.

Stages, as the Explain widget runs them (the widget's default settings: top 5 filters, regions at
half of each filter's peak, no heat maps):

- ``preprocess``: the fundus check and :func:`~napari_icnn.data.transforms.preprocess`;
- ``forward``: the rest of :func:`~napari_icnn.explain.explain` (network, contributions, peaks);
- ``maps``: the regions of the top-K filters of each group (evidence, context, possible artefacts) on
  the scan's pixel grid (``region_on_scan``);
- ``layers``: the rest of :func:`~napari_icnn.layer_data.evidence_layers` plus adding its
  layers to a real ``napari.Viewer(show=False)``, only where a display is available.

``core`` = preprocess + forward + maps (GPU target <= 100 ms); ``total`` adds the layers (CPU target
<= 1500 ms). Each round times every stage once; medians are reported. On a CPU with several torch
threads, ``explain()`` is also timed on one thread, interleaved with the default, which shows
whether the threads help or fight over cores that other work holds.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import Context, Figure, interleaved

NAME = "explain"

__all__ = ["NAME", "run", "bundle_for", "display_missing"]


def bundle_for(ctx: Context) -> tuple[Path, str]:
    """The shipped demo bundle when there is one, else an untrained bundle of the default architecture."""
    from benchmarks.bench_batch import make_bundle
    from napari_icnn.bundle import METADATA, WEIGHTS, shipped_bundle_path

    shipped = shipped_bundle_path()
    if (shipped / METADATA).is_file() and (shipped / WEIGHTS).is_file():
        return shipped, "shipped demo bundle"
    from napari_icnn.config import DEFAULT_SIZE, TrainConfig

    cfg = TrainConfig()
    path = make_bundle(ctx.workdir / "bundle", size=DEFAULT_SIZE, width=cfg.width, n_filters=cfg.n_filters)
    return path, f"untrained {cfg.arch} bundle, {DEFAULT_SIZE} px, width {cfg.width}, {cfg.n_filters} filters"


def photograph() -> tuple[Any, str]:
    """scikit-image's 1411 x 1411 retina photograph; a synthetic one of that size where the installed
    scikit-image cannot provide it (it fetches some data files on first use)."""
    try:
        import skimage.data

        return np.ascontiguousarray(skimage.data.retina()[..., :3]), "skimage.data.retina"
    except Exception as exc:  # noqa: BLE001 - any failure to provide the file: use a stand-in, and say so
        from napari_icnn.data.synth import generate_fundus

        return generate_fundus(0, size=1411, look="clean").image, f"a synthetic 1411 px photograph (no skimage retina: {exc})"


def display_missing() -> str | None:
    """Why napari layers cannot be measured here (``None`` when they can)."""
    import importlib.util

    if importlib.util.find_spec("napari") is None:
        return "napari is not installed"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (run under Xvfb: xvfb-run -a python -m benchmarks ...)"
    return None


def _viewer(image) -> tuple[Any, Any]:
    import napari

    viewer = napari.Viewer(show=False)
    scan = viewer.add_image(image, rgb=True, name="retina")
    return viewer, scan


def run(ctx: Context) -> Iterator[Figure]:
    from napari_icnn.bundle import load_bundle
    from napari_icnn.data.fov import check_fundus
    from napari_icnn.data.transforms import preprocess
    from napari_icnn.explain import explain
    from napari_icnn.image import FundusImage
    from napari_icnn.layer_data import Placement, evidence_layers, scan_key
    from napari_icnn.remembered import ExplainSettings

    settings = ExplainSettings()
    top_k, threshold = settings.top_k, settings.threshold
    pixels, source = photograph()
    image = FundusImage(pixels=pixels, source=source)
    path, what = bundle_for(ctx)
    start = time.perf_counter()
    model = load_bundle(path, device=ctx.device.type)
    load_ms = 1e3 * (time.perf_counter() - start)
    ctx.log(f"explain {source}, {pixels.shape[1]} x {pixels.shape[0]} px, with the {what}")

    no_display = display_missing()
    viewer = scan = None
    if no_display is None:
        viewer, scan = _viewer(pixels)
    placement = Placement.from_layer(scan) if scan is not None else Placement()
    key = scan_key(scan) if scan is not None else "retina"

    def stage_preprocess() -> None:
        fov = check_fundus(pixels, image.source)
        preprocess(pixels, model.size, fov)

    expl = explain(image, model)

    shown = expl.evidence(top_k) + expl.context(top_k) + expl.possible_artefacts(top_k)

    def stage_maps() -> None:
        for f in shown:
            expl.region_on_scan(f.id, threshold)

    def stage_layer_data() -> list:
        return evidence_layers(expl, scan=key, top_k=top_k, threshold=threshold, placement=placement)

    times: dict[str, list[float]] = {k: [] for k in ("preprocess", "explain", "maps", "layer_data", "napari")}
    warmup, rounds = (1, 2) if ctx.quick else ((3, 20) if ctx.cuda else (1, 8))
    try:
        for r in range(warmup + rounds):
            timed = {}
            for name, call in (("preprocess", stage_preprocess), ("explain", lambda: explain(image, model)),
                               ("maps", stage_maps)):
                ctx.sync()
                t = time.perf_counter()
                call()
                ctx.sync()
                timed[name] = time.perf_counter() - t
            t = time.perf_counter()
            layers = stage_layer_data()
            timed["layer_data"] = time.perf_counter() - t
            if viewer is not None:
                t = time.perf_counter()
                added = [getattr(viewer, f"add_{kind}")(data, **kwargs) for data, kwargs, kind in layers]
                _process_events()
                timed["napari"] = time.perf_counter() - t
                for layer in added:
                    viewer.layers.remove(layer)
            if r >= warmup:
                for name, value in timed.items():
                    times[name].append(value)
    finally:
        if viewer is not None:
            viewer.close()

    med = {k: 1e3 * statistics.median(v) for k, v in times.items() if v}
    pre = med["preprocess"]
    forward = max(med["explain"] - pre, 0.0)
    maps = med["maps"]
    core = pre + forward + maps
    note = f"{rounds} rounds, {ctx.device.type}, {source}"
    yield Figure("explain_model_load_ms", load_ms, unit="ms", note=what)
    yield Figure("explain_preprocess_ms", pre, unit="ms", note=note)
    yield Figure("explain_forward_ms", forward, unit="ms", note="explain() less preprocessing")
    yield Figure("explain_maps_ms", maps, unit="ms",
                 note=f"{len(shown)} regions on the scan grid: top {top_k} of each group")
    yield Figure("explain_core_ms", core, unit="ms", target=ctx.target("<=", cpu=None, gpu=100.0),
                 note="preprocess + forward + maps")
    layer_data = max(med["layer_data"] - maps, 0.0)
    if viewer is None:
        yield Figure.absent("explain_layers_ms", no_display, unit="ms")
        yield Figure.absent("explain_total_ms", no_display, unit="ms", target=ctx.target("<=", cpu=1500.0, gpu=None))
    else:
        layers_ms = layer_data + med["napari"]
        yield Figure("explain_layers_ms", layers_ms, unit="ms",
                     note=f"layer data {layer_data:.0f} ms + adding {len(shown)} Labels layers (top {top_k} evidence, "
                          f"context, possible artefacts) {med['napari']:.0f} ms")
        yield Figure("explain_total_ms", core + layers_ms, unit="ms", target=ctx.target("<=", cpu=1500.0, gpu=None),
                     note="explain + evidence_layers + adding to a napari viewer")

    if not ctx.cuda:
        yield _threads_figure(ctx, lambda: explain(image, model))


def _process_events() -> None:
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is not None:
        app.processEvents()


def _threads_figure(ctx: Context, call) -> Figure:
    import torch

    threads = torch.get_num_threads()
    if threads <= 1:
        return Figure.absent("explain_1thread_over_default", "torch already runs on one thread here")

    def one_thread() -> None:
        torch.set_num_threads(1)
        try:
            call()
        finally:
            torch.set_num_threads(threads)

    t = interleaved({"default": call, "one": one_thread}, **ctx.timing(budget_s=10.0))
    return Figure("explain_1thread_over_default", t.ratio("one", "default"),
                  note=f"explain() on 1 thread / on {threads}: {1e3 * t.median('one'):.0f} / "
                       f"{1e3 * t.median('default'):.0f} ms, {t.rounds} pairs")
