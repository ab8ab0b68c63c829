"""Running a widget's long work off the GUI thread, and the Qt bits the job widgets share.

:class:`JobWidget` holds the life cycle of one background job once: start, typed progress events
(:mod:`napari_icnn.progress`), stop, the result, failure, and the worker's end. The Explain widget
uses it as it is; :class:`StoppableJobWidget` adds the form that is frozen and the Stop button of the
Train and Batch widgets. Beside it: progress thinning, the error wrapper, the worker, failure notices
and the device badge.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

from qtpy.compat import isalive
from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton, QWidget

from napari_icnn._widgets.form import ERROR_STYLE, HINT_STYLE
from napari_icnn.errors import Cancelled, IcnnError
from napari_icnn.progress import EpochEnd, Message, Progress

__all__ = [
    "thin_progress",
    "JobFailed",
    "guarded",
    "new_worker",
    "notify_failure",
    "JobWidget",
    "StoppableJobWidget",
    "DeviceBadge",
]

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
    """``job``, with every error it raises wrapped in :class:`JobFailed` (once: a job that guards
    itself may be guarded again)."""
    try:
        return (yield from job)
    except JobFailed:
        raise
    except Exception as err:  # noqa: BLE001 - reported on the GUI thread, see JobFailed
        raise JobFailed(err) from err


def _guarded_call(job: Callable[..., Generator[E, None, R]], *args: Any) -> Generator[E, None, R]:
    # A generator function, so that napari makes a generator worker of it.
    return (yield from guarded(job(*args)))


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


class JobWidget(QWidget):
    """Base of the dock widgets that run one background job at a time.

    A job is a generator function that yields :mod:`napari_icnn.progress` events and returns its
    result; :meth:`_start` runs it guarded in a napari worker. A subclass builds ``progress`` (a
    ``QProgressBar``) and ``status`` (a ``QLabel``) and provides ``validate()`` (enables its Run
    button; called whenever running starts or ends). It handles the result by extending
    :meth:`_on_returned`, and may override the hooks: :meth:`_on_progress`, :meth:`_on_epoch_end`,
    :meth:`_on_message` for the events, :meth:`_show_running` for what changes while a run is under
    way, :meth:`_report_failure` and :meth:`_failure_text` for errors, :meth:`_show_stopping`.
    """

    JOB_NAME = "The job"
    """Name of the work in failure notices ("Explain", "Training", "Batch")."""
    STOPPING_TEXT = "Stopping…"
    """The status line once a stop is asked for: what is kept."""

    progress: QProgressBar
    """The run's progress bar (built by the subclass)."""
    status: QLabel
    """The status line under it (built by the subclass)."""

    def validate(self) -> bool:
        """Check the form and enable the Run button when it may run; whether it may (the subclass's)."""
        raise NotImplementedError

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._worker: Any = None
        self._stop = threading.Event()
        self._running = False
        self._warnings = 0  # of this run, shown as notifications
        self._outcome: Any = None
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
        """Ask the run to stop (a job sees it through the event :meth:`_start` gave it)."""
        if not self._running or self._stop.is_set():
            return
        self._stop.set()
        self._show_stopping()

    # ------------------------------------------------------------------ life cycle

    def _start(self, job: Callable[..., Generator[Any, None, Any]], *args: Any, text: str) -> Any:
        """Run ``job(*args)`` in the background with ``text`` in the status line; returns the started worker.

        Pass ``self._stop`` (or its ``is_set``) among ``args`` for a job that can stop early.
        """
        self._stop.clear()  # the previous run's thread has returned: the event is free again
        self._outcome = None
        self._warnings = 0
        self._set_running(True)
        self._show_status(text)
        self.progress.setRange(0, 0)  # busy until the first progress
        # only this run's end may clear the job: a run started before the previous worker's finished signal
        # arrived must not be marked ended by that signal
        this: dict[str, Any] = {}

        def finished() -> None:
            # a plain function is not disconnected when the widget is deleted (its methods are): a run
            # outliving its closed widget must not call into it
            if isalive(self):
                self._on_finished(this["worker"])

        self._worker = this["worker"] = new_worker(
            _guarded_call,
            job,
            *args,
            yielded=self._on_event,
            returned=self._on_returned,
            errored=self._on_error,
            finished=finished,
        )
        self._worker.start()
        return self._worker

    def _set_running(self, running: bool) -> None:
        self._running = running
        if not running:  # a busy bar would keep moving
            self.progress.setRange(0, max(1, self.progress.maximum()))
        self._show_running(running)
        self.validate()

    def _on_event(self, event: Any) -> None:
        if isinstance(event, Progress):
            self._on_progress(event)
        elif isinstance(event, EpochEnd):
            self._on_epoch_end(event)
        elif isinstance(event, Message):
            self._on_message(event)

    def _on_returned(self, result: Any) -> None:
        self._outcome = result
        self._set_running(False)

    def _on_error(self, err: BaseException) -> None:
        if isinstance(err, JobFailed):
            err = err.error
        self._set_running(False)
        if isinstance(err, Cancelled):
            self.status.setText("Stopped.")
            return
        self.progress.setFormat("failed")
        self._report_failure(err)

    def _on_finished(self, worker: Any = None) -> None:
        if worker is not None and worker is not self._worker:
            return
        self._worker = None
        if self._running:  # ended without a result or an error (the worker was quit)
            self._set_running(False)

    # ------------------------------------------------------------------ hooks

    def _show_status(self, text: str) -> None:
        self.status.setText(text)

    def _show_running(self, running: bool) -> None:
        """Show that a run started or ended (``_running`` is already set)."""

    def _show_stopping(self) -> None:
        self.status.setText(self.STOPPING_TEXT)

    def _on_progress(self, event: Progress) -> None:
        if event.total:
            self.progress.setRange(0, event.total)
            self.progress.setValue(min(event.done, event.total))
        if not (event.total and event.done >= event.total) and not self._stop.is_set():
            detail = f" ({event.detail})" if event.detail else ""
            self.status.setText(f"{event.stage.capitalize()}{detail}…")

    def _on_epoch_end(self, event: EpochEnd) -> None:
        """An epoch ended (training jobs)."""

    MAX_WARNINGS = 3
    """Warnings of one run shown as notifications (the status line, which the next message replaces, shows all)."""

    def _on_message(self, event: Message) -> None:
        if not self._stop.is_set():
            self.status.setText(event.text)
        if event.level == "warning" and self._warnings < self.MAX_WARNINGS:
            from napari.utils.notifications import show_warning

            self._warnings += 1
            show_warning(f"{self.JOB_NAME}: {event.text}")

    def _report_failure(self, err: BaseException) -> None:
        notify_failure(self.JOB_NAME, err, logging.getLogger(type(self).__module__))
        self.status.setText(self._failure_text())

    def _failure_text(self) -> str:
        return f"{self.JOB_NAME} failed (see the notification)."


class StoppableJobWidget(JobWidget):
    """A :class:`JobWidget` with a form frozen while it runs and a Stop button.

    A subclass builds ``form_box`` (disabled while running), ``progress``, ``status``
    (:func:`~napari_icnn._widgets.form.status_label`) and ``stop_button``, and provides
    ``validate()`` and the ``_on_event`` / ``_on_returned`` slots. Its job takes the run's settings
    and a :class:`threading.Event` that asks it to stop.
    """

    form_box: QWidget
    """The settings, disabled while a run is under way (built by the subclass)."""
    stop_button: QPushButton
    """Stops the run (built by the subclass)."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(napari_viewer, parent)
        self._status_problem = False

    def _launch(self, job: Callable[..., Generator[Any, None, Any]], cfg: Any, text: str) -> Any:
        """Run ``job(cfg, stop_event)`` in the background; returns the started worker."""
        return self._start(job, cfg, self._stop, text=text)

    def _show_status(self, text: str) -> None:
        self._status_problem = False
        self.status.setStyleSheet(HINT_STYLE)
        self.status.setText(text)

    def _show_running(self, running: bool) -> None:
        self.form_box.setEnabled(not running)
        self.stop_button.setText("Stop")

    def _show_stopping(self) -> None:
        self.stop_button.setEnabled(False)
        self.stop_button.setText("Stopping…")
        super()._show_stopping()

    def _show_unplaced(self, problem: str | None) -> None:
        """A problem no field is named for goes into the status line (and leaves it once solved)."""
        if problem or self._status_problem:
            self.status.setText(problem or "")
            self.status.setStyleSheet(ERROR_STYLE if problem else HINT_STYLE)
            self._status_problem = bool(problem)


# ---------------------------------------------------------------------------------- shared small widgets

_BADGE_STYLE = "border-radius: 8px; padding: 1px 8px; font-weight: bold; color: white; background-color: {};"
_BADGE_COLOURS = {"gpu": "#2e7d32", "cpu": "#5f6368", "problem": "#b3261e"}


class DeviceBadge(QLabel):
    """A coloured "GPU · <name>" / "CPU" badge saying what a device choice resolves to.

    ``describe`` turns a choice into what it resolves to (an object with ``kind``, ``text``,
    ``detail`` and ``problem``, as :func:`napari_icnn.devices.describe_device` gives); each
    choice is described once.
    """

    def __init__(self, parent: QWidget | None = None, describe: Callable[[str], Any] | None = None):
        super().__init__(parent)
        self._describe = describe
        self._cache: dict[str, Any] = {}
        self.info: Any = None

    def show_device(self, choice: str) -> Any:
        """Show what ``choice`` resolves to; returns that description."""
        info = self._cache.get(choice)
        if info is None:
            describe = self._describe
            if describe is None:
                from napari_icnn.devices import describe_device  # torch: only once asked

                describe = describe_device
            info = self._cache[choice] = describe(choice)
        self.info = info
        self.setText(info.text)
        self.setToolTip(info.problem or info.detail)
        colour = _BADGE_COLOURS["problem" if info.problem else info.kind]
        self.setStyleSheet(_BADGE_STYLE.format(colour))
        return info
