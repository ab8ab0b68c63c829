"""The batch on a Dask cluster: one task per input file, run by a worker that reads the file, runs
the network and writes the outputs into the shared output folder; this process appends each
file's summary rows as its result arrives.

Workers need the package installed, the inputs, the output folder and the model bundle at the same
paths as this machine (a shared file system). The number of tasks in flight is bounded, so the
client's memory does not grow with the number of files.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import Any

from napari_icnn.atomic import DiskFull
from napari_icnn.batch import work
from napari_icnn.batch.config import BatchCounts
from napari_icnn.batch.local import file_events
from napari_icnn.batch.preflight import CLUSTER
from napari_icnn.batch.summary import Row, SummaryFile, one_line
from napari_icnn.errors import ConfigError, MissingExtra

__all__ = ["connect", "run_cluster", "CONNECT_TIMEOUT_S", "WORKER_WAIT_S"]

CONNECT_TIMEOUT_S = 20
"""Seconds to wait for the scheduler to answer."""
WORKER_WAIT_S = 60
"""Seconds to wait for at least one worker to join the scheduler."""


def connect(address: str, out: str, model_path: str) -> Any:
    """A client of the scheduler at ``address`` with at least one worker, every one of which sees
    the output folder and the model bundle.

    Raises
    ------
    ConfigError
        The scheduler cannot be reached, no worker joins, or a worker does not see the output
        folder or the model bundle.
    """
    try:
        from distributed import Client
    except ImportError:
        raise MissingExtra(CLUSTER, "cluster", field="scheduler") from None
    try:
        client = Client(address, timeout=f"{CONNECT_TIMEOUT_S}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ConfigError(f"--scheduler {address}: cannot connect to the Dask scheduler ({one_line(exc, 200)})") from None
    try:
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except (TimeoutError, OSError):
            raise ConfigError(f"--scheduler {address}: no Dask worker joined within {WORKER_WAIT_S} s") from None
        seen = client.run(work.check_worker, out, model_path)
        bad = {w: p for w, p in seen.items() if p}
        if bad:
            lines = "; ".join(f"{w}: {p}" for w, p in sorted(bad.items()))
            raise ConfigError(
                f"--scheduler {address}: {len(bad)} of {len(seen)} workers cannot run this batch ({lines}); "
                "inputs, output folder and model must be on a file system every worker shares"
            )
    except BaseException:
        client.close()
        raise
    return client


def run_cluster(
    paths: Iterator[str],
    *,
    client: Any,
    job: work.ClusterJob,
    summary: SummaryFile,
    counts: BatchCounts,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[Any, None, tuple[BatchCounts, bool]]:
    """Process ``paths`` on the cluster of ``client`` (see :func:`connect`) into ``summary``; yields
    progress events, returns ``counts`` with the files finished added, and whether it stopped because
    ``should_stop`` returned true."""
    from distributed import as_completed

    pending: dict[Any, str] = {}
    try:
        window = max(4, 2 * sum(client.nthreads().values()))
        queue = as_completed(loop=client.loop)

        def submit_next() -> bool:
            path = next(paths, None)
            if path is None:
                return False
            fut = client.submit(work.process_file, path, job, pure=False)
            pending[fut] = path
            queue.add(fut)
            return True

        while len(pending) < window and submit_next():
            pass
        if not pending:
            return counts, False
        for fut in queue:
            path = pending.pop(fut)
            try:
                rows: list[Row] = fut.result()
            except DiskFull:
                raise
            except Exception as exc:  # noqa: BLE001 - a lost worker or task; the file's row says so
                rows = [Row(path, None, "", "error", one_line(f"the cluster could not run this file ({type(exc).__name__}: {exc})"))]
            fut.release()
            summary.append(rows)
            counts = counts.add_file(rows)
            yield from file_events(path, rows, counts)
            if should_stop is not None and should_stop():
                return counts, True
            while len(pending) < window and submit_next():
                pass
        return counts, False
    finally:
        for fut in pending:
            fut.cancel()
