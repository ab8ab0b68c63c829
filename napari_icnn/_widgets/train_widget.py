"""The Train dock widget: retrain or fine-tune an interpretable CNN on local data, with a live plot.

Thin over the training engine: the form is made from :class:`~napari_icnn.config.TrainConfig`
(every field's default, choices and tooltip come from there; fields added to it later appear
under "Advanced" by themselves), and a run is :func:`~napari_icnn.engine.train.train_iter`,
the code path of ``icnn train``, in a worker thread.

Stop asks the engine to stop at the next batch: the epoch under way is dropped, the checkpoint of
the last completed epoch is kept (Resume continues from it) and a model from the best epoch so far
is written. When a model is ready, "Use in Explain" points the Explain widget at it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import MISSING, dataclass, fields
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

from napari_icnn._widgets.explain_widget import check_model
from napari_icnn._widgets.form import (
    choose_folder,
    hbox,
    mark_invalid,
    message_label,
    show_message,
    status_label,
    tool_button,
)
from napari_icnn._widgets.jobs import StoppableJobWidget, guarded, thin_progress
from napari_icnn._widgets.plot import MetricsPlot
from napari_icnn._widgets.settings import load_document, save_document
from napari_icnn.config import TrainConfig, config_help, field_of_flag
from napari_icnn.errors import ConfigError, InputError
from napari_icnn.progress import EpochEnd, Message, Progress

if TYPE_CHECKING:
    import napari

    from napari_icnn.engine.train import TrainResult

__all__ = [
    "TrainWidget",
    "TrainOutcome",
    "OutputFolder",
    "DeviceInfo",
    "train_job",
    "inspect_output",
    "check_data",
    "describe_device",
    "explain_widgets",
    "DeviceBadge",
]

_log = logging.getLogger(__name__)

MAIN_FIELDS: tuple[str, ...] = (
    "data",
    "format",
    "val",
    "task",
    "categories",
    "arch",
    "init",
    "epochs",
    "warmup_epochs",
    "size",
    "batch",
    "device",
    "out",
)
"""TrainConfig fields in the main form, in order; every other field (but ``resume``, which is the
Resume button) goes under "Advanced"."""
_PATH_FIELDS = ("data", "val", "init", "out")
_SETTINGS_FILE = "train.json"
_NOT_REMEMBERED = ("out", "resume")
"""Each run needs a new output folder, and Resume is a button, not a setting."""
_LABELS = {
    "data": "Training data",
    "format": "Layout",
    "val": "Validation data",
    "task": "Task",
    "categories": "Filter categories",
    "arch": "Backbone",
    "init": "Start from",
    "epochs": "Epochs",
    "warmup_epochs": "Warm-up epochs",
    "size": "Input size",
    "batch": "Batch size",
    "device": "Device",
    "out": "Output folder",
    "val_fraction": "Validation fraction",
    "lam": "Filter-loss weight λ",
    "lr": "Learning rate",
    "weight_decay": "Weight decay",
    "n_filters": "Interpretable filters",
    "width": "Backbone width",
    "free_fraction": "Label-free filters",
    "loss_mode": "Filter loss",
    "z_estimate": "Partition function Z",
    "decision_filters": "Decision computed from",
    "decision_min_selectivity": "Decision: least filter selectivity",
    "normalise": "Normalise maps in the filter loss",
    "beta": "Template slope β",
    "ordinary": "Ordinary CNN (the baseline)",
    "augment": "Augment while training",
    "cache": "Data cache",
    "workers": "Loader workers",
    "amp": "Mixed precision on CUDA",
    "max_train_images": "At most … training images",
}
_PLACEHOLDERS = {
    "data": "a folder (synth, IDRiD, DICOM + CSV) or a CSV file",
    "val": "optional: a held-out part of the training data is used",
    "init": "optional: train from scratch",
    "out": "a new folder for the model bundle",
}
# Limits of the spin boxes only: what is *valid* is TrainConfig's to say (its message is shown).
# A field whose default is None reads None at its box's lowest value ("auto" or "all"), one below
# its lowest real value.
_INT_RANGES = {
    "size": (64, 4096, 16),
    "epochs": (0, 10_000, 1),
    "warmup_epochs": (-1, 10_000, 1),
    "batch": (1, 4096, 1),
    "n_filters": (1, 4096, 1),
    "width": (4, 1024, 4),
    "workers": (-1, 256, 1),
    "seed": (0, 2**31 - 1, 1),
    "max_train_images": (0, 10**8, 1),
}
_FLOAT_RANGES = {
    "val_fraction": (0.0, 0.99),
    "free_fraction": (0.0, 1.0),
    "decision_min_selectivity": (0.0, 0.99),
    "dropout": (0.0, 0.95),
    "lr": (1e-8, 10.0),
    "weight_decay": (0.0, 10.0),
}
_BADGE_STYLE = "border-radius: 8px; padding: 1px 8px; font-weight: bold; color: white; background-color: {};"
_BADGE_COLOURS = {"gpu": "#2e7d32", "cpu": "#5f6368", "problem": "#b3261e"}
_EPOCH_STAGE = re.compile(r"epoch (\d+)/(\d+)")
_FLAG = re.compile(r"^--([a-z0-9][a-z0-9-]*)")


# ---------------------------------------------------------------------------------- checks (no Qt)


def check_data(path: str, fmt: str = "auto", task: str | None = None) -> tuple[str | None, str]:
    """Whether ``path`` reads as a training set: ``(problem, summary)``, one of them empty.

    The layout is read as training will read it (:func:`~napari_icnn.data.layouts.discover`; no
    pixels are read) and, given a ``task``, every record is checked for the labels it needs.
    """
    return _check_data(path, fmt, task)[:2]


def _check_data(path: str, fmt: str, task: str | None) -> tuple[str | None, str, int | None]:
    """:func:`check_data` and the number of photographs (``None`` when there is a problem)."""
    from napari_icnn.data.layouts import discover, task_targets

    if not path.strip():
        return "Choose the training data: a folder or a CSV file.", "", None
    try:
        spec = discover(path.strip(), fmt)
        if task is not None:
            for record in spec.records:
                task_targets(record, task)
    except (InputError, ConfigError) as err:
        return str(err), "", None
    except OSError as err:
        return f"{path}: cannot be read ({err.strerror or err})", "", None
    if not spec.records:
        return f"{path}: no photographs found in this {spec.format} layout", "", None
    masks = f" · part masks ({len(spec.mask_parts)} parts)" if spec.has_masks else ""
    n = len(spec.records)
    return None, f"{n} photographs · {spec.format} layout{masks}", n


@dataclass(frozen=True)
class OutputFolder:
    """What an output folder holds, as far as starting or resuming a run there is concerned."""

    path: Path
    state: str
    """``"new"`` (missing or empty), ``"interrupted"`` (a resumable run), ``"finished"``,
    ``"occupied"`` (anything else) or ``"file"`` (not a folder)."""
    epochs_done: int = 0
    epochs: int = 0

    @property
    def can_start(self) -> bool:
        return self.state == "new"

    @property
    def can_resume(self) -> bool:
        return self.state == "interrupted"

    def message(self) -> str | None:
        """What to tell the user next to the field (``None`` for a new folder)."""
        p = self.path
        if self.state == "file":
            return f"{p}: exists and is not a folder."
        if self.state == "interrupted":
            return (
                f"Holds a run stopped after epoch {self.epochs_done} of {self.epochs}: Resume continues it; "
                "choose a new folder to start afresh."
            )
        if self.state == "finished":
            return f"Holds a finished run ({self.epochs} epochs); choose a new folder for a new run."
        if self.state == "occupied":
            return f"{p}: the folder exists and is not empty; choose a new folder (nothing in it is overwritten)."
        return None


def inspect_output(text: str) -> OutputFolder:
    """Classify an output folder (reads a directory listing and two small JSON files)."""
    from napari_icnn.engine.train import CHECKPOINT_DIR, LAST

    path = Path(text.strip()).expanduser()
    if not path.exists():
        return OutputFolder(path, "new")
    if not path.is_dir():
        return OutputFolder(path, "file")
    try:
        empty = not any(path.iterdir())
    except OSError:
        return OutputFolder(path, "occupied")
    if empty:
        return OutputFolder(path, "new")
    ckdir = path / CHECKPOINT_DIR
    if not (ckdir / LAST).is_file():
        return OutputFolder(path, "occupied")
    epochs = int(_read_json(ckdir / "config.json", {}).get("epochs", 0))
    done = len(_read_json(ckdir / "history.json", []))
    return OutputFolder(path, "finished" if epochs and done >= epochs else "interrupted", done, epochs)


def _read_json(path: Path, default: Any) -> Any:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default
    return value if isinstance(value, type(default)) else default


@dataclass(frozen=True)
class DeviceInfo:
    """What a device choice (``auto``, ``cpu``, ``cuda``) resolves to on this machine."""

    choice: str
    kind: str
    """``"gpu"`` or ``"cpu"``."""
    text: str
    """Badge text: ``"GPU · <CUDA device name>"`` or ``"CPU"``."""
    detail: str
    """Tooltip: why, and what to do for a GPU."""
    problem: str | None = None
    """Set when the choice cannot be used here (``cuda`` without a CUDA device)."""


def describe_device(choice: str) -> DeviceInfo:
    """Resolve ``choice`` as training will (:func:`~napari_icnn.engine.runtime.resolve_device`)."""
    import torch

    from napari_icnn.engine.runtime import resolve_device

    if torch.version.cuda is None:
        why = "This PyTorch build has no CUDA support (a CPU-only build); install a CUDA build of torch to use a GPU."
    else:
        why = f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device (driver, CUDA_VISIBLE_DEVICES)."
    try:
        device = resolve_device(choice)
    except ConfigError as err:
        return DeviceInfo(choice, "cpu", "no GPU", why, problem=str(err))
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return DeviceInfo(
            choice, "gpu", f"GPU · {name}", f"'{choice}' runs on CUDA device {device.index}: {name}."
        )
    lead = "'auto' runs on the CPU. " if choice == "auto" else "Runs on the CPU. "
    return DeviceInfo(choice, "cpu", "CPU", lead + why)


# ---------------------------------------------------------------------------------- the job (no Qt)


@dataclass(frozen=True)
class TrainOutcome:
    """How a run from the widget ended."""

    out: Path
    stopped: bool
    epochs_done: int
    """Epochs completed in the output folder's run (earlier, resumed-from epochs included)."""
    n_epochs: int
    best_epoch: int
    """Epoch the model was taken from (0: none yet)."""
    bundle: Path | None
    """The bundle folder when it holds a model, else ``None``."""
    seconds: float
    warmup_epochs: int = 0

    def describe(self) -> str:
        """One paragraph for the user: what was kept, where, and what to do next."""
        took = _duration(self.seconds)
        if not self.stopped:
            return (
                f"Finished {self.epochs_done} epochs in {took}; the model (best epoch {self.best_epoch}) "
                f"is in {self.out}."
            )
        if self.epochs_done == 0:
            return (
                "Stopped before the first epoch finished: there was no checkpoint to keep and no model "
                "was written."
            )
        kept = (
            f"Stopped after epoch {self.epochs_done} of {self.n_epochs}; the checkpoint of epoch "
            f"{self.epochs_done} is kept, Resume continues from it."
        )
        if self.bundle is not None:
            return f"{kept} A model from the best epoch so far ({self.best_epoch}) is in {self.out}."
        if self.epochs_done <= self.warmup_epochs:
            return f"{kept} There is no model yet: warm-up epochs do not make an interpretable model."
        return f"{kept} There is no model yet."


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
    from napari_icnn.engine.train import train_iter

    t0 = time.monotonic()
    # The engine polls `stop` before every batch: the epoch under way is dropped, the last completed
    # one's checkpoint kept and a bundle written from the best epoch. (Closing the generator would do
    # the same, but only where it happens to be suspended, and no longer at the final message.)
    result = yield from thin_progress(train_iter(cfg, should_stop=stop.is_set), min_interval)
    return _outcome(cfg, result, time.monotonic() - t0)


def _outcome(cfg: TrainConfig, result: TrainResult | None, seconds: float) -> TrainOutcome:
    from napari_icnn.bundle import METADATA, WEIGHTS
    from napari_icnn.engine.train import CHECKPOINT_DIR

    out = Path(cfg.out)
    # A resumed run trains with the settings saved in its folder, not with the widget's.
    saved = TrainConfig.from_dict(
        {**_read_json(out / CHECKPOINT_DIR / "config.json", cfg.resolved().to_dict()), "resume": cfg.resume}
    )
    has_model = (out / WEIGHTS).is_file() and (out / METADATA).is_file()
    if result is None:
        history = _read_json(out / CHECKPOINT_DIR / "history.json", [])
        return TrainOutcome(
            out, True, len(history), saved.epochs, 0, out if has_model else None, seconds, saved.warmup_epochs
        )
    return TrainOutcome(
        out=out,
        stopped=result.stopped,
        epochs_done=result.epochs_done,
        n_epochs=saved.epochs,
        best_epoch=result.best_epoch,
        bundle=out if has_model and result.best_epoch > 0 else None,
        seconds=seconds,
        warmup_epochs=0 if saved.ordinary else saved.warmup_epochs,
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def explain_widgets(viewer: Any) -> list[Any]:
    """The Explain widgets docked in ``viewer``'s window (none for a viewer without a window)."""
    from napari_icnn._widgets.explain_widget import ExplainWidget

    try:
        docked = list(viewer.window.dock_widgets.values())
    except (AttributeError, RuntimeError):
        return []
    inner = (getattr(w, "native", w) for w in docked)  # magicgui widgets wrap their Qt widget
    return [w for w in inner if isinstance(w, ExplainWidget)]


# ---------------------------------------------------------------------------------- small widgets


class DeviceBadge(QLabel):
    """A coloured "GPU · <name>" / "CPU" badge saying what a device choice resolves to."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._cache: dict[str, DeviceInfo] = {}
        self.info: DeviceInfo | None = None

    def show_device(self, choice: str) -> DeviceInfo:
        info = self._cache.get(choice)
        if info is None:
            info = self._cache[choice] = describe_device(choice)
        self.info = info
        self.setText(info.text)
        self.setToolTip(info.problem or info.detail)
        colour = _BADGE_COLOURS["problem" if info.problem else info.kind]
        self.setStyleSheet(_BADGE_STYLE.format(colour))
        return info


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
        self._checks: dict[str, tuple[Any, tuple[str | None, str]]] = {}
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
        spec = {f.name: f for f in fields(TrainConfig)}
        for name in MAIN_FIELDS:
            self._add_field(form, spec[name])
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
        for f in fields(TrainConfig):
            if f.name not in MAIN_FIELDS and f.name != "resume":
                self._add_field(adv_form, f)
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

    def _add_field(self, form: QFormLayout, f: Any) -> None:
        name = f.name
        default = f.default if f.default is not MISSING else None
        if name in _PATH_FIELDS:
            editor: QWidget = QLineEdit(default or "")
            editor.setPlaceholderText(_PLACEHOLDERS[name])
            get, put = _text_access(editor, optional=default is None)
            row = hbox(editor, *self._path_buttons(name, editor))
        else:
            editor, get, put = _value_editor(f, default)
            row = hbox(editor, self.device_badge) if name == "device" else editor
        editor.setToolTip(config_help(name))
        editor.setObjectName(name)
        message = message_label()
        label = (
            "" if isinstance(editor, QCheckBox) else _LABELS.get(name, name.replace("_", " ").capitalize())
        )
        form.addRow(label, row)
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
            else:
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
            if not _same_kind(name, value):
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
        problems: dict[str, str] = {}
        hints: dict[str, str] = {}
        blocking_hints: dict[str, str] = {}  # shown as hints, yet they keep Train disabled
        values = self.values()
        cfg = None
        try:
            cfg = TrainConfig(**values)
        except ConfigError as err:
            problems[_field_of(str(err), self._fields)] = str(err)
        data_problem, data_summary, n_data = self._cached("data", values["data"], values["format"], values["task"])
        if data_problem:
            problems.setdefault("data", data_problem)
        elif data_summary:
            hints["data"] = data_summary
        n_val = None
        if values["val"]:
            val_problem, val_summary, n_val = self._cached("val", values["val"], "auto", values["task"])
            if val_problem:
                problems.setdefault("val", val_problem)
            else:
                hints["val"] = val_summary
        info = self.device_badge.show_device(values["device"])
        if cfg is not None:
            # The engine's own resolution, on the counts it will see: "auto" fields show their values, and
            # explicit values that do not fit the data are reported here rather than after Train.
            try:
                cfg = cfg.resolved(n_data if not problems else None, n_val,
                                   device_type="cuda" if info.kind == "gpu" else "cpu")
            except ConfigError as err:
                problems.setdefault(_field_of(str(err), self._fields), str(err))
            else:
                for name, how in cfg.derived.items():
                    hints[name] = f"auto: {getattr(cfg, name):g} ({how})"
        if values["init"]:
            init_problem = check_model(values["init"])
            if init_problem:
                problems.setdefault("init", init_problem)
        if not values["out"]:
            problems.setdefault("out", "Choose a new folder for the model bundle.")
            self._output = OutputFolder(Path(), "new")
        else:
            self._output = inspect_output(values["out"])
            if not self._output.can_start:
                # A run of its own (interrupted or finished) is no mistake, but a new one needs a new folder.
                own_run = self._output.state in ("interrupted", "finished")
                (blocking_hints if own_run else problems).setdefault("out", self._output.message() or "")
        if info.problem:
            problems.setdefault("device", info.problem)
        if not self._running:  # a run writes into its folder: "holds a run" is no news while it runs
            for name, f in self._fields.items():
                text = problems.get(name) or blocking_hints.get(name) or hints.get(name)
                show_message(f.message, text, error=name in problems)
                mark_invalid(f.editor, name in problems and not isinstance(f.editor, QCheckBox))
            self._show_unplaced(problems.get(""))
        ok = not problems and not blocking_hints
        self.start_button.setEnabled(ok and not self._running)
        self.resume_button.setEnabled(self._output.can_resume and not self._running)
        self.stop_button.setEnabled(self._running and not self._stop.is_set())
        return ok

    def _cached(self, slot: str, path: str, fmt: str, task: str) -> tuple[str | None, str, int | None]:
        """:func:`check_data` and the count, redone only when the path, layout, task or the folder's time
        stamp change."""
        try:
            stamp = Path(path).expanduser().stat().st_mtime_ns if path.strip() else None
        except OSError:
            stamp = None
        key = (path, fmt, task, stamp)
        hit = self._checks.get(slot)
        if hit is not None and hit[0] == key:
            return hit[1]
        result = _check_data(path, fmt, task)
        self._checks[slot] = (key, result)
        return result

    # ------------------------------------------------------------------ running

    def start(self) -> Any:
        """Start a new run from the form; returns the worker (``None`` when the inputs are not valid)."""
        if self._running or not self.validate():
            return None
        cfg = self.config()
        self._remember_settings(cfg)  # "auto" is remembered as auto
        schedule = cfg.resolved()
        self.plot.clear(schedule.epochs, 0 if cfg.ordinary else schedule.warmup_epochs)
        return self._launch(train_job, cfg, f"Training into {cfg.out}…")

    def resume(self) -> Any:
        """Continue the interrupted run in the output folder; returns the worker (``None`` if there is none)."""
        if self._running:
            return None
        self.validate()
        if not self._output.can_resume:
            return None
        from napari_icnn.engine.train import CHECKPOINT_DIR

        ckdir = self._output.path / CHECKPOINT_DIR
        saved = _read_json(ckdir / "config.json", {})
        ordinary = bool(saved.get("ordinary", False))
        self.plot.clear(int(saved.get("epochs", 0)), 0 if ordinary else int(saved.get("warmup_epochs", 0)))
        self.plot.set_history(_read_json(ckdir / "history.json", []))
        cfg = TrainConfig(out=str(self._output.path), resume=True)
        text = f"Resuming the run in {cfg.out} after epoch {self._output.epochs_done}…"
        return self._launch(train_job, cfg, text)

    def _set_running(self, running: bool) -> None:
        if running:
            self.explain_button.setEnabled(False)
            self.epoch_label.setText("")
        super()._set_running(running)

    def _on_event(self, event: Any) -> None:
        if isinstance(event, Progress):
            m = _EPOCH_STAGE.match(event.stage)
            if m and event.total:
                epoch, n = int(m.group(1)), int(m.group(2))
                self.progress.setRange(0, n * event.total)
                self.progress.setValue((epoch - 1) * event.total + event.done)
                detail = f" · {event.detail}" if event.detail else ""
                self.progress.setFormat(f"epoch {epoch}/{n} · batch {event.done}/{event.total}{detail}")
            else:
                self.progress.setRange(0, event.total)
                self.progress.setValue(event.done)
                self.progress.setFormat(f"{event.stage} {event.detail}".strip())
        elif isinstance(event, EpochEnd):
            self.plot.add_epoch(event.epoch, event.metrics)
            self.epoch_label.setText(_epoch_line(event))
        elif isinstance(event, Message):
            if not self._stop.is_set():
                self.status.setText(event.text[:1].upper() + event.text[1:])

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


def _value_editor(f: Any, default: Any) -> tuple[QWidget, Callable[[], Any], Callable[[Any], None]]:
    """An editor for a TrainConfig field that is not a path, chosen by its choices or its type."""
    name = f.name
    choices = _choices(name)
    if choices is not None:
        combo = QComboBox()
        combo.addItems(list(choices))
        combo.setCurrentText(str(default))
        return combo, combo.currentText, lambda v: combo.setCurrentText(str(v))
    if isinstance(default, bool):
        check = QCheckBox(_LABELS.get(name, name.replace("_", " ").capitalize()))
        check.setChecked(default)
        return check, check.isChecked, lambda v: check.setChecked(bool(v))
    unset = "auto" if f.metadata.get("derived") else "all"  # what None means for this field
    if isinstance(default, int) or (default is None and _annotation(f) is int):
        spin = QSpinBox()
        lo, hi, step = _INT_RANGES.get(name, (0, 10**9, 1))
        spin.setRange(lo, hi)
        spin.setSingleStep(step)
        if default is not None:
            spin.setValue(default)
            return spin, spin.value, lambda v: spin.setValue(int(v))
        spin.setSpecialValueText(unset)  # optional: the lowest value means "not set"
        spin.setValue(lo)
        return (
            spin,
            lambda: None if spin.value() == lo else spin.value(),
            lambda v: spin.setValue(lo if v is None else int(v)),
        )
    if isinstance(default, float) or (default is None and _annotation(f) is float):
        dspin = QDoubleSpinBox()
        lo_f, hi_f = _FLOAT_RANGES.get(name, (0.0, 1e6))
        # enough decimals to show the default and a tenth of it (a learning rate of 1e-3: 0.00100)
        dspin.setDecimals(2 if not default else max(2, 2 - math.floor(math.log10(abs(default)))))
        dspin.setRange(lo_f, hi_f)
        dspin.setStepType(QAbstractSpinBox.StepType.AdaptiveDecimalStepType)
        if default is not None:
            dspin.setValue(default)
            return dspin, dspin.value, lambda v: dspin.setValue(float(v))
        dspin.setSpecialValueText(unset)
        dspin.setValue(lo_f)
        return (
            dspin,
            lambda: None if dspin.value() == lo_f else dspin.value(),
            lambda v: dspin.setValue(lo_f if v is None else float(v)),
        )
    edit = QLineEdit("" if default is None else str(default))
    return (edit, *_text_access(edit, optional=default is None))


_FIELDS = {f.name: f for f in fields(TrainConfig)}


def _annotation(f: Any) -> type:
    """The value type of a TrainConfig field (``int | None`` -> int); annotations are strings there."""
    text = str(f.type)
    for kind in (bool, int, float):
        if text.split(" | ")[0] == kind.__name__:
            return kind
    return str


def _same_kind(name: str, value: Any) -> bool:
    """Whether a remembered ``value`` suits TrainConfig field ``name`` (JSON has no int/bool care)."""
    f = _FIELDS[name]
    if value is None:
        return f.default is None
    kind = _annotation(f)
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _choices(name: str) -> tuple[str, ...] | None:
    """The allowed values of a TrainConfig field with a fixed set of them (``None`` otherwise)."""
    from napari_icnn.config import choices_of

    return choices_of(name)


def _field_of(message: str, known: dict[str, Any]) -> str:
    """The field a ConfigError names first (``"--lambda: ..."`` -> ``lam``); ``""`` if none."""
    m = _FLAG.match(message)
    name = field_of_flag(m.group(0)) if m else None
    return name if name in known else ""


def _epoch_line(event: EpochEnd) -> str:
    m = event.metrics
    parts = [f"Epoch {event.epoch}/{event.n_epochs}"]
    for key, label in (("cls_loss", "train loss"), ("val_loss", "val loss"), ("val_auc", "val AUC")):
        value = m.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            parts.append(f"{label} {value:.3f}")
    return " · ".join(parts)


def _checkpoint_note(out: Path) -> str:
    from napari_icnn.engine.train import CHECKPOINT_DIR, LAST

    if str(out) not in ("", ".") and (out / CHECKPOINT_DIR / LAST).is_file():
        return "The last completed epoch's checkpoint is kept: Resume continues from it."
    return ""
