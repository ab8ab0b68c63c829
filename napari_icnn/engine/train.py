"""The training engine behind ``icnn train``, the napari Train widget and the MONAI bundle config.

:func:`train_iter` is a generator: it yields progress events and returns a :class:`TrainResult`;
:func:`train` drains it. Closing the generator (the GUI's Stop button) or Ctrl-C keeps the last good
checkpoint and still writes a usable bundle from the best epoch so far.

Schedule (see the feasibility notes): ``warmup_epochs`` ordinary epochs, then the interpretable epochs with
the mask on and the template filter loss weighted by ``lam / (t - warmup)``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_icnn.atomic import atomic_write_text
from napari_icnn.bundle import (
    WEIGHTS,
    FilterInfo,
    atomic_torch_save,
    lesion_types_size,
    load_bundle,
    save_bundle,
)
from napari_icnn.config import TrainConfig, flag_of
from napari_icnn.devices import autocast_for, resolve_device
from napari_icnn.engine import runtime
from napari_icnn.engine.run_folder import BEST, CACHE, CHECKPOINT_DIR, CONFIG, HISTORY, LAST, check_output
from napari_icnn.errors import Cancelled, ConfigError
from napari_icnn.parts import FREE_CATEGORY, MASK_LESION_KEYS
from napari_icnn.progress import EpochEnd, Message, Progress

if TYPE_CHECKING:
    from torch.utils.data.distributed import DistributedSampler

    from napari_icnn.icnn.assignment import FilterAssignment

__all__ = ["TrainResult", "train_iter", "train", "train_step", "class_names_for", "compute_record", "CHECKPOINT_DIR"]


@dataclass
class TrainResult:
    """What a training run left: the bundle folder, its best epoch, the per-epoch metrics and the wall time."""

    bundle: Path
    best_epoch: int
    epochs_done: int
    history: list[dict[str, float]] = field(default_factory=list)
    stopped: bool = False
    seconds: float = 0.0


def class_names_for(task: str) -> list[str]:
    """Output names of a target set (:data:`napari_icnn.config.TARGET_SETS` key): the decision is "referable DR",
    lesion types keep their part keys."""
    from napari_icnn.config import TARGET_SETS

    return ["referable DR" if k == "referable" else k for k in TARGET_SETS[task]]


BEST_TOLERANCE = 0.005
"""Validation AUC steps smaller than this do not make an earlier epoch the best one."""


def _takes_over(score: float, best: dict[str, Any]) -> bool:
    """Whether an eligible epoch with validation ``score`` becomes the best one. A later epoch within
    BEST_TOLERANCE of the best score so far wins the tie: the filters keep settling on their parts after the
    AUC has levelled off, and smaller AUC steps are noise."""
    return best["epoch"] == 0 or not best.get("eligible", True) or score >= best["score"] - BEST_TOLERANCE


def matches_again(cfg: TrainConfig, epoch: int) -> bool:
    """Whether the filters are matched to categories again at the start of 1-based ``epoch``: always with
    ``--filter-matching epoch``; with ``fixed`` only at the first two interpretable epochs (the first from the
    statistics the filters start with, the second from one epoch of training), after which they keep their type."""
    assert cfg.warmup_epochs is not None
    return cfg.filter_matching == "epoch" or epoch <= cfg.warmup_epochs + 2


def _rematched(before: torch.Tensor, after: torch.Tensor, cat_names: list[str]) -> list[tuple[str, int]]:
    """How many filters the epoch's matching moved between two categories (``"MA→HE"``, most first); none before
    the first matching."""
    from collections import Counter

    name = {-1: "label-free", **dict(enumerate(cat_names))}
    pairs = Counter(f"{name[int(b)]}→{name[int(a)]}" for b, a in zip(before.tolist(), after.tolist())
                    if b >= -1 and b != a)
    return pairs.most_common()


def _build_net(cfg: TrainConfig, n_outputs: int) -> Any:
    from napari_icnn.icnn.networks import ICNN

    return ICNN(**_net_kwargs(cfg, n_outputs))


def _net_kwargs(cfg: TrainConfig, n_outputs: int) -> dict[str, Any]:
    return dict(
        arch=cfg.arch,
        n_outputs=n_outputs,
        n_filters=cfg.n_filters,
        image_size=cfg.size,
        width=cfg.width,
        dropout=cfg.dropout,
        beta=cfg.beta,
        interpretable=cfg.interpretable,
        top_stride=cfg.top_stride,
        peaks=cfg.template_peaks,
        peak_ratio=cfg.peak_ratio,
    )


def _load_data(cfg: TrainConfig, world_size: int,
               device_type: str) -> tuple[TrainConfig, Any, Any, Any, list[str]]:
    """The records to train and validate on, ``cfg`` resolved for them (see :meth:`TrainConfig.resolved`), whether
    the validation records have part masks, and the files either layout could not read (``DataSpec.skipped``)."""
    from napari_icnn.data.datasets import split_records
    from napari_icnn.data.layouts import discover, task_targets

    spec = discover(cfg.data, cfg.format)
    records = list(spec.records)
    for r in records:  # fail early, naming the record, when a label the task needs is missing
        task_targets(r, cfg.task)
    val = None
    skipped = list(spec.skipped)
    if cfg.val:
        vspec = discover(cfg.val, "auto")
        skipped += vspec.skipped
        val = list(vspec.records)
        for r in val:
            task_targets(r, cfg.task)
    lesion_labels = all(set(MASK_LESION_KEYS) <= set(r.labels) for r in records + (val or []))
    cfg = cfg.resolved(len(records), None if val is None else len(val), world_size=world_size,
                       device_type=device_type, lesion_labels=lesion_labels, lesion_masks=spec.has_lesion_masks,
                       init_size=lesion_types_size(cfg.init) if cfg.init and cfg.size is None else None)
    if val is not None:
        train = records
        has_masks = vspec.has_masks
    else:
        assert cfg.val_fraction is not None, "resolved() with n_data fixes the validation fraction"
        train, val = split_records(records, cfg.val_fraction, cfg.seed)
        has_masks = spec.has_masks
    if cfg.max_train_images:
        train = train[: cfg.max_train_images]
    assert cfg.lesion_mask_weight is not None, "resolved() with lesion_masks fixes the lesion-mask weight"
    if cfg.lesion_mask_weight > 0:
        if cfg.ordinary or cfg.categories != "lesion-types":
            raise ConfigError(f"{flag_of('lesion_mask_weight')} supervises lesion-type filters: it needs "
                              f"{flag_of('categories')} lesion-types (and no {flag_of('ordinary')})",
                              field="lesion_mask_weight")
        if not any(k in r.masks for r in train for k in MASK_LESION_KEYS):
            raise ConfigError(f"{flag_of('lesion_mask_weight')}: no training photograph of {flag_of('data')} "
                              f"{cfg.data} has a lesion mask ({', '.join(MASK_LESION_KEYS)}); give masks (README, "
                              f"training data layouts) or leave it at 0", field="lesion_mask_weight")
    if cfg.match_filters_by != "selectivity" and (cfg.lesion_mask_weight == 0 or cfg.ordinary):
        raise ConfigError(f"{flag_of('match_filters_by')} {cfg.match_filters_by} matches lesion-type filters by where "
                          f"they peak in the training lesion masks: it needs {flag_of('categories')} lesion-types, "
                          f"lesion masks and {flag_of('lesion_mask_weight')} above 0", field="match_filters_by")
    if cfg.lesion_mask_locations != "first" and (cfg.lesion_mask_weight == 0 or cfg.ordinary):
        raise ConfigError(f"{flag_of('lesion_mask_locations')} {cfg.lesion_mask_locations} supervises further part "
                          f"locations through the lesion-mask loss: it needs {flag_of('categories')} lesion-types, "
                          f"lesion masks and {flag_of('lesion_mask_weight')} above 0", field="lesion_mask_locations")
    return cfg, train, val, has_masks, skipped


def _describe_derived(cfg: TrainConfig) -> str:
    from napari_icnn.config import flag_of

    def shown(v: Any) -> str:
        return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)

    return "; ".join(f"{flag_of(name)} {shown(getattr(cfg, name))} ({how})" for name, how in cfg.derived.items())


def _checkpoint_state(net, opt, sched, assignment, epoch, best, history, cfg, lam_scale) -> dict[str, Any]:
    return {
        "lam_scale": lam_scale,
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "assignment": assignment.state_dict(),
        "epoch": epoch,
        "best": best,
        "history": history,
        "config": cfg.to_dict(),
        "rng_torch": torch.get_rng_state(),
        # numpy's stubs allow a dict state; the global MT19937 generator's legacy state is always a tuple
        "rng_numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),  # type: ignore[index]
    }


def train_iter(
    cfg: TrainConfig, should_stop: Callable[[], bool] | None = None
) -> Generator[Any, None, TrainResult]:
    """Train per ``cfg``; yields :mod:`napari_icnn.progress` events, returns a :class:`TrainResult`."""
    from monai.data import DataLoader

    from napari_icnn.data.datasets import make_dataset
    from napari_icnn.icnn.assignment import FilterAssignment

    t0 = time.monotonic()
    check_output(cfg.out, cfg.resume)
    if cfg.resume:
        saved = torch.load(Path(cfg.out) / CHECKPOINT_DIR / LAST, map_location="cpu", weights_only=True)
        resumed_cfg = TrainConfig.from_dict({**saved["config"], "resume": True})
        cfg = resumed_cfg
    else:
        saved = None
    dist = runtime.init_distributed(cfg.device)
    device = resolve_device(cfg.device, dist.local_rank)
    runtime.seed_everything(cfg.seed + dist.rank)
    out = Path(cfg.out)
    ckdir = out / CHECKPOINT_DIR

    yield Message(f"device {device}{f' x{dist.world_size} processes' if dist.enabled else ''}; loading data")
    cfg, train_recs, val_recs, has_masks, skipped = _load_data(cfg, dist.world_size, device.type)
    # _load_data resolved every "auto" setting the loop below reads
    assert cfg.epochs is not None and cfg.warmup_epochs is not None
    assert cfg.batch is not None and cfg.workers is not None and cfg.size is not None
    if dist.is_main:  # only now: a data set that cannot be used leaves --out as it was
        ckdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(ckdir / CONFIG, cfg.to_json())
    if cfg.derived:
        yield Message(f"auto settings: {_describe_derived(cfg)}")
    names = class_names_for(cfg.target_set)
    k = len(names)
    cat_names = [names[c] for c in cfg.category_columns]
    about = (f"outputs: {', '.join(names)} (no filter categories: the ordinary CNN)" if cfg.ordinary else
             f"filter categories: {', '.join(cat_names)}"
             + (" (lesion-type evidence needs MA/HE/EX/SE presence labels)" if "categories" in cfg.derived
                and cfg.categories == "decision" else ""))
    yield Message(f"{len(train_recs)} training / {len(val_recs)} validation images; task {cfg.task}; {about}")
    if skipped:
        yield Message(f"left out {len(skipped)} file(s) that could not be read: " + "; ".join(skipped[:5])
                      + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""))
    cache_dir = out / CHECKPOINT_DIR / CACHE if cfg.cache == "disk" else None
    supervise = bool(cfg.lesion_mask_weight)  # lesion masks ride along with the photographs (and their augmentation)
    train_ds = make_dataset(train_recs, size=cfg.size, task=cfg.target_set, augment=cfg.augment, cache=cfg.cache,
                            cache_dir=cache_dir, with_masks=supervise,
                            mask_parts=MASK_LESION_KEYS if supervise else None)
    val_ds = make_dataset(val_recs, size=cfg.size, task=cfg.target_set, augment=False, cache=cfg.cache,
                          cache_dir=cache_dir, with_masks=has_masks)
    sampler: DistributedSampler | None = None
    if dist.enabled:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_ds, num_replicas=dist.world_size, rank=dist.rank, seed=cfg.seed,
                                     drop_last=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    pin = device.type == "cuda"
    train_dl = DataLoader(train_ds, batch_size=cfg.batch, shuffle=sampler is None, sampler=sampler,
                          drop_last=True, num_workers=cfg.workers, pin_memory=pin, generator=gen,
                          persistent_workers=cfg.workers > 0)
    val_dl = DataLoader(val_ds, batch_size=max(cfg.batch, 16), shuffle=False, num_workers=cfg.workers,
                        pin_memory=pin)

    net = _build_net(cfg, k).to(device)
    init_categories: list[str | None] = []
    if cfg.init and saved is None:
        shared, init_categories = _init_from(net, cfg.init, names)
        yield Message(f"initialised from bundle {cfg.init}"
                      + (f" (its {', '.join(shared)} output included)" if shared else ""))
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    # each category's lesion type as a mask channel (-1: not a lesion type), for the lesion-mask loss and
    # the matching by lesion hits
    mask_types = torch.tensor([MASK_LESION_KEYS.index(names[col]) if names[col] in MASK_LESION_KEYS else -1
                               for col in cfg.category_columns], dtype=torch.long, device=device) if supervise else None
    assignment = FilterAssignment(cfg.n_filters, len(cat_names), n_free=n_free_filters(cfg),
                                  balanced=cfg.categories == "lesion-types", match_by=cfg.match_filters_by).to(device)
    if cfg.interpretable and any(c in cat_names for c in init_categories):
        # An interpretable model fine-tuned (on local data, say): its filters' categories come from what they
        # already respond to on the training images, not from a deal that its first batch reshuffles, and the
        # filters that fire alike with and without their type stay out of the decision from the first step.
        yield Message("filter categories start from the initial model's responses on the training images")
        _warm_assignment(net, train_dl, device, assignment, cfg, dist, mask_types)
    filter_weights = filter_weights_for(cfg, device)
    running_z = None
    if cfg.z_estimate == "running" and cfg.interpretable:
        from napari_icnn.icnn.loss import RunningLogZ

        running_z = RunningLogZ(cfg.n_filters, net.bank.n_templates).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels
    opt = torch.optim.AdamW(param_groups(net, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, len(train_dl))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, phase_schedule(cfg, steps))
    start_epoch, best, history = 1, {"score": -math.inf, "epoch": 0}, []
    lam_scale: float | None = None
    if saved is not None:
        net.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        assignment.load_state_dict(saved["assignment"])
        if running_z is not None and "running_z" in saved:
            running_z.load_state_dict(saved["running_z"])
        start_epoch = int(saved["epoch"]) + 1
        best, history = saved["best"], list(saved["history"])
        lam_scale = saved.get("lam_scale")
        torch.set_rng_state(saved["rng_torch"])
        yield Message(f"resumed after epoch {saved['epoch']} of {cfg.epochs}")
        del saved
    # per category, whether its filters take part in the separation loss (--separation-types)
    separated = torch.tensor(cfg.separated_categories, dtype=torch.bool, device=device)
    decision_from = cfg.decision_categories
    if decision_from is not None:
        keep = ", ".join(cat_names[i] for i in decision_from)
        yield Message(f"the referable decision is computed from the {keep} filters")
        restrict_decision(net, assignment, decision_from)
    model = net
    if dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    stopped = False
    epoch = start_epoch - 1
    decision_kept: dict[int, int] = {}  # per epoch, the category filters the decision was computed from
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            if sampler is not None:
                sampler.set_epoch(epoch)
            gen.manual_seed(cfg.seed * 1000 + epoch)
            net.set_mask_enabled(cfg.mask_on(epoch))
            before = assignment.matching.clone()
            if matches_again(cfg, epoch):
                assignment.refresh()
            moved = _rematched(before, assignment.categories, cat_names) if cfg.interpretable else []
            if moved:
                yield Message(f"epoch {epoch}: {sum(n for _, n in moved)} filter(s) matched to another category "
                              "than in the epoch before: " + ", ".join(f"{n} {pair}" for pair, n in moved))
            unselective = (unselective_filters(assignment, cfg.decision_min_selectivity, keep_one_of=decision_from)
                           if decision_from else None)
            if unselective is not None and decision_from is not None:  # the first implies the second
                cats = assignment.categories
                left_out = [int((unselective & (cats == c)).sum()) for c in decision_from]
                if any(left_out):
                    yield Message(f"epoch {epoch}: left out of the decision, firing alike on eyes with and without "
                                  "their type: " + ", ".join(f"{n} {cat_names[c]}" for c, n in zip(decision_from,
                                                                                               left_out) if n))
                decision_kept[epoch] = sum(int(((cats == c) & ~unselective).sum()) for c in decision_from)
            net.template_only = n_free_filters(cfg) if cfg.free_template_only and cfg.mask_on(epoch) else 0
            lam = cfg.lambda_at(epoch)
            if lam > 0 and lam_scale is None:
                lam_scale = _calibrate_lambda(net, train_dl, device, assignment, cfg, dist)
                yield Message(f"filter-loss scale calibrated: {lam_scale:.4g} (lambda {cfg.lam:g} is relative to "
                              "the classification gradient)")
            lam = lam * (lam_scale or 1.0)
            model.train()
            assignment.train()
            if running_z is not None:
                running_z.train()
            sums = {"loss": 0.0, "cls_loss": 0.0, "filter_loss": 0.0, **({"mask_loss": 0.0} if supervise else {}),
                    **({"silence_loss": 0.0} if cfg.silence_weight > 0 else {}),
                    **({"separation_loss": 0.0} if cfg.separation_weight > 0 else {}),
                    **({"further_location_loss": 0.0} if supervise and cfg.lesion_mask_locations == "every" else {})}
            extra: dict[str, float] = {}
            seen = 0
            for i, batch in enumerate(train_dl):
                if should_stop is not None and should_stop():
                    raise Cancelled("stop requested")
                x = batch["image"].to(device, non_blocking=True)
                y = batch["target"].to(device, non_blocking=True).float().view(len(x), -1)
                masks = batch["masks"].to(device, non_blocking=True) if supervise else None
                loss, cls, floss = train_step(model, net, x, y, opt, sched, assignment, cfg, lam, filter_weights,
                                              dist, log_z=running_z, masks=masks, mask_types=mask_types, extra=extra,
                                              separated=separated)
                if decision_from is not None:
                    restrict_decision(net, assignment, decision_from, unselective=unselective)
                b = len(x)
                seen += b
                sums["loss"] += float(loss.detach()) * b
                sums["cls_loss"] += float(cls.detach()) * b
                sums["filter_loss"] += float(floss.detach()) * b
                for key in ("mask_loss", "silence_loss", "separation_loss", "further_location_loss"):
                    if key in sums:
                        sums[key] += extra.get(key, 0.0) * b
                yield Progress(f"epoch {epoch}/{cfg.epochs}", i + 1, steps, f"loss {sums['loss'] / seen:.4f}",
                               epoch=epoch, n_epochs=cfg.epochs)
            metrics = {key: v / max(seen, 1) for key, v in sums.items()}
            metrics["lambda"] = cfg.lambda_at(epoch)
            metrics["lambda_effective"] = lam
            metrics.update(_validate(net, val_dl, device, names, cfg))
            metrics["filters_rematched"] = sum(n for _, n in moved)
            metrics["epoch"] = epoch
            metrics["seconds"] = time.monotonic() - t0
            history.append(metrics)
            score = metrics["val_auc"] if not math.isnan(metrics["val_auc"]) else -metrics["val_loss"]
            eligible = cfg.ordinary or cfg.mask_on(epoch) or cfg.epochs <= cfg.warmup_epochs
            improved = eligible and _takes_over(score, best)
            if improved:
                best = {"score": float(max(score, best["score"]) if best.get("eligible") else score),
                        "epoch": epoch, "eligible": True}
            if dist.is_main:
                state = _checkpoint_state(net, opt, sched, assignment, epoch, best, history, cfg, lam_scale)
                if running_z is not None:
                    state["running_z"] = running_z.state_dict()
                if improved:
                    # the assignment of that epoch too: the filters' categories must be those its weights learnt
                    atomic_torch_save({"model": net.state_dict(), "epoch": epoch,
                                               "assignment": assignment.state_dict()}, ckdir / BEST)
                atomic_torch_save(state, ckdir / LAST)
                atomic_write_text(ckdir / HISTORY, json.dumps(history, indent=2))
            if dist.enabled:
                torch.distributed.barrier()
            yield EpochEnd(epoch, cfg.epochs, {k_: v for k_, v in metrics.items() if k_ not in ("epoch",)})
    except (GeneratorExit, Cancelled, KeyboardInterrupt):
        stopped = True
        epoch -= 1  # the interrupted epoch did not complete
    result = TrainResult(bundle=out, best_epoch=int(best["epoch"]), epochs_done=max(epoch, 0), history=history,
                         stopped=stopped)
    if dist.is_main and best["epoch"] > 0:
        _finalise(cfg, net, assignment, ckdir, val_dl, device, names, history, has_masks, val_recs, train_recs)
    if dist.enabled:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    result.seconds = time.monotonic() - t0
    if stopped:
        # Inside a closed generator nothing more may be yielded; a drained one reports the stop.
        return result
    kept = decision_kept.get(int(best["epoch"]))
    if kept is not None and kept <= 1:  # the decision, and so its probability, hangs on one filter
        yield Message(f"the decision of the written model rests on {kept} filter: the others fire alike on eyes with "
                      "and without their lesion type, so its evidence and its probabilities mean little (train "
                      "longer, or on more or larger photographs)", level="warning")
    yield Message(f"bundle written to {out} (best epoch {best['epoch']}, {result.seconds:.0f} s)")
    return result


HEAD_LR_FACTOR = 10.0
"""When fine-tuning, the classifier learns this many times faster than the network below it: its rows for new
outputs start from scratch, and a decision whose healthy eyes reach it as silent maps (logit = its bias) must
move its bias by several units in a few hundred steps that move each weight by about the learning rate."""


def param_groups(net, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The optimiser's parameter groups: the classifier at ``HEAD_LR_FACTOR`` × the learning rate when
    fine-tuning (``--init``), everything else at the learning rate."""
    if not cfg.init:
        return [{"params": list(net.parameters())}]
    head = [p for n, p in net.named_parameters() if n.startswith("fc.")]
    rest = [p for n, p in net.named_parameters() if not n.startswith("fc.")]
    return [{"params": rest}, {"params": head, "lr": cfg.lr * HEAD_LR_FACTOR}]


def phase_schedule(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Learning-rate multiplier per step: one cycle (15 % warm-up, cosine decay) over the warm-up epochs and a
    second cycle at half the peak over the remaining epochs.

    The interpretable epochs need a learning rate that can still move the filters; one cycle over the whole run
    leaves them almost none. The ordinary CNN gets the same schedule (it depends on ``warmup_epochs`` only), so
    the two arms of a comparison are trained alike.
    """
    assert cfg.epochs is not None and cfg.warmup_epochs is not None, "the schedule of a resolved configuration"
    warm = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    phases = [(0, warm, 1.0), (warm, total, 0.5)] if 0 < warm < total else [(0, total, 1.0)]

    def one_cycle(t: float, peak: float) -> float:
        if t < 0.15:
            return peak * (0.04 + 0.96 * t / 0.15)
        return peak * (1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * (t - 0.15) / 0.85)))

    def factor(step: int) -> float:
        for start, end, peak in phases:
            if step < end:
                return one_cycle((step - start) / max(1, end - start), peak)
        return one_cycle(1.0, phases[-1][2])

    return factor


def train_step(model, net, x, y, opt, sched, assignment, cfg: TrainConfig, lam: float, filter_weights,
               dist: runtime.DistInfo | None = None, filter_loss=None, log_z=None, masks=None, mask_types=None,
               extra: dict[str, float] | None = None, separated=None) -> tuple[torch.Tensor, ...]:
    """One optimisation step: classification loss + ``lam`` × the weighted template filter loss (+ the lesion-mask
    loss, :mod:`napari_icnn.icnn.localisation`, weighted by ``cfg.lesion_mask_weight``, when ``masks`` are given).

    ``model`` is ``net`` or its DDP wrapper. Returns the detached (total, classification, filter) losses.
    ``filter_loss`` replaces the template filter loss (the benchmark's materialised reference uses it);
    ``log_z`` (a :class:`~napari_icnn.icnn.loss.RunningLogZ`) makes Z_T the paper's running constant.
    ``masks``: ``(B, T, H, W)`` lesion masks (:data:`~napari_icnn.parts.MASK_LESION_KEYS` order); ``mask_types``:
    ``(K,)`` each filter category's mask channel, -1 for none. ``separated``: ``(K,)`` bool, the categories whose
    filters the separation loss applies to (``None``: every one). ``extra`` receives the lesion-mask (with its
    further-location part), separation and silence losses that are on.
    """
    from napari_icnn.icnn.loss import template_filter_loss

    device = x.device
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast_for(device, cfg.amp):
        out = model(x)
        cls = classification_loss(out.logits.float(), y, cfg)
    floss = torch.zeros((), device=device)
    if cfg.interpretable:
        maps = out.maps.float()
        max_act = maps.detach().flatten(2).amax(2)
        y_cat = y[:, list(cfg.category_columns)]
        assignment.update(*_gathered(max_act, y_cat, dist=dist or runtime.DistInfo()))
        if lam > 0:
            positive = assignment.positive_mask(y_cat)
            # the mask's argmax is the loss's T̂ (same values; saves a second pass over the maps)
            mu = out.mu if net.mask.locate == "argmax" else None
            kw = {} if log_z is None else {"log_z": log_z}
            if out.peaks is not None:  # several part locations per filter
                kw["peaks"] = out.peaks
            per_filter = (filter_loss or template_filter_loss)(maps, positive, net.bank, mode=cfg.loss_mode,
                                                               normalise=cfg.normalise, reduction="none", mu=mu,
                                                               **kw)
            floss = (per_filter * filter_weights).mean()
    loss = cls + lam * floss
    cells = None
    by_hits = cfg.match_filters_by != "selectivity"
    if masks is not None and mask_types is not None and cfg.interpretable and (lam > 0 or by_hits):
        from napari_icnn.icnn.localisation import lesion_cells, peak_hits

        cells = lesion_cells(masks, net.n, net.stride, net.offset, cfg.lesion_mask_target)
        if by_hits:
            assignment.update_hits(*_gathered(*peak_hits(out.pre_maps.detach(), cells, mask_types),
                                              dist=dist or runtime.DistInfo()))
    if cells is not None and mask_types is not None and lam > 0:
        from napari_icnn.icnn.localisation import lesion_mask_loss

        cats = assignment.categories.to(device)
        types = torch.where(cats >= 0, mask_types[cats.clamp(min=0)], torch.full_like(cats, -1))
        distinct: bool | torch.Tensor = cfg.lesion_mask_instances == "distinct"
        if distinct and cfg.distinct_type_keys:
            wanted = torch.tensor([MASK_LESION_KEYS.index(t) for t in cfg.distinct_type_keys], device=device)
            distinct = torch.isin(types, wanted)
        mloss = lesion_mask_loss(out.pre_maps.float(), cells, types, distinct=distinct)
        if cfg.lesion_mask_locations == "every" and out.peaks is not None:
            from napari_icnn.icnn.localisation import further_location_loss

            further = further_location_loss(out.pre_maps.float(), cells, types, out.peaks, net.mask.n,
                                            net.mask.beta, net.mask.peak_ratio)
            mloss = mloss + further
            if extra is not None:
                extra["further_location_loss"] = float(further.detach())
        loss = loss + (cfg.lesion_mask_weight or 0.0) * mloss
        if extra is not None:
            extra["mask_loss"] = float(mloss.detach())
    if cfg.separation_weight > 0 and cfg.interpretable and lam > 0:
        from napari_icnn.icnn.localisation import separation_loss

        include = None
        if separated is not None:
            cats = assignment.categories.to(device)
            include = (cats >= 0) & separated[cats.clamp(min=0)]
        rloss = separation_loss(out.pre_maps.float(), positive, include)  # the filter loss's positives, from above
        loss = loss + cfg.separation_weight * rloss
        if extra is not None:
            extra["separation_loss"] = float(rloss.detach())
    if cfg.silence_weight > 0 and cfg.interpretable and lam > 0:
        from napari_icnn.icnn.localisation import silence_loss

        sloss = silence_loss(out.pre_maps.float(), ~positive)  # free filters: always positive, never absent
        loss = loss + cfg.silence_weight * sloss
        if extra is not None:
            extra["silence_loss"] = float(sloss.detach())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss.detach(), cls.detach(), floss.detach()


def classification_loss(logits: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                        reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy of every output; with lesion types beside the decision, the decision weighs as much
    as the lesion types together (it is the product's output; the lesion types teach the filters their parts)."""
    per = F.binary_cross_entropy_with_logits(logits, y, reduction="none")  # (B, K)
    if cfg.target_set == "referable+lesion-types":
        per = 0.5 * (per[:, :1] + per[:, 1:].mean(dim=1, keepdim=True))
    per = per.mean(dim=1)
    return per.mean() if reduction == "mean" else per.sum()


@torch.no_grad()
def restrict_decision(net, assignment, categories: tuple[int, ...], output: int = 0,
                      unselective: torch.Tensor | None = None) -> None:
    """Zero the decision's weights on every filter whose current category is not in ``categories`` (label-free
    filters included), and on the ``unselective`` ones: a projected step, so the decision is computed from those
    filters alone while the assignment moves, and the saved weights say so themselves."""
    cats = assignment.categories.to(net.fc.weight.device)
    allowed = torch.zeros_like(cats, dtype=torch.bool)
    for c in categories:
        allowed |= cats == c
    if unselective is not None:
        allowed &= ~unselective.to(allowed.device)
    c_all = len(cats)
    row = net.fc.weight[output]
    row[:c_all].masked_fill_(~allowed, 0.0)
    row[c_all:].masked_fill_(~allowed, 0.0)


def unselective_filters(assignment: FilterAssignment, min_selectivity: float,
                        keep_one_of: tuple[int, ...] = ()) -> torch.Tensor | None:
    """``(C,)`` bool: category filters whose selectivity for their own category is below ``min_selectivity``
    (a filter that fires alike on eyes with and without its type); ``None`` when off. Categories not yet seen
    on positives and negatives keep their filters (nothing is known about them yet). Where every filter of the
    ``keep_one_of`` categories would be flagged, the most selective of them is not: the decision it feeds keeps
    at least one filter (early in training, on a small data set)."""
    if min_selectivity <= 0:
        return None
    cats = assignment.categories
    sel = assignment.selectivity()
    known = assignment.initialised & assignment.negatives_seen
    own = sel.gather(1, cats.clamp(min=0)[:, None]).squeeze(1).to(cats.device)
    flagged = (cats >= 0) & known.to(cats.device)[cats.clamp(min=0)] & (own < min_selectivity)
    if keep_one_of:
        pool = torch.zeros_like(flagged)
        for c in keep_one_of:
            pool |= cats == c
        if bool(pool.any()) and not bool((pool & ~flagged).any()):
            flagged[int(own.masked_fill(~pool, float("-inf")).argmax())] = False
    return flagged


def filter_weights_for(cfg: TrainConfig, device: torch.device) -> torch.Tensor:
    """Per-filter weights of the filter loss: ``free_weight`` for the label-free filters, 1 for the rest."""
    w = torch.ones(cfg.n_filters, device=device)
    w[: n_free_filters(cfg)] = cfg.free_weight
    return w


def n_free_filters(cfg: TrainConfig) -> int:
    return int(round(cfg.free_fraction * cfg.n_filters))


def _calibrate_lambda(net, loader, device, assignment, cfg: TrainConfig, dist: runtime.DistInfo,
                      n_batches: int = 4) -> float:
    """Scale that makes lambda relative: 1 / (filter-loss gradient norm / classification gradient norm) on
    the interpretable maps, measured on a few batches with the mask on (no update of weights or BN stats).

    The paper's -MI with tau = 0.5/n² and p(T) = 1/(n²+1) has gradients ~1e-5 of the classification
    loss's at n = 32, and the ratio moves with n, the batch and the backbone; measuring it once makes
    ``--lambda`` mean the same thing everywhere.
    """
    from napari_icnn.icnn.loss import template_filter_loss

    was_training = net.training
    net.eval()
    ratios = []
    for i, batch in enumerate(loader):
        if i >= n_batches:
            break
        x = batch["image"].to(device)
        y = batch["target"].to(device).float().view(len(x), -1)
        out = net(x)
        maps = out.maps.float()
        g_ce = torch.autograd.grad(classification_loss(out.logits.float(), y, cfg), maps, retain_graph=True)[0]
        fl = template_filter_loss(maps, assignment.positive_mask(y[:, list(cfg.category_columns)]), net.bank,
                                  mode=cfg.loss_mode, normalise=cfg.normalise, peaks=out.peaks)
        g_f = torch.autograd.grad(fl, maps)[0]
        ratios.append(float(g_f.norm()) / max(float(g_ce.norm()), 1e-12))
    net.train(was_training)
    ratio = float(np.median(ratios)) if ratios else 1.0
    if dist.enabled:
        t = torch.tensor([ratio], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        ratio = float(t.item()) / dist.world_size
    return 1.0 / max(ratio, 1e-30)


@torch.no_grad()
def _warm_assignment(net, loader, device, assignment, cfg: TrainConfig, dist: runtime.DistInfo,
                     mask_types: torch.Tensor | None = None) -> None:
    """Fold one pass of ``net`` (eval mode, weights and normalisation statistics untouched) over ``loader`` into
    the filter assignment's running means (and, ranked by lesion hits, its hit rates: ``mask_types`` as in
    :func:`train_step`), so its first matching reflects what the filters already respond to."""
    from napari_icnn.icnn.localisation import lesion_cells, peak_hits

    was_training = net.training
    net.eval()
    assignment.train()
    for batch in loader:
        x = batch["image"].to(device)
        y = batch["target"].to(device).float().view(len(x), -1)[:, list(cfg.category_columns)]
        out = net(x)
        max_act = out.maps.float().flatten(2).amax(2)
        assignment.update(*_gathered(max_act, y, dist=dist))
        if cfg.match_filters_by != "selectivity" and mask_types is not None and "masks" in batch:
            cells = lesion_cells(batch["masks"].to(device), net.n, net.stride, net.offset, cfg.lesion_mask_target)
            assignment.update_hits(*_gathered(*peak_hits(out.pre_maps, cells, mask_types), dist=dist))
    assignment.refresh()
    net.train(was_training)


def _gathered(*local: torch.Tensor, dist: runtime.DistInfo) -> tuple[torch.Tensor, ...]:
    """All processes update the filter assignment from the same (global) batch statistics: each of ``local``
    (batch first) gathered from every process."""
    if not dist.enabled:
        return local
    import torch.distributed as tdist

    out = []
    for t in local:
        parts = [torch.zeros_like(t) for _ in range(dist.world_size)]
        tdist.all_gather(parts, t.contiguous())
        out.append(torch.cat(parts))
    return tuple(out)


@torch.no_grad()
def _validate(net, loader, device, names, cfg: TrainConfig) -> dict[str, float]:
    from napari_icnn.engine.metrics import classification_metrics

    net.eval()
    probs, targets, loss_sum, n = [], [], 0.0, 0
    for batch in loader:
        x = batch["image"].to(device)
        y = batch["target"].to(device).float().view(len(x), -1)
        with autocast_for(device, cfg.amp):
            logits = net(x).logits.float()
        loss_sum += float(classification_loss(logits, y, cfg, reduction="sum"))
        n += len(x)
        probs.append(torch.sigmoid(logits).cpu().numpy())
        targets.append(y.cpu().numpy())
    m = classification_metrics(np.concatenate(probs), np.concatenate(targets), names)
    out = {"val_loss": loss_sum / max(n, 1), "val_auc": float(m["auc"]), "val_accuracy": float(m["accuracy"])}
    if cfg.target_set == "referable+lesion-types":
        # the best epoch is chosen by the decision; the lesion types' AUC is reported beside it
        decision = m["per_class"][names[0]]
        out["val_auc_lesion_types"] = float(np.nanmean([m["per_class"][n_]["auc"] for n_ in names[1:]]))
        out["val_auc"], out["val_accuracy"] = float(decision["auc"]), float(decision["accuracy"])
    return out


def _init_from(net, bundle: str, names: list[str] | None = None) -> tuple[list[str], list[str | None]]:
    """Fine-tune start: copy every tensor of the bundle whose name and shape fit. Where the head differs (other
    outputs), the rows of the outputs both networks have — by name, e.g. "referable DR" — are copied, so a
    decision learnt by the ordinary CNN is where the fine-tuning starts from, not a random row that the small
    fine-tuning learning rate could not move far. Returns the outputs copied that way, and the bundle's filter
    categories when it has as many filters as ``net`` (an ordinary CNN's are None; else an empty list)."""
    loaded = load_bundle(bundle, device="cpu")
    src = loaded.net.state_dict()
    dst = net.state_dict()
    fitting = {k: v for k, v in src.items() if k in dst and dst[k].shape == v.shape}
    if not fitting:
        raise ConfigError(f"--init {bundle}: none of its weights fit this network (different backbone or size?)")
    dst.update(fitting)
    shared: list[str] = []
    head_fits = all(k in fitting for k in ("fc.weight", "fc.bias"))
    if names and not head_fits and "fc.weight" in src and src["fc.weight"].shape[1:] == dst["fc.weight"].shape[1:]:
        for row, name in enumerate(names):
            if name in loaded.class_names:
                k = loaded.class_names.index(name)
                dst["fc.weight"][row] = src["fc.weight"][k]
                dst["fc.bias"][row] = src["fc.bias"][k]
                shared.append(name)
    net.load_state_dict(dst)
    categories = [f.category for f in loaded.filters] if len(loaded.filters) == net.n_filters else []
    return shared, categories


@torch.no_grad()
def filter_report(net, loader, device, has_masks: bool) -> tuple[list[str | None], np.ndarray, np.ndarray, np.ndarray]:
    """Name each filter after a part on annotated images, where its peaks back the name; also each filter's
    display scale.

    Returns (part key or None per filter, matching score per filter, pointing-game hit rate per filter for its
    best-matching part, act_scale per filter).
    """
    from napari_icnn.engine.collect import collect, icnn_explainer
    from napari_icnn.engine.metrics import match_parts, part_scores, pointing_game, reliable_parts

    net.eval()
    col = collect(icnn_explainer(net, masked=net.interpretable), loader, size=net.image_size, device=device,
                  stride=net.stride, offset=net.offset,
                  parts=tuple(getattr(loader.dataset, "mask_parts", ()) or ()) if has_masks else ())
    act_scale = np.percentile(col.scores, 99, axis=0) if len(col.scores) else np.ones(net.n_filters)
    act_scale = np.where(act_scale > 1e-6, act_scale, 1.0)
    if not has_masks or not col.present.any():
        n = col.maps.shape[1]
        return [None] * n, np.zeros(n), np.full(n, np.nan), act_scale
    parts, score = match_parts(part_scores(col.iou_instance, col.present, col.parts))
    idx = [None if p is None else col.parts.index(p) for p in parts]
    hits = pointing_game(col.peak_in_part, col.present, col.scores > 0, idx)
    chance = {p: float(col.chance[col.present[:, k], k].mean()) for k, p in enumerate(col.parts)
              if col.present[:, k].any()}
    named = reliable_parts(parts, hits, chance)
    score = np.where([p is not None for p in named], score, 0.0)
    return named, score, hits, act_scale


MIN_FIRING_SEPARATION = 0.2
"""A lesion-type filter states that its type is present ("fires") only when its peak separates validation eyes
with the type from eyes without by at least this Youden's J (the figure the decision's selectivity gate uses)."""


@torch.no_grad()
def firing_thresholds_of(net, loader, records, categories: list[str | None], act_scale, device) -> list[float | None]:
    """Each lesion-type filter's firing threshold on the validation images (``records``, in ``loader``'s order),
    from their presence labels (:func:`napari_icnn.engine.lesion_types.firing_thresholds`); ``None`` for the
    other filters, for a filter whose peak cannot tell eyes with its type from eyes without (Youden's J below
    :data:`MIN_FIRING_SEPARATION`: its "fires" would claim a lesion it cannot see), and for all when the images
    lack presence labels."""
    from napari_icnn.engine.lesion_types import firing_thresholds

    types = [c if c in MASK_LESION_KEYS else None for c in categories]
    if not any(types) or not all(set(MASK_LESION_KEYS) <= set(r.labels) for r in records):
        return [None] * len(categories)
    net.eval()
    peaks = [net(b["image"].to(device)).masked.float().flatten(2).amax(2).cpu().numpy() for b in loader]
    present = np.array([[r.labels[k] > 0 for k in MASK_LESION_KEYS] for r in records], bool)
    thr = firing_thresholds(np.concatenate(peaks), present, types, np.asarray(act_scale, np.float64),
                            min_separation=MIN_FIRING_SEPARATION)
    return [float(thr[f]) if types[f] and np.isfinite(thr[f]) else None for f in range(len(categories))]


def reference_of(net, records, size: int, device, batch: int = 16) -> dict[str, Any] | None:
    """The reference eye of ``net`` on the healthy eyes among ``records`` (bundle metadata entry), or
    ``None`` when fewer than :data:`~napari_icnn.engine.reference.MIN_REFERENCE_EYES` are known healthy."""
    from monai.data import DataLoader

    from napari_icnn.data.datasets import make_dataset
    from napari_icnn.engine.reference import (
        MIN_REFERENCE_EYES,
        healthy_eyes,
        reference_entry,
        reference_features,
    )

    healthy = healthy_eyes(records)
    if len(healthy) < MIN_REFERENCE_EYES:
        return None
    ds = make_dataset(healthy, size=size, task=None, augment=False, cache="none")
    feats, n = reference_features(net, DataLoader(ds, batch_size=batch, shuffle=False), device)
    return reference_entry(feats, n, "validation cohort of the training run")


def experience_of(net, train_records, val_records, size: int, device, batch: int = 16,
                  source: str = "") -> dict[str, Any] | None:
    """The backbone-summary statistics of ``net`` on the training photographs with the limit set on the validation ones
    (bundle metadata entry, :mod:`napari_icnn.experience`), or ``None`` with fewer than 8 of either."""
    from monai.data import DataLoader

    from napari_icnn.data.datasets import make_dataset
    from napari_icnn.engine.reference import summary_features
    from napari_icnn.experience import fit_experience

    if len(train_records) < 8 or len(val_records) < 8:
        return None
    feats = []
    for recs in (train_records, val_records):
        ds = make_dataset(list(recs), size=size, task=None, augment=False, cache="none")
        feats.append(summary_features(net, DataLoader(ds, batch_size=batch, shuffle=False), device))
    return fit_experience(feats[0], feats[1], source).to_entry()


@torch.no_grad()
def calibration_of(net, loader, device, source: str, columns: slice | None = None) -> dict[str, Any] | None:
    """The temperature fitted on ``loader``'s labelled images (bundle metadata entry), or ``None`` without
    images or with one class only (a temperature needs both to be fitted). ``columns``: the outputs it is fitted
    on (default all; the decision alone for a model that predicts lesion types beside it)."""
    from napari_icnn.engine.calibration import temperature_entry

    net.eval()
    logits, targets = [], []
    for batch in loader:
        logits.append(net(batch["image"].to(device)).logits.double().cpu().numpy())
        targets.append(batch["target"].double().cpu().numpy().reshape(len(logits[-1]), -1))
    if not logits:
        return None
    z, y = np.concatenate(logits), np.concatenate(targets)
    if columns is not None:
        z, y = z[:, columns], y[:, columns]
    if len(np.unique(y)) < 2:
        return None
    return temperature_entry(z, y, source)


def compute_record(device: torch.device) -> dict[str, Any]:
    """What bit-identical weights depend on beyond the settings and data: the device and, on the CPU, the number
    of threads (float sums are taken in another order with another thread count)."""
    rec: dict[str, Any] = {"device": device.type, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        rec["gpu"] = torch.cuda.get_device_name(device)
    return rec


def _finalise(cfg, net, assignment, ckdir, val_dl, device, names, history, has_masks, val_recs,
              train_recs) -> None:
    best = torch.load(ckdir / BEST, map_location=device, weights_only=True)
    net.load_state_dict(best["model"])
    if "assignment" in best:
        assignment.load_state_dict(best["assignment"])
    net.set_mask_enabled(cfg.interpretable)
    net.eval()
    parts, scores, hits, act_scale = filter_report(net, val_dl, device, has_masks)
    cats = assignment.categories.cpu().tolist() if cfg.interpretable else [None] * cfg.n_filters
    categories = [None if c is None else (FREE_CATEGORY if c < 0 else names[cfg.category_columns[c]]) for c in cats]
    fire = firing_thresholds_of(net, val_dl, val_recs, categories, act_scale, device)
    filters = []
    for f in range(cfg.n_filters):
        fire_f = fire[f]
        filters.append(FilterInfo(id=f, category=categories[f], part=parts[f],
                                  part_score=None if parts[f] is None else round(float(scores[f]), 4),
                                  part_hit_rate=None if parts[f] is None else round(float(hits[f]), 4),
                                  act_scale=round(float(act_scale[f]), 5),
                                  fire_threshold=None if fire_f is None else round(float(fire_f), 6)))
    best_metrics = next((h for h in history if h["epoch"] == best["epoch"]), history[-1] if history else {})
    reference = reference_of(net, val_recs, cfg.size, device, max(cfg.batch, 16))
    experience = experience_of(net, train_recs, val_recs, cfg.size, device, max(cfg.batch, 16),
                               "training and validation cohorts of the training run")
    decision_only = slice(0, 1) if cfg.target_set == "referable+lesion-types" else None
    calibration = calibration_of(net, val_dl, device, "validation cohort of the training run", decision_only)
    save_bundle(
        cfg.out,
        net.state_dict(),
        network=net.config,
        task=cfg.task,
        class_names=names,
        filters=filters,
        train_config=cfg.to_dict(),
        metrics={k: v for k, v in best_metrics.items() if isinstance(v, (int, float))},
        name=Path(cfg.out).name or "fundus_icnn",
        description=(f"{'Ordinary' if cfg.ordinary else 'Interpretable'} CNN ({cfg.arch}) for {cfg.task} on "
                     f"{cfg.size} px colour fundus photographs"),
        extra={"best_epoch": int(best["epoch"]), "history": history, "targets": cfg.target_set,
               "compute": compute_record(device),
               **({"reference": reference} if reference is not None else {}),
               **({"experience": experience} if experience is not None else {}),
               **({"calibration": calibration} if calibration is not None else {})},
    )
    assert (Path(cfg.out) / WEIGHTS).is_file()


def train(cfg: TrainConfig, on_event: Callable[[Any], None] | None = None,
          should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Run :func:`train_iter` to the end."""
    from napari_icnn.progress import drain

    return drain(train_iter(cfg, should_stop=should_stop), on_event)
