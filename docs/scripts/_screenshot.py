"""What the screenshot scripts share: room for the docks, waiting for a run, writing the PNG.

Only Qt's public API; napari itself is imported by the scripts, after they set its environment.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtGui import QCursor
from qtpy.QtWidgets import QApplication, QDockWidget, QMainWindow


def size_docks(left: int | None = None, right: int | None = None) -> None:
    """Give the left and right dock areas these widths (``None``: leave the area as it is)."""
    QApplication.processEvents()
    widths = {Qt.DockWidgetArea.LeftDockWidgetArea: left, Qt.DockWidgetArea.RightDockWidgetArea: right}
    for window in QApplication.topLevelWidgets():
        if not isinstance(window, QMainWindow):
            continue
        for area, width in widths.items():
            if width is None:
                continue
            docks = [
                d
                for d in window.findChildren(QDockWidget)
                if d.isVisible() and window.dockWidgetArea(d) == area
            ]
            window.resizeDocks(docks, [width] * len(docks), Qt.Orientation.Horizontal)
    QApplication.processEvents()


def wait_until(done: Callable[[], bool], timeout: float, what: str) -> None:
    """Keep the GUI alive until ``done()``; give up (exit) after ``timeout`` seconds."""
    start = time.monotonic()
    while not done():
        QApplication.processEvents()
        time.sleep(0.02)
        if time.monotonic() - start > timeout:
            raise SystemExit(f"{what} did not finish in time")
    QApplication.processEvents()


def save_screenshot(viewer: Any, target: Path) -> Path:
    """The whole window as a PNG at ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target, then renamed, so an interrupted run never leaves half a PNG.
    tmp = target.with_name(f".{target.stem}.tmp.png")
    viewer.screenshot(str(tmp), canvas_only=False)
    tmp.replace(target)
    return target


def snap(viewer: Any, target: Path, *, left: int, right: int) -> Path:
    """Size the docks, fit the view, and save the window as a PNG at ``target``."""
    size_docks(left, right)
    QCursor.setPos(0, 0)  # no hover tooltip in the picture
    viewer.reset_view()
    QApplication.processEvents()
    return save_screenshot(viewer, target)
