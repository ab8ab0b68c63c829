"""What to pull from a PACS (:class:`Query`), finding it (:func:`find_instances`), and retrieving
it into a staging folder a few instances ahead of the batch job (:class:`StagedSource`).

Staged files are named from UIDs only: ``STAGING/<hash of the Study Instance UID>/<SOP Instance
UID>.dcm``. The same instance always lands at the same path, so the batch job's ``summary.csv``
tells which instances an earlier run finished, and a re-run neither retrieves nor processes them
again.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from napari_icnn.atomic import DiskFull, disk_full_errno
from napari_icnn.errors import Cancelled, ConfigError
from napari_icnn.pacs.errors import PacsError, PacsRefused, PacsSetupError, PacsUnavailable
from napari_icnn.pacs.remote import InstanceRef, Remote, is_image_sop_class, is_uid
from napari_icnn.pacs.retry import RetryPolicy
from napari_icnn.progress import Message, Progress

__all__ = ["Query", "Listing", "find_instances", "staged_path", "StagedSource", "ALL_MODALITIES"]

ALL_MODALITIES = "all"
"""``--modality all``: every series, whatever its modality."""


def modality_codes(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """Modality codes from text (``"OP,XC"``) or a sequence, upper case; ``None`` (and ``"all"``) for every
    series. Raises :class:`~napari_icnn.errors.ConfigError` on a malformed code."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(dict.fromkeys(str(i).strip().upper() for i in items if str(i).strip()))
    if not names:
        raise ConfigError("--modality: give one or more modalities (e.g. OP or OP,XC) or 'all'")
    if ALL_MODALITIES.upper() in names:
        return None
    bad = [n for n in names if len(n) > 16 or not n.replace("_", "").isalnum()]
    if bad:
        raise ConfigError(f"--modality: {', '.join(bad)} is not a DICOM modality code (e.g. OP, XC)")
    return names


@dataclass(frozen=True)
class Query:
    """Which instances to pull. Valid once built: at least one study or a start date (a run never
    pulls a whole archive by accident); well-formed UIDs and date.

    ``modalities`` is a tuple of modality codes, or ``None`` for every series; text such as
    ``"OP,XC"`` or ``"all"`` is accepted.
    """

    studies: tuple[str, ...] = ()
    since: str | None = None
    """``YYYYMMDD``: studies of that date or later."""
    modalities: tuple[str, ...] | None = ("OP",)

    def __post_init__(self) -> None:
        studies = (self.studies,) if isinstance(self.studies, str) else tuple(self.studies or ())
        studies = tuple(dict.fromkeys(str(s).strip() for s in studies if str(s).strip()))
        bad = [s for s in studies if not is_uid(s)]
        if bad:
            raise ConfigError(f"--study {bad[0]!r}: not a Study Instance UID (digits and dots, at most 64)")
        object.__setattr__(self, "studies", studies)
        if self.since is not None:
            since = str(self.since).strip()
            try:
                dt.datetime.strptime(since, "%Y%m%d")
            except ValueError:
                raise ConfigError(f"--since {since!r}: give a date as YYYYMMDD") from None
            if len(since) != 8:
                raise ConfigError(f"--since {since!r}: give a date as YYYYMMDD")
            object.__setattr__(self, "since", since)
        if not studies and self.since is None:
            raise ConfigError("--from: name the studies to pull with --study UID or --since YYYYMMDD")
        object.__setattr__(self, "modalities", modality_codes(self.modalities))

    def wants(self, modality: str) -> bool:
        return self.modalities is None or modality.upper() in self.modalities

    def describe(self) -> str:
        parts = [f"study {s}" for s in self.studies]
        if self.since:
            parts.append(f"studies since {self.since}")
        kind = "every modality" if self.modalities is None else "modality " + ",".join(self.modalities)
        return f"{' and '.join(parts)} ({kind})"


@dataclass(frozen=True)
class Listing:
    """What a query found: the instances to pull and what it passed over."""

    instances: tuple[InstanceRef, ...]
    n_studies: int
    n_series_other_modality: int = 0
    """Series passed over for their modality."""
    n_not_images: int = 0
    """Instances passed over for their SOP class (reports, segmentations, presentation states)."""


def find_instances(remote: Remote, query: Query, retry: RetryPolicy) -> Generator[Progress | Message, None, Listing]:
    """Query the PACS: studies, then their series of the wanted modalities, then their instances.

    Raises
    ------
    PacsSetupError
        The PACS cannot be queried, or a named study is not on it.
    """
    try:
        studies: list[str] = []
        for uid in query.studies:
            found = retry.call(partial(remote.find_studies, study_uid=uid))
            if uid not in found:
                raise PacsSetupError(f"--study {uid}: no such study on {remote.url}")
            studies.append(uid)
        if query.since:
            studies += retry.call(lambda: remote.find_studies(since=query.since))
        studies = list(dict.fromkeys(studies))
        instances: list[InstanceRef] = []
        other = not_images = 0
        for i, study in enumerate(studies):
            yield Progress("query", i, len(studies))
            for series in retry.call(partial(remote.find_series, study)):
                if not query.wants(series.modality):
                    other += 1
                    continue
                for ref in retry.call(partial(remote.find_instances, series)):
                    if ref.sop_class_uid and not is_image_sop_class(ref.sop_class_uid):
                        not_images += 1
                    else:
                        instances.append(ref)
        if studies:
            yield Progress("query", len(studies), len(studies))
    except PacsSetupError:
        raise
    except PacsError as exc:
        raise PacsSetupError(str(exc)) from None
    listing = Listing(tuple(dict.fromkeys(instances)), len(studies), other, not_images)
    passed = []
    if other:
        passed.append(f"{other} series of other modalities")
    if not_images:
        passed.append(_count(not_images, "instance") + " without an image")
    note = f"; passed over {' and '.join(passed)}" if passed else ""
    yield Message(f"{remote.url}: {_count(len(listing.instances), 'instance')} in {_count(len(studies), 'study')} "
                  f"for {query.describe()}{note}")
    return listing


def _count(n: int, noun: str) -> str:
    plural = "studies" if noun == "study" else noun + "s"
    return f"{n} {noun if n == 1 else plural}"


def staged_path(staging: str | Path, ref: InstanceRef) -> Path:
    """Where an instance is staged: named from UIDs only (no patient attribute)."""
    from napari_icnn.batch.outputs import path_hash

    return Path(staging) / path_hash(ref.study_instance_uid) / f"{ref.sop_instance_uid}.dcm"


_END = object()


@dataclass
class StagedSource:
    """The staged paths of ``instances``, in order, retrieved by a background thread that keeps at
    most ``ahead`` files waiting for the batch job.

    Instances whose path is in ``done`` (finished by an earlier run) are passed on without being
    retrieved; so is a file already staged (kept from an earlier run). A retrieval that fails is
    recorded in ``failed`` and passed over; once the PACS stops answering altogether, the rest is
    recorded as not retrieved rather than each waiting out its retries. A full staging disk ends
    the retrieval, and iterating raises :class:`~napari_icnn.atomic.DiskFull` once the files staged
    before it are handed out.
    """

    connect: Callable[[], Remote]
    """Opens the thread's own connection."""
    instances: Sequence[InstanceRef]
    staging: Path
    done: frozenset[str] = frozenset()
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    ahead: int = 4
    n_retrieved: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    """SOP Instance UID → why it could not be retrieved."""
    disk_full: DiskFull | None = None
    """Set when the staging folder's disk filled up: retrieving stopped there."""

    def __post_init__(self) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, self.ahead))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="icnn-pacs-retrieve", daemon=True)
        self._started = False

    def start(self) -> StagedSource:
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def __iter__(self) -> Iterator[str]:
        self.start()
        while True:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    raise Cancelled("stopped while retrieving") from None
                continue
            if item is _END:
                if self.disk_full is not None:
                    raise self.disk_full
                return
            yield item

    def close(self) -> None:
        """Stop retrieving and wait for the thread (a transfer under way is finished or abandoned)."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.1)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise Cancelled("stopped while waiting to retry")

    def _run(self) -> None:
        remote = None
        down: str | None = None
        try:
            for ref in self.instances:
                if self._stop.is_set():
                    return
                path = staged_path(self.staging, ref)
                if str(path) in self.done or path.is_file():
                    if not self._put(str(path)):
                        return
                    continue
                if down is not None:
                    self.failed[ref.sop_instance_uid] = down
                    continue
                try:
                    if remote is None:
                        remote = self.connect()
                    path.parent.mkdir(parents=True, exist_ok=True)
                    self.retry.call(partial(remote.retrieve, ref, path), sleep=self._sleep)
                except PacsUnavailable as exc:
                    down = f"not retrieved: the PACS stopped answering ({exc})"
                    self.failed[ref.sop_instance_uid] = str(exc)
                    continue
                except PacsRefused as exc:
                    self.failed[ref.sop_instance_uid] = str(exc)
                    continue
                except OSError as exc:
                    code = disk_full_errno(exc)
                    if code is not None:
                        # Every further instance would fail alike: not theirs to be recorded against.
                        self.disk_full = DiskFull(self.staging, code)
                        return
                    self.failed[ref.sop_instance_uid] = f"cannot write {path} ({exc.strerror or exc})"
                    continue
                except Cancelled:
                    return
                except Exception as exc:  # noqa: BLE001 - one instance's failure is that instance's
                    self.failed[ref.sop_instance_uid] = f"retrieval failed ({type(exc).__name__}: {exc})"
                    continue
                self.n_retrieved += 1
                if not self._put(str(path)):
                    return
        except Cancelled:
            return
        except Exception as exc:  # noqa: BLE001 - reported, never a silent dead thread
            self.failed["*"] = f"retrieval stopped: {type(exc).__name__}: {exc}"
        finally:
            if remote is not None:
                remote.close()
            self._put(_END)
