"""The Batch dock widget: run a model over folders of DICOM and image files, as ``icnn infer`` does.

Qt over :mod:`napari_icnn.batch` and nothing more: the form shows the problems of
:func:`~napari_icnn.batch.problems` (the checks ``icnn infer`` makes, in its words), the run is
:func:`~napari_icnn.batch.infer_until_stopped` in a worker thread with a progress bar, the ok / error /
declined counts are the ones its progress events carry, and its :class:`~napari_icnn.batch.BatchSummary`
says how it ended. Stop ends the run after the files under way; files finished keep their rows, and
running again into the same output folder continues where it stopped.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from qtpy.QtCore import QUrl
from qtpy.QtGui import QColor, QDesktopServices
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_icnn._widgets.form import (
    choose_folder,
    hbox,
    message_label,
    model_field,
    research_note,
    show_message,
    show_problem,
    status_label,
    tool_button,
)
from napari_icnn._widgets.jobs import DeviceBadge, StoppableJobWidget, guarded, thin_progress
from napari_icnn.batch.config import BatchCounts, batch_setting
from napari_icnn.progress import Message, Progress

if TYPE_CHECKING:
    import napari

    from napari_icnn.batch import BatchConfig, BatchSummary

__all__ = ["BatchWidget", "batch_job"]

_STATUS_COLOURS = {"ok": "#6aa84f", "error": "#e06666", "declined": "#f1c232"}
_LAST_ROWS = 20
_ROWS_SHOWN = 10
"""Rows visible without scrolling."""


def batch_job(
    cfg: BatchConfig, stop: threading.Event, min_interval: float = 0.1
) -> Generator[Progress | Message, None, BatchSummary]:
    """:func:`~napari_icnn.batch.infer_until_stopped` until done or ``stop`` is set, its progress thinned
    to one event per ``min_interval`` seconds (the last always passes). Every error is raised as a
    :class:`~napari_icnn._widgets.jobs.JobFailed` (see there why)."""
    from napari_icnn.batch import infer_until_stopped

    summary = yield from guarded(thin_progress(infer_until_stopped(cfg, stop.is_set), min_interval))
    # infer_until_stopped returns a stop as its summary, so thin_progress's None (a Cancelled) never comes
    return cast("BatchSummary", summary)


class BatchWidget(StoppableJobWidget):
    """Batch inference over folders of fundus photographs (DICOM, JPEG, PNG, TIFF).

    Parameters
    ----------
    napari_viewer
        The viewer the widget is docked in.
    """

    JOB_NAME = "Batch"
    STOPPING_TEXT = "Stopping after the files under way…"

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(napari_viewer, parent)
        self._counts = BatchCounts()
        self._build()
        self._connect()
        self.validate()

    # ------------------------------------------------------------------ construction

    def _build(self) -> None:
        from napari_icnn.batch import FORMATS, BatchConfig
        from napari_icnn.batch.config import FORMAT_HELP, FORMAT_NAMES
        from napari_icnn.batch.local import usable_cores
        from napari_icnn.batch.summary import STATUS_HELP
        from napari_icnn.bundle import default_bundle_path
        from napari_icnn.config import DEVICES

        defaults = {f.name: f.default for f in fields(BatchConfig) if f.default is not MISSING}
        root = QVBoxLayout(self)
        self.form_box = QWidget()
        form = QFormLayout(self.form_box)
        form.setContentsMargins(0, 0, 0, 0)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)

        self.inputs_list = QListWidget()
        self.inputs_list.setToolTip(_tip("inputs"))
        self.inputs_list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.inputs_list.setMaximumHeight(78)
        self.add_folder_button = tool_button("Add folder…", "Add a folder (searched recursively)")
        self.add_files_button = tool_button("Add files…", "Add single files")
        self.remove_button = tool_button("Remove", "Remove the selected inputs")
        self.inputs_message = message_label()
        form.addRow(batch_setting("inputs").label, self.inputs_list)
        form.addRow(
            "", hbox(self.add_folder_button, self.add_files_button, self.remove_button, stretch_first=False)
        )
        form.addRow("", self.inputs_message)

        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText(batch_setting("out").placeholder)
        self.out_edit.setToolTip(_tip("out"))
        self.out_browse = tool_button("…", "Choose or create the output folder")
        self.out_message = message_label()
        form.addRow(batch_setting("out").label, hbox(self.out_edit, self.out_browse))
        form.addRow("", self.out_message)

        self.model_edit, self.model_browse, self.model_default, self.model_message = model_field(
            form, self, "Use the default model (the demo bundle)"
        )
        self.model_edit.setText(str(default_bundle_path()))

        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICES))
        self.device_combo.setCurrentText(defaults["device"])
        self.device_combo.setToolTip(_tip("device"))
        self.device_badge = DeviceBadge()
        self.device_message = message_label()
        form.addRow(batch_setting("device").label, hbox(self.device_combo, self.device_badge))
        form.addRow("", self.device_message)

        self.workers_spin = _spin("workers", defaults["workers"], f" (here {usable_cores()} cores)")
        form.addRow(batch_setting("workers").label, self.workers_spin)
        self.scheduler_edit = QLineEdit()
        self.scheduler_edit.setPlaceholderText(batch_setting("scheduler").placeholder)
        self.scheduler_edit.setToolTip(_tip("scheduler"))
        self.scheduler_message = message_label()
        form.addRow(batch_setting("scheduler").label, self.scheduler_edit)
        form.addRow("", self.scheduler_message)
        self.batch_spin = _spin("batch", defaults["batch"])
        form.addRow(batch_setting("batch").label, self.batch_spin)
        self.top_k_spin = _spin("top_k", defaults["top_k"])
        form.addRow(batch_setting("top_k").label, self.top_k_spin)

        self.format_checks: dict[str, QCheckBox] = {}
        for name in FORMATS:
            box = self.format_checks[name] = QCheckBox(FORMAT_NAMES.get(name, name))
            box.setChecked(True)
            box.setToolTip(FORMAT_HELP.get(name, ""))
        form.addRow(batch_setting("formats").label, hbox(*self.format_checks.values(), stretch_first=False))
        # the image-quality gate: by default an ungradeable photograph is declined, an unfamiliar one reported
        self.gate_checks: dict[str, QCheckBox] = {}
        for name in ("keep_ungradeable", "decline_unfamiliar"):
            box = self.gate_checks[name] = QCheckBox(batch_setting(name).label)
            box.setToolTip(_tip(name))
        form.addRow("Image-quality gate", hbox(*self.gate_checks.values(), stretch_first=False))
        root.addWidget(self.form_box)

        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Run the model over the inputs (in the background)")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop after the files under way; finished files keep their rows")
        root.addWidget(hbox(self.run_button, self.stop_button, stretch_first=False))
        self.progress = QProgressBar()
        self.progress.setFormat("idle")
        root.addWidget(self.progress)
        self.count_labels = {}
        for status, colour in _STATUS_COLOURS.items():
            label = self.count_labels[status] = QLabel()
            label.setToolTip(STATUS_HELP[status])
            label.setStyleSheet(f"color: {colour}; font-weight: bold;")
        root.addWidget(hbox(*self.count_labels.values(), stretch_first=False))
        self._show_counts(BatchCounts())
        self.status = status_label()
        root.addWidget(self.status)

        self.open_button = QPushButton("Open results folder")
        self.open_button.setToolTip("Open the output folder in the file manager")
        self.rows_button = QPushButton("Show last rows")
        self.rows_button.setCheckable(True)
        self.rows_button.setToolTip(f"The last {_LAST_ROWS} rows of summary.csv")
        root.addWidget(hbox(self.open_button, self.rows_button, stretch_first=False))
        self.rows_table = QTableWidget(0, 4)
        self.rows_table.setHorizontalHeaderLabels(["status", "file", "probability", "reason"])
        rows_header = self.rows_table.verticalHeader()
        assert rows_header is not None  # a QTableWidget always has its headers
        rows_header.setVisible(False)
        rows_header.setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.rows_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.rows_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        header = self.rows_table.horizontalHeader()
        assert header is not None
        for col in range(3):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.rows_table.setVisible(False)
        root.addWidget(self.rows_table)
        root.addWidget(research_note())
        root.addStretch(1)

    def _connect(self) -> None:
        self.add_folder_button.clicked.connect(self._browse_input_folder)
        self.add_files_button.clicked.connect(self._browse_input_files)
        self.remove_button.clicked.connect(self._remove_selected)
        self.out_browse.clicked.connect(
            lambda: choose_folder(self, self.out_edit, "Choose the output folder")
        )
        for edit in (self.out_edit, self.model_edit, self.scheduler_edit):
            edit.textChanged.connect(lambda _: self.validate())
        self.device_combo.currentIndexChanged.connect(lambda _: self.validate())
        self.run_button.clicked.connect(self.run)
        self.stop_button.clicked.connect(self.stop)
        self.open_button.clicked.connect(self.open_results_folder)
        self.rows_button.toggled.connect(self._toggle_rows)

    def _browse_input_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add an input folder", str(Path.home()))
        if folder:
            self.add_inputs([folder])

    def _browse_input_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Add input files", str(Path.home()))
        if files:
            self.add_inputs(files)

    # ------------------------------------------------------------------ inputs

    @property
    def inputs(self) -> list[str]:
        items = (self.inputs_list.item(i) for i in range(self.inputs_list.count()))
        return [item.text() for item in items if item is not None]  # item(i) is never None below count()

    def add_inputs(self, paths: Sequence[str | Path]) -> None:
        """Add files or folders to the inputs (each once)."""
        have = set(self.inputs)
        for p in paths:
            text = str(p)
            if text.strip() and text not in have:
                self.inputs_list.addItem(text)
                have.add(text)
        self.validate()

    def _remove_selected(self) -> None:
        for item in self.inputs_list.selectedItems():
            self.inputs_list.takeItem(self.inputs_list.row(item))
        self.validate()

    def formats(self) -> tuple[str, ...] | None:
        """The chosen formats; ``None`` when all are chosen (each input gets every format that applies)."""
        chosen = tuple(name for name, box in self.format_checks.items() if box.isChecked())
        return None if len(chosen) == len(self.format_checks) else chosen

    def _values(self) -> dict[str, Any]:
        """The form as :class:`~napari_icnn.batch.BatchConfig` arguments (empty model: the default one)."""
        return {
            "inputs": tuple(self.inputs),
            "out": self.out_edit.text().strip(),
            "model": self.model_edit.text().strip() or None,
            "device": self.device_combo.currentText(),
            "batch": self.batch_spin.value(),
            "workers": self.workers_spin.value(),
            "scheduler": self.scheduler_edit.text().strip() or None,
            "formats": self.formats(),
            "top_k": self.top_k_spin.value(),
            **{name: box.isChecked() for name, box in self.gate_checks.items()},
        }

    def config(self) -> BatchConfig:
        """The BatchConfig of the form (raises ConfigError naming the first invalid option)."""
        from napari_icnn.batch import BatchConfig

        return BatchConfig(**self._values())

    def validate(self) -> bool:
        """Show the problems :func:`~napari_icnn.batch.problems` finds next to their fields (the checks
        and words of ``icnn infer``); enable Run only when there are none."""
        from napari_icnn.batch import problems
        from napari_icnn.batch.preflight import out_note
        from napari_icnn.errors import ConfigError

        v = self._values()
        out, scheduler = v["out"], v["scheduler"]
        self.device_badge.show_device(v["device"])
        found = problems(v["inputs"], out, model=v["model"], device=v["device"], scheduler=scheduler)
        show_problem(self.inputs_list, self.inputs_message, found.get("inputs"))
        show_problem(self.out_edit, self.out_message, found.get("out"), hint=out_note(out))
        show_problem(self.model_edit, self.model_message, found.get("model"))
        show_message(self.device_message, found.get("device"))
        show_problem(self.scheduler_edit, self.scheduler_message, found.get("scheduler"))
        # a cluster runs the batch on its own workers: the local worker count does not apply
        self.workers_spin.setEnabled(scheduler is None)

        ok, config_problem = not found, None
        if ok:
            try:
                self.config()
            except ConfigError as err:  # e.g. no format chosen: no field of its own, so the status line
                ok, config_problem = False, str(err)
        if not self._running:
            self._show_unplaced(config_problem)
        self.run_button.setEnabled(ok and not self._running)
        self.stop_button.setEnabled(self._running and not self._stop.is_set())
        self.open_button.setEnabled(bool(out) and Path(out).expanduser().is_dir())
        return ok

    # ------------------------------------------------------------------ running

    @property
    def counts(self) -> BatchCounts:
        """The counts shown: live while a run is under way, final after it."""
        return self._counts

    def run(self) -> Any:
        """Start the batch in the background; returns the worker (``None`` when the inputs are not valid)."""
        if self._running or not self.validate():
            return None
        cfg = self.config()
        self._show_counts(BatchCounts())
        self.progress.setFormat("finding inputs…")
        text = (
            f"Running {Path(cfg.model or '').name or 'the default model'} over "
            f"{len(cfg.inputs)} input{'s' if len(cfg.inputs) != 1 else ''}…"
        )
        return self._launch(batch_job, cfg, text)

    def _show_counts(self, counts: BatchCounts, progress: str | None = None) -> None:
        """Show ``counts`` in the count labels and, with a ``progress`` text, on the progress bar."""
        self._counts = counts
        for status, label in self.count_labels.items():
            label.setText(f"● {counts.by_status()[status]} {status}")
        if progress is not None:
            self.progress.setRange(0, max(1, counts.files_total))
            self.progress.setValue(counts.files_done)
            self.progress.setFormat(progress)

    def _on_event(self, event: Any) -> None:
        if isinstance(event, Progress):
            counts = BatchCounts.from_progress(event)
            if counts is not None:
                self._show_counts(counts, f"{counts.files_done} / {counts.files_total} files")
            else:
                self.progress.setFormat(f"{event.stage}: {event.done}")
        elif isinstance(event, Message) and not self._stop.is_set():
            text = event.text if len(event.text) < 300 else event.text[:297] + "…"
            self.status.setText(text[:1].upper() + text[1:])

    def _on_returned(self, summary: BatchSummary) -> None:
        from napari.utils.notifications import show_info, show_warning

        self._outcome = summary
        self._set_running(False)
        c = summary.counts
        ended = f"stopped · {c.files_done} / {c.files_total}" if summary.stopped else f"done · {c.files_total}"
        self._show_counts(c, f"{ended} files")
        text = summary.describe()
        self.status.setText(text)
        if summary.stopped:
            show_info(f"Batch stopped. {text}")
        elif summary.exit_code == 0:
            show_info(f"Batch finished: {text}")
        else:
            show_warning(f"Batch finished; some inputs were not processed (see summary.csv): {text}")
        if self.rows_button.isChecked():
            self._refresh_rows()

    def _failure_text(self) -> str:
        return "The batch could not run (see the notification)."

    # ------------------------------------------------------------------ results

    def summary_csv(self) -> Path:
        from napari_icnn.batch.run import SUMMARY_NAME

        return Path(self.out_edit.text().strip()).expanduser().absolute() / SUMMARY_NAME

    def open_results_folder(self) -> bool:
        """Open the output folder in the system's file manager; returns whether that worked."""
        from napari.utils.notifications import show_warning

        folder = self.summary_csv().parent
        if not folder.is_dir():
            show_warning(f"{folder}: the results folder does not exist yet")
            return False
        opened = QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))
        if not opened:
            show_warning(f"Could not open a file manager; the results are in {folder}")
        return bool(opened)

    def _toggle_rows(self, on: bool) -> None:
        if on:
            self._refresh_rows()
        self.rows_table.setVisible(on)
        self.rows_button.setText("Hide last rows" if on else "Show last rows")

    def _refresh_rows(self) -> None:
        from napari_icnn.batch.summary import last_rows

        rows = last_rows(self.summary_csv(), _LAST_ROWS)
        table = self.rows_table
        table.setRowCount(len(rows))
        for i, row in enumerate(reversed(rows)):  # newest first
            name = Path(row.input_path).name + ("" if row.frame is None else f" [frame {row.frame}]")
            prob = "" if row.probability is None else f"{row.probability:.3f}"
            cells = [row.status, name, prob, row.reason]
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(row.input_path if j == 1 else text)
                if j == 0:
                    item.setForeground(QColor(_STATUS_COLOURS.get(row.status, "#999999")))
                table.setItem(i, j, item)
        shown = min(_ROWS_SHOWN, max(len(rows), 1))
        rows_header, header = table.verticalHeader(), table.horizontalHeader()
        assert rows_header is not None and header is not None  # a QTableWidget always has its headers
        rows_height = shown * rows_header.defaultSectionSize()
        table.setFixedHeight(rows_height + header.sizeHint().height() + 2 * table.frameWidth())


def _tip(name: str) -> str:
    """A setting's help as a tooltip (the command line's words, capitalised)."""
    text = batch_setting(name).help
    return text[:1].upper() + text[1:]


def _spin(name: str, value: int, note: str = "") -> QSpinBox:
    """A spin box for the integer setting ``name``, limited as :class:`BatchConfig` says."""
    bounds = batch_setting(name).bounds
    assert bounds is not None, f"{name} has no limits"
    box = QSpinBox()
    box.setRange(*bounds)
    box.setValue(value)
    box.setToolTip(_tip(name) + note)
    return box
