"""Generate cohorts, train the ordinary CNN and the ICNN, score both and the baselines with ``icnn evaluate``.

Everything a run produces lands in ``DIR``::

    DIR/data/seed<S>/{train,val,test}/    synthetic cohorts (the test cohort is never seen in training)
    DIR/runs/seed<S>/<arch>-<task>-{ordinary,icnn}/        bundles
    DIR/data/seed<S>/test-scored<N>/      the test images every explainer is scored on (see scored_subset)
    DIR/metrics/seed<S>/<arch>-<task>-<model>-<explainer>.json     interpretability, on test-scored<N>
    DIR/metrics/seed<S>/<arch>-<task>-<model>-icnn-test.json       classification, on the whole test cohort
    DIR/metrics/seed<S>/<arch>-<task>-<model>-lesion-types.json    lesion-type evidence (ICNNs), on test-scored<N>

Models: ``ordinary`` (the baseline), ``icnn`` (every filter serves the decision class, ``--categories decision``)
and ``icnn-types`` (one lesion type per filter, ``--categories lesion-types``), both ICNNs fine-tuned from the
same ordinary CNN.
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

__all__ = ["experiment_iter", "run_experiment", "scored_subset", "link_subset"]


def _cohort(path: Path, n: int, size: int, seed: int, look: str = "clean") -> Generator[Any, None, None]:
    import torch

    from napari_icnn.data.synth import generate_cohort, is_cohort
    from napari_icnn.errors import ConfigError

    if is_cohort(path) and json.loads((path / "cohort.json").read_text()).get("complete", True):
        made = json.loads((path / "cohort.json").read_text()).get("look", "clean")
        if made != look:  # a resumed study must not mix looks
            raise ConfigError(f"{path}: cohort was generated with look {made!r}, this preset uses {look!r}")
        return
    # as many generator processes as torch may use threads, so OMP_NUM_THREADS=1 leaves the other core free
    yield from generate_cohort(path, n, size=size, seed=seed, workers=max(1, min(2, torch.get_num_threads())),
                               overwrite=True, look=look)


def _train(out: Path, data: Path, p: Preset, arch: str, task: str, seed: int, ordinary: bool,
           device: str, init: Path | None = None, categories: str = "auto") -> Generator[Any, None, float]:
    """Train one arm. With ``init`` (the ICNN arm when the preset fine-tunes), start from that trained
    ordinary bundle and run ``p.finetune_epochs`` interpretable epochs at ``p.finetune_lr``."""
    from napari_icnn.config import TrainConfig
    from napari_icnn.engine.train import train_iter

    if (out / "models" / "model.pt").is_file() and (out / "configs" / "metadata.json").is_file():
        return float(json.loads((out / "checkpoints" / "history.json").read_text())[-1]["seconds"])
    overrides = {**p.train, **({} if ordinary else p.icnn)}
    if categories != "lesion-types":  # the lesion-mask loss supervises lesion-type filters only
        overrides.pop("lesion_mask_weight", None)
    schedule: dict[str, Any] = dict(epochs=p.epochs, warmup_epochs=p.warmup)
    if init is not None:
        schedule = dict(epochs=p.finetune_epochs, warmup_epochs=0, lr=p.finetune_lr, init=str(init))
    cfg = TrainConfig(data=str(data / "train"), val=str(data / "val"), out=str(out), task=task, arch=arch,
                      size=input_size(p, categories), seed=seed, ordinary=ordinary, device=device, categories=categories,
                      resume=(out / "checkpoints" / "last.pt").is_file(), **{**schedule, **overrides})
    t0 = time.monotonic()
    yield from train_iter(cfg)
    return time.monotonic() - t0


def input_size(p: Preset, categories: str) -> int:
    """The input side a model of the study trains at: the lesion-type ICNN's own where the preset has one."""
    return p.types_size if categories == "lesion-types" and p.types_size else p.size


def _evaluate(bundle: Path, data: Path, out: Path, explainer: str, device: str,
              select_on: Path | None) -> Generator[Any, None, dict]:
    from napari_icnn.engine.evaluate import evaluate_iter
    from napari_icnn.engine.lesion_types import lesion_type_figures_iter

    if out.is_file():
        return json.loads(out.read_text())
    if explainer == "lesion-types":
        return (yield from lesion_type_figures_iter(str(bundle), str(data), str(select_on), device=device,
                                                    out=str(out)))
    return (yield from evaluate_iter(str(bundle), str(data), explainer=explainer, device=device, out=str(out),
                                     select_on=None if select_on is None else str(select_on)))


SUBSET_SEED_OFFSET = 4
"""The scored subset of seed s is drawn with numpy seed 1000·s + 4 (the cohorts use + 1, 2, 3)."""


def scored_subset(cohort: Path, n: int, seed: int) -> Path:
    """The test images every explainer is scored on: ``n`` drawn at random (numpy ``default_rng(seed)``, without
    replacement, kept in cohort order) from the cohort, as a sibling folder of symlinks with its own labels.csv.

    Occlusion costs a forward pass per patch, so it cannot see the whole cohort; the ICNN and Grad-CAM are scored
    on the same subset so that no explainer is compared on images another one never saw. The draw depends on the
    seed and the cohort's size only, never on a model or a result.
    """
    import csv

    import numpy as np

    with open(cohort / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    take = np.sort(np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False))
    rows = [rows[i] for i in take]
    ids = [r["id"] for r in rows]
    sub = cohort.parent / f"{cohort.name}-scored{len(rows)}"
    rule = {"cohort": cohort.name, "n": len(rows), "numpy_seed": seed, "ids": ids}
    if (sub / "labels.csv").is_file() and (sub / "subset.json").is_file():
        if json.loads((sub / "subset.json").read_text()) == rule:
            return sub
    link_subset(cohort, rows, sub)
    (sub / "subset.json").write_text(json.dumps(rule, indent=1))
    return sub


def link_subset(cohort: Path, rows: list[dict[str, str]], sub: Path) -> Path:
    """A folder of symlinks to ``rows`` (labels.csv rows) of a synthetic cohort: images, masks, labels.csv."""
    import csv
    import os

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
                    device: str = "auto", icnn_overrides: dict[str, Any] | None = None,
                    base_only: bool = False) -> Generator[Any, None, dict]:
    """Run (or resume) the study; yields progress events, returns the results document. ``base_only``: only the
    cohorts and the ordinary CNNs, what validation variants (``training.experiments.variants``) start from; no model
    is evaluated, no test image read, no report written."""
    from napari_icnn.errors import ConfigError

    if preset not in PRESETS:
        raise ConfigError(f"--preset: one of {', '.join(PRESETS)} (got {preset!r})")
    p = PRESETS[preset]
    ff = (icnn_overrides or {}).get("free_fraction")
    if ff is not None and not 0 <= ff <= 1:  # checked now, not after the cohorts have been generated
        raise ConfigError(f"--free-fraction: must be between 0 and 1 (got {ff!r})")
    w = (icnn_overrides or {}).get("lesion_mask_weight")
    if w is not None and not 0 <= w <= 100:
        raise ConfigError(f"--lesion-mask-weight: must be between 0 and 100 (got {w!r})")
    if icnn_overrides:
        p = replace(p, icnn={**p.icnn, **icnn_overrides})
    by = p.icnn.get("match_filters_by", "selectivity")
    if by != "selectivity" and p.icnn.get("lesion_mask_weight") == 0:  # training would refuse it after the cohorts
        given = "match_filters_by" in (icnn_overrides or {})
        raise ConfigError(f"--match-filters-by {by} ({'given' if given else f'the preset {preset}'}) matches filters "
                          "by where they peak in the lesion masks: it needs --lesion-mask-weight above 0, or "
                          "--match-filters-by selectivity")
    seeds = tuple(seeds) if seeds else p.seeds
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    times: dict[str, float] = {}
    records: list[dict[str, Any]] = []
    for s in seeds:
        data = root / "data" / f"seed{s}"
        yield Message(f"seed {s}: cohorts")
        yield from _cohort(data / "train", p.n_train, p.image_size, 1000 * s + 1, p.look)
        yield from _cohort(data / "val", p.n_val, p.image_size, 1000 * s + 2, p.look)
        yield from _cohort(data / "test", p.n_test, p.image_size, 1000 * s + 3, p.look)
        scored = None if base_only else scored_subset(data / "test", p.baseline_images, 1000 * s + SUBSET_SEED_OFFSET)
        for arch in p.archs:
            for task in p.tasks:
                models = (["ordinary"] + (["icnn"] if p.single_category or task != "referable" else [])
                          + (["icnn-types"] if p.lesion_types and task == "referable" else []))
                if base_only:
                    models = ["ordinary"]
                for model in models:
                    name = f"{arch}-{task}-{model}"
                    bundle = root / "runs" / f"seed{s}" / name
                    yield Message(f"seed {s}: training {name}")
                    init = None
                    if model != "ordinary" and p.finetune_epochs:
                        init = root / "runs" / f"seed{s}" / f"{arch}-{task}-ordinary"
                    # the ordinary CNN and the single-category ICNN predict the referable decision alone
                    categories = {"icnn-types": "lesion-types"}.get(model, "decision" if task == "referable" else "auto")
                    times[f"seed{s}/{name}"] = yield from _train(bundle, data, p, arch, task, s, model == "ordinary",
                                                                 device, init, categories)
                    if scored is None:
                        continue
                    # classification (and calibration) on the whole test cohort; every explainer, the ICNN's
                    # filters included, on the scored subset; filters chosen on the validation cohort
                    runs = [("icnn", data / "test", "classification")]
                    runs += [(ex, scored, "explainer") for ex in ["icnn"] + (list(p.explainers) if model == "ordinary"
                                                                            else [])]
                    if model != "ordinary" and p.lesion_types:
                        runs.append(("lesion-types", scored, "lesion-types"))
                    for ex, images, role in runs:
                        suffix = "-test" if role == "classification" else ""
                        mpath = root / "metrics" / f"seed{s}" / f"{name}-{ex}{suffix}.json"
                        mpath.parent.mkdir(parents=True, exist_ok=True)
                        yield Message(f"seed {s}: evaluating {name} with {ex} on {images.name}")
                        doc = yield from _evaluate(bundle, images, mpath, ex, device, data / "val")
                        records.append({"seed": s, "arch": arch, "task": task, "model": model, "explainer": ex,
                                        "role": role, "images": images.name,
                                        "metrics_file": str(mpath.relative_to(root)), "metrics": doc})
    if base_only:
        return {"preset": p.name, "seeds": list(seeds), "base_only": True, "train_seconds": times,
                "total_seconds": time.monotonic() - t_start}
    from training.experiments.report import write_report

    doc = {
        "preset": p.name,
        "look": p.look,
        "seeds": list(seeds),
        "device": device,
        "machine": f"{platform.machine()} {platform.processor() or ''} {_cpu_count()} CPU".strip(),
        "gpu": _gpu_name(),
        "protocol": (f"ordinary CNN: {p.epochs} epochs from scratch; ICNN: the same seed's ordinary CNN fine-tuned "
                     f"for {p.finetune_epochs} interpretable epochs (peak lr {p.finetune_lr:g}); its training time "
                     "below excludes the ordinary CNN it starts from"
                     + (f"; ICNN options {p.icnn}" if p.icnn else "")
                     + (f"; the lesion-type ICNN reads {p.types_size} px photographs, the other models {p.size} px"
                        if p.lesion_types and p.types_size and p.types_size != p.size else "")) if p.finetune_epochs else
                    (f"both models {p.epochs} epochs from scratch, the first {p.warmup} without the filter loss"),
        "scored_subset": {"images": p.baseline_images, "of": p.n_test,
                          "rule": f"numpy default_rng(1000 * seed + {SUBSET_SEED_OFFSET}).choice without replacement, "
                                  "drawn before any model is trained"},
        "selection": "validation cohort (best filter per part, parts paired with an ordinary CNN's filters)",
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
