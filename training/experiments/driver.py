"""Generate cohorts, train the ordinary CNN and the ICNN, score both and the baselines with ``icnn evaluate``.

Everything a run produces lands in ``DIR``::

    DIR/data/seed<S>/{train,val,test}/    synthetic cohorts (the test cohort is never seen in training)
    DIR/runs/seed<S>/<arch>-<task>-{ordinary,icnn}/        bundles
    DIR/metrics/seed<S>/<arch>-<task>-<model>-<explainer>.json
    DIR/results.json, DIR/results.md, DIR/figures/

A finished step is skipped when the driver runs again into the same DIR, so a long study can be resumed.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Generator
from dataclasses import replace
from pathlib import Path
from typing import Any

from napari_icnn.progress import Message, drain
from training.experiments.presets import PRESETS, Preset

__all__ = ["experiment_iter", "run_experiment"]


def _cohort(path: Path, n: int, size: int, seed: int) -> Generator[Any, None, None]:
    from napari_icnn.data.synth import generate_cohort, is_cohort

    if is_cohort(path) and json.loads((path / "cohort.json").read_text()).get("complete", True):
        return
    yield from generate_cohort(path, n, size=size, seed=seed, workers=2, overwrite=True)


def _train(out: Path, data: Path, p: Preset, arch: str, task: str, seed: int, ordinary: bool,
           device: str, init: Path | None = None) -> Generator[Any, None, float]:
    """Train one arm. With ``init`` (the ICNN arm when the preset fine-tunes), start from that trained
    ordinary bundle and run ``p.finetune_epochs`` interpretable epochs at ``p.finetune_lr``."""
    from napari_icnn.config import TrainConfig
    from napari_icnn.engine.train import train_iter

    if (out / "models" / "model.pt").is_file() and (out / "configs" / "metadata.json").is_file():
        return float(json.loads((out / "checkpoints" / "history.json").read_text())[-1]["seconds"])
    overrides = {**p.train, **({} if ordinary else p.icnn)}
    schedule: dict[str, Any] = dict(epochs=p.epochs, warmup_epochs=p.warmup)
    if init is not None:
        schedule = dict(epochs=p.finetune_epochs, warmup_epochs=0, lr=p.finetune_lr, init=str(init))
    cfg = TrainConfig(data=str(data / "train"), val=str(data / "val"), out=str(out), task=task, arch=arch,
                      size=p.size, seed=seed, ordinary=ordinary, device=device,
                      resume=(out / "checkpoints" / "last.pt").is_file(), **{**schedule, **overrides})
    t0 = time.monotonic()
    yield from train_iter(cfg)
    return time.monotonic() - t0


def _evaluate(bundle: Path, test: Path, out: Path, explainer: str, device: str,
              limit: int | None) -> Generator[Any, None, dict]:
    from napari_icnn.engine.evaluate import evaluate_iter

    if out.is_file():
        return json.loads(out.read_text())
    data = test
    if limit:
        data = _subset(test, limit)
    return (yield from evaluate_iter(str(bundle), str(data), explainer=explainer, device=device, out=str(out)))


def _subset(cohort: Path, n: int) -> Path:
    """A CSV-free view of the first n images of a synth cohort (a sibling folder of symlinks)."""
    import csv
    import os

    sub = cohort.parent / f"{cohort.name}-first{n}"
    if (sub / "labels.csv").is_file():
        return sub
    with open(cohort / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))[:n]
    (sub / "images").mkdir(parents=True, exist_ok=True)
    for part_dir in (cohort / "masks").iterdir():
        (sub / "masks" / part_dir.name).mkdir(parents=True, exist_ok=True)
    for r in rows:
        i = r["id"]
        for src in [cohort / "images" / f"{i}.png", *[(d / f"{i}.png") for d in (cohort / "masks").iterdir()]]:
            dst = sub / src.relative_to(cohort)
            if not dst.exists():
                os.symlink(src.resolve(), dst)
    with open(sub / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return sub


def experiment_iter(out: str | Path, *, preset: str = "cpu", seeds: tuple[int, ...] | None = None,
                    device: str = "auto", icnn_overrides: dict[str, Any] | None = None) -> Generator[Any, None, dict]:
    """Run (or resume) the study; yields progress events, returns the results document."""
    from napari_icnn.errors import ConfigError

    if preset not in PRESETS:
        raise ConfigError(f"--preset: one of {', '.join(PRESETS)} (got {preset!r})")
    p = PRESETS[preset]
    ff = (icnn_overrides or {}).get("free_fraction")
    if ff is not None and not 0 <= ff <= 1:  # checked now, not after the cohorts have been generated
        raise ConfigError(f"--free-fraction: must be between 0 and 1 (got {ff!r})")
    if icnn_overrides:
        p = replace(p, icnn={**p.icnn, **icnn_overrides})
    seeds = tuple(seeds) if seeds else p.seeds
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    times: dict[str, float] = {}
    records: list[dict[str, Any]] = []
    for s in seeds:
        data = root / "data" / f"seed{s}"
        yield Message(f"seed {s}: cohorts")
        yield from _cohort(data / "train", p.n_train, p.image_size, 1000 * s + 1)
        yield from _cohort(data / "val", p.n_val, p.image_size, 1000 * s + 2)
        yield from _cohort(data / "test", p.n_test, p.image_size, 1000 * s + 3)
        for arch in p.archs:
            for task in p.tasks:
                for model in ("ordinary", "icnn"):
                    name = f"{arch}-{task}-{model}"
                    bundle = root / "runs" / f"seed{s}" / name
                    yield Message(f"seed {s}: training {name}")
                    init = None
                    if model == "icnn" and p.finetune_epochs:
                        init = root / "runs" / f"seed{s}" / f"{arch}-{task}-ordinary"
                    times[f"seed{s}/{name}"] = yield from _train(bundle, data, p, arch, task, s, model == "ordinary",
                                                                 device, init)
                    explainers = ["icnn"] + (list(p.explainers) if model == "ordinary" else [])
                    for ex in explainers:
                        mpath = root / "metrics" / f"seed{s}" / f"{name}-{ex}.json"
                        mpath.parent.mkdir(parents=True, exist_ok=True)
                        yield Message(f"seed {s}: evaluating {name} with {ex}")
                        doc = yield from _evaluate(bundle, data / "test", mpath, ex, device,
                                                   None if ex == "icnn" else p.baseline_images)
                        records.append({"seed": s, "arch": arch, "task": task, "model": model, "explainer": ex,
                                        "metrics_file": str(mpath.relative_to(root)), "metrics": doc})
    from training.experiments.report import write_report

    doc = {
        "preset": p.name,
        "seeds": list(seeds),
        "device": device,
        "machine": f"{platform.machine()} {platform.processor() or ''} {_cpu_count()} CPU".strip(),
        "gpu": _gpu_name(),
        "protocol": (f"ordinary CNN: {p.epochs} epochs from scratch; ICNN: the same seed's ordinary CNN fine-tuned "
                     f"for {p.finetune_epochs} interpretable epochs (peak lr {p.finetune_lr:g}); its training time "
                     "below excludes the ordinary CNN it starts from"
                     + (f"; ICNN options {p.icnn}" if p.icnn else "")) if p.finetune_epochs else
                    (f"both models {p.epochs} epochs from scratch, the first {p.warmup} without the filter loss"),
        "train_seconds": times,
        "total_seconds": time.monotonic() - t_start,
        "records": records,
    }
    yield Message("writing tables and figures")
    write_report(root, p, doc)
    return doc


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 1


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def run_experiment(out: str | Path, **kw: Any) -> dict:
    from napari_icnn.progress import TextProgress

    return drain(experiment_iter(out, **kw), TextProgress())
