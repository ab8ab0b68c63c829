"""A batch job against a PACS: pull the instances a query finds, run the batch job on them as
they arrive, and store its DICOM results back, each exactly once.

The run keeps its state in the output folder, beside the batch job's ``summary.csv``: staged
instances under ``pacs-staging/`` (deleted once processed, unless kept) and ``pacs_state.json``
(what was stored where). Running the same command again resumes: instances processed before are
neither retrieved nor processed again, and results already stored are not stored again.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from napari_icnn.atomic import disk_full_errno, disk_full_in
from napari_icnn.batch.config import BatchConfig, BatchSummary
from napari_icnn.batch.run import exclusive_folder
from napari_icnn.errors import ConfigError
from napari_icnn.pacs.credentials import PacsSettings
from napari_icnn.pacs.errors import PacsError, PacsSetupError
from napari_icnn.pacs.remote import Remote, connect
from napari_icnn.pacs.source import Listing, Query, StagedSource, find_instances, staged_path
from napari_icnn.pacs.store import STATE_NAME, PacsState, Storer, SummaryTail, all_rows, stored_outputs
from napari_icnn.pacs.urls import PacsUrl
from napari_icnn.progress import Message, Progress, drain

__all__ = ["PacsJob", "PacsSummary", "pacs_infer_iter", "pacs_infer", "STAGING_NAME", "LOCK_NAME"]

STAGING_NAME = "pacs-staging"
LOCK_NAME = ".icnn-pacs.lock"
_SUMMARY_NAME = "summary.csv"  # the batch job's, read for resuming


@dataclass(frozen=True)
class PacsJob:
    """Where the inputs come from and where the results go.

    Valid once built: a source comes with a query; there is a source or a store target (or
    both); ``ahead`` is positive.
    """

    source: PacsUrl | None = None
    """``--from``: the PACS to pull from; ``None``: the batch's own INPUT files."""
    query: Query | None = None
    store_to: PacsUrl | None = None
    """``--store-to``: the PACS that receives the SEG and SR results."""
    settings: PacsSettings = field(default_factory=PacsSettings)
    keep_staging: bool = False
    """Keep the retrieved instances in ``DIR/pacs-staging`` after processing (they hold patient data)."""
    ahead: int = 4
    """Instances retrieved ahead of the batch job."""

    def __post_init__(self) -> None:
        if self.source is not None and self.query is None:
            raise ConfigError("--from: name the studies to pull with --study UID or --since YYYYMMDD")
        if self.source is None and self.query is not None:
            raise ConfigError("--study/--since/--modality go with --from URL")
        if self.source is None and self.store_to is None:
            raise ConfigError("a PACS job needs --from URL or --store-to URL")
        if isinstance(self.ahead, bool) or not isinstance(self.ahead, int) or self.ahead < 1:
            raise ConfigError(f"PACS prefetch: must be a positive integer (got {self.ahead!r})")


@dataclass(frozen=True)
class PacsSummary:
    """What a PACS run did: the batch job's summary plus the transfers."""

    batch: BatchSummary
    n_instances: int = 0
    """Instances the query found (after the modality and SOP class filters)."""
    n_retrieved: int = 0
    """Retrieved by this run (instances finished before are not retrieved again)."""
    n_not_retrieved: int = 0
    n_stored: int = 0
    n_present: int = 0
    """Results found on the PACS already, so not sent again."""
    n_not_stored: int = 0
    """Results of the output folder still not on the PACS (failed, or left while it was down)."""
    store_to: str = ""
    """The PACS results were stored on ('': none)."""
    state_json: str = ""

    @property
    def exit_code(self) -> int:
        """0 when every input is ok, retrieved and its results stored; else 3."""
        return 3 if self.batch.exit_code or self.n_not_retrieved or self.n_not_stored else 0

    def describe(self) -> str:
        parts = []
        if self.n_instances or self.n_not_retrieved:
            parts.append(f"{self.n_instances} instances found, {self.n_retrieved} retrieved"
                         + (f", {self.n_not_retrieved} NOT retrieved" if self.n_not_retrieved else ""))
        if self.store_to:
            stored = f"{self.n_stored} results stored"
            if self.n_present:
                stored += f", {self.n_present} already there"
            if self.n_not_stored:
                stored += f", {self.n_not_stored} NOT stored (run again to store them)"
            parts.append(stored)
        if parts and self.state_json:
            parts.append(f"state: {self.state_json}")
        pacs = f"\nPACS: {'; '.join(parts)}" if parts else ""
        return self.batch.describe() + pacs


def _probe(remote: Remote, settings: PacsSettings, option: str) -> None:
    """Fail early and in one line when the PACS cannot be used at all.

    Raises
    ------
    PacsSetupError
        Unreachable after the retries, or refusing us.
    """
    try:
        settings.retry.call(remote.probe)
    except PacsError as exc:
        raise PacsSetupError(f"{option}: {exc}") from None


def pacs_infer_iter(
    job: PacsJob, cfg: BatchConfig, should_stop: Callable[[], bool] | None = None
) -> Generator[Progress | Message, None, PacsSummary]:
    """Run the batch job ``cfg`` against a PACS; yields progress, returns the :class:`PacsSummary`.

    With ``job.source`` the inputs are the instances its query finds (``cfg.inputs`` is
    replaced by the staging folder); otherwise they are ``cfg.inputs``. With ``job.store_to``
    every SEG and SR result of the output folder not yet stored there is stored, each as soon as
    it is written.

    Raises
    ------
    PacsSetupError
        A PACS is unreachable or refuses us before any work starts, or a named study is not on it.
    ConfigError, BundleError, Cancelled
        As the batch job raises them; what was finished and stored so far is kept.
    DiskFull
        The output folder (staging included) ran out of space: the run stops as the batch job
        does; what was finished and stored so far is kept.
    """
    # The state file and the staged instances fail like the batch's outputs on a full disk.
    with disk_full_in(cfg.out):
        return (yield from _pacs_infer_iter(job, cfg, should_stop))


def _pacs_infer_iter(
    job: PacsJob, cfg: BatchConfig, should_stop: Callable[[], bool] | None
) -> Generator[Progress | Message, None, PacsSummary]:
    from napari_icnn.batch.run import infer_iter

    settings = job.settings
    out = Path(cfg.out).expanduser().absolute()
    source: Remote | None = None
    store: Remote | None = None
    listing = Listing((), 0)
    with contextlib.ExitStack() as stack:
        if job.source is not None:
            source = stack.enter_context(contextlib.closing(connect(job.source, settings)))
            _probe(source, settings, "--from")
        if job.store_to is not None:
            store = stack.enter_context(contextlib.closing(connect(job.store_to, settings, settings.for_store())))
            _probe(store, settings, "--store-to")
        if source is not None and job.query is not None:
            listing = yield from find_instances(source, job.query, settings.retry)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if disk_full_errno(exc) is not None:
                raise
            raise ConfigError(f"--out {cfg.out}: cannot create the folder ({exc.strerror or exc})") from None
        stack.enter_context(exclusive_folder(out, LOCK_NAME))
        state = PacsState(out / STATE_NAME)
        stack.push(_state_saver(state))
        storer = Storer(store, state, out, settings.retry) if store is not None else None
        staging = out / STAGING_NAME
        summary_csv = out / _SUMMARY_NAME
        done = {row.input_path for row in all_rows(summary_csv)}
        pulled: StagedSource | None = None
        if job.source is not None:
            source_url = job.source
            staging.mkdir(exist_ok=True)
            pulled = StagedSource(
                connect=lambda: connect(source_url, settings),
                instances=listing.instances,
                staging=staging,
                done=frozenset(done),
                retry=settings.retry,
                ahead=job.ahead,
            ).start()
            stack.callback(_record_not_retrieved, state, str(job.source), pulled)
            stack.callback(pulled.close)  # runs first: the thread stops before its failures are read
            paths = [str(staged_path(staging, ref)) for ref in listing.instances]
            run = infer_iter(replace(cfg, inputs=(str(staging),)), should_stop, files=pulled,
                             total=sum(p not in done for p in paths))
        else:
            run = infer_iter(cfg, should_stop)
        # Stopped here by an error of its own (a full disk while storing), the batch job must still
        # let go of its workers, summary and lock.
        stack.callback(run.close)
        tail = SummaryTail(summary_csv)
        told_down = False
        while True:
            try:
                event = next(run)
            except StopIteration as stop:
                batch: BatchSummary = stop.value
                break
            yield event
            if not (isinstance(event, Progress) and event.stage == "infer"):
                continue
            rows = tail.new_rows()
            if not job.keep_staging:
                _unstage((r.input_path for r in rows), staging)
            if storer is not None:
                yield from _store(storer, list(stored_outputs(rows)))
                if storer.down and not told_down:
                    told_down = True
                    yield Message(f"--store-to: stopped storing ({storer.down}); the results not yet stored "
                                  "stay in the output folder and the next run stores them", level="warning")
        rows = all_rows(summary_csv)
        n_not_stored = 0
        if storer is not None:
            if not storer.down:
                yield from _store(storer, list(stored_outputs(rows)))
            n_not_stored = len(storer.pending(list(stored_outputs(rows))))
        if pulled is not None and not job.keep_staging:
            _unstage((r.input_path for r in rows), staging)
            _prune(staging)
    if pulled is not None and pulled.failed:
        yield Message(f"--from: {len(pulled.failed)} instances could not be retrieved (listed in "
                      f"{out / STATE_NAME}); the next run tries them again", level="warning")
    return PacsSummary(
        batch=batch,
        n_instances=len(listing.instances),
        n_retrieved=pulled.n_retrieved if pulled is not None else 0,
        n_not_retrieved=len(pulled.failed) if pulled is not None else 0,
        n_stored=storer.n_stored if storer is not None else 0,
        n_present=storer.n_present if storer is not None else 0,
        n_not_stored=n_not_stored,
        store_to=str(job.store_to) if job.store_to is not None else "",
        state_json=str(out / STATE_NAME) if (out / STATE_NAME).exists() else "",
    )


def _store(storer: Storer, rels: list[str]) -> Generator[Progress | Message, None, None]:
    for rel in storer.pending(rels):
        outcome = storer.store(rel)
        if outcome == "skipped":
            return
        if outcome == "failed" and not storer.down:
            yield Message(f"not stored: {rel}: {storer.failed[rel]}", level="warning")
        yield Progress("store", storer.n_stored + storer.n_present, 0,
                       f"{storer.n_stored} stored, {storer.n_present} already there")


def _state_saver(state: PacsState) -> Callable[..., bool]:
    """Save ``state`` at the end of the run, as an exit callback: when the run is already ending on
    an error, a full disk failing the save must not hide that error (the file keeps its last
    complete version, and results stored but not recorded are found on the PACS next time)."""

    def save(exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        try:
            state.save()
        except OSError as err:
            if exc is None or disk_full_errno(err) is None:
                raise
        return False

    return save


def _record_not_retrieved(state: PacsState, source: str, pulled: StagedSource) -> None:
    state.set_not_retrieved(source, pulled.failed)


def _unstage(paths: Any, staging: Path) -> None:
    """Delete processed staged files (they hold patient data); never anything outside ``staging``."""
    root = str(staging) + os.sep
    for path in dict.fromkeys(paths):
        if path.startswith(root) and path.endswith(".dcm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _prune(staging: Path) -> None:
    """Remove the staging folders that are left empty."""
    if not staging.is_dir():
        return
    for folder in sorted((p for p in staging.iterdir() if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()
    with contextlib.suppress(OSError):
        staging.rmdir()


def pacs_infer(
    job: PacsJob,
    cfg: BatchConfig,
    on_event: Callable[[Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PacsSummary:
    """:func:`pacs_infer_iter` run to the end; events go to ``on_event``."""
    return drain(pacs_infer_iter(job, cfg, should_stop=should_stop), on_event)
