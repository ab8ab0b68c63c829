"""Batch inference throughput and memory (``icnn infer``).

Measures, over the same generated files:

- ``decode_ips``: a decode-only pass (read, decode, fundus check, preprocess: the worker's share),
- ``model_ips``: a model-only pass over frames decoded beforehand (batched forward, explanation and
  writing every output: the share the pipeline overlaps with decoding),
- ``pipeline_ips``: the whole pipeline (``infer`` with worker processes), wall time including start-up
  (model load, worker start); ``pipeline_steady_ips`` the rate between the first and the last file
  finished,
- ``bound_ips`` = 1 / (t_decode + t_model): one process doing both, one image after the other, and
  ``pipeline_over_bound``, which should be at least 0.85,
- the same with JSON output only (``json_*``), where the network is a larger share of the work,
- ``rss_small_mb`` / ``rss_large_mb``: peak resident memory of a run (calling process and workers
  together, sampled every 50 ms) over ``n_small`` and ``n_large`` small files, which should be about
  equal (``rss_growth`` near 1).

Run ``python -m benchmarks.bench_batch [--quick] [--no-memory]``; figures are printed, not asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["run", "make_bundle", "make_op_files"]


def make_bundle(out: Path, size: int = 256, width: int = 32, n_filters: int = 64) -> Path:
    """An untrained bundle of the default architecture (what a trained one costs to run)."""
    import torch

    from napari_icnn.bundle import FilterInfo, save_bundle
    from napari_icnn.icnn.networks import ICNN
    from napari_icnn.parts import PARTS

    torch.manual_seed(0)
    net = ICNN(arch="vgg", n_outputs=1, n_filters=n_filters, image_size=size, width=width)
    keys = list(PARTS)
    filters = [FilterInfo(id=i, category="referable DR", part=keys[i % len(keys)]) for i in range(n_filters)]
    return save_bundle(out, net.state_dict(), network=net.config, task="referable", class_names=["referable DR"],
                       filters=filters, name="bench_model")


def make_op_files(folder: Path, n: int, side: int, distinct: int = 6) -> list[Path]:
    """``n`` JPEG-baseline OP files of ``side`` px (``distinct`` different photographs, new UIDs each)."""
    from napari_icnn.data.synth import generate_fundus
    from napari_icnn.dicom.op_writer import write_op

    folder.mkdir(parents=True, exist_ok=True)
    images = [generate_fundus(s, size=side, look="clean").image for s in range(distinct)]
    paths = []
    for i in range(n):
        path = folder / f"IM{i:05d}.dcm"
        write_op(path, images[i % distinct], laterality="LR"[i % 2])
        paths.append(path)
    return paths


def _copies(folder: Path, n: int, side: int) -> None:
    """``n`` small PNG files (byte copies of a few photographs) for the memory runs."""
    from PIL import Image

    from napari_icnn.data.synth import generate_fundus

    folder.mkdir(parents=True, exist_ok=True)
    blobs = []
    for s in range(4):
        p = folder / f"seed{s}.png"
        Image.fromarray(generate_fundus(s, size=side, look="clean").image).save(p)
        blobs.append(p.read_bytes())
        p.unlink()
    for i in range(n):
        sub = folder / f"{i // 500:03d}"  # archives spread files over folders
        sub.mkdir(exist_ok=True)
        (sub / f"img{i:05d}.png").write_bytes(blobs[i % len(blobs)])


_RSS_CHILD = """
import json, sys, threading, time
import psutil
from napari_icnn.batch import BatchConfig, infer

me = psutil.Process()
peak = {"own": 0, "workers": 0, "total": 0}
running = True

def sample():
    # the whole process tree, sampled: ru_maxrss of children would count the parent's pages a
    # spawned worker shares for an instant between fork and exec
    while running:
        try:
            own = me.memory_info().rss
            workers = sum(c.memory_info().rss for c in me.children(recursive=True))
        except psutil.Error:
            continue
        peak["own"] = max(peak["own"], own)
        peak["workers"] = max(peak["workers"], workers)
        peak["total"] = max(peak["total"], own + workers)
        time.sleep(0.05)

t = threading.Thread(target=sample, daemon=True)
t.start()
s = infer(BatchConfig(inputs=(sys.argv[1],), out=sys.argv[2], model=sys.argv[3], workers=int(sys.argv[4]),
                      formats=("json",)))
running = False
t.join()
print(json.dumps({"rows": s.n_processed, **{k: v / 2**20 for k, v in peak.items()}, "seconds": s.seconds}))
"""


def _peak_rss(inputs: Path, out: Path, bundle: Path, workers: int) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(inputs), str(out), str(bundle), str(workers)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def timed_infer(cfg) -> tuple[object, float]:
    """Run ``cfg``; its summary and its steady rate: files per second between the first and the
    last file finished (what start-up, the model load and the worker start, does not weigh on)."""
    from napari_icnn.batch import infer_iter
    from napari_icnn.progress import Progress, drain

    stamps: list[float] = []

    def on_event(event) -> None:
        if isinstance(event, Progress) and event.stage == "infer" and event.done:
            stamps.append(time.perf_counter())

    summary = drain(infer_iter(cfg), on_event)
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return summary, steady


def run(quick: bool = False, memory: bool = True, log=None) -> dict[str, float]:
    """Measure the batch figures on this machine; returns them by name.

    ``memory=False`` leaves out the peak-memory runs; ``log`` receives each figure as it is measured.
    """
    import torch

    from napari_icnn.batch import BatchConfig
    from napari_icnn.batch.local import usable_cores
    from napari_icnn.batch.outputs import OutputSpec
    from napari_icnn.batch.work import Prepared, explain_rows, prepare_file, write_frame
    from napari_icnn.bundle import load_bundle
    from napari_icnn.dicom.uids import ModelInfo

    n_files, side = (24, 512) if quick else (200, 1024)
    n_model = min(n_files, 40)  # decoded frames held in memory for the model-only pass
    n_small, n_large = (50, 500) if quick else (200, 2000)
    cores = usable_cores()
    workers, batch = min(2, cores), 8
    results: dict[str, float] = {"n_files": n_files, "side_px": side, "workers": workers, "cores": cores}
    note = log or (lambda key, value: None)
    with tempfile.TemporaryDirectory(prefix="icnn-bench-") as tmp:
        root = Path(tmp)
        bundle = make_bundle(root / "bundle")
        files = make_op_files(root / "in", n_files, side)
        model = load_bundle(bundle, "cpu")

        t = time.perf_counter()
        kept: list[Prepared] = []
        for i, path in enumerate(files):
            items = prepare_file(str(path), model.size)
            if i < n_model:
                kept += [p for p in items if isinstance(p, Prepared)]
        t_decode = (time.perf_counter() - t) / n_files
        note("decode_ips", 1.0 / t_decode)

        threads = torch.get_num_threads()
        spec = OutputSpec(str(root / "model_only"), ModelInfo(model.name, model.version, model.sha256))
        t = time.perf_counter()
        explained = []
        for start in range(0, len(kept), batch):
            explained += explain_rows(model, kept[start : start + batch])
        t_forward = (time.perf_counter() - t) / len(kept)
        t = time.perf_counter()
        for p, expl in explained:
            write_frame(spec, p, expl)
        t_write = (time.perf_counter() - t) / len(kept)
        t_model = t_forward + t_write
        note("model_ips", 1.0 / t_model)
        json_only = OutputSpec(str(root / "model_only_json"), spec.model, formats=("json",))
        t = time.perf_counter()
        for p, expl in explained:
            write_frame(json_only, p, expl)
        t_write_json = (time.perf_counter() - t) / len(kept)
        del kept, explained
        torch.set_num_threads(threads)

        summary, steady = timed_infer(BatchConfig(inputs=(str(root / "in"),), out=str(root / "pipeline"),
                                             model=str(bundle), workers=workers, batch=batch))
        assert summary.n_ok == n_files, summary
        pipeline_ips = n_files / summary.seconds
        bound = 1.0 / (t_decode + t_model)
        results.update(
            decode_ips=1.0 / t_decode,
            forward_ips=1.0 / t_forward,
            write_ips=1.0 / t_write,
            model_ips=1.0 / t_model,
            bound_ips=bound,
            pipeline_ips=pipeline_ips,
            pipeline_over_bound=pipeline_ips / bound,
            pipeline_steady_ips=steady,
            pipeline_steady_over_bound=steady / bound,
        )
        note("pipeline_over_bound", pipeline_ips / bound)
        light, light_steady = timed_infer(BatchConfig(inputs=(str(root / "in"),), out=str(root / "pipeline_json"),
                                                 model=str(bundle), workers=workers, batch=batch, formats=("json",)))
        bound_light = 1.0 / (t_decode + t_forward + t_write_json)
        results.update(
            json_model_ips=1.0 / (t_forward + t_write_json),
            json_bound_ips=bound_light,
            json_pipeline_ips=n_files / light.seconds,
            json_pipeline_over_bound=n_files / light.seconds / bound_light,
            json_pipeline_steady_ips=light_steady,
            json_pipeline_steady_over_bound=light_steady / bound_light,
        )
        note("json_pipeline_over_bound", results["json_pipeline_over_bound"])
        if not memory:
            return results

        small_bundle = make_bundle(root / "small_bundle", size=64, width=8, n_filters=8)
        for name, n in (("small", n_small), ("large", n_large)):
            _copies(root / name, n, 128)
            got = _peak_rss(root / name, root / f"{name}_out", small_bundle, workers)
            assert got["rows"] == n, got
            results[f"n_{name}"] = n
            results[f"rss_{name}_mb"] = got["total"]
            results[f"rss_{name}_main_mb"] = got["own"]
            results[f"rss_{name}_workers_mb"] = got["workers"]
        results["rss_growth"] = results["rss_large_mb"] / results["rss_small_mb"]
    return results


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    t = time.perf_counter()
    res = run(quick="--quick" in args, memory="--no-memory" not in args,
              log=lambda key, value: print(f"... {key} {value:.3f}", file=sys.stderr, flush=True))
    for k, v in res.items():
        print(f"{k:>24s}  {v:.3f}" if isinstance(v, float) else f"{k:>24s}  {v}")
    print(f"{'benchmark_seconds':>24s}  {time.perf_counter() - t:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
