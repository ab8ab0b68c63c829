"""Running a widget's long work off the GUI thread: progress thinning, the error wrapper, the
worker, failure notices, and the base of the widgets whose run can be stopped (Train, Batch)."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

from qtpy.QtWidgets import QWidget

from napari_icnn._widgets.form import ERROR_STYLE, HINT_STYLE
from napari_icnn.errors import Cancelled, IcnnError
from napari_icnn.progress import Progress

__all__ = ["thin_progress", "JobFailed", "guarded", "new_worker", "notify_failure", "StoppableJobWidget"]

E = TypeVar("E")
R = TypeVar("R")


def thin_progress(
    engine: Generator[E, None, R],
    min_interval: float,
    on_progress: Callable[[Progress], None] | None = None,
) -> Generator[E, None, R | None]:
    """``engine``'s events with :class:`~napari_icnn.progress.Progress` thinned to one per
    ``min_interval`` seconds (one that completes its stage always passes), so a fast run does not
    flood the GUI thread; ``on_progress`` sees every Progress, passed on or not.

    Returns the engine's result, or ``None`` when it stopped on request (raised ``Cancelled``).
    """
    last = -math.inf
    while True:
        try:
            event = next(engine)
        except StopIteration as done:
            return done.value
        except Cancelled:
            return None
        if isinstance(event, Progress):
            if on_progress is not None:
                on_progress(event)
            now = time.monotonic()
            if now - last < min_interval and not (event.total and event.done >= event.total):
                continue
            last = now
        yield event


class JobFailed(Exception):
    """An error raised in the background job, carried to the GUI thread.

    superqt takes a RuntimeError escaping a worker (a :class:`~napari_icnn.errors.BundleError` is
    one) for a deleted worker and drops it without a signal, so every error travels wrapped.
    """

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def guarded(job: Generator[E, None, R]) -> Generator[E, None, R]:
    """``job``, with every error it raises wrapped in :class:`JobFailed`."""
    try:
        return (yield from job)
    except Exception as err:  # noqa: BLE001 - reported on the GUI thread, see JobFailed
        raise JobFailed(err) from err


def new_worker(
    job: Callable[..., Generator[Any, None, Any]],
    *args: Any,
    yielded: Callable[[Any], None],
    returned: Callable[[Any], None],
    errored: Callable[[BaseException], None],
    finished: Callable[[], None],
) -> Any:
    """A napari worker running ``job(*args)``, connected and not yet started.

    ``job`` must be a generator function (napari picks the worker kind by it). The caller keeps the
    worker before starting it, so ``finished`` always finds it kept.
    """
    from napari.qt.threading import create_worker

    return create_worker(
        job,
        *args,
        _start_thread=False,
        _connect={"yielded": yielded, "returned": returned, "errored": errored, "finished": finished},
    )


def notify_failure(what: str, err: BaseException, log: logging.Logger) -> None:
    """Tell the user that ``what`` failed: an IcnnError by its message, anything else by its type
    (its traceback goes to the log)."""
    from napari.utils.notifications import show_error

    if isinstance(err, IcnnError):
        show_error(f"{what} failed: {err}")
    else:
        log.error("%s failed", what, exc_info=(type(err), err, err.__traceback__))
        show_error(f"{what} failed unexpectedly ({type(err).__name__}: {err})")


class StoppableJobWidget(QWidget):
    """Base of the dock widgets that run one stoppable job at a time.

    A subclass builds ``form_box`` (disabled while running), ``progress``, ``status``
    (:func:`~napari_icnn._widgets.form.status_label`) and ``stop_button``, and provides
    ``validate()`` and the ``_on_event`` / ``_on_returned`` slots. Its job takes the run's settings
    and a :class:`threading.Event` that asks it to stop.
    """

    JOB_NAME = "The job"
    """Name of the work in failure notices ("Training", "Batch")."""
    STOPPING_TEXT = "Stopping…"
    """The status line once Stop is pressed: what is kept."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._worker: Any = None
        self._stop = threading.Event()
        self._running = False
        self._outcome: Any = None
        self._status_problem = False
        stop = self._stop  # a closed widget stops its run; capture only the event, the widget is gone
        self.destroyed.connect(lambda *_: stop.set())

    @property
    def running(self) -> bool:
        return self._running

    @property
    def outcome(self) -> Any:
        """How the last run ended (``None`` before the first, and while one runs)."""
        return self._outcome

    def stop(self) -> None:
        """Ask the run to stop; what it has finished is kept (:attr:`STOPPING_TEXT` says what)."""
        if not self._running or self._stop.is_set():
            return
        self._stop.set()
        self.stop_button.setEnabled(False)
        self.stop_button.setText("Stopping…")
        self.status.setText(self.STOPPING_TEXT)

    def _launch(self, job: Callable[..., Generator[Any, None, Any]], cfg: Any, text: str) -> Any:
        """Run ``job(cfg, stop_event)`` in the background; returns the started worker."""
        self._stop.clear()  # the previous run's thread has returned: the event is free again
        self._outcome = None
        self._set_running(True)
        self._status_problem = False
        self.status.setStyleSheet(HINT_STYLE)
        self.status.setText(text)
        self.progress.setRange(0, 0)  # busy until the first progress: inputs are found, data read
        self._worker = new_worker(
            job,
            cfg,
            self._stop,
            yielded=self._on_event,
            returned=self._on_returned,
            errored=self._on_error,
            finished=self._on_finished,
        )
        self._worker.start()
        return self._worker

    def _set_running(self, running: bool) -> None:
        self._running = running
        self.form_box.setEnabled(not running)
        self.stop_button.setText("Stop")
        if not running:
            self.progress.setRange(0, max(1, self.progress.maximum()))
        self.validate()

    def _show_unplaced(self, problem: str | None) -> None:
        """A problem no field is named for goes into the status line (and leaves it once solved)."""
        if problem or self._status_problem:
            self.status.setText(problem or "")
            self.status.setStyleSheet(ERROR_STYLE if problem else HINT_STYLE)
            self._status_problem = bool(problem)

    def _on_error(self, err: BaseException) -> None:
        if isinstance(err, JobFailed):
            err = err.error
        self._set_running(False)
        self.progress.setFormat("failed")
        notify_failure(self.JOB_NAME, err, logging.getLogger(type(self).__module__))
        self.status.setText(self._failure_text())

    def _failure_text(self) -> str:
        return f"{self.JOB_NAME} failed (see the notification)."

    def _on_finished(self) -> None:
        self._worker = None
        if self._running:  # ended without a result or an error (the worker was quit)
            self._set_running(False)
