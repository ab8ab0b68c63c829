"""The evidence legend: one row per shown filter, under its group's heading, grouped by part.

napari has no legend for Labels layers, so the Explain widget shows its own: per filter a
visibility checkbox, the part's colour, ``filter N ·`` and an editable name, and the filter's
contribution; under it, in small print, why the filter is context or a possible artefact (its
flags). Groups ("Evidence", "Context (anatomy)", "Possible artefacts") come as the layers give
them; a line on top says what the contributions are measured against. The legend holds no state of
its own beyond its rows; it asks for renames and visibility changes through signals and the widget
carries them out.
"""

from __future__ import annotations

from collections.abc import Sequence

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QCheckBox, QGridLayout, QLabel, QLineEdit, QSizePolicy, QVBoxLayout, QWidget

from napari_icnn.layer_data import GROUP_HEADINGS, GROUP_VISIBLE, ShownFilter, label_of, part_heading
from napari_icnn.roles import ARTEFACT, CONTEXT

__all__ = ["EvidenceLegend", "LegendRow"]

_SWATCH = 14
_COLUMNS = 5
_CONTRIBUTION_TIP = (
    "Contribution: this filter's share of the decision's logit (positive: the filter supports the decision). "
    "What it is measured against is written at the top of the legend."
)
_SILENT_TIP = (
    "Filters trained for a lesion type that respond nowhere on this scan: no layer, since there is nothing to "
    "draw. Their silence still counts in the decision: the number is its contribution, measured like every other."
)
_NAME_TIP = "Your name for this filter. Press Enter to save it into the model (empty: the part's name)."
_GROUP_HINTS = {
    group: meaning + ("" if GROUP_VISIBLE[group] else " Hidden on the scan until ticked.")
    for group, meaning in (
        (CONTEXT, "Anatomy the model looks at: not evidence of disease."),
        (ARTEFACT, "Peaks outside the field of view or on its rim: not evidence."),
    )
}
# A group's heading must outrank its part headings at a glance: larger, ruled, and parts indented under it.
_GROUP_STYLE = "font-weight: bold; font-size: 15px; padding-top: 8px; border-bottom: 1px solid palette(mid);"
_PART_STYLE = "font-weight: bold; font-size: 12px; padding-top: 2px; padding-left: 6px;"
_NOTE_STYLE = "color: palette(mid); font-size: 11px; font-style: italic;"


def _note_line(tip: str) -> QLabel:
    """A dimmed, wrapped line above the rows, hidden until it has something to say."""
    label = QLabel("")
    label.setWordWrap(True)
    label.setStyleSheet("color: palette(mid);")
    label.setToolTip(tip)
    label.setVisible(False)
    return label


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
        self.name_edit.setToolTip(_NAME_TIP + "".join(f"\n• {flag}" for flag in f.flags))
        self.name_edit.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.contribution = QLabel(f"{f.contribution:+.3f}")
        self.contribution.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.contribution.setToolTip(_CONTRIBUTION_TIP)
        self.group = f.group
        self.flags = f.flags
        self.note: QLabel | None = None
        if f.flags:
            self.note = QLabel("; ".join(f.flags))
            self.note.setStyleSheet(_NOTE_STYLE)
            self.note.setWordWrap(True)
        self.saved_label = f.label

    @property
    def name(self) -> str:
        return f"filter {self.filter_id} · {self.saved_label}"

    def widgets(self) -> list[QWidget]:
        """The row's widgets, one per column of the legend's grid."""
        return [self.checkbox, self.swatch, self.prefix, self.name_edit, self.contribution]

    def all_widgets(self) -> list[QWidget]:
        return self.widgets() + ([self.note] if self.note is not None else [])


class EvidenceLegend(QWidget):
    """Rows of the shown filters under their group's heading, grouped under their part's heading.

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
        self.basis = _note_line(_CONTRIBUTION_TIP)
        self.silent = _note_line(_SILENT_TIP)
        outer.addWidget(self.basis)
        outer.addWidget(self.silent)
        self._grid = QGridLayout()
        outer.addLayout(self._grid)
        outer.addStretch(1)  # rows stay at the top however tall the dock is
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setHorizontalSpacing(6)
        self._grid.setVerticalSpacing(3)
        self._grid.setColumnStretch(3, 1)
        self.rows: dict[int, LegendRow] = {}
        self.headings: list[QLabel] = []
        """Group headings, their hints and part headings, top first."""
        self.group_headings: dict[str, QLabel] = {}
        self._empty = QLabel("Run Explain to list the evidence here.")
        self._empty.setStyleSheet("color: palette(mid);")
        self._grid.addWidget(self._empty, 0, 0, 1, _COLUMNS)

    # ------------------------------------------------------------------ content

    def set_basis(self, basis: str) -> None:
        """Say what the contributions are measured against (an explanation's ``contribution_basis``)."""
        self.basis.setText(f"Contributions: {basis}" if basis else "")
        self.basis.setVisible(bool(basis))

    def set_silent(self, summary: str) -> None:
        """Say which evidence filters are silent on the scan (:func:`napari_icnn.explain.silent_summary`): they
        have no layer, since there is nothing to draw, yet their silence counts in the decision."""
        self.silent.setText(f"Silent: {summary}" if summary else "")
        self.silent.setVisible(bool(summary))

    def set_rows(self, filters: Sequence[ShownFilter], visible: dict[int, bool] | None = None) -> None:
        """Show ``filters`` (in order; consecutive filters of one group share its heading, and
        consecutive filters of one part within it a part heading)."""
        self.clear()
        visible = visible or {}
        line = 0
        group: object = object()
        part: object = object()
        for f in filters:
            if f.group != group:
                group, part = f.group, object()
                line = self._heading(GROUP_HEADINGS.get(f.group, f.group), _GROUP_STYLE, line)
                self.group_headings.setdefault(f.group, self.headings[-1])
                if f.group in _GROUP_HINTS:
                    line = self._heading(_GROUP_HINTS[f.group], _NOTE_STYLE, line)
            if f.part != part:
                part = f.part
                line = self._heading(part_heading(f.part, f.category if f.part is None else None), _PART_STYLE, line)
            row = LegendRow(f, visible.get(f.filter_id, True))
            for col, w in enumerate(row.widgets()):
                self._grid.addWidget(w, line, col)
            line += 1
            if row.note is not None:
                self._grid.addWidget(row.note, line, 2, 1, _COLUMNS - 2)
                line += 1
            self._connect(row)
            self.rows[f.filter_id] = row
        self._empty.setVisible(not self.rows)

    def _heading(self, text: str, style: str, line: int) -> int:
        heading = QLabel(text)
        heading.setStyleSheet(style)
        heading.setWordWrap(True)
        self._grid.addWidget(heading, line, 0, 1, _COLUMNS)
        self.headings.append(heading)
        return line + 1

    def clear(self) -> None:
        for w in [w for row in self.rows.values() for w in row.all_widgets()] + self.headings:
            self._grid.removeWidget(w)
            w.hide()  # deleteLater waits for the event loop; the row must go now
            w.setParent(None)
            w.deleteLater()
        self.rows = {}
        self.headings = []
        self.group_headings = {}
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
