"""``icnn demo``: the whole product on an embedded default, end to end, on this machine.

Generates synthetic cohorts (train / validation / a test cohort never seen in training, with DICOM),
trains a fresh interpretable CNN on the CPU (or GPU), evaluates it, explains one synthetic scan and the real
photograph scikit-image ships, and runs the DICOM batch job over the test cohort. Everything lands in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from napari_icnn.config import DEVICES
from napari_icnn.recipes import RECIPES

# The demo trains the shipped model's recipe (napari_icnn.recipes: "demo"; "quick" with --quick): an ordinary
# CNN first, then the interpretable fine-tuning that starts from it.


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``demo`` parser to the ``icnn`` sub-command parsers, its handler :func:`run`."""
    p = sub.add_parser("demo", help="generate data, train, evaluate, explain and batch-process a demo cohort",
                       description=__doc__)
    p.add_argument("--out", default="demo-output", help="output folder (created; must be new or a previous demo)")
    p.add_argument("--quick", action="store_true", help="a tiny run (about a minute) to check the installation")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--napari", action="store_true", help="open the explained scan in napari at the end")
    p.set_defaults(func=run)


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.monotonic()


def run(args: argparse.Namespace) -> int:
    """Generate the demo cohorts, train, evaluate, explain and batch-process them into ``--out``; 0."""
    from napari_icnn.bundle import load_bundle
    from napari_icnn.config import TrainConfig
    from napari_icnn.data.synth import generate_cohort
    from napari_icnn.engine.evaluate import evaluate
    from napari_icnn.engine.train import train
    from napari_icnn.errors import ConfigError
    from napari_icnn.explain import explain, write_explanation
    from napari_icnn.progress import TextProgress, drain

    recipe = RECIPES["quick" if args.quick else "demo"]
    out = Path(args.out)
    marker = out / "demo.json"
    if out.exists() and any(out.iterdir()) and not marker.exists():
        raise ConfigError(f"--out {out}: exists, is not empty and is not a previous demo; choose another folder")
    if marker.exists():
        import shutil

        print(f"replacing the previous demo in {out}")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(json.dumps({"recipe": recipe.name, "params": asdict(recipe), "seed": args.seed}))
    started = time.monotonic()
    show = TextProgress()
    s = args.seed

    t = _step("1/5  synthetic cohorts (train, validation, test with DICOM)")
    for name, n, seed, dicom in (("train", recipe.n_train, 1000 * s + 1, False),
                                 ("val", recipe.n_val, 1000 * s + 2, False), ("test", recipe.n_test, 1000 * s + 3, True)):
        summary = drain(generate_cohort(out / "data" / name, n, size=recipe.image_size, seed=seed, dicom=dicom,
                                        workers=2, look=recipe.look), show)
        print("   " + summary.describe())
    print(f"   {time.monotonic() - t:.0f} s")

    t = _step("2/5  training an interpretable CNN (ICNN, VGG-style backbone)")
    common = dict(data=str(out / "data" / "train"), val=str(out / "data" / "val"), size=recipe.size,
                  device=args.device, seed=s, **recipe.train)
    print("   an ordinary CNN first ...")
    train(TrainConfig(out=str(out / "ordinary"), ordinary=True, epochs=recipe.epochs, warmup_epochs=recipe.warmup,
                      categories="decision", **common), on_event=show)
    print("   ... then the interpretable fine-tuning that starts from it")
    result = train(TrainConfig(out=str(out / "model"), init=str(out / "ordinary"), epochs=recipe.finetune_epochs,
                               warmup_epochs=0, lr=recipe.finetune_lr, **common), on_event=show)
    train_s = time.monotonic() - t
    print(f"   trained in {train_s:.0f} s (best epoch {result.best_epoch})")

    t = _step("3/5  evaluation on the unseen test cohort")
    metrics = evaluate(str(out / "model"), str(out / "data" / "test"), on_event=show, out=str(out / "metrics.json"))
    for key in ("auc", "accuracy", "part_interpretability", "location_instability", "pointing_hit_rate"):
        value = metrics.get(key)
        print(f"   {key:<24s} {value:.3f}" if isinstance(value, float) else f"   {key:<24s} {value}")

    t = _step("4/5  explaining a synthetic scan and the real photograph")
    import numpy as np
    import skimage.data

    from napari_icnn.cli.explain import print_filters
    from napari_icnn.data.image_io import load_image
    from napari_icnn.explain import lesion_type_summary
    from napari_icnn.image import FundusImage

    model = load_bundle(out / "model", device=args.device)
    test_images = sorted((out / "data" / "test" / "images").glob("*.png"))
    scan = load_image(test_images[0])[0]
    real = FundusImage(pixels=np.ascontiguousarray(skimage.data.retina()), source="skimage.data.retina()",
                       laterality="L")
    for img, folder in ((scan, "explain_synthetic"), (real, "explain_real_photograph")):
        e = explain(img, model)
        write_explanation(e, img, out / folder, top_k=6)
        print(f"   {img.source}: {e.predicted_class} (p = {e.probability:.3f}); lesion types: "
              f"{lesion_type_summary(e)}")
        print_filters(e, 4, indent="     ", peaks=False)

    t = _step("5/5  DICOM batch inference over the test cohort")
    try:
        from napari_icnn.batch import BatchConfig, infer
    except ImportError:
        print("   (batch inference is not available in this build)")
    else:
        batch_summary = infer(BatchConfig(inputs=(str(out / "data" / "test" / "dicom"),), out=str(out / "batch"),
                                    model=str(out / "model"), device=args.device), on_event=show)
        print(f"   {batch_summary.n_ok} ok, {batch_summary.n_error} error, {batch_summary.n_declined} declined -> {out / 'batch'}")

    total = time.monotonic() - started
    print(f"\nDone in {total / 60:.1f} min (training {train_s / 60:.1f} min). Outputs in {out}/:")
    print("  model/ (MONAI bundle)  metrics.json  explain_*/  batch/summary.csv")
    print(f"Open it in napari:  napari {out / 'data' / 'test' / 'images' / test_images[0].name}  "
          "then Plugins > Interpretable fundus CNN > Explain, model folder " + str(out / "model"))
    if args.napari:
        _open_napari(out, test_images[0])
    return 0


def _open_napari(out: Path, image: Path) -> None:  # pragma: no cover - interactive
    import napari

    viewer = napari.Viewer()
    viewer.open(str(image))
    try:
        _, widget = viewer.window.add_plugin_dock_widget("napari-icnn", "Explain")
        if hasattr(widget, "set_model_path"):
            widget.set_model_path(str(out / "model"))
    except Exception as err:  # noqa: BLE001 - the demo still shows the scan
        print(f"could not open the Explain widget: {err}", file=sys.stderr)
    napari.run()
