"""Fixtures the widget tests share: a widget docked in a real viewer, and the notifications raised.

Test modules load them with ``pytest_plugins = ["gui_support"]``.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def dock(make_napari_viewer):
    """``dock(WidgetType, name, area=None)``: a widget made for a new viewer and docked in it
    (``area``: napari's choice by default)."""

    def make(widget_type: type, name: str, area: str | None = None) -> Any:
        viewer = make_napari_viewer()
        widget = widget_type(viewer)
        # napari before 0.9 takes no area=None
        viewer.window.add_dock_widget(widget, name=name, **({"area": area} if area else {}))
        return widget

    return make


class Notes:
    """The napari notifications shown while it listens."""

    def __init__(self):
        from napari.utils.notifications import notification_manager

        self.manager = notification_manager
        self.seen = []
        notification_manager.notification_ready.connect(self.seen.append)

    def close(self):
        self.manager.notification_ready.disconnect(self.seen.append)

    def of(self, severity):
        return [str(n.message) for n in self.seen if str(n.severity) == severity]


@pytest.fixture
def notes():
    n = Notes()
    yield n
    n.close()
