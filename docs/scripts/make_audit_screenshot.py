"""Make ``docs/figures/audit_widget.png``: napari with the Audit widget docked after auditing a model on a cohort
with a site stamp: the shortcut finding in red, the filters by their share of the evidence, and the filter that
carries most of the stamp's share shown on its strongest scans (its map beside each scan, as named layers).

The model and cohort are given (the shortcut study's ICNN trained at rate 0.9 and its neutral test cohort, see
docs/audit.md); the audit runs in the widget as a user would run it.

Needs a display; on a headless machine run it under Xvfb from the repository root:
``xvfb-run -a -s "-screen 0 1700x1000x24" python docs/scripts/make_audit_screenshot.py --model DIR --data DIR``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("NAPARI_ICNN_NOPERSIST", "1")
os.environ.setdefault("NAPARI_APPLICATION_GUI_NOTIFICATION_LEVEL", "error")

import napari  # noqa: E402
from _screenshot import snap, wait_until  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "figures" / "audit_widget.png"
WINDOW = (1680, 990)
LEFT_DOCK_WIDTH = 300
RIGHT_DOCK_WIDTH = 560


def main(argv: list[str] | None = None) -> Path:
    """Write the screenshot; returns its path."""
    from napari_icnn._widgets.audit_widget import AuditWidget

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="bundle folder")
    parser.add_argument("--data", type=Path, required=True, help="cohort folder")
    parser.add_argument("--out", type=Path, default=OUT, help=f"PNG to write (default {OUT})")
    parser.add_argument("--scans", type=int, default=3, help="strongest scans shown")
    args = parser.parse_args(argv)

    viewer = napari.Viewer(title="napari-icnn: auditing a model for shortcuts", show=True)
    try:
        viewer.window.resize(*WINDOW)
        widget = AuditWidget(viewer)
        viewer.window.add_dock_widget(widget, name="Audit", area="right")
        widget.model_edit.setText(str(args.model))
        widget.data_edit.setText(str(args.data))
        widget.out_edit.setText(tempfile.mkdtemp(prefix="audit-"))
        widget.gradcam_check.setChecked(False)
        if widget.run() is None:
            raise SystemExit(f"the audit could not start: {widget.status.text()}")
        wait_until(lambda: not widget.running, 1800, "the audit")
        doc = widget.outcome
        if doc is None:
            raise SystemExit(f"the audit failed: {widget.status.text()}")
        shortcut = next((f for f in doc["findings"] if f["kind"] == "shortcut"), None)
        fid = shortcut["filters"][0] if shortcut else max(doc["filters"], key=lambda r: r["evidence_share"])["filter"]
        widget.findings_list.setCurrentRow(0)  # selects the filter that carries most of the shortcut
        widget.select_filter(fid)
        widget.findings_list.clearSelection()  # the finding keeps its colour in the picture
        widget.show_filter(fid, args.scans)
        wait_until(lambda: sum(la.name.startswith("audit · ") for la in viewer.layers) == 2 * args.scans, 300,
                   "showing the filter's scans")
        return snap(viewer, args.out, left=LEFT_DOCK_WIDTH, right=RIGHT_DOCK_WIDTH)
    finally:
        viewer.close()


if __name__ == "__main__":
    print(main())
