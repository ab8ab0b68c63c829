"""Running a batch: check the set-up, resume from ``summary.csv``, then run locally or on a cluster."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_icnn.atomic import DISK_FULL_ERRNOS, DiskFull, disk_full_in
from napari_icnn.batch.config import BatchConfig, BatchSummary
from napari_icnn.batch.inputs import check_inputs, iter_input_files
from napari_icnn.batch.outputs import OutputSpec
from napari_icnn.batch.summary import SummaryFile, Tally, one_line
from napari_icnn.dicom.uids import ModelInfo
from napari_icnn.errors import BundleError, ConfigError
from napari_icnn.progress import Message, Progress, drain

__all__ = ["infer_iter", "infer", "exclusive_folder", "SUMMARY_NAME", "SETTINGS_NAME", "LOCK_NAME"]

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
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    probe = path / f".icnn-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise DiskFull(path, exc.errno) from None
        raise ConfigError(f"--out {out}: the folder is not writable ({exc.strerror or exc})") from None
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
    }
    path = folder / SETTINGS_NAME
    if path.exists():
        try:
            earlier = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            earlier = None
        if isinstance(earlier, dict):
            differ = [k for k in settings if earlier.get(k) != settings[k]]
            if differ:
                was = ", ".join(f"{k} {earlier.get(k)!r}" for k in differ)
                raise ConfigError(
                    f"--out {folder}: holds results made with other settings ({was}); "
                    "use another output folder, or the same model, formats and top-k to resume"
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
    from napari_icnn.bundle import WEIGHTS, default_bundle_path, load_bundle, read_metadata, sha256_file

    path = os.path.abspath(cfg.model) if cfg.model else str(default_bundle_path())
    if cfg.scheduler:
        meta = read_metadata(path)  # the workers load it; here only its identity is needed
        weights = Path(path) / WEIGHTS
        if not weights.is_file():
            raise BundleError(f"{path}: models/model.pt is missing")
        info = ModelInfo(str(meta.get("name", Path(path).name)), str(meta.get("version", "0.0.0")), sha256_file(weights))
        return path, info, None
    model = load_bundle(path, cfg.device)
    return path, ModelInfo(model.name, model.version, model.sha256), model


def infer_iter(
    cfg: BatchConfig,
    should_stop: Callable[[], bool] | None = None,
    files: Iterable[str] | None = None,
    total: int = 0,
) -> Generator[Progress | Message, None, BatchSummary]:
    """Run batch inference; yields progress, returns the :class:`BatchSummary`.

    Every input file gets rows in ``summary.csv`` (one per frame of a multi-frame file); files
    with rows from an earlier run into the same folder are skipped.

    ``files``, when given, are the input files in place of the walk of ``cfg.inputs`` (which must
    still exist): each is taken when the run is ready for more, so they may still be arriving
    (downloads); ``total`` is how many it gives, for progress (0: unknown).

    Raises
    ------
    ConfigError
        A usage or set-up problem: missing input, no input files, unusable output folder, another
        run writing into it, results of other settings in it, unknown device, unreachable cluster.
    BundleError
        The model bundle is missing or broken.
    Cancelled
        ``should_stop`` returned true; files finished so far keep their rows.
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
    check_inputs(cfg.inputs)
    with contextlib.ExitStack() as stack:
        pool = None
        if not cfg.scheduler and cfg.workers:
            from napari_icnn.batch.local import WorkerPool

            pool = WorkerPool(cfg.workers)  # the processes start while the model loads
            stack.callback(pool.close)
        model_path, info, model = _model_info(cfg)
        out = _output_folder(cfg.out)
        client = None
        if cfg.scheduler:
            from napari_icnn.batch.cluster import connect

            client = connect(cfg.scheduler, str(out), model_path)
            stack.callback(client.close)
        stack.enter_context(exclusive_folder(out))
        _check_settings(out, info, cfg)
        summary = stack.enter_context(SummaryFile(out / SUMMARY_NAME))
        if files is None:
            found = yield from _count(cfg, out, summary)
            todo = (p for p in iter_input_files(cfg.inputs, exclude=out) if one_line(p, 4096) not in summary.done)
        else:
            found = _Found(n_files=total)
            todo = _unfinished(files, summary, found)
        spec = OutputSpec(out=str(out), model=info, formats=cfg.formats, top_k=cfg.top_k)
        tally = Tally()
        if found.n_files:
            yield Progress("infer", 0, found.n_files)
        if client is not None:
            from napari_icnn.batch.cluster import run_cluster
            from napari_icnn.batch.work import ClusterJob

            job = ClusterJob(model_path, info.sha256, cfg.device, cfg.batch, spec)
            yield from run_cluster(todo, client=client, job=job, summary=summary, tally=tally,
                                   total=found.n_files, should_stop=should_stop)
        else:
            from napari_icnn.batch.local import run_local

            yield from run_local(todo, model=model, spec=spec, summary=summary, tally=tally, total=found.n_files,
                                 batch=cfg.batch, workers=cfg.workers, should_stop=should_stop, pool=pool)
    seconds = time.monotonic() - start
    return BatchSummary(
        n_ok=tally.n_ok,
        n_error=tally.n_error,
        n_declined=tally.n_declined,
        n_skipped=found.n_skipped,
        summary_csv=str(out / SUMMARY_NAME),
        seconds=seconds,
        images_per_second=tally.n_rows / seconds if seconds > 0 else 0.0,
        n_skipped_not_ok=found.n_skipped_not_ok,
    )


@dataclass
class _Found:
    n_files: int = 0
    """Input files to process."""
    n_skipped_files: int = 0
    n_skipped: int = 0
    """Rows of the skipped files."""
    n_skipped_not_ok: int = 0


def _unfinished(files: Iterable[str], summary: SummaryFile, found: _Found) -> Iterator[str]:
    """The absolute paths of ``files`` without rows from an earlier run (those are counted as skipped)."""
    for path in files:
        path = os.path.abspath(path)
        done = summary.done.get(one_line(path, 4096))
        if done is None:
            yield path
        else:
            found.n_skipped_files += 1
            found.n_skipped += done.n_rows
            found.n_skipped_not_ok += done.n_not_ok


def _count(cfg: BatchConfig, out: Path, summary: SummaryFile) -> Generator[Progress | Message, None, _Found]:
    """Walk the inputs once to count them (a progress total) against what an earlier run did.

    Raises
    ------
    ConfigError
        No input file at all.
    """
    found = _Found()
    for path in iter_input_files(cfg.inputs, exclude=out):
        done = summary.done.get(one_line(path, 4096))
        if done is None:
            found.n_files += 1
        else:
            found.n_skipped_files += 1
            found.n_skipped += done.n_rows
            found.n_skipped_not_ok += done.n_not_ok
        seen = found.n_files + found.n_skipped_files
        if seen % 2000 == 0:
            yield Progress("finding inputs", seen, 0)
    if found.n_files + found.n_skipped_files == 0:
        raise ConfigError(f"no input files found in {', '.join(cfg.inputs)}")
    earlier = f"; {found.n_skipped_files} done in an earlier run (skipped)" if found.n_skipped_files else ""
    yield Message(f"{found.n_files} input files to process{earlier}")
    return found


def infer(
    cfg: BatchConfig,
    on_event: Callable[[Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> BatchSummary:
    """:func:`infer_iter` run to the end; events go to ``on_event``."""
    return drain(infer_iter(cfg, should_stop=should_stop), on_event)
