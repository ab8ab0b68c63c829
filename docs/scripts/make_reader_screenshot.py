"""Make ``docs/reader.png``: the napari viewer with the synthetic fundus sample, its part Labels
layers and the layer list that names them.

Needs a display; on a headless machine run it under Xvfb from the repository root:
``xvfb-run -a python docs/scripts/make_reader_screenshot.py [--out PATH]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import napari
from _screenshot import save_screenshot, size_docks

OUT = Path(__file__).resolve().parents[1] / "reader.png"
WINDOW = (1400, 900)
LEFT_DOCK_WIDTH = 460
"""Wide enough for whole layer names ("synthetic fundus (right eye, ICDR grade 3)") in the layer list."""


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"PNG to write (default {OUT})")
    args = parser.parse_args(argv)

    viewer = napari.Viewer(title="napari-icnn: synthetic fundus sample", show=True)
    try:
        viewer.window.resize(*WINDOW)
        viewer.open_sample("napari-icnn", "synthetic")
        # Select the lesion layer drawn last so the layer controls show a Labels layer's settings.
        viewer.layers.selection.active = viewer.layers[-1]
        size_docks(left=LEFT_DOCK_WIDTH)  # room for whole layer names in the layer list
        viewer.reset_view()
        napari.qt.get_qapp().processEvents()
        save_screenshot(viewer, args.out)
    finally:
        viewer.close()
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
