"""A real napari viewer with the installed plugin: open its real-photograph sample, dock the Explain widget
through napari's plugin menu API and explain the scan with the shipped model. Run under Xvfb by
``.ci/wheel-check`` (in the environment with the older napari); prints one line, exits 0 when all worked.
"""

from __future__ import annotations

import sys
import time
import warnings

import napari
from qtpy.QtWidgets import QApplication

TIMEOUT_S = 300


def main() -> int:
    """Open, dock, explain; 0 when the scan got its evidence layers and the gate's outcome."""
    seen: list[str] = []
    from napari.utils.notifications import notification_manager

    notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))
    viewer = napari.Viewer(show=True)
    viewer.open_sample("napari-icnn", "retina")
    (scan,) = list(viewer.layers)
    _, widget = viewer.window.add_plugin_dock_widget("napari-icnn", "Explain")
    widget = getattr(widget, "native", widget)
    QApplication.processEvents()
    if widget.run() is None:
        print(f"the Explain widget did not start: {widget.status.text()}", file=sys.stderr)
        return 1
    start = time.monotonic()
    while widget.running and time.monotonic() - start < TIMEOUT_S:
        QApplication.processEvents()
        time.sleep(0.05)
    if widget.running:
        print(f"no explanation within {TIMEOUT_S} s", file=sys.stderr)
        return 1
    for _ in range(20):  # the layers are added from the returned result's signal
        QApplication.processEvents()
        time.sleep(0.05)
    added = [layer.name for layer in viewer.layers if layer is not scan]
    gate = scan.metadata.get("icnn_gate")
    deprecated = [m for m in seen if "deprecated" in m]
    print(f"napari {napari.__version__} ({QApplication.instance().platformName()}, {type(widget).__name__} docked): "
          f"{len(added)} layers added in {time.monotonic() - start:.1f} s; gate {gate and gate.get('status')}; "
          f"status: {widget.status.text()!r}; notifications: {seen}")
    viewer.close()
    if not added or gate is None or deprecated:
        return 1
    return 0


if __name__ == "__main__":
    warnings.simplefilter("default")
    sys.exit(main())
