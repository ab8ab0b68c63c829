"""Running a batch: check the set-up, resume from ``summary.csv``, then run locally or on a cluster."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from napari_icnn.atomic import DISK_FULL_ERRNOS, DiskFull, disk_full_in
from napari_icnn.batch.config import BatchConfig, BatchCounts, BatchSummary
from napari_icnn.batch.inputs import iter_input_files
from napari_icnn.batch.outputs import OutputSpec
from napari_icnn.batch.preflight import model_path, out_problem, preflight
from napari_icnn.batch.summary import Done, SummaryFile, one_line
from napari_icnn.batch.work import GateRule
from napari_icnn.dicom.uids import ModelInfo
from napari_icnn.errors import BundleError, Cancelled, ConfigError
from napari_icnn.progress import Message, Progress, drain

__all__ = [
    "infer_iter",
    "infer",
    "infer_until_stopped",
    "Stopped",
    "exclusive_folder",
    "SUMMARY_NAME",
    "SETTINGS_NAME",
    "LOCK_NAME",
]

SUMMARY_NAME = "summary.csv"
SETTINGS_NAME = ".icnn-batch.json"
"""What the results in a folder were made with; a later run into it must match."""
LOCK_NAME = ".icnn-batch.lock"


def _output_folder(out: str) -> Path:
    """The output folder, created when missing, checked writable.

    Raises
    ------
    ConfigError
        It is a file, cannot be created, or is not writable.
    DiskFull
        Its disk has no room for even an empty file.
    """
    path = Path(out).expanduser().absolute()
    problem = out_problem(out)
    if problem:  # it may have changed since the preflight
        raise ConfigError(problem, field="out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create the folder ({exc.strerror or exc})", field="out") from None
    probe = path / f".icnn-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise DiskFull(path, exc.errno) from None
        raise ConfigError(f"--out {out}: the folder is not writable ({exc.strerror or exc})", field="out") from None
    return path


@contextlib.contextmanager
def exclusive_folder(folder: Path, lock_name: str = LOCK_NAME) -> Iterator[None]:
    """Hold the folder's lock ``lock_name`` for the run: two runs appending to one summary would duplicate
    rows (and two PACS runs would retrieve and store the same things)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks
        yield
        return
    fd = os.open(folder / lock_name, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise ConfigError(f"--out {folder}: another icnn infer run is writing into this folder") from None
            # A file system without locks (some network shares): run unguarded rather than not at all.
        yield
    finally:
        os.close(fd)


def _check_settings(folder: Path, model: ModelInfo, cfg: BatchConfig) -> None:
    """Record what the folder's results are made with, or refuse to mix in other results."""
    from napari_icnn.atomic import atomic_write_text

    settings = {
        "model_name": model.name,
        "model_version": model.version,
        "model_sha256": model.sha256,
        "formats": list(cfg.formats) if cfg.formats else "all that apply",
        "top_k": cfg.top_k,
        "keep_ungradeable": cfg.keep_ungradeable,
        "decline_unfamiliar": cfg.decline_unfamiliar,
    }
    # what a folder's settings file may lack, being older than the setting
    unrecorded = {"keep_ungradeable": False, "decline_unfamiliar": False}
    path = folder / SETTINGS_NAME
    if path.exists():
        try:
            earlier = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            earlier = None
        if isinstance(earlier, dict):
            differ = [k for k in settings if earlier.get(k, unrecorded.get(k)) != settings[k]]
            if differ:
                was = ", ".join(f"{k} {earlier.get(k)!r}" for k in differ)
                raise ConfigError(
                    f"--out {folder}: holds results made with other settings ({was}); "
                    "use another output folder, or the same model, formats, top-k and gate options to resume"
                )
            return
    atomic_write_text(path, json.dumps(settings, indent=2))


def _model_info(cfg: BatchConfig) -> tuple[str, ModelInfo, Any]:
    """The bundle's path, identity and (for a local run) the loaded model.

    Raises
    ------
    BundleError
        The bundle is missing or broken.
    """
    from napari_icnn.bundle import WEIGHTS, load_bundle, read_metadata, sha256_file

    path = model_path(cfg.model)
    if cfg.scheduler:
        meta = read_metadata(path)  # the workers load it; here only its identity is needed
        weights = Path(path) / WEIGHTS
        if not weights.is_file():
            raise BundleError(f"{path}: models/model.pt is missing")
        info = ModelInfo(str(meta.get("name", Path(path).name)), str(meta.get("version", "0.0.0")), sha256_file(weights))
        return path, info, None
    model = load_bundle(path, cfg.device)
    return path, ModelInfo(model.name, model.version, model.sha256), model


class Stopped(Cancelled):
    """A batch stopped on request: :attr:`summary` says what it had done (its ``stopped`` set). Files
    finished keep their rows; a run into the same folder continues with the others."""

    def __init__(self, summary: BatchSummary):
        super().__init__(summary.describe())
        self.summary = summary


def infer_iter(
    cfg: BatchConfig,
    should_stop: Callable[[], bool] | None = None,
    files: Iterable[str] | None = None,
    total: int = 0,
) -> Generator[Progress | Message, None, BatchSummary]:
    """Run batch inference; yields progress, returns the :class:`BatchSummary`.

    Every input file gets rows in ``summary.csv`` (one per frame of a multi-frame file); files
    with rows from an earlier run into the same folder are skipped. The progress events of the
    stage ``"infer"`` carry the running counts (:meth:`BatchCounts.from_progress` reads them).

    ``files``, when given, are the input files in place of the walk of ``cfg.inputs`` (which must
    still exist): each is taken when the run is ready for more, so they may still be arriving
    (downloads); ``total`` is how many it gives, for progress (0: unknown).

    Raises
    ------
    ConfigError
        A usage or set-up problem (:func:`~napari_icnn.batch.preflight.preflight`, before anything
        starts), or one found as the run starts: no input files, an output folder that takes no
        writes, another run writing into it, results of other settings in it, an unreachable cluster.
    BundleError
        The model bundle is missing or broken.
    Stopped
        ``should_stop`` returned true (a :class:`~napari_icnn.errors.Cancelled`); files finished so
        far keep their rows.
    DiskFull
        The output folder ran out of space (or quota, or file size limit): the run stops at the
        first write that fails; files finished so far keep their rows and complete outputs, and
        the file being written gets no row, so a run with space resumes with it.
    """
    # What the run writes itself (lock, settings) fails like any output on a full disk.
    with disk_full_in(cfg.out):
        return (yield from _infer_iter(cfg, should_stop, files, total))


def _infer_iter(
    cfg: BatchConfig,
    should_stop: Callable[[], bool] | None,
    files: Iterable[str] | None,
    total: int,
) -> Generator[Progress | Message, None, BatchSummary]:
    start = time.monotonic()
    preflight(cfg)
    with contextlib.ExitStack() as stack:
        pool = None
        if not cfg.scheduler and cfg.workers:
            from napari_icnn.batch.local import WorkerPool

            pool = WorkerPool(cfg.workers)  # the processes start while the model loads
            stack.callback(pool.close)
        bundle, info, model = _model_info(cfg)
        out = _output_folder(cfg.out)
        client = None
        if cfg.scheduler:
            from napari_icnn.batch.cluster import connect

            client = connect(cfg.scheduler, str(out), bundle)
            stack.callback(client.close)
        stack.enter_context(exclusive_folder(out))
        _check_settings(out, info, cfg)
        summary = stack.enter_context(SummaryFile(out / SUMMARY_NAME))
        skipped: list[Done] = []
        todo: Iterator[str]
        if files is None:
            counts = yield from _count(cfg, out, summary)
            todo = (p for p in iter_input_files(cfg.inputs, exclude=out) if one_line(p, 4096) not in summary.done)
        else:
            counts = BatchCounts(files_total=total)
            todo = _unfinished(files, summary, skipped)
        spec = OutputSpec(out=str(out), model=info, formats=cfg.formats, top_k=cfg.top_k)
        rule = GateRule(keep_ungradeable=cfg.keep_ungradeable, decline_unfamiliar=cfg.decline_unfamiliar)
        if counts.files_total:
            yield counts.progress()
        if client is not None:
            from napari_icnn.batch.cluster import run_cluster
            from napari_icnn.batch.work import ClusterJob

            job = ClusterJob(bundle, info.sha256, cfg.device, cfg.batch, spec, rule)
            counts, stopped = yield from run_cluster(todo, client=client, job=job, summary=summary, counts=counts,
                                                     should_stop=should_stop)
        else:
            from napari_icnn.batch.local import run_local

            counts, stopped = yield from run_local(todo, model=model, spec=spec, summary=summary, counts=counts,
                                                   batch=cfg.batch, workers=cfg.workers, should_stop=should_stop,
                                                   pool=pool, rule=rule)
        counts = _with_skipped(counts, skipped)
    seconds = time.monotonic() - start
    result = BatchSummary(
        counts=counts,
        summary_csv=str(out / SUMMARY_NAME),
        seconds=seconds,
        images_per_second=counts.rows / seconds if seconds > 0 else 0.0,
        stopped=stopped,
    )
    if stopped:  # raised once the workers, the summary and the folder's lock are let go
        raise Stopped(result)
    return result


def _with_skipped(counts: BatchCounts, skipped: list[Done]) -> BatchCounts:
    """``counts`` with the files an earlier run had done (``skipped``) added."""
    if not skipped:
        return counts
    return replace(
        counts,
        skipped=counts.skipped + sum(d.n_rows for d in skipped),
        skipped_files=counts.skipped_files + len(skipped),
        skipped_not_ok=counts.skipped_not_ok + sum(d.n_not_ok for d in skipped),
    )


def _unfinished(files: Iterable[str], summary: SummaryFile, skipped: list[Done]) -> Iterator[str]:
    """The absolute paths of ``files`` without rows from an earlier run (what those did goes to ``skipped``)."""
    for path in files:
        path = os.path.abspath(path)
        done = summary.done.get(one_line(path, 4096))
        if done is None:
            yield path
        else:
            skipped.append(done)


def _count(cfg: BatchConfig, out: Path, summary: SummaryFile) -> Generator[Progress | Message, None, BatchCounts]:
    """Walk the inputs once to count them (a progress total) against what an earlier run did.

    Raises
    ------
    ConfigError
        No input file at all.
    """
    n_files = 0
    skipped: list[Done] = []
    for path in iter_input_files(cfg.inputs, exclude=out):
        done = summary.done.get(one_line(path, 4096))
        if done is None:
            n_files += 1
        else:
            skipped.append(done)
        seen = n_files + len(skipped)
        if seen % 2000 == 0:
            yield Progress("finding inputs", seen, 0)
    if n_files + len(skipped) == 0:
        raise ConfigError(f"no input files found in {', '.join(cfg.inputs)}", field="inputs")
    earlier = f"; {len(skipped)} done in an earlier run (skipped)" if skipped else ""
    yield Message(f"{n_files} input files to process{earlier}")
    return _with_skipped(BatchCounts(files_total=n_files), skipped)


def infer(
    cfg: BatchConfig,
    on_event: Callable[[Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> BatchSummary:
    """:func:`infer_iter` run to the end; events go to ``on_event``."""
    return drain(infer_iter(cfg, should_stop=should_stop), on_event)


def infer_until_stopped(
    cfg: BatchConfig, should_stop: Callable[[], bool] | None = None
) -> Generator[Progress | Message, None, BatchSummary]:
    """:func:`infer_iter`, where a stop is an outcome rather than an error: it returns the summary of
    what was done, with ``stopped`` set."""
    try:
        return (yield from infer_iter(cfg, should_stop))
    except Stopped as stop:
        return stop.summary
