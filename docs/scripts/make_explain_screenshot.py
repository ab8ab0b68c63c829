"""Make ``docs/explain.png``: napari with the Explain widget docked, a synthetic fundus explained by
the demo model, the named per-filter evidence layers above the (hidden) anatomy-context layers, the
result panel and the legend with its groups.

Needs a display; on a headless machine run it under Xvfb from the repository root:
``xvfb-run -a -s "-screen 0 1700x1000x24" python docs/scripts/make_explain_screenshot.py [--model DIR] [--out PATH]``;
``--scan real`` explains scikit-image's real photograph (a healthy eye) instead, ``docs/explain_real.png``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("NAPARI_ICNN_NOPERSIST", "1")  # a screenshot must not change the user's settings
# Only errors pop up over the canvas (napari's start-up notices say nothing about the plugin); an
# environment setting, so the user's napari preferences are left as they are.
os.environ.setdefault("NAPARI_APPLICATION_GUI_NOTIFICATION_LEVEL", "error")

import napari  # noqa: E402
from _screenshot import snap, wait_until  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "explain.png"
OUT_REAL = OUT.with_name("explain_real.png")
WINDOW = (1680, 990)
LEFT_DOCK_WIDTH = 430
"""Room for the layer list's whole names, "context · filter 3 · label-free, unnamed" among them."""
RIGHT_DOCK_WIDTH = 460
"""Room for the legend's editable names and contributions."""
TOP_K = 4
"""Per group: the evidence and the anatomy context both fit in the legend without scrolling."""


def main(argv: list[str] | None = None) -> Path:
    from napari_icnn._sample_data import SYNTHETIC_SEED, real_retina, synthetic_fundus
    from napari_icnn._widgets.explain_widget import ExplainWidget
    from napari_icnn.bundle import default_bundle_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="bundle folder (default: the demo bundle)")
    parser.add_argument("--scan", choices=("synthetic", "real"), default="synthetic",
                        help="the sample scan: the synthetic referable one (default) or the real photograph")
    parser.add_argument("--out", type=Path, default=None, help=f"PNG to write (default {OUT}, {OUT_REAL} for real)")
    parser.add_argument("--side-by-side", action="store_true", help="show napari's grid: scan | evidence")
    parser.add_argument("--heat-maps", action="store_true", help="show the filters' heat maps too")
    args = parser.parse_args(argv)
    args.out = args.out or (OUT_REAL if args.scan == "real" else OUT)

    viewer = napari.Viewer(title="napari-icnn: Explain", show=True)
    try:
        viewer.window.resize(*WINDOW)
        sample = real_retina() if args.scan == "real" else synthetic_fundus()
        scan_data, scan_kwargs, _ = sample[0]  # the scan only; a synthetic scan's ground-truth masks stay out
        viewer.add_image(scan_data, **scan_kwargs)
        widget = ExplainWidget(viewer)
        viewer.window.add_dock_widget(widget, name="Explain", area="right")
        widget.model_edit.setText(str(args.model or default_bundle_path()))
        widget.top_k_spin.setValue(TOP_K)
        widget.heat_check.setChecked(args.heat_maps)
        if widget.model_message.text():
            raise SystemExit(widget.model_message.text())
        _wait_for(widget)
        if widget.side_check.isChecked() != args.side_by_side:
            widget.side_check.setChecked(args.side_by_side)
        # Select the strongest filter's layer so the layer controls show a Labels layer's settings.
        top = next(reversed([la for la in viewer.layers if type(la).__name__ == "Labels"]))
        viewer.layers.selection.active = top
        # Room for the layer list's whole names and the Explain dock's legend.
        snap(viewer, args.out, left=LEFT_DOCK_WIDTH, right=RIGHT_DOCK_WIDTH)
        what = "scikit-image's real photograph" if args.scan == "real" else f"synthetic fundus seed {SYNTHETIC_SEED}"
        print(f"wrote {args.out} ({what}; {widget.time_label.text()})")
    finally:
        viewer.close()
    return args.out


def _wait_for(widget, timeout: float = 300.0) -> None:
    if widget.run() is None:
        raise SystemExit(
            widget.scan_message.text() or widget.model_message.text() or "Explain could not start"
        )
    wait_until(lambda: not widget.running, timeout, "Explain")
    if not widget.legend.rows:
        raise SystemExit(f"Explain produced no evidence: {widget.status.text()}")


if __name__ == "__main__":
    main()
