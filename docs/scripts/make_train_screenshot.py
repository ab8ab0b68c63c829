"""Make ``docs/train.png`` and ``docs/batch_widget.png``.

``train.png``: napari with the Train widget docked after a short run on a synthetic cohort (the live
loss / validation-AUC plot, the finished run's summary, "Use in Explain"), one training photograph
on the canvas. ``batch_widget.png``: the Batch widget after running the shipped model (the default a clinic
starts from; the 22-second model above is too weak to give a meaningful probability) over a folder of
generated Ophthalmic Photography DICOM files with a red-free photograph and a junk file among them
(running counts, the last rows of summary.csv), the first result's evidence sheet on the canvas.

Needs a display; on a headless machine run it under Xvfb from the repository root:
``xvfb-run -a -s "-screen 0 1700x1100x24" python docs/scripts/make_train_screenshot.py [--out-dir DIR]``.
Everything it writes besides the two pictures goes to a temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("NAPARI_ICNN_NOPERSIST", "1")  # a screenshot must not change the user's settings
os.environ.setdefault("NAPARI_APPLICATION_GUI_NOTIFICATION_LEVEL", "error")  # no toasts over the canvas

import napari  # noqa: E402
from _screenshot import snap, wait_until  # noqa: E402

DOCS = Path(__file__).resolve().parents[1]
WINDOW = (1560, 1020)
RIGHT_DOCK_WIDTH = 520
LEFT_DOCK_WIDTH = 300
COHORT = dict(n_train=128, n_val=32, size=192, seed=2024)
RUN = dict(size=96, epochs=8, warmup_epochs=3, batch=16)
"""About a minute on a 2-core CPU; validation AUC reaches about 0.8 on this cohort."""
N_DICOM = 8


def main(argv: list[str] | None = None) -> tuple[Path, Path]:
    """Write both pictures into ``--out-dir``; their paths."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=DOCS, help=f"folder for the PNGs (default {DOCS})")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="icnn-docs-"))
    try:
        bundle, train_png = _train_picture(work, args.out_dir / "train.png")
        from napari_icnn.bundle import shipped_bundle_path

        del bundle  # the Train picture's model is for the hand-over to Explain only
        batch_png = _batch_picture(work, shipped_bundle_path(), args.out_dir / "batch_widget.png")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return train_png, batch_png


def _train_picture(work: Path, target: Path) -> tuple[Path, Path]:
    from napari_icnn._widgets.train_widget import TrainWidget
    from napari_icnn.data.image_io import load_image
    from napari_icnn.data.synth import write_cohort

    study = work / "fundus-study"
    write_cohort(study / "train", COHORT["n_train"], size=COHORT["size"], seed=COHORT["seed"], look="clean")
    write_cohort(study / "val", COHORT["n_val"], size=COHORT["size"], seed=COHORT["seed"] + 1, look="clean")
    out = study / "models" / "icnn-referable"

    viewer = napari.Viewer(title="napari-icnn: Train", show=True)
    try:
        viewer.window.resize(*WINDOW)
        photo = sorted((study / "train" / "images").iterdir())[0]
        viewer.add_image(load_image(photo)[0].pixels, rgb=True, name="a training photograph")
        widget = TrainWidget(viewer)
        viewer.window.add_dock_widget(widget, name="Train", area="right")
        widget.set_values(data=str(study / "train"), val=str(study / "val"), out=str(out), **RUN)
        if not widget.start_button.isEnabled():
            raise SystemExit(f"the Train widget refuses the inputs: {widget.values()}")
        widget.start()
        wait_until(lambda: not widget.running, 900, "training")
        outcome = widget.outcome
        if outcome is None or outcome.bundle is None:
            raise SystemExit(f"training produced no model: {widget.status.text()}")
        snap(viewer, target, left=LEFT_DOCK_WIDTH, right=RIGHT_DOCK_WIDTH)
        print(f"wrote {target} ({outcome.describe()})")
        return outcome.bundle, target
    finally:
        viewer.close()


def _batch_picture(work: Path, bundle: Path, target: Path) -> Path:
    import numpy as np
    from PIL import Image

    from napari_icnn._widgets.batch_widget import BatchWidget
    from napari_icnn.data.synth import generate_fundus
    from napari_icnn.dicom.op_writer import write_op

    export = work / "pacs-export" / "2026-11"
    export.mkdir(parents=True)
    for i in range(N_DICOM):
        write_op(export / f"IM{i + 1:04d}", generate_fundus(300 + i, size=512).image, laterality="LR"[i % 2])
    write_op(export / f"IM{N_DICOM + 1:04d}", generate_fundus(399, size=512).image[..., 1], laterality="R")
    (export / "DICOMDIR.bak").write_bytes(np.random.default_rng(1).bytes(4096))
    results = work / "results" / "2026-11"

    viewer = napari.Viewer(title="napari-icnn: Batch inference", show=True)
    try:
        viewer.window.resize(*WINDOW)
        widget = BatchWidget(viewer)
        viewer.window.add_dock_widget(widget, name="Batch inference", area="right")
        widget.add_inputs([export])
        widget.out_edit.setText(str(results))
        widget.model_edit.setText(str(bundle))
        widget.workers_spin.setValue(min(2, os.cpu_count() or 1))
        if widget.run() is None:
            raise SystemExit("the Batch widget refuses the inputs")
        wait_until(lambda: not widget.running, 900, "the batch")
        if widget.outcome is None:
            raise SystemExit(f"the batch failed: {widget.status.text()}")
        widget.rows_button.setChecked(True)
        first = next((r for r in _ok_rows(widget) if any(o.endswith(".png") for o in r.outputs)), None)
        if first is not None:
            sheet = results / next(o for o in first.outputs if o.endswith(".png"))
            with Image.open(sheet) as im:
                name = f"evidence sheet · {Path(first.input_path).name}"
                viewer.add_image(np.asarray(im.convert("RGB")), rgb=True, name=name)
        snap(viewer, target, left=LEFT_DOCK_WIDTH, right=RIGHT_DOCK_WIDTH)
        print(f"wrote {target} ({widget.outcome.describe()})")
        return target
    finally:
        viewer.close()


def _ok_rows(widget):
    from napari_icnn.batch.summary import last_rows

    rows = [r for r in last_rows(widget.summary_csv(), 1000) if r.status == "ok"]
    return sorted(rows, key=lambda r: r.input_path)


if __name__ == "__main__":
    main()
