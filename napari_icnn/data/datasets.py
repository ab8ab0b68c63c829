"""MONAI data sets over :class:`~napari_icnn.data.layouts.Record` s, and a stratified split.

Each item is a dict::

    image      (3, S, S) float32   normalised photograph (0 outside the FOV)
    target     (K,) float32        the task's targets (K = 0 without a task)
    id         str
    fov        (1, S, S) uint8     model pixels inside the field of view
    geometry   dict                :meth:`Geometry.to_dict`, maps model pixels back to the scan
    landmarks  {"optic_disc": (2,), "fovea": (2,)} float32 model-pixel (x, y), NaN when unknown
    masks      (P, S, S) uint8     only with ``with_masks``: parts in ``dataset.mask_parts`` order

MONAI's default collation batches these; :func:`collate_fundus` also keeps each geometry a dict.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from napari_icnn.config import CACHE_MODES, TARGET_SETS, validation_size
from napari_icnn.data.layouts import Record, task_targets
from napari_icnn.data.transforms import LANDMARKS
from napari_icnn.errors import ConfigError, IcnnError
from napari_icnn.parts import PART_KEYS

__all__ = ["CACHE_MODES", "make_dataset", "collate_fundus", "split_records"]

# Part of every disk-cache key: bump when preprocessing changes what it produces.
_PREPROCESS_VERSION = 1
_ITEM_KEYS = ("image", "target", "id", "fov", "geometry", "landmarks", "masks")


def make_dataset(
    records: Iterable[Record],
    *,
    size: int,
    task: str | None,
    augment: bool = False,
    cache: str = "memory",
    cache_dir: str | os.PathLike[str] | None = None,
    with_masks: bool = False,
    num_workers: int = 0,
    mask_parts: Sequence[str] | None = None,
):
    """A MONAI data set of preprocessed photographs (items described in the module docstring).

    Parameters
    ----------
    records
        What to load.
    size
        Model input side in pixels.
    task
        A key of :data:`~napari_icnn.config.TARGET_SETS`, or ``None`` for unlabelled data.
    augment
        Apply :func:`~napari_icnn.data.transforms.train_augmentation` (after the cache).
    cache
        ``"memory"`` (``CacheDataset`` of the deterministic part), ``"disk"`` (``PersistentDataset``
        in ``cache_dir``; keys include the file's size and modification time, ``size`` and the
        mask parts, so a changed photograph or setting is never served stale) or ``"none"``.
    with_masks
        Add ``masks``.
    num_workers
        Threads that fill the memory cache.
    mask_parts
        Order of the mask channels; default: every part annotated in ``records``, in
        :data:`~napari_icnn.parts.PART_KEYS` order. Available as ``dataset.mask_parts``.

    Returns
    -------
    monai.data.Dataset
        A ``CacheDataset``, ``PersistentDataset`` or ``Dataset``, with ``mask_parts`` and ``task``
        attributes. Reading an item raises the photograph's own :class:`~napari_icnn.errors.InputError`
        (not MONAI's ``RuntimeError`` wrapper) when a file is missing or unusable.

    Raises
    ------
    ConfigError
        Bad option, no records, or a record without the label ``task`` needs (named).
    InputError
        With ``cache="memory"``, which reads every photograph here: a missing or unusable file.
    """
    from monai.transforms import Compose

    from napari_icnn.data.transforms import FundusPreprocessd, LoadFundusd, train_augmentation

    records = list(records)
    if not records:
        raise ConfigError("no photographs to make a data set from")
    if int(size) != size or size < 16:
        raise ConfigError(f"size must be an integer >= 16; got {size!r}")
    if cache not in CACHE_MODES:
        raise ConfigError(f"unknown cache {cache!r}; expected one of: {', '.join(CACHE_MODES)}")
    if cache == "disk" and cache_dir is None:
        raise ConfigError("cache='disk' needs cache_dir")
    if task is not None and task not in TARGET_SETS:
        raise ConfigError(f"unknown task {task!r}; expected one of: {', '.join(TARGET_SETS)}")
    if with_masks:
        parts = (
            tuple(mask_parts)
            if mask_parts is not None
            else tuple(p for p in PART_KEYS if any(p in r.masks for r in records))
        )
        unknown = [p for p in parts if p not in PART_KEYS]
        if unknown:
            raise ConfigError(f"unknown mask parts {unknown}; known: {', '.join(PART_KEYS)}")
    else:
        parts = ()

    tag = f"v{_PREPROCESS_VERSION};size={int(size)};parts={','.join(parts)}"
    items = [_item(r, task, parts, tag) for r in records]
    _define_classes()
    g = globals()
    deterministic = [
        LoadFundusd(keys="image"),
        FundusPreprocessd(keys="image", size=int(size), mask_parts=parts),
        g["_Tensorsd"](),
    ]
    random = list(train_augmentation(int(size)).transforms) if augment else []
    transform = Compose([*deterministic, *random, _Finishd(with_masks=bool(parts))])

    if cache == "memory":
        ds = g["_FundusCacheDataset"](items, transform, num_workers=max(1, int(num_workers)), progress=False)
    elif cache == "disk":
        assert cache_dir is not None  # checked above
        os.makedirs(cache_dir, exist_ok=True)
        ds = g["_FundusPersistentDataset"](items, transform, cache_dir=cache_dir)
    else:
        ds = g["_FundusDataset"](items, transform)
    ds.mask_parts = parts
    ds.task = task
    return ds


def collate_fundus(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack a list of items into a batch; ``id`` and ``geometry`` stay lists (of str, of dict)."""
    import torch

    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        if key in ("id", "geometry"):
            out[key] = list(values)
        elif key == "landmarks":
            out[key] = {name: torch.stack([v[name] for v in values]) for name in values[0]}
        else:
            out[key] = torch.stack([torch.as_tensor(v) for v in values])
    return out


def split_records(
    records: Iterable[Record], val_fraction: float, seed: int, task: str | None = None
) -> tuple[list[Record], list[Record]]:
    """Split into (train, val), stratified by the first target, reproducibly for a seed.

    The stratifying label is the task's first target when ``task`` is given, else the first of
    ``referable``, ``MA``, ``HE``, ``EX``, ``SE``, ``grade`` that every record has (no
    stratification when none is). Each stratum gives ``val_fraction`` of its records to
    validation (largest remainders rounded so the total is ``round(n * val_fraction)``); with
    a positive fraction and two or more records both sides get at least one. Records keep their
    order within each side.
    """
    records = list(records)
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1); got {val_fraction!r}")
    n = len(records)
    if n == 0 or val_fraction == 0:
        return records, []
    if task is not None:
        keys = [float(task_targets(r, task)[0]) for r in records]
    else:
        label = next(
            (
                k
                for k in ("referable", "MA", "HE", "EX", "SE", "grade")
                if all(k in r.labels for r in records)
            ),
            None,
        )
        keys = [r.labels[label] if label else 0 for r in records]
    strata: dict[Any, list[int]] = {}
    for i, k in enumerate(keys):
        strata.setdefault(k, []).append(i)
    total = validation_size(n, val_fraction)
    rng = np.random.default_rng(seed)
    order = sorted(strata)
    exact = np.array([len(strata[k]) * val_fraction for k in order])
    counts = np.floor(exact).astype(int)
    # Largest remainders first; a random tie-break so no stratum is always favoured.
    rest = exact - counts
    for j in np.lexsort((rng.random(len(order)), -rest)):
        if counts.sum() >= total:
            break
        if counts[j] < len(strata[order[j]]):
            counts[j] += 1
    while counts.sum() > total:
        counts[int(np.argmax(counts))] -= 1
    val_idx: set[int] = set()
    for k, c in zip(order, counts, strict=True):
        members = strata[k]
        val_idx.update(members[i] for i in rng.permutation(len(members))[:c])
    train = [r for i, r in enumerate(records) if i not in val_idx]
    val = [r for i, r in enumerate(records) if i in val_idx]
    return train, val


def _item(record: Record, task: str | None, parts: tuple[str, ...], tag: str) -> dict[str, Any]:
    try:
        stat = os.stat(record.image)
        stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
    except OSError:
        stamp = "missing"  # the loader reports the missing file, naming it
    item: dict[str, Any] = {
        "id": record.id,
        "image": record.image,
        "frame": record.frame,
        "landmarks": dict(record.landmarks),
        "target": task_targets(record, task) if task else np.zeros(0, np.float32),
        "_cache": f"{tag};{stamp}",
    }
    if parts:
        item["masks"] = {p: record.masks[p] for p in parts if p in record.masks}
    return item


_LAZY = ("_Tensorsd", "_FundusDataset", "_FundusCacheDataset", "_FundusPersistentDataset")


def _define_classes() -> None:
    """Define the MONAI subclasses on first use, so that importing this module imports no MONAI.

    ``_Tensorsd`` must be a MONAI ``Transform``: the caches stop at the first object that is not.
    """
    if "_Tensorsd" in globals():
        return
    from monai.data import CacheDataset, Dataset, PersistentDataset
    from monai.transforms import Transform

    class _Tensorsd(Transform):
        """Deterministic output as plain tensors (what a disk cache can load safely)."""

        def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
            import torch

            d: dict[Hashable, Any] = {k: v for k, v in data.items() if k in _ITEM_KEYS}
            for key in ("image", "target", "fov", "masks"):
                if key in d:
                    d[key] = torch.as_tensor(np.ascontiguousarray(d[key]))
            d["landmarks"] = {
                k: torch.as_tensor(np.asarray(v, np.float32)) for k, v in d["landmarks"].items()
            }
            return d

    class _FundusDataset(_Unwrapping, Dataset):
        pass

    class _FundusCacheDataset(_Unwrapping, CacheDataset):
        def _load_cache_item(self, idx: int) -> Any:
            with _unwrapped():
                return super()._load_cache_item(idx)

    class _FundusPersistentDataset(_Unwrapping, PersistentDataset):
        pass

    for cls in (_Tensorsd, _FundusDataset, _FundusCacheDataset, _FundusPersistentDataset):
        cls.__qualname__ = cls.__name__  # picklable by name (data loader worker processes)
        globals()[cls.__name__] = cls


@contextmanager
def _unwrapped() -> Iterator[None]:
    """Re-raise the project's own error (a missing photograph, a bad mask) that MONAI wraps in
    ``RuntimeError("applying transform ...")``, so callers learn which file is wrong and why."""
    try:
        yield
    except RuntimeError as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, IcnnError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


class _Unwrapping:
    def _transform(self, index: int) -> Any:
        with _unwrapped():
            return super()._transform(index)  # type: ignore[misc]  # a mixin: the MONAI Dataset after it in the MRO defines it


class _Finishd:
    """Documented keys only, plain tensors (not MONAI MetaTensors), binary rasters as uint8.

    Deliberately not a MONAI ``Transform``: the caches stop before it, so every item handed out
    is a copy and a caller that edits one in place cannot corrupt the cache."""

    def __init__(self, with_masks: bool) -> None:
        self.with_masks = with_masks

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        import torch

        d: dict[Hashable, Any] = {k: data[k] for k in _ITEM_KEYS if k in data}
        d["image"] = _plain(d["image"]).float()
        d["target"] = _plain(d["target"]).float()
        d["fov"] = (_plain(d["fov"]) > 0).to(torch.uint8)
        if self.with_masks:
            d["masks"] = (_plain(d["masks"]) > 0).to(torch.uint8)
        else:
            d.pop("masks", None)
        d["landmarks"] = {k: _plain(d["landmarks"][k]).float() for k in LANDMARKS}
        return d


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        _define_classes()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _plain(t: Any) -> Any:
    import torch

    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)
