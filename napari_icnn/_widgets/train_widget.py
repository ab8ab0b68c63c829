"""The Train dock widget: retrain or fine-tune an interpretable CNN on local data, with a live plot.

Thin over the training engine: the form is made from :class:`~napari_icnn.config.TrainConfig`
(every field's default, choices, label, tooltip and limits come from there; fields added to it later
appear under "Advanced" by themselves), the inputs are checked by
:func:`~napari_icnn.engine.preflight.check_training`, as ``icnn train`` checks them, and a run is
:func:`~napari_icnn.engine.train.train_iter`, the code path of ``icnn train``, in a worker thread.

Stop asks the engine to stop at the next batch: the epoch under way is dropped, the checkpoint of
the last completed epoch is kept (Resume continues from it) and a model from the best epoch so far
is written. When a model is ready, "Use in Explain" points the Explain widget at it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractSpinBox,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_icnn._widgets.form import (
    choose_folder,
    hbox,
    mark_invalid,
    message_label,
    show_message,
    status_label,
    tool_button,
)
from napari_icnn._widgets.jobs import DeviceBadge, StoppableJobWidget, guarded, thin_progress
from napari_icnn._widgets.plot import MetricsPlot
from napari_icnn.config import Setting, TrainConfig, setting, settings
from napari_icnn.data.preflight import DataCheckCache
from napari_icnn.engine.preflight import check_training
from napari_icnn.engine.run_folder import OutputFolder, RunFolder, TrainOutcome, inspect_output
from napari_icnn.progress import EpochEnd, Message, Progress
from napari_icnn.remembered import load_document, save_document

if TYPE_CHECKING:
    import napari

__all__ = ["TrainWidget", "train_job", "explain_widgets"]

_log = logging.getLogger(__name__)

MAIN_FIELDS: tuple[str, ...] = (
    "data", "format", "val", "task", "categories", "arch", "init", "epochs", "warmup_epochs", "size", "batch",
    "device", "out",
)
"""TrainConfig fields in the main form, in order; every other field (but ``resume``, which is the
Resume button) goes under "Advanced"."""
_PATH_FIELDS = ("data", "val", "init", "out")
_SETTINGS_FILE = "train.json"
_NOT_REMEMBERED = ("out", "resume")
"""Each run needs a new output folder, and Resume is a button, not a setting."""


# ---------------------------------------------------------------------------------- the job (no Qt)


def train_job(
    cfg: TrainConfig, stop: threading.Event, min_interval: float = 0.1
) -> Generator[Progress | EpochEnd | Message, None, TrainOutcome]:
    """Run :func:`~napari_icnn.engine.train.train_iter` until done or ``stop`` is set.

    Batch progress is thinned to one event per ``min_interval`` seconds (an epoch's last batch
    always passes), so a fast GPU run does not flood the GUI thread. Every error is raised as a
    :class:`~napari_icnn._widgets.jobs.JobFailed` (see there why).
    """
    return (yield from guarded(_run_training(cfg, stop, min_interval)))


def _run_training(cfg: TrainConfig, stop: threading.Event, min_interval: float):
    from napari_icnn.engine.run_folder import outcome_of
    from napari_icnn.engine.train import train_iter

    t0 = time.monotonic()
    # The engine polls `stop` before every batch: the epoch under way is dropped, the last completed
    # one's checkpoint kept and a bundle written from the best epoch. (Closing the generator would do
    # the same, but only where it happens to be suspended, and no longer at the final message.)
    result = yield from thin_progress(train_iter(cfg, should_stop=stop.is_set), min_interval)
    return outcome_of(cfg, result, time.monotonic() - t0)


def explain_widgets(viewer: Any) -> list[Any]:
    """The Explain widgets docked in ``viewer``'s window (none for a viewer without a window): the docked
    widgets that take a model folder (``set_model_path``)."""
    try:
        docked = list(viewer.window.dock_widgets.values())
    except (AttributeError, RuntimeError):
        return []
    inner = (getattr(w, "native", w) for w in docked)  # magicgui widgets wrap their Qt widget
    return [w for w in inner if callable(getattr(w, "set_model_path", None))]


@dataclass
class _Field:
    """One TrainConfig field's editor."""

    name: str
    editor: QWidget
    """The widget that is marked when the value is invalid."""
    get: Callable[[], Any]
    set: Callable[[Any], None]
    message: QLabel


# ---------------------------------------------------------------------------------- the widget


class TrainWidget(StoppableJobWidget):
    """Train, fine-tune or resume an interpretable CNN on local fundus photographs.

    Parameters
    ----------
    napari_viewer
        The viewer whose Explain widget gets the new model.
    """

    JOB_NAME = "Training"
    STOPPING_TEXT = (
        "Stopping at the next batch: the epoch under way is dropped, the checkpoint of the "
        "last completed epoch is kept."
    )

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(napari_viewer, parent)
        self._fields: dict[str, _Field] = {}
        self._checks = DataCheckCache()
        self._output = OutputFolder(Path(), "new")
        self._validate_timer = QTimer(self)
        self._validate_timer.setSingleShot(True)
        self._validate_timer.setInterval(350)  # typing a path: check once the user pauses
        self._validate_timer.timeout.connect(self.validate)
        self._build()
        self._connect()
        self._restore_settings()
        self.validate()

    # ------------------------------------------------------------------ construction

    def _build(self) -> None:
        root = QVBoxLayout(self)
        self.form_box = QWidget()
        box_layout = QVBoxLayout(self.form_box)
        box_layout.setContentsMargins(0, 0, 0, 0)
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.device_badge = DeviceBadge()
        for name in MAIN_FIELDS:
            self._add_field(form, setting(name))
        box_layout.addLayout(form)

        self.advanced_toggle = QToolButton()
        self.advanced_toggle.setText("Advanced")
        self.advanced_toggle.setCheckable(True)
        self.advanced_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced_toggle.setStyleSheet("QToolButton { border: none; }")
        box_layout.addWidget(self.advanced_toggle)
        self.advanced = QWidget()
        adv_form = QFormLayout(self.advanced)
        adv_form.setContentsMargins(12, 0, 0, 0)
        for s in settings():
            if s.name not in MAIN_FIELDS and s.name != "resume":
                self._add_field(adv_form, s)
        self.advanced.setVisible(False)
        box_layout.addWidget(self.advanced)
        root.addWidget(self.form_box)

        self.start_button = QPushButton("Train")
        self.start_button.setToolTip("Start a new run into the output folder (runs in the background)")
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip(
            "Continue the interrupted run in the output folder from its last checkpoint"
        )
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop at the next batch; the last completed epoch's checkpoint is kept")
        root.addWidget(hbox(self.start_button, self.resume_button, self.stop_button, stretch_first=False))
        self.progress = QProgressBar()
        self.progress.setFormat("idle")
        self.progress.setTextVisible(True)
        root.addWidget(self.progress)
        self.status = status_label()
        root.addWidget(self.status)
        self.epoch_label = QLabel("")
        root.addWidget(self.epoch_label)
        self.plot = MetricsPlot(theme=getattr(self.viewer, "theme", None))
        root.addWidget(self.plot)
        self.explain_button = QPushButton("Use in Explain")
        self.explain_button.setToolTip("Point the Explain widget at the new model (docks Explain if needed)")
        self.explain_button.setEnabled(False)
        root.addWidget(self.explain_button)
        root.addStretch(1)

    def _add_field(self, form: QFormLayout, s: Setting) -> None:
        name = s.name
        if name in _PATH_FIELDS:
            line = QLineEdit(s.default or "")
            line.setPlaceholderText(s.placeholder)
            get, put = _text_access(line, optional=s.optional)
            row = hbox(line, *self._path_buttons(name, line))
            editor: QWidget = line
        else:
            editor, get, put = _value_editor(s)
            row = hbox(editor, self.device_badge) if name == "device" else editor
        editor.setToolTip(s.help)
        editor.setObjectName(name)
        message = message_label()
        form.addRow("" if isinstance(editor, QCheckBox) else s.label, row)
        form.addRow("", message)
        self._fields[name] = _Field(name, editor, get, put, message)

    def _path_buttons(self, name: str, edit: QLineEdit) -> list[QToolButton]:
        if name in ("data", "val"):
            folder = tool_button("Folder…", "Choose a data folder")
            folder.clicked.connect(lambda: self._browse_folder(edit, "Choose a data folder"))
            csv = tool_button("CSV…", "Choose a CSV file (path,label or sop_instance_uid,label)")
            csv.clicked.connect(lambda: self._browse_csv(edit))
            return [folder, csv]
        if name == "init":
            pick = tool_button("…", "Choose a model bundle folder to fine-tune")
            pick.clicked.connect(lambda: self._browse_folder(edit, "Choose a model bundle folder"))
            return [pick]
        pick = tool_button("…", "Choose (or create) the output folder")
        pick.clicked.connect(lambda: self._browse_folder(edit, "Choose or create an output folder"))
        return [pick]

    def _connect(self) -> None:
        for f in self._fields.values():
            e = f.editor
            if isinstance(e, QLineEdit):
                e.textChanged.connect(lambda _: self._validate_timer.start())
                e.editingFinished.connect(self.validate)
            elif isinstance(e, QComboBox):
                e.currentIndexChanged.connect(lambda _: self.validate())
            elif isinstance(e, QCheckBox):
                e.toggled.connect(lambda _: self.validate())
            elif isinstance(e, (QSpinBox, QDoubleSpinBox)):
                e.valueChanged.connect(lambda _: self.validate())
        self.advanced_toggle.toggled.connect(self._toggle_advanced)
        self.start_button.clicked.connect(self.start)
        self.resume_button.clicked.connect(self.resume)
        self.stop_button.clicked.connect(self.stop)
        self.explain_button.clicked.connect(lambda: self.use_in_explain())

    def _toggle_advanced(self, on: bool) -> None:
        self.advanced.setVisible(on)
        self.advanced_toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)

    def _browse_folder(self, edit: QLineEdit, title: str) -> None:
        if choose_folder(self, edit, title):
            self.validate()

    def _browse_csv(self, edit: QLineEdit) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a CSV file", edit.text().strip() or str(Path.home()), "CSV (*.csv *.tsv *.txt)"
        )
        if path:
            edit.setText(path)
            self.validate()

    # ------------------------------------------------------------------ values and checks

    def field(self, name: str) -> QWidget:
        """The editor of TrainConfig field ``name``."""
        return self._fields[name].editor

    def message(self, name: str) -> str:
        """The problem (or hint) shown under field ``name``; ``""`` when there is none."""
        return self._fields[name].message.text()

    def values(self) -> dict[str, Any]:
        """The form's values, keyed by TrainConfig field."""
        return {name: f.get() for name, f in self._fields.items()}

    def set_values(self, **values: Any) -> None:
        """Fill fields (keys are TrainConfig fields) and check the form."""
        for name, value in values.items():
            if name not in self._fields:
                raise KeyError(f"no field {name!r} in the Train widget")
            self._fields[name].set(value)
        self.validate()

    def _restore_settings(self) -> None:
        """Fill the form with the values of the last run started here (each one that still fits its field);
        Advanced opens when one of its fields was restored to something else than its default, so nothing
        that changes a run (the ordinary baseline, a capped image count) is hidden."""
        defaults = self.values()
        for name, value in load_document(_SETTINGS_FILE).items():
            if name in _NOT_REMEMBERED or name not in self._fields:
                continue
            field = self._fields[name]
            if not setting(name).accepts(value):
                _log.info("ignoring remembered Train setting %s=%r: not a value of that field", name, value)
                continue
            try:
                field.set(value)
            except (TypeError, ValueError, OverflowError) as err:
                _log.info("ignoring remembered Train setting %s=%r: %s", name, value, err)
        restored = self.values()
        if any(restored[name] != defaults[name] for name in restored if name not in MAIN_FIELDS):
            self.advanced_toggle.setChecked(True)

    def _remember_settings(self, cfg: TrainConfig) -> None:
        values = {name: getattr(cfg, name) for name in self._fields if name not in _NOT_REMEMBERED}
        save_document(_SETTINGS_FILE, values)

    def config(self) -> TrainConfig:
        """The TrainConfig of the form (raises ConfigError naming the first invalid option)."""
        return TrainConfig(**self.values())

    def validate(self) -> bool:
        """Check every input, show problems next to their fields, enable the buttons that may run.

        Returns whether a new run can start.
        """
        self._validate_timer.stop()
        values = self.values()
        info = self.device_badge.show_device(values["device"])
        check = check_training(values, device=info, data_check=self._checks)
        problems: dict[str, str] = {}
        for name, text in check.problems.items():
            problems.setdefault(name if name in self._fields else "", text)
        hints = check.hints
        blocking_hints: dict[str, str] = {}  # shown as hints, yet they keep Train disabled
        self._output = inspect_output(values["out"]) if values["out"] else OutputFolder(Path(), "new")
        if not self._output.can_start:
            # A run of its own (interrupted or finished) is no mistake, but a new one needs a new folder.
            own_run = self._output.state in ("interrupted", "finished")
            (blocking_hints if own_run else problems).setdefault("out", self._output.message() or "")
        if not self._running:  # a run writes into its folder: "holds a run" is no news while it runs
            for name, f in self._fields.items():
                note = problems.get(name) or blocking_hints.get(name) or hints.get(name)
                show_message(f.message, note, error=name in problems)
                mark_invalid(f.editor, name in problems and not isinstance(f.editor, QCheckBox))
            self._show_unplaced(problems.get(""))
        ok = not problems and not blocking_hints
        self.start_button.setEnabled(ok and not self._running)
        self.resume_button.setEnabled(self._output.can_resume and not self._running)
        self.stop_button.setEnabled(self._running and not self._stop.is_set())
        return ok

    # ------------------------------------------------------------------ running

    def start(self) -> Any:
        """Start a new run from the form; returns the worker (``None`` when the inputs are not valid)."""
        if self._running or not self.validate():
            return None
        cfg = self.config()
        self._remember_settings(cfg)  # "auto" is remembered as auto
        schedule = cfg.resolved()
        assert schedule.epochs is not None and schedule.warmup_epochs is not None  # resolved() fixes the schedule
        self.plot.clear(schedule.epochs, 0 if cfg.ordinary else schedule.warmup_epochs)
        return self._launch(train_job, cfg, f"Training into {cfg.out}…")

    def resume(self) -> Any:
        """Continue the interrupted run in the output folder; returns the worker (``None`` if there is none)."""
        if self._running:
            return None
        self.validate()
        if not self._output.can_resume:
            return None
        run = RunFolder(self._output.path)
        saved = run.saved_config()
        ordinary = bool(saved.get("ordinary", False))
        self.plot.clear(int(saved.get("epochs", 0)), 0 if ordinary else int(saved.get("warmup_epochs", 0)))
        self.plot.set_history(run.history())
        cfg = TrainConfig(out=str(self._output.path), resume=True)
        text = f"Resuming the run in {cfg.out} after epoch {self._output.epochs_done}…"
        return self._launch(train_job, cfg, text)

    def _set_running(self, running: bool) -> None:
        if running:
            self.explain_button.setEnabled(False)
            self.epoch_label.setText("")
        super()._set_running(running)

    def _on_progress(self, event: Progress) -> None:
        epoch, n = event.epoch, event.n_epochs
        if epoch is not None and n is not None and event.total:
            self.progress.setRange(0, n * event.total)
            self.progress.setValue((epoch - 1) * event.total + event.done)
            detail = f" · {event.detail}" if event.detail else ""
            self.progress.setFormat(f"epoch {epoch}/{n} · batch {event.done}/{event.total}{detail}")
        else:
            self.progress.setRange(0, event.total)
            self.progress.setValue(event.done)
            self.progress.setFormat(f"{event.stage} {event.detail}".strip())

    def _on_epoch_end(self, event: EpochEnd) -> None:
        self.plot.add_epoch(event.epoch, event.metrics)
        self.epoch_label.setText(_epoch_line(event))

    def _on_message(self, event: Message) -> None:
        super()._on_message(Message(event.text[:1].upper() + event.text[1:], event.level))

    def _on_returned(self, outcome: TrainOutcome) -> None:
        from napari.utils.notifications import show_info

        self._outcome = outcome
        self._set_running(False)
        self.progress.setFormat("stopped" if outcome.stopped else "done")
        if not outcome.stopped:
            self.progress.setValue(self.progress.maximum())
        text = outcome.describe()
        self.status.setText(text)
        self.explain_button.setEnabled(outcome.bundle is not None)
        show_info(("Training stopped. " if outcome.stopped else "Training finished. ") + text)

    def _failure_text(self) -> str:
        return f"{super()._failure_text()} {_checkpoint_note(self._output.path)}"

    # ------------------------------------------------------------------ hand-over

    def use_in_explain(self, bundle: str | Path | None = None) -> Any:
        """Point the docked Explain widget (docking one if there is none) at ``bundle``, by default the
        model of the last run; returns that Explain widget (``None`` when there is no model)."""
        from napari.utils.notifications import show_error, show_info

        target = Path(bundle) if bundle is not None else (self._outcome.bundle if self._outcome else None)
        if target is None:
            return None
        docked = explain_widgets(self.viewer)
        try:
            explain = docked[0] if docked else self._dock_explain()
        except Exception as err:  # noqa: BLE001 - a plugin/dock failure must not take the viewer down
            _log.error("could not open the Explain widget", exc_info=True)
            show_error(f"Could not open the Explain widget: {err}")
            return None
        explain.set_model_path(target)
        dock = explain.parent()
        if dock is not None:
            dock.show()
            dock.raise_()
        show_info(f"Explain now uses the model in {target}")
        self.status.setText(f"Explain now uses the model in {target}.")
        return explain

    def _dock_explain(self) -> Any:
        try:
            _, widget = self.viewer.window.add_plugin_dock_widget("napari-icnn", "Explain")
        except (KeyError, ValueError, LookupError):  # the plugin is not registered (run from source)
            from napari_icnn._widgets.explain_widget import ExplainWidget

            widget = ExplainWidget(self.viewer)
            self.viewer.window.add_dock_widget(widget, name="Explain", area="right")
        return getattr(widget, "native", widget)


def _text_access(edit: QLineEdit, optional: bool) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    """Getter and setter of a text field (an optional one reads ``None`` when empty)."""

    def get() -> str | None:
        text = edit.text().strip()
        return (text or None) if optional else text

    def put(value: Any) -> None:
        edit.setText("" if value is None else str(value))

    return get, put


def _value_editor(s: Setting) -> tuple[QWidget, Callable[[], Any], Callable[[Any], None]]:
    """An editor for a setting that is not a path, chosen by its choices or its type; an optional number
    reads ``None`` at its box's lowest value, shown as "auto" (derived) or "all"."""
    default = s.default
    if s.choices is not None:
        combo = QComboBox()
        combo.addItems(list(s.choices))
        combo.setCurrentText(str(default))
        return combo, combo.currentText, lambda v: combo.setCurrentText(str(v))
    if s.kind is bool:
        check = QCheckBox(s.label)
        check.setChecked(default)
        return check, check.isChecked, lambda v: check.setChecked(bool(v))
    if s.kind is str:
        edit = QLineEdit("" if default is None else str(default))
        edit.setPlaceholderText(s.placeholder)  # what an empty field means ("every category filter")
        return (edit, *_text_access(edit, optional=s.optional))
    if s.kind is int:
        box: QSpinBox | QDoubleSpinBox = QSpinBox()
        lo, hi = s.bounds or (0, 10**9)
        box.setSingleStep(int(s.step or 1))
    else:
        box = QDoubleSpinBox()
        lo, hi = s.bounds or (0.0, 1e6)
        # enough decimals to show the default and a tenth of it (a learning rate of 1e-3: 0.00100)
        box.setDecimals(2 if not default else max(2, 2 - math.floor(math.log10(abs(default)))))
        box.setStepType(QAbstractSpinBox.StepType.AdaptiveDecimalStepType)
    # the box is a QSpinBox exactly when the kind, and so the bounds and values, are int: mypy checks each
    # member of the union against both
    box.setRange(lo, hi)  # type: ignore[arg-type]
    if not s.optional:
        box.setValue(default)
        return box, box.value, lambda v: box.setValue(s.kind(v))
    box.setSpecialValueText("auto" if s.derived else "all")
    box.setValue(lo)  # type: ignore[arg-type]
    return (
        box,
        lambda: None if box.value() == lo else box.value(),
        lambda v: box.setValue(lo if v is None else s.kind(v)),  # type: ignore[arg-type]
    )


def _epoch_line(event: EpochEnd) -> str:
    m = event.metrics
    parts = [f"Epoch {event.epoch}/{event.n_epochs}"]
    for key, label in (("cls_loss", "train loss"), ("val_loss", "val loss"), ("val_auc", "val AUC")):
        value = m.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            parts.append(f"{label} {value:.3f}")
    return " · ".join(parts)


def _checkpoint_note(out: Path) -> str:
    if str(out) not in ("", ".") and RunFolder(out).has_checkpoint():
        return "The last completed epoch's checkpoint is kept: Resume continues from it."
    return ""
