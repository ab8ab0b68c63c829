"""Make ``docs/figures/gate_ungradeable.png``: napari with the Explain widget docked, a fundus photograph
beside the same photograph out of focus, and the gate's red banner on the blurred one: ungradeable, no
probability given, no filter layers, "Explain anyway" offered.

The photograph is scikit-image's real retina (``skimage.data.retina``), or with ``--synthetic`` the plugin's
synthetic sample; the blur is a Gaussian of 4 % of the field of view's diameter on each channel.

Needs a display; on a headless machine run it under Xvfb from the repository root:
``xvfb-run -a -s "-screen 0 1700x1000x24" python docs/scripts/make_gate_screenshot.py [--model DIR] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("NAPARI_ICNN_NOPERSIST", "1")  # a screenshot must not change the user's settings
# Only errors pop up over the canvas; an environment setting, so the user's napari preferences stay as they are.
os.environ.setdefault("NAPARI_APPLICATION_GUI_NOTIFICATION_LEVEL", "error")

import napari  # noqa: E402
import numpy as np  # noqa: E402
from _screenshot import snap, wait_until  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "figures" / "gate_ungradeable.png"
WINDOW = (1680, 990)
LEFT_DOCK_WIDTH = 320
RIGHT_DOCK_WIDTH = 480
"""Room for the banner's reason on two lines beside its "Explain anyway" button."""
BLUR = 0.04
"""Gaussian sigma as a share of the field of view's diameter."""


def out_of_focus(pixels: np.ndarray, share: float = BLUR) -> np.ndarray:
    """``pixels`` blurred on each channel by a Gaussian of ``share`` of the field of view's diameter."""
    from scipy import ndimage as ndi

    from napari_icnn.data.fov import find_fov

    sigma = share * 2 * find_fov(pixels).radius
    return np.stack([ndi.gaussian_filter(pixels[..., c], sigma) for c in range(3)], axis=-1)


def main(argv: list[str] | None = None) -> Path:
    """Write the screenshot; returns its path (exits with the reason when the gate does not decline)."""
    from napari_icnn._widgets.explain_widget import ExplainWidget
    from napari_icnn.bundle import default_bundle_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="bundle folder (default: the demo bundle)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"PNG to write (default {OUT})")
    parser.add_argument("--synthetic", action="store_true", help="the synthetic sample instead of the real retina")
    args = parser.parse_args(argv)

    if args.synthetic:
        from napari_icnn._sample_data import synthetic_fundus

        pixels, what = synthetic_fundus()[0][0], "synthetic"
    else:
        import skimage.data

        pixels, what = np.ascontiguousarray(skimage.data.retina()), "retina"
    blurred = out_of_focus(pixels)

    viewer = napari.Viewer(title="napari-icnn: the gate declines an ungradeable photograph", show=True)
    try:
        viewer.window.resize(*WINDOW)
        viewer.add_image(pixels, rgb=True, name=f"{what} (original)")
        gap = 0.04 * pixels.shape[1]
        # The copy (no metadata of the original: it is explained from its own pixels) to the right of it.
        layer = viewer.add_image(
            blurred, rgb=True, name=f"{what}, out of focus", translate=(0.0, pixels.shape[1] + gap)
        )
        widget = ExplainWidget(viewer)
        viewer.window.add_dock_widget(widget, name="Explain", area="right")
        widget.model_edit.setText(str(args.model or default_bundle_path()))
        if widget.scan_layer is not layer:
            raise SystemExit(f"the Explain widget chose {widget.scan_layer!r}, not the blurred photograph")
        if widget.run() is None:
            raise SystemExit(widget.scan_message.text() or widget.model_message.text() or "Explain could not start")
        wait_until(lambda: not widget.running, 300.0, "Explain")
        banner = widget.gate_banner
        if banner.status != "ungradeable" or not banner.offers_anyway:
            raise SystemExit(f"the gate did not decline the blurred photograph: {banner.label.text()!r}")
        viewer.layers.selection.active = layer
        snap(viewer, args.out, left=LEFT_DOCK_WIDTH, right=RIGHT_DOCK_WIDTH)
        print(f"wrote {args.out}: {banner.label.text()}")
    finally:
        viewer.close()
    return args.out


if __name__ == "__main__":
    main()
