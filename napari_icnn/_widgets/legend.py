"""The evidence legend: one row per shown filter, grouped by part.

napari has no legend for Labels layers, so the Explain widget shows its own: per filter a
visibility checkbox, the part's colour, ``filter N ·`` and an editable name, and the filter's
contribution. The legend holds no state of its own beyond its rows; it asks for renames and
visibility changes through signals and the widget carries them out.
"""

from __future__ import annotations

from collections.abc import Sequence

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QCheckBox, QGridLayout, QLabel, QLineEdit, QSizePolicy, QVBoxLayout, QWidget

from napari_icnn._widgets.layers import ShownFilter, label_of, part_heading

__all__ = ["EvidenceLegend", "LegendRow"]

_SWATCH = 14
_CONTRIBUTION_TIP = (
    "Contribution: this filter's share of the decision's logit, measured against a healthy reference eye "
    "(a filter that fires alike on every eye scores about 0; positive: the filter supports the decision)."
)
_NAME_TIP = "Your name for this filter. Press Enter to save it into the model (empty: the part's name)."


class LegendRow:
    """The widgets of one filter's row."""

    def __init__(self, f: ShownFilter, visible: bool):
        self.filter_id = f.filter_id
        self.checkbox = QCheckBox()
        self.checkbox.setChecked(visible)
        self.checkbox.setToolTip(f"Show or hide filter {f.filter_id}'s layers")
        self.swatch = QLabel()
        self.swatch.setFixedSize(_SWATCH, _SWATCH)
        r, g, b = f.colour
        self.swatch.setStyleSheet(
            f"background-color: rgb({r}, {g}, {b}); border: 1px solid rgba(0, 0, 0, 120);"
        )
        self.swatch.setToolTip(part_heading(f.part, f.category))
        self.prefix = QLabel(f"filter {f.filter_id} ·")
        self.name_edit = QLineEdit(f.label)
        self.name_edit.setToolTip(_NAME_TIP)
        self.name_edit.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.contribution = QLabel(f"{f.contribution:+.3f}")
        self.contribution.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.contribution.setToolTip(_CONTRIBUTION_TIP)
        self.saved_label = f.label

    @property
    def name(self) -> str:
        return f"filter {self.filter_id} · {self.saved_label}"

    def widgets(self) -> list[QWidget]:
        return [self.checkbox, self.swatch, self.prefix, self.name_edit, self.contribution]


class EvidenceLegend(QWidget):
    """Rows of the shown filters, grouped under their part's heading.

    Signals
    -------
    renameRequested(int, str)
        The user finished editing a filter's name (filter id, new name without prefix).
    visibilityToggled(int, bool)
        The user ticked or unticked a filter's checkbox.
    """

    renameRequested = Signal(int, str)
    visibilityToggled = Signal(int, bool)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self._grid = QGridLayout()
        outer.addLayout(self._grid)
        outer.addStretch(1)  # rows stay at the top however tall the dock is
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setHorizontalSpacing(6)
        self._grid.setVerticalSpacing(3)
        self._grid.setColumnStretch(3, 1)
        self.rows: dict[int, LegendRow] = {}
        self.headings: list[QLabel] = []
        self._empty = QLabel("Run Explain to list the evidence here.")
        self._empty.setStyleSheet("color: palette(mid);")
        self._grid.addWidget(self._empty, 0, 0, 1, 5)

    # ------------------------------------------------------------------ content

    def set_rows(self, filters: Sequence[ShownFilter], visible: dict[int, bool] | None = None) -> None:
        """Show ``filters`` (in order; consecutive filters of one part share a heading)."""
        self.clear()
        visible = visible or {}
        line = 0
        part: object = object()
        for f in filters:
            if f.part != part:
                part = f.part
                heading = QLabel(part_heading(f.part, f.category if f.part is None else None))
                heading.setStyleSheet("font-weight: bold; padding-top: 4px;")
                self._grid.addWidget(heading, line, 0, 1, 5)
                self.headings.append(heading)
                line += 1
            row = LegendRow(f, visible.get(f.filter_id, True))
            for col, w in enumerate(row.widgets()):
                self._grid.addWidget(w, line, col)
            self._connect(row)
            self.rows[f.filter_id] = row
            line += 1
        self._empty.setVisible(not self.rows)

    def clear(self) -> None:
        for w in [w for row in self.rows.values() for w in row.widgets()] + self.headings:
            self._grid.removeWidget(w)
            w.hide()  # deleteLater waits for the event loop; the row must go now
            w.setParent(None)
            w.deleteLater()
        self.rows = {}
        self.headings = []
        self._empty.setVisible(True)

    def set_name(self, filter_id: int, name: str) -> None:
        """Show a filter's (display) name without asking for a rename."""
        row = self.rows.get(filter_id)
        if row is None:
            return
        row.saved_label = label_of(name)
        row.name_edit.blockSignals(True)
        row.name_edit.setText(row.saved_label)
        row.name_edit.blockSignals(False)

    def set_visible(self, filter_id: int, visible: bool) -> None:
        """Tick or untick a filter's checkbox without emitting ``visibilityToggled``."""
        row = self.rows.get(filter_id)
        if row is None or row.checkbox.isChecked() == visible:
            return
        row.checkbox.blockSignals(True)
        row.checkbox.setChecked(visible)
        row.checkbox.blockSignals(False)

    # ------------------------------------------------------------------ user actions

    def _connect(self, row: LegendRow) -> None:
        fid = row.filter_id
        row.checkbox.toggled.connect(lambda on: self.visibilityToggled.emit(fid, bool(on)))
        row.name_edit.editingFinished.connect(lambda: self._finish_edit(fid))

    def _finish_edit(self, filter_id: int) -> None:
        row = self.rows.get(filter_id)
        if row is None:
            return
        text = " ".join(row.name_edit.text().split())
        if text == row.saved_label:
            return
        self.renameRequested.emit(filter_id, text)
