"""The job-widget base: one life cycle (start, typed progress events, stop, result, failure, end) for
every dock widget that runs background work, its Stop-button variant, and the device badge."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from napari_icnn._widgets.jobs import DeviceBadge, JobFailed, JobWidget, StoppableJobWidget, guarded
from napari_icnn.errors import BundleError, Cancelled, InputError
from napari_icnn.progress import EpochEnd, Message, Progress, drain

pytestmark = pytest.mark.gui
pytest_plugins = ["gui_support"]

WAIT_MS = 20_000


class Demo(JobWidget):
    JOB_NAME = "Demo"

    def __init__(self, viewer):
        super().__init__(viewer)
        layout = QVBoxLayout(self)
        self.run_button = QPushButton("Run")
        self.progress = QProgressBar()
        self.status = QLabel("")
        for w in (self.run_button, self.progress, self.status):
            layout.addWidget(w)
        self.validated = 0
        self.epochs: list[EpochEnd] = []
        self.statuses: list[str] = []

    def validate(self) -> bool:
        self.validated += 1
        self.run_button.setEnabled(not self._running)
        return True

    def _on_progress(self, event):
        super()._on_progress(event)
        self.statuses.append((self.status.text(), self.progress.value(), self.progress.maximum()))

    def _on_epoch_end(self, event):
        self.epochs.append(event)


def steps(stop: threading.Event | None = None, fail: BaseException | None = None):
    yield Progress("reading", 0, 2)
    yield Message("half way")
    yield EpochEnd(1, 1, {"loss": 0.5})
    yield Progress("writing", 1, 2, detail="3 files")
    if stop is not None:
        assert stop.wait(10), "never asked to stop"
        raise Cancelled("stopped")
    if fail is not None:
        raise fail
    yield Progress("writing", 2, 2)
    return "result"


@pytest.fixture
def demo(make_napari_viewer):
    return Demo(make_napari_viewer())


def test_a_run_goes_through_the_whole_life_cycle(qtbot, demo):
    assert not demo.running and demo.outcome is None
    worker = demo._start(steps, text="Working…")
    assert demo.running and not demo.run_button.isEnabled() and demo.status.text() == "Working…"
    qtbot.waitUntil(lambda: not demo.running, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: demo._worker is None, timeout=WAIT_MS)

    assert worker is not None and demo.outcome == "result" and demo.run_button.isEnabled()
    assert demo.statuses == [("Reading…", 0, 2), ("Writing (3 files)…", 1, 2), ("Writing (3 files)…", 2, 2)]
    assert [e.metrics for e in demo.epochs] == [{"loss": 0.5}]
    assert demo.progress.maximum() == 2 and demo.progress.value() == 2


@pytest.mark.parametrize(
    ("error", "notice"),
    [
        (InputError("scan.png", "unreadable"), "Demo failed: scan.png: unreadable"),
        (BundleError("model: refused"), "Demo failed: model: refused"),  # a RuntimeError, which superqt drops bare
        (ValueError("bad value"), "Demo failed unexpectedly (ValueError: bad value)"),
    ],
)
def test_a_failure_becomes_one_error_notification(qtbot, demo, notes, error, notice):
    demo._start(steps, None, error, text="Working…")
    qtbot.waitUntil(lambda: not demo.running, timeout=WAIT_MS)
    assert notes.of("error") == [notice], notes.seen
    assert demo.status.text() == "Demo failed (see the notification)." and demo.outcome is None
    assert demo.progress.maximum() >= 1  # not left busy


def _warns(n: int):
    for i in range(n):
        yield Message(f"careful {i}", level="warning")
    yield Message("fine")
    return "result"


def test_a_runs_first_warnings_become_notifications(qtbot, demo, notes):
    demo._start(_warns, 5, text="Working…")
    qtbot.waitUntil(lambda: not demo.running, timeout=WAIT_MS)
    assert notes.of("warning") == [f"Demo: careful {i}" for i in range(Demo.MAX_WARNINGS)], notes.seen
    demo._start(_warns, 1, text="Again…")  # a new run has its own allowance
    qtbot.waitUntil(lambda: not demo.running, timeout=WAIT_MS)
    assert notes.of("warning")[-1] == "Demo: careful 0" and not notes.of("error")


def test_stop_reaches_the_job_and_ends_the_run_quietly(qtbot, demo, notes):
    demo.stop()  # nothing runs: nothing to stop
    assert not demo._stop.is_set()
    demo._start(steps, demo._stop, text="Working…")
    qtbot.waitUntil(lambda: bool(demo.statuses) and demo.statuses[-1][1] == 1, timeout=WAIT_MS)
    demo.stop()
    assert demo.status.text() == demo.STOPPING_TEXT
    qtbot.waitUntil(lambda: not demo.running, timeout=WAIT_MS)
    assert demo.status.text() == "Stopped." and not notes.of("error") and demo.outcome is None
    demo._start(steps, text="Again…")  # a new run starts with the stop event cleared
    assert not demo._stop.is_set()
    qtbot.waitUntil(lambda: not demo.running, timeout=WAIT_MS)
    assert demo.outcome == "result"


def test_guarded_wraps_once():
    def failing():
        yield 1
        raise BundleError("broken")

    with pytest.raises(JobFailed) as caught:
        drain(guarded(guarded(failing())))
    assert isinstance(caught.value.error, BundleError) and str(caught.value) == "broken"


class Stoppable(StoppableJobWidget):
    JOB_NAME = "Batch"
    STOPPING_TEXT = "Stopping after the files under way…"

    def __init__(self, viewer):
        super().__init__(viewer)
        layout = QVBoxLayout(self)
        self.form_box = QWidget()
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.stop_button = QPushButton("Stop")
        for w in (self.form_box, self.progress, self.status, self.stop_button):
            layout.addWidget(w)
        self.events = []

    def validate(self) -> bool:
        self.stop_button.setEnabled(self._running and not self._stop.is_set())
        return True

    def _on_event(self, event):  # Train and Batch take the events whole
        self.events.append(event)

    def _on_returned(self, outcome):
        self._outcome = outcome
        self._set_running(False)


def test_the_stoppable_variant_keeps_its_api(qtbot, make_napari_viewer):
    w = Stoppable(make_napari_viewer())
    seen = {}

    def job(cfg, stop):
        seen["cfg"], seen["stop"] = cfg, stop
        yield Progress("files", 0, 1)
        assert stop.wait(10)
        return "partial"

    w._show_unplaced("no input folder")
    assert w.status.text() == "no input folder"
    w._launch(job, {"input": "x"}, "Running…")
    assert w.running and not w.form_box.isEnabled() and w.stop_button.isEnabled()
    assert w.status.text() == "Running…" and w.progress.maximum() == 0  # busy until the first progress
    qtbot.waitUntil(lambda: bool(w.events), timeout=WAIT_MS)
    w.stop()
    assert w.stop_button.text() == "Stopping…" and not w.stop_button.isEnabled()
    assert w.status.text() == w.STOPPING_TEXT
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)
    assert seen == {"cfg": {"input": "x"}, "stop": w._stop} and w.outcome == "partial"
    assert w.form_box.isEnabled() and w.stop_button.text() == "Stop" and w.progress.maximum() >= 1


@dataclass(frozen=True)
class _Info:
    choice: str
    kind: str
    text: str
    detail: str
    problem: str | None = None


def test_the_device_badge_shows_what_a_choice_resolves_to(qtbot):
    asked = []

    def describe(choice):
        asked.append(choice)
        if choice == "cuda":
            return _Info(choice, "cpu", "no GPU", "no CUDA here", problem="--device cuda: no CUDA device")
        return _Info(choice, "gpu", "GPU · Test", "runs on CUDA device 0")

    badge = DeviceBadge(describe=describe)
    qtbot.addWidget(badge)
    assert badge.show_device("auto").kind == "gpu"
    assert badge.text() == "GPU · Test" and badge.toolTip() == "runs on CUDA device 0"
    assert "#2e7d32" in badge.styleSheet()
    badge.show_device("cuda")
    assert badge.text() == "no GPU" and badge.toolTip() == "--device cuda: no CUDA device"
    assert "#b3261e" in badge.styleSheet() and badge.info.problem
    badge.show_device("auto")
    assert asked == ["auto", "cuda"]  # each choice is described once


def test_the_device_badge_describes_as_training_resolves_by_default(qtbot):
    from napari_icnn.devices import describe_device

    badge = DeviceBadge()
    qtbot.addWidget(badge)
    assert badge.show_device("auto") == describe_device("auto") and badge.text() == describe_device("auto").text
