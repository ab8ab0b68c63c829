"""The batch on this machine: worker processes read, decode and preprocess files and write the
outputs; the calling process runs the network over batches of frames in between.

Work in flight is bounded (a few tasks per worker and one batch of frames), so memory does not
grow with the number of files. A worker process that dies (a decoder crashing, the kernel killing
it for memory) takes only its own file down: the files it may have held are retried one at a
time, and the one that kills a worker again gets an error row. A full output disk ends the run
(:class:`~napari_icnn.atomic.DiskFull`) at the first write that fails.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from napari_icnn.atomic import DiskFull
from napari_icnn.batch import work
from napari_icnn.batch.config import BatchCounts
from napari_icnn.batch.outputs import OutputSpec
from napari_icnn.batch.summary import Row, SummaryFile
from napari_icnn.progress import Message

__all__ = ["run_local", "file_events", "usable_cores", "WorkerPool"]

# Workers never touch torch, so a fresh interpreter is cheap, and unlike fork it is safe beside
# torch's thread pools and a GUI toolkit in the calling process.
_START_METHOD = "spawn"
_DIED = "the worker process {doing} died (a decoder crashed or the system ran out of memory)"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under ``taskset`` or a batch
    scheduler), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _ignore_sigint() -> None:
    """Ctrl-C is the calling process's to handle: workers finish their task and are shut down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Inline(Executor):
    """Runs each task when submitted (``workers=0``): one process, same code path."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - delivered like a worker's exception
            fut.set_exception(exc)
        return fut


def _executor(workers: int) -> Executor:
    if workers == 0:
        return _Inline()
    ctx = multiprocessing.get_context(_START_METHOD)
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_ignore_sigint)


def _ready() -> bool:
    return True


class WorkerPool:
    """Worker processes being started: created early, so they start while the model loads."""

    def __init__(self, workers: int):
        self.workers = workers
        self.executor = _executor(workers)
        self._probes = [self.executor.submit(_ready) for _ in range(workers)]

    def ready(self) -> tuple[Executor, int, str | None]:
        """The executor and its worker count once every process runs; the in-process executor
        (0 workers) and why, if they could not start."""
        try:
            for fut in self._probes:
                fut.result()
        except (BrokenProcessPool, OSError) as exc:
            # e.g. a main script that cannot be imported again (code piped to python's stdin)
            self.close()
            return _Inline(), 0, f"worker processes could not start ({type(exc).__name__}); running in one process"
        return self.executor, self.workers, None

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class _File:
    """An input file in flight: its rows, complete once there is one per prepared item."""

    path: str
    expected: int | None = None
    rows: list[Row] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.expected is not None and len(self.rows) >= self.expected


@dataclass
class _Task:
    kind: str
    """``"prepare"`` (read one file) or ``"write"`` (write one frame's outputs)."""
    file: _File
    args: tuple
    crashes: int = 0


def file_events(path: str, rows: list[Row], counts: BatchCounts) -> list[Any]:
    """The events for one finished input file: a warning per row that is not ok, then the progress
    with ``counts`` (which count the file)."""
    events: list[Any] = []
    for row in rows:
        if row.status != "ok":
            frame = "" if row.frame is None else f" (frame {row.frame})"
            events.append(Message(f"{row.status}: {path}{frame}: {row.reason}", level="warning"))
    events.append(counts.progress())
    return events


def run_local(
    paths: Iterator[str],
    *,
    model: Any,
    spec: OutputSpec,
    summary: SummaryFile,
    counts: BatchCounts,
    batch: int,
    workers: int,
    should_stop: Callable[[], bool] | None = None,
    pool: WorkerPool | None = None,
    rule: work.GateRule | None = None,
) -> Generator[Any, None, tuple[BatchCounts, bool]]:
    """Process ``paths`` into ``summary``; yields progress events, returns ``counts`` with the files
    finished added, and whether it stopped because ``should_stop`` returned true. ``pool``: workers
    started beforehand (with ``workers`` processes); the run shuts them down. ``rule``: which scans the
    image-quality gate withholds the verdict on (default: the ungradeable ones).

    Raises
    ------
    DiskFull
        An output or the summary could not be written for want of space.
    """
    import torch

    rule = rule or work.GateRule()
    threads = torch.get_num_threads()
    ex, workers, problem = (pool or WorkerPool(workers)).ready()
    if problem:
        yield Message(problem, level="warning")
    if workers:
        # The workers keep the cores busy; more threads here would only contend with them.
        torch.set_num_threads(max(1, min(threads, usable_cores() - workers)))
    inflight: dict[Future, _Task] = {}
    to_write: deque[_Task] = deque()
    retry: deque[_Task] = deque()
    frames: list[tuple[_File, work.Prepared]] = []
    budget = 2 * workers + 2
    ahead = batch + max(1, workers)
    exhausted = False

    def submit(task: _Task) -> None:
        fn = work.prepare_file if task.kind == "prepare" else work.write_frame
        inflight[ex.submit(fn, *task.args)] = task

    def add_rows(file: _File, rows: list[Row]) -> list[Any]:
        nonlocal counts
        file.rows += rows
        if not file.complete:
            return []
        done = sorted(file.rows, key=lambda r: -1 if r.frame is None else r.frame)
        summary.append(done)
        counts = counts.add_file(done)
        return file_events(file.path, done, counts)

    def failed(task: _Task) -> list[Any]:
        if task.kind == "prepare":
            task.file.expected = 1
            return add_rows(task.file, [Row(task.file.path, None, "", "error", _DIED.format(doing="reading this file"))])
        p, expl = task.args[1], task.args[2]
        row = Row(p.input_path, p.image.frame, p.image.sop_instance_uid or "", "error",
                  _DIED.format(doing="writing the outputs of this image"), float(expl.probability))
        return add_rows(task.file, [row])

    try:
        while True:
            if should_stop is not None and should_stop():
                return counts, True
            n_prep = sum(t.kind == "prepare" for t in inflight.values())
            if retry:
                if not inflight:  # after a worker died: suspects run alone, to find the culprit
                    submit(retry.popleft())
            else:
                while to_write and len(inflight) < budget:
                    submit(to_write.popleft())
                while not exhausted and not to_write and len(inflight) < budget and n_prep + len(frames) < ahead:
                    path = next(paths, None)
                    if path is None:
                        exhausted = True
                        break
                    f = _File(path)
                    submit(_Task("prepare", f, (path, model.size)))
                    n_prep += 1
            if frames and (len(frames) >= batch or (n_prep == 0 and (exhausted or not inflight))):
                chunk, frames = frames[:batch], frames[batch:]
                events: list[Any] = []
                results = work.explain_rows(model, [p for _, p in chunk], rule)
                for (file, _), (p, result) in zip(chunk, results):
                    if isinstance(result, Row):
                        events += add_rows(file, [result])
                    else:
                        to_write.append(_Task("write", file, (spec, p, result)))
                yield from events
                continue
            if not inflight:
                if exhausted and not frames and not to_write and not retry:
                    break
                continue
            done, _ = wait(inflight, timeout=0.25, return_when=FIRST_COMPLETED)
            events = []
            crashed: list[_Task] = []
            for fut in done:
                task = inflight.pop(fut)
                # prepare_file's list of Prepared and Row, or write_frame's Row
                outcome: list[work.Prepared | Row] | Row
                try:
                    outcome = fut.result()
                except BrokenProcessPool:
                    crashed.append(task)
                    continue
                except DiskFull:
                    # The files in flight get no rows: the run that resumes does them again.
                    raise
                except Exception as exc:  # noqa: BLE001 - the task functions catch everything; be safe
                    # (what reaches here failed around the task: e.g. its result could not be pickled)
                    reason = f"unexpected failure passing work to a worker process ({type(exc).__name__})"
                    if task.kind == "prepare":
                        outcome = [Row(task.file.path, None, "", "error", reason)]
                    else:
                        p = task.args[1]
                        outcome = Row(p.input_path, p.image.frame, p.image.sop_instance_uid or "", "error", reason)
                if isinstance(outcome, list):
                    task.file.expected = len(outcome)
                    rows = [r for r in outcome if isinstance(r, Row)]
                    frames += [(task.file, p) for p in outcome if isinstance(p, work.Prepared)]
                    events += add_rows(task.file, rows)
                else:
                    events += add_rows(task.file, [outcome])
            if crashed:
                crashed += list(inflight.values())
                inflight.clear()
                ex.shutdown(wait=False, cancel_futures=True)
                ex = _executor(workers)
                for task in crashed:
                    task.crashes += 1
                    if task.crashes >= 2:
                        events += failed(task)
                    else:
                        retry.append(task)
            yield from events
        return counts, False
    finally:
        # Every task handed out has been collected, or cancelled (one already running finishes its
        # atomic writes on its own): the processes only have to exit, a second or more of
        # interpreter teardown that nobody needs to wait for.
        ex.shutdown(wait=False, cancel_futures=True)
        torch.set_num_threads(threads)
