"""Pieces the dock widgets' forms share: styles, the message under a field, rows of buttons, the
model-bundle row and the status line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QToolButton,
    QWidget,
)

__all__ = [
    "ERROR_STYLE",
    "HINT_STYLE",
    "INVALID_FIELD",
    "NOT_CLINICAL",
    "ModelField",
    "message_label",
    "show_message",
    "mark_invalid",
    "show_problem",
    "status_label",
    "research_note",
    "tool_button",
    "hbox",
    "choose_folder",
    "model_field",
]

ERROR_STYLE = "color: #e06666;"
HINT_STYLE = "color: palette(mid);"
INVALID_FIELD = "background-color: lightcoral;"
NOT_CLINICAL = "Research use only. Not for clinical use."


class _WrappingLabel(QLabel):
    """A word-wrapped label as tall as its text at its current width.

    A form layout gives a row its widgets' size hint, and a wrapped label's hint is worked out for
    an arbitrary narrow width: a long message would get a tall row, its text floating in the middle.
    """

    def sizeHint(self) -> QSize:
        hint = super().sizeHint()
        if self.width() > 0:
            hint.setHeight(self.heightForWidth(self.width()))
        return hint

    def resizeEvent(self, event: Any) -> None:
        super().resizeEvent(event)
        self.updateGeometry()  # a new width means a new height: let the layout ask again


def message_label() -> QLabel:
    """A hidden, wrapping, selectable label for the problem (or hint) under a field."""
    label = _WrappingLabel("")
    label.setWordWrap(True)
    label.setStyleSheet(ERROR_STYLE)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.setVisible(False)
    return label


def show_message(label: QLabel, text: str | None, error: bool = True) -> None:
    """Show ``text`` in ``label`` as a problem (``error``) or a hint; hide the label when there is none."""
    label.setText(text or "")
    label.setStyleSheet(ERROR_STYLE if error else HINT_STYLE)
    label.setVisible(bool(text))


def mark_invalid(field: QWidget, invalid: bool) -> None:
    field.setStyleSheet(INVALID_FIELD if invalid else "")


def show_problem(field: QWidget, message: QLabel, problem: str | None, hint: str | None = None) -> None:
    """Show ``problem`` (else ``hint``) under ``field``; a problem also marks the field."""
    show_message(message, problem or hint, error=bool(problem) or not hint)
    mark_invalid(field, bool(problem))


def status_label() -> QLabel:
    """The wrapping, selectable line under the buttons that says what a run is doing or did."""
    label = QLabel("")
    label.setWordWrap(True)
    label.setStyleSheet(HINT_STYLE)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def research_note() -> QLabel:
    note = QLabel(NOT_CLINICAL)
    note.setStyleSheet("color: palette(mid); font-size: 10px;")
    return note


def tool_button(text: str, tip: str) -> QToolButton:
    button = QToolButton()
    button.setText(text)
    button.setToolTip(tip)
    return button


def hbox(*widgets: QWidget, stretch_first: bool = True, stretch_end: bool = False) -> QWidget:
    """``widgets`` in a row without margins; the first takes the spare width unless told otherwise
    (``stretch_end``: empty space after the last takes it instead)."""
    box = QWidget()
    layout = QHBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    for i, w in enumerate(widgets):
        layout.addWidget(w, 1 if (i == 0 and stretch_first) else 0)
    if stretch_end:
        layout.addStretch(1)
    return box


def choose_folder(parent: QWidget, edit: QLineEdit, title: str) -> bool:
    """Let the user pick a folder into ``edit`` (the dialog opens at its folder); whether one was picked."""
    folder = QFileDialog.getExistingDirectory(parent, title, edit.text().strip() or str(Path.home()))
    if folder:
        edit.setText(folder)
    return bool(folder)


class ModelField(NamedTuple):
    """The model-bundle row of a form: the path, "…" to browse, "Default" and the message under it."""

    edit: QLineEdit
    browse: QToolButton
    default: QToolButton
    message: QLabel


def model_field(form: QFormLayout, parent: QWidget, default_tip: str) -> ModelField:
    """Add the "Model" row to ``form``; its buttons fill in the path themselves."""
    edit = QLineEdit()
    edit.setToolTip("A model bundle folder (configs/metadata.json + models/model.pt)")
    browse = tool_button("…", "Choose a bundle folder")
    default = tool_button("Default", default_tip)
    message = message_label()
    form.addRow("Model", hbox(edit, browse, default))
    form.addRow("", message)
    browse.clicked.connect(lambda: choose_folder(parent, edit, "Choose a model bundle folder"))
    default.clicked.connect(lambda: edit.setText(str(_default_bundle())))
    return ModelField(edit, browse, default, message)


def _default_bundle() -> Path:
    from napari_icnn.bundle import default_bundle_path

    return default_bundle_path()
