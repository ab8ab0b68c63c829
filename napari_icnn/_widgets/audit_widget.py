"""The Audit dock widget: where a model's evidence lies on a cohort, as ``icnn audit`` measures it.

Qt over :mod:`napari_icnn.audit.measure` and nothing more: the run is :func:`~napari_icnn.audit.measure.audit_iter`
then :func:`~napari_icnn.audit.report.write_audit` in a worker thread with a progress bar and a Stop button;
the findings and the per-filter table are read from the audit document (so an audit written by the command line
opens the same way); choosing a filter adds its strongest scans to the viewer, each with the filter's map as a
named layer beside it.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFormLayout,
    QHeaderView,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
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
    show_problem,
    status_label,
    tool_button,
)
from napari_icnn._widgets.jobs import StoppableJobWidget, guarded, new_worker, notify_failure, thin_progress
from napari_icnn.errors import Cancelled

if TYPE_CHECKING:
    import napari

__all__ = ["AuditWidget", "audit_job", "audit_problems"]

SHORTCUT_COLOUR = "#e06666"
NON_EYE_COLOUR = "#f1c232"
LAYER_PREFIX = "audit · "
_ROLE = Qt.ItemDataRole.UserRole
_COLUMNS = ("filter", "peaks mostly on", "of its scans", "of the evidence")


def audit_problems(model: str, data: str, out: str) -> dict[str, str]:
    """The form's problems by field (``model``, ``data``, ``out``), in the command line's words."""
    from napari_icnn.bundle import check_model

    found: dict[str, str] = {}
    problem = check_model(model)
    if problem:
        found["model"] = problem
    if not data:
        found["data"] = "choose the cohort to audit (a folder or CSV in any layout icnn train reads)"
    elif not Path(data).expanduser().exists():
        found["data"] = f"{data}: no such file or folder"
    if not out:
        found["out"] = "choose a folder for the audit (audit.json, filters.csv, scans.csv, figures)"
    elif Path(out).expanduser().is_file():
        found["out"] = f"{out}: is a file; choose a folder"
    return found


def audit_job(settings: dict[str, Any], stop: threading.Event, min_interval: float = 0.1
              ) -> Generator[Any, None, dict[str, Any] | None]:
    """Audit and write the folder until done or ``stop`` is set; returns the audit document (``None`` when
    stopped). Every error travels as a :class:`~napari_icnn._widgets.jobs.JobFailed`."""
    from napari_icnn.audit.measure import audit_iter
    from napari_icnn.audit.report import read_audit, write_audit

    def stoppable() -> Generator[Any, None, Any]:
        engine = audit_iter(settings["model"], settings["data"], gradcam=settings["gradcam"], device="auto")
        while True:
            if stop.is_set():
                engine.close()
                raise Cancelled("audit stopped")
            try:
                event = next(engine)
            except StopIteration as done:
                return done.value
            yield event

    result = yield from guarded(thin_progress(stoppable(), min_interval))
    if result is None:
        return None
    folder = write_audit(result, settings["out"], figures=settings["figures"])
    return read_audit(folder)


class AuditWidget(StoppableJobWidget):
    """Audit a model on a cohort: the findings, every filter's place and share, its strongest scans.

    Parameters
    ----------
    napari_viewer
        The viewer the widget is docked in.
    """

    JOB_NAME = "Audit"
    STOPPING_TEXT = "Stopping after the scans under way…"

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(napari_viewer, parent)
        self._doc: dict[str, Any] | None = None
        self._folder: Path | None = None
        self._show_worker: Any = None
        self._build()
        self._connect()
        self.validate()

    # ------------------------------------------------------------------ construction

    def _build(self) -> None:
        from napari_icnn.bundle import default_bundle_path

        root = QVBoxLayout(self)
        self.form_box = QWidget()
        form = QFormLayout(self.form_box)
        form.setContentsMargins(0, 0, 0, 0)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.model_edit, self.model_browse, self.model_default, self.model_message = model_field(
            form, self, "Use the default model (the demo bundle)"
        )
        self.model_edit.setText(str(default_bundle_path()))
        self.data_edit = QLineEdit()
        self.data_edit.setPlaceholderText("a cohort: synthetic, IDRiD, CSV or DICOM + CSV")
        self.data_edit.setToolTip("Part masks place evidence on lesions and anatomy; artefact masks (a synthetic "
                                  "cohort's masks/confounder or masks/artefact) on the marked artefact")
        self.data_browse = tool_button("…", "Choose the cohort folder")
        self.data_message = message_label()
        form.addRow("Cohort", hbox(self.data_edit, self.data_browse))
        form.addRow("", self.data_message)
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("a folder for audit.json, filters.csv, scans.csv and figures")
        self.out_browse = tool_button("…", "Choose or create the audit folder")
        self.out_message = message_label()
        form.addRow("Audit folder", hbox(self.out_edit, self.out_browse))
        form.addRow("", self.out_message)
        self.gradcam_check = QCheckBox("Grad-CAM audit of the same model too")
        self.gradcam_check.setChecked(True)
        form.addRow("", self.gradcam_check)
        root.addWidget(self.form_box)

        self.run_button = QPushButton("Audit")
        self.run_button.setToolTip("Audit the model on the cohort (in the background)")
        self.stop_button = QPushButton("Stop")
        self.open_button = QPushButton("Open audit…")
        self.open_button.setToolTip("Show an audit written before (by this widget or icnn audit)")
        root.addWidget(hbox(self.run_button, self.stop_button, self.open_button, stretch_first=False))
        self.progress = QProgressBar()
        self.progress.setFormat("idle")
        root.addWidget(self.progress)
        self.status = status_label()
        root.addWidget(self.status)

        self.findings_list = QListWidget()
        self.findings_list.setWordWrap(True)
        self.findings_list.setToolTip("Shortcut findings (red) first; location findings on non-eye places in amber")
        self.findings_list.setMinimumHeight(120)
        root.addWidget(self.findings_list)
        self.filters_table = QTableWidget(0, len(_COLUMNS))
        self.filters_table.setHorizontalHeaderLabels(list(_COLUMNS))
        self.filters_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.filters_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.filters_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        header = self.filters_table.horizontalHeader()
        assert header is not None  # a QTableWidget always has its headers
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for col in range(1, len(_COLUMNS)):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        rows_header = self.filters_table.verticalHeader()
        assert rows_header is not None
        rows_header.setVisible(False)
        self.filters_table.setMinimumHeight(160)
        root.addWidget(self.filters_table)
        self.scans_spin = QSpinBox()
        self.scans_spin.setRange(1, 12)
        self.scans_spin.setValue(4)
        self.scans_spin.setToolTip("How many of the filter's strongest scans to show")
        self.show_button = QPushButton("Show its strongest scans")
        self.show_button.setToolTip("Add the chosen filter's strongest scans to the viewer, its map beside each")
        root.addWidget(hbox(self.show_button, self.scans_spin, stretch_first=False))
        root.addWidget(research_note())
        root.addStretch(1)

    def _connect(self) -> None:
        self.data_browse.clicked.connect(lambda: choose_folder(self, self.data_edit, "Choose the cohort folder"))
        self.out_browse.clicked.connect(lambda: choose_folder(self, self.out_edit, "Choose the audit folder"))
        for edit in (self.model_edit, self.data_edit, self.out_edit):
            edit.textChanged.connect(lambda _: self.validate())
        self.run_button.clicked.connect(self.run)
        self.stop_button.clicked.connect(self.stop)
        self.open_button.clicked.connect(self._browse_audit)
        self.show_button.clicked.connect(lambda: self.show_filter())
        self.findings_list.currentRowChanged.connect(self._select_finding)
        self.filters_table.itemSelectionChanged.connect(lambda: self.validate())

    # ------------------------------------------------------------------ form

    def _values(self) -> dict[str, Any]:
        return {"model": self.model_edit.text().strip(), "data": self.data_edit.text().strip(),
                "out": self.out_edit.text().strip(), "gradcam": self.gradcam_check.isChecked(), "figures": 8}

    def validate(self) -> bool:
        v = self._values()
        found = audit_problems(v["model"], v["data"], v["out"])
        show_problem(self.model_edit, self.model_message, found.get("model"))
        show_problem(self.data_edit, self.data_message, found.get("data"))
        show_problem(self.out_edit, self.out_message, found.get("out"))
        ok = not found
        self.run_button.setEnabled(ok and not self._running)
        self.stop_button.setEnabled(self._running and not self._stop.is_set())
        self.show_button.setEnabled(self._doc is not None and self.selected_filter() is not None
                                    and not self._running)
        return ok

    # ------------------------------------------------------------------ running

    def run(self) -> Any:
        """Start the audit in the background; the worker (``None`` when the form is not valid)."""
        if self._running or not self.validate():
            return None
        settings = self._values()
        self._folder = Path(settings["out"]).expanduser()
        self.progress.setFormat("%v / %m scans")
        return self._launch(audit_job, settings, f"Auditing {Path(settings['model']).name} on "
                                                  f"{Path(settings['data']).name}…")

    def _on_returned(self, doc: dict[str, Any] | None) -> None:
        super()._on_returned(doc)
        if doc is None:
            self.status.setText("Stopped; nothing was written.")
            return
        self.show_audit(doc, self._folder)

    def _failure_text(self) -> str:
        return "The audit could not run (see the notification)."

    # ------------------------------------------------------------------ results

    def _browse_audit(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(self, "Open an audit folder", self.out_edit.text().strip())
        if folder:
            self.open_audit(folder)

    def open_audit(self, folder: str | Path) -> bool:
        """Show the audit in ``folder``; whether it could be read (a warning says why not)."""
        from napari.utils.notifications import show_warning

        from napari_icnn.audit.report import read_audit
        from napari_icnn.errors import IcnnError

        try:
            doc = read_audit(folder)
        except IcnnError as err:
            show_warning(str(err))
            return False
        self.show_audit(doc, Path(folder))
        return True

    def show_audit(self, doc: dict[str, Any], folder: Path | None = None) -> None:
        """Fill the findings and the filter table from an audit document."""
        self._doc, self._folder = doc, folder
        self.findings_list.clear()
        for f in doc["findings"]:
            item = QListWidgetItem(f["text"])
            item.setData(_ROLE, f)
            if f["kind"] == "shortcut":
                item.setForeground(QColor(SHORTCUT_COLOUR))
            elif f["place"] in ("artefact", "text", "rim", "outside"):
                item.setForeground(QColor(NON_EYE_COLOUR))
            self.findings_list.addItem(item)
        if not doc["findings"]:
            self.findings_list.addItem("No finding.")
        rows = sorted(doc["filters"], key=lambda r: -float(r["evidence_share"]))
        table = self.filters_table
        table.setRowCount(len(rows))
        places = doc["places"]
        for i, r in enumerate(rows):
            where = r["peaks_mostly_on"]
            cells = [r["name"], places.get(where, {}).get("name", where) if where else "-",
                     f"{100 * float(r['peaks_mostly_on_share']):.0f} %", f"{100 * float(r['evidence_share']):.1f} %"]
            for j, text in enumerate(cells):
                cell = QTableWidgetItem(text)
                cell.setData(_ROLE, int(r["filter"]))
                table.setItem(i, j, cell)
        shortcuts = [f for f in doc["findings"] if f["kind"] == "shortcut"]
        auc = f"; AUC {doc['auc']:.3f}" if doc.get("auc") is not None else ""
        left = doc["data"].get("left_out") or []
        auc += f"; {len(left)} left out (could not be read, see audit.json)" if left else ""
        odd = sum(len(v) for v in (doc.get("gate") or {}).values())
        auc += f"; {odd} unfamiliar or ungradeable (audited all the same, see audit.json)" if odd else ""
        self.status.setText(f"{doc['data']['scans']} scans audited{auc}: "
                            + (f"{len(shortcuts)} shortcut finding{'s' if len(shortcuts) != 1 else ''}"
                               if shortcuts else "no shortcut finding")
                            + (f" · written to {folder}" if folder else ""))
        self.validate()

    def selected_filter(self) -> int | None:
        """The filter chosen in the table, or ``None``."""
        items = self.filters_table.selectedItems()
        return int(items[0].data(_ROLE)) if items else None

    def select_filter(self, fid: int) -> None:
        """Choose filter ``fid`` in the table."""
        for i in range(self.filters_table.rowCount()):
            item = self.filters_table.item(i, 0)
            if item is not None and int(item.data(_ROLE)) == fid:
                self.filters_table.selectRow(i)
                return

    def _select_finding(self, row: int) -> None:
        item = self.findings_list.item(row)
        finding = item.data(_ROLE) if item is not None else None
        if finding and finding["filters"]:
            self.select_filter(int(finding["filters"][0]))

    def show_filter(self, fid: int | None = None, n: int | None = None) -> Any:
        """Add filter ``fid``'s (default: the chosen one's) ``n`` strongest scans to the viewer in the background,
        each with the filter's map as a layer named after it; returns the worker (``None`` when nothing to show)."""
        doc = self._doc
        fid = self.selected_filter() if fid is None else fid
        if doc is None or fid is None:
            return None
        ids = [sid for _, sid in doc["top_images"].get(str(fid), [])][: n or self.scans_spin.value()]
        if not ids:
            self.status.setText("This filter fired on no scan.")
            return None
        name = next(r["name"] for r in doc["filters"] if int(r["filter"]) == fid)
        self.status.setText(f"Loading {len(ids)} scans of {name}…")

        def views() -> Generator[None, None, Any]:
            from napari_icnn.audit.measure import cohort_of
            from napari_icnn.audit.report import filter_views
            from napari_icnn.bundle import load_bundle

            model = load_bundle(doc["model"]["path"], device="cpu")
            records = {r.id: r for r in cohort_of(doc["data"]["path"], doc["data"]["format"]).records}
            yield None
            return filter_views(model, records, ids, fid)

        def shown(result: Any) -> None:
            self._add_layers(name, result)

        def failed(err: BaseException) -> None:
            import logging

            notify_failure("Showing the filter", err, logging.getLogger(__name__))

        self._show_worker = new_worker(views, yielded=lambda _: None, returned=shown, errored=failed,
                                       finished=lambda: None)
        self._show_worker.start()
        return self._show_worker

    def _add_layers(self, name: str, views: list[Any]) -> None:
        """The scans side by side, each with the filter's map over it (``audit · <scan>`` and
        ``<filter name> · <scan>``); earlier audit layers are replaced."""
        for layer in [la for la in self.viewer.layers if la.name.startswith(LAYER_PREFIX)]:
            self.viewer.layers.remove(layer)
        x = 0.0
        for v in views:
            h, w = v.rgb.shape[:2]
            scale = 512.0 / max(h, w)  # scans of any size shown at one size, side by side
            place = {"scale": (scale, scale), "translate": (0.0, x)}
            self.viewer.add_image(v.rgb, name=f"{LAYER_PREFIX}{v.id}", rgb=True, **place)
            self.viewer.add_image(v.heat, name=f"{LAYER_PREFIX}{name} · {v.id}", colormap="inferno",
                                  blending="additive", opacity=0.8, contrast_limits=(0.0, 1.0), **place)
            x += w * scale + 16
        self.viewer.reset_view()
        self.status.setText(f"{name}: its {len(views)} strongest scans are in the viewer.")
